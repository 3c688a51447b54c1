//! Azure confidential VMs (SEV-SNP and TDX): evidence through the vTPM and the paravisor's HCL
//! report.
//!
//! Evidence for report data `d`:
//! 1. write `d` (zero-padded to 64 bytes) to NV index `0x01400002`;
//! 2. read the HCL report from NV `0x01400001` until its runtime claims' `user-data` is `d` —
//!    the paravisor makes a new report on a read at offset 0, at most every 2 s, so a read right
//!    after the write may still return the previous report; we poll instead of sleeping a fixed
//!    time;
//! 3. quote SHA-256 PCRs 0–23 with the attestation key `0x81000003`, `d` as qualifying data, and
//!    read the 24 values;
//! 4. SNP: add the VCEK from IMDS (`/metadata/THIM/amd/certification`, fetched once);
//!    TDX: add the TD quote IMDS makes of the report's TD report (`/acc/tdquote`).
//!
//! Initdata is bound by extending PCR 8 with the first 32 bytes of its digest — once: a PCR 8
//! that already holds that value is left alone, and one holding anything else is an error.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use peerpod_tee::evidence::{AzSnpEvidence, AzTdxEvidence, TpmQuote, VERSION};
use peerpod_tee::hcl::{HclReport, ReportType};
use peerpod_tpm::types::{NvPublic, PcrSelection, alg, handle, nv_attr};
use peerpod_tpm::{
    AZURE_AK_HANDLE, AZURE_HCL_REPORT_INDEX, AZURE_REPORT_DATA_INDEX, PcrBank, ResponseCode, Tpm,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{AttestError, Attester, Measured};

/// Which Azure CVM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AzureFlavour {
    /// SEV-SNP: `az-snp-vtpm`.
    Snp,
    /// TDX: `az-tdx-vtpm`.
    Tdx,
}

/// Where the vTPM and IMDS are, and how long to wait for them.
#[derive(Debug, Clone)]
pub struct AzureOptions {
    /// The TPM transport (`device:/dev/tpmrm0` in a CVM).
    pub tpm: String,
    /// IMDS base URL (`http://169.254.169.254` in a CVM).
    pub imds_url: String,
    /// How long to wait for the paravisor to refresh the report with our data.
    pub refresh_timeout: Duration,
    /// How often to re-read the report while waiting.
    pub poll_interval: Duration,
    /// Per-request IMDS timeout.
    pub imds_timeout: Duration,
    /// IMDS attempts before giving up.
    pub imds_attempts: u32,
}

impl Default for AzureOptions {
    fn default() -> Self {
        Self {
            tpm: peerpod_tpm::transport::Transport::DEFAULT.to_string(),
            imds_url: "http://169.254.169.254".to_string(),
            refresh_timeout: Duration::from_secs(10),
            poll_interval: Duration::from_millis(100),
            imds_timeout: Duration::from_secs(10),
            imds_attempts: 3,
        }
    }
}

/// The Azure vTPM attester.
pub struct AzureVtpm {
    flavour: AzureFlavour,
    options: AzureOptions,
    http: reqwest::Client,
    // One evidence at a time: report data written by one must not be read back by another.
    lock: tokio::sync::Mutex<()>,
    vcek: tokio::sync::OnceCell<Vec<u8>>,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AttestError> + Send + 'static,
) -> Result<T, AttestError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AttestError::Internal(format!("vTPM task failed: {e}")))?
}

impl AzureVtpm {
    /// Reads the HCL report to tell whether this is an Azure CVM, and which. `Ok(None)` when
    /// there is no TPM (the device or socket does not exist) or the TPM has no HCL report index
    /// (not Azure). A TPM that exists but cannot be opened or fails otherwise is an error: the
    /// agent must not decide "not Azure" and attest as another TEE without the initdata bound.
    pub fn probe(tpm_spec: &str) -> Result<Option<AzureFlavour>, AttestError> {
        let mut tpm = match Tpm::open(tpm_spec) {
            Ok(tpm) => tpm,
            Err(peerpod_tpm::Error::Open { source, .. })
                if matches!(
                    source.raw_os_error(),
                    Some(errno::ENOENT | errno::ENODEV | errno::ENXIO)
                ) =>
            {
                return Ok(None);
            }
            Err(source) => {
                return Err(AttestError::Tpm {
                    action: "opening the vTPM (it exists but fails)",
                    source,
                });
            }
        };
        // Only the type field: a read from offset 0 would make the paravisor refresh the report
        // and hold off the next refresh — the one our first attestation needs — for 2 s.
        let offset = peerpod_tee::hcl::REPORT_TYPE_OFFSET as u16;
        let bytes = match tpm.nv_read(AZURE_HCL_REPORT_INDEX, 4, offset) {
            Ok(b) => b,
            // No such index, or never written: a TPM that is not Azure's paravisor vTPM.
            Err(e)
                if e.response_code().is_some_and(|c| {
                    c.is(ResponseCode::HANDLE)
                        || c.is(ResponseCode::NV_UNINITIALIZED)
                        || c.is(ResponseCode::NV_RANGE)
                }) =>
            {
                return Ok(None);
            }
            Err(source) => {
                return Err(AttestError::Tpm {
                    action: "reading the HCL report's type",
                    source,
                });
            }
        };
        let code = bytes
            .get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .unwrap_or(0);
        match ReportType::from_code(code) {
            Some(ReportType::Snp) => Ok(Some(AzureFlavour::Snp)),
            Some(ReportType::Tdx) => Ok(Some(AzureFlavour::Tdx)),
            None => Err(AttestError::Internal(format!(
                "the vTPM holds an HCL report of unknown type {code} (neither SNP 2 nor TDX 4)"
            ))),
        }
    }

    /// An attester for a known flavour.
    pub fn new(flavour: AzureFlavour, options: AzureOptions) -> Result<Self, AttestError> {
        let http = peerpod_kbs_client::http_builder(&options.imds_url)
            .timeout(options.imds_timeout)
            .no_proxy()
            .build()
            .map_err(|e| {
                AttestError::Internal(format!(
                    "IMDS HTTP client: {}",
                    peerpod_kbs_client::error_chain(&e)
                ))
            })?;
        Ok(Self {
            flavour,
            options,
            http,
            lock: tokio::sync::Mutex::new(()),
            vcek: tokio::sync::OnceCell::new(),
        })
    }

    async fn imds(
        &self,
        what: &'static str,
        request: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Value, AttestError> {
        let mut last = String::new();
        for attempt in 1..=self.options.imds_attempts.max(1) {
            match request()
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
            {
                Ok(resp) => {
                    // Never retried: IMDS does not redirect, so the answer will not change.
                    if let Some(detail) = peerpod_kbs_client::refused_redirect(&resp, "IMDS") {
                        return Err(AttestError::Imds { what, detail });
                    }
                    let body =
                        peerpod_kbs_client::read_body(resp, peerpod_kbs_client::MAX_IMDS_REPLY)
                            .await
                            .map_err(|e| AttestError::Imds {
                                what,
                                detail: peerpod_kbs_client::error_chain(&e),
                            })?;
                    return serde_json::from_slice::<Value>(&body).map_err(|e| AttestError::Imds {
                        what,
                        // Where, not the parser's complaint: that would quote the reply.
                        detail: format!(
                            "the reply is not JSON (line {}, column {})",
                            e.line(),
                            e.column()
                        ),
                    });
                }
                Err(e) => {
                    last = e.to_string();
                    tracing::warn!(what, attempt, error = %e, "IMDS request failed");
                    if attempt < self.options.imds_attempts {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
        Err(AttestError::Imds {
            what,
            detail: format!(
                "{} attempts failed, last: {last}",
                self.options.imds_attempts
            ),
        })
    }

    async fn vcek(&self) -> Result<Vec<u8>, AttestError> {
        self.vcek
            .get_or_try_init(|| async {
                let url = format!("{}/metadata/THIM/amd/certification", self.options.imds_url);
                let body = self
                    .imds("VCEK request", || {
                        self.http.get(&url).header("Metadata", "true")
                    })
                    .await?;
                let pem = body["vcekCert"].as_str().ok_or_else(|| AttestError::Imds {
                    what: "VCEK request",
                    detail: "no vcekCert in the reply".into(),
                })?;
                pem_to_der(pem).ok_or_else(|| AttestError::Imds {
                    what: "VCEK request",
                    detail: "vcekCert is not a PEM certificate".into(),
                })
            })
            .await
            .cloned()
    }

    async fn td_quote(&self, td_report: &[u8]) -> Result<Vec<u8>, AttestError> {
        let url = format!("{}/acc/tdquote", self.options.imds_url);
        let body = serde_json::json!({"report": URL_SAFE_NO_PAD.encode(td_report)});
        let reply = self
            .imds("TD quote request", || self.http.post(&url).json(&body))
            .await?;
        let quote = reply["quote"].as_str().ok_or_else(|| AttestError::Imds {
            what: "TD quote request",
            detail: "no quote in the reply".into(),
        })?;
        peerpod_text::decode_b64url(quote).map_err(|e| AttestError::Imds {
            what: "TD quote request",
            detail: format!("quote is not base64url: {e}"),
        })
    }
}

/// The errno values (Linux, the only target) that mean "no such TPM" when opening it: no device
/// node or socket, or a node without a driver behind it.
mod errno {
    pub(super) const ENOENT: i32 = 2;
    pub(super) const ENXIO: i32 = 6;
    pub(super) const ENODEV: i32 = 19;
}

/// The DER inside a one-certificate PEM.
fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END CERTIFICATE-----"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .ok()
}

/// Writes 64 bytes of report data to `0x01400002`, defining the index (owner read/write, 64
/// bytes) when it is missing or has another size.
fn write_report_data(tpm: &mut Tpm, data: &[u8; 64]) -> Result<(), AttestError> {
    let public = NvPublic {
        index: AZURE_REPORT_DATA_INDEX,
        name_alg: alg::SHA256,
        attributes: nv_attr::OWNERWRITE | nv_attr::OWNERREAD,
        auth_policy: Vec::new(),
        data_size: 64,
    };
    match tpm.nv_read_public(AZURE_REPORT_DATA_INDEX) {
        Ok((p, _)) if p.data_size == 64 => {}
        Ok(_) => {
            tpm.nv_undefine_space(handle::OWNER, AZURE_REPORT_DATA_INDEX)
                .map_err(AttestError::tpm(
                    "removing a report-data index of the wrong size",
                ))?;
            tpm.nv_define_space(handle::OWNER, &public)
                .map_err(AttestError::tpm("defining the report-data index"))?;
        }
        Err(e)
            if e.response_code()
                .is_some_and(|c| c.is(ResponseCode::HANDLE)) =>
        {
            tpm.nv_define_space(handle::OWNER, &public)
                .map_err(AttestError::tpm("defining the report-data index"))?;
        }
        Err(source) => {
            return Err(AttestError::Tpm {
                action: "reading the report-data index",
                source,
            });
        }
    }
    tpm.nv_write(AZURE_REPORT_DATA_INDEX, data, 0)
        .map_err(AttestError::tpm("writing report data"))
}

/// Reads the HCL report until its `user-data` equals `data`.
fn read_fresh_report(
    tpm: &mut Tpm,
    data: &[u8; 64],
    timeout: Duration,
    poll: Duration,
) -> Result<(Vec<u8>, HclReport), AttestError> {
    let started = Instant::now();
    let mut reads = 0u32;
    loop {
        let bytes = tpm
            .nv_read_all(AZURE_HCL_REPORT_INDEX)
            .map_err(AttestError::tpm("reading the HCL report"))?;
        reads += 1;
        let report = HclReport::parse(&bytes).map_err(|source| AttestError::Format {
            what: "HCL report",
            source,
        })?;
        let claims = report.claims().map_err(|source| AttestError::Format {
            what: "HCL runtime claims",
            source,
        })?;
        let user = claims
            .user_data_bytes()
            .map_err(|source| AttestError::Format {
                what: "HCL user-data",
                source,
            })?;
        if user.as_deref() == Some(&data[..]) {
            tracing::debug!(
                reads,
                waited_ms = started.elapsed().as_millis() as u64,
                "HCL report refreshed"
            );
            return Ok((bytes, report));
        }
        if started.elapsed() >= timeout {
            return Err(AttestError::Timeout(format!(
                "the HCL report was not refreshed with our report data within {timeout:?} ({reads} reads): the paravisor did not regenerate it"
            )));
        }
        std::thread::sleep(poll);
    }
}

fn quote(tpm: &mut Tpm, nonce: &[u8]) -> Result<TpmQuote, AttestError> {
    let q = tpm
        .quote(AZURE_AK_HANDLE, nonce, &PcrSelection::all(alg::SHA256))
        .map_err(AttestError::tpm("quoting PCRs with the attestation key"))?;
    let pcrs = tpm
        .pcr_read(PcrBank::Sha256, &(0..24).collect::<Vec<u8>>())
        .map_err(AttestError::tpm("reading PCRs"))?;
    Ok(TpmQuote {
        signature: q.signature.signature,
        message: q.message,
        pcrs,
    })
}

fn pcr_index(index: u64) -> Result<u8, AttestError> {
    u8::try_from(index)
        .ok()
        .filter(|i| *i < 24)
        .ok_or_else(|| AttestError::Internal(format!("PCR {index} does not exist (0-23)")))
}

#[async_trait]
impl Attester for AzureVtpm {
    fn tee(&self) -> &'static str {
        match self.flavour {
            AzureFlavour::Snp => "az-snp-vtpm",
            AzureFlavour::Tdx => "az-tdx-vtpm",
        }
    }

    async fn evidence(&self, report_data: &[u8]) -> Result<Value, AttestError> {
        if report_data.len() > 64 {
            return Err(AttestError::ReportDataSize {
                len: report_data.len(),
                max: 64,
            });
        }
        let mut data = [0u8; 64];
        data[..report_data.len()].copy_from_slice(report_data);
        let nonce = report_data.to_vec();
        let options = self.options.clone();
        let _guard = self.lock.lock().await;
        let (hcl_bytes, hcl, tpm_quote) = blocking(move || {
            let mut tpm = Tpm::open(&options.tpm).map_err(AttestError::tpm("opening the vTPM"))?;
            write_report_data(&mut tpm, &data)?;
            let (bytes, report) = read_fresh_report(
                &mut tpm,
                &data,
                options.refresh_timeout,
                options.poll_interval,
            )?;
            let q = quote(&mut tpm, &nonce)?;
            Ok((bytes, report, q))
        })
        .await?;
        let evidence = match self.flavour {
            AzureFlavour::Snp => serde_json::to_value(AzSnpEvidence {
                version: VERSION,
                tpm_quote,
                hcl_report: hcl_bytes,
                vcek: self.vcek().await?,
            }),
            AzureFlavour::Tdx => serde_json::to_value(AzTdxEvidence {
                version: VERSION,
                tpm_quote,
                td_quote: self.td_quote(&hcl.hw_report).await?,
                hcl_report: hcl_bytes,
            }),
        };
        evidence.map_err(|e| AttestError::Internal(format!("evidence JSON: {e}")))
    }

    async fn bind_init_data(&self, digest: &[u8]) -> Result<(), AttestError> {
        let mut d32 = [0u8; 32];
        let n = digest.len().min(32);
        d32[..n].copy_from_slice(&digest[..n]);
        let mut h = Sha256::new();
        h.update([0u8; 32]);
        h.update(d32);
        let expected: [u8; 32] = h.finalize().into();
        let spec = self.options.tpm.clone();
        let _guard = self.lock.lock().await;
        blocking(move || {
            let mut tpm = Tpm::open(&spec).map_err(AttestError::tpm("opening the vTPM"))?;
            let current = tpm
                .pcr_read(PcrBank::Sha256, &[8])
                .map_err(AttestError::tpm("reading PCR 8"))?
                .pop()
                .unwrap_or_default();
            if current == expected {
                tracing::info!("initdata already bound to PCR 8");
                return Ok(());
            }
            if current != [0u8; 32] {
                return Err(AttestError::InitDataMismatch(format!(
                    "PCR 8 is {} but binding this initdata gives {}: other initdata was bound since boot",
                    hex::encode(&current),
                    hex::encode(expected)
                )));
            }
            tpm.pcr_extend(8, PcrBank::Sha256, &d32)
                .map_err(AttestError::tpm("extending PCR 8 with the initdata digest"))?;
            tracing::info!(pcr8 = %hex::encode(expected), "initdata bound to PCR 8");
            Ok(())
        })
        .await
    }

    async fn extend(&self, index: u64, digest: &[u8]) -> Result<Measured, AttestError> {
        let pcr = pcr_index(index)?;
        let digest = digest.to_vec();
        let spec = self.options.tpm.clone();
        blocking(move || {
            let mut tpm = Tpm::open(&spec).map_err(AttestError::tpm("opening the vTPM"))?;
            tpm.pcr_extend(pcr, PcrBank::Sha256, &digest)
                .map_err(AttestError::tpm("extending a runtime measurement PCR"))?;
            Ok(Measured::Extended)
        })
        .await
    }

    async fn register(&self, index: u64) -> Result<Vec<u8>, AttestError> {
        let pcr = pcr_index(index)?;
        let spec = self.options.tpm.clone();
        blocking(move || {
            let mut tpm = Tpm::open(&spec).map_err(AttestError::tpm("opening the vTPM"))?;
            Ok(tpm
                .pcr_read(PcrBank::Sha256, &[pcr])
                .map_err(AttestError::tpm("reading a PCR"))?
                .pop()
                .unwrap_or_default())
        })
        .await
    }
}
