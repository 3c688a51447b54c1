//! Bare SEV-SNP and TDX guests, through the kernel's configfs-tsm report interface
//! (`/sys/kernel/config/tsm/report`).
//!
//! A report is one configfs directory: write the 64-byte report data to `inblob`, read the
//! signed report (SNP) or quote (TDX) from `outblob`, and `auxblob` for the SNP certificate
//! table. `provider` names the TEE (`sev_guest`, `tdx_guest`); `generation` counts writes, so a
//! concurrent writer is detected. Evidence formats follow upstream's:
//! - `tdx`: `{"cc_eventlog": null, "quote": "<base64>"}`;
//! - `snp`: `{"attestation_report": {...fields...}, "cert_chain": null | [{"cert_type", "data"}]}`
//!   with byte fields as arrays of numbers.
//!
//! Initdata is checked, not bound: SNP's `HOSTDATA` and TDX's `MRCONFIGID` were set by the host
//! at launch and must equal the digest (zero-padded or truncated to 32 or 48 bytes).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use peerpod_tee::snp::SnpReport;
use peerpod_tee::tdx::TdQuote;
use serde_json::{Value, json};

use super::{AttestError, Attester, Measured};

/// The configfs-tsm report directory.
pub(super) const TSM_ROOT: &str = "/sys/kernel/config/tsm/report";

/// Which TEE the TSM provider is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsmProvider {
    /// AMD SEV-SNP (`sev_guest`).
    SevGuest,
    /// Intel TDX (`tdx_guest`).
    TdxGuest,
}

impl TsmProvider {
    fn name(self) -> &'static str {
        match self {
            TsmProvider::SevGuest => "sev_guest",
            TsmProvider::TdxGuest => "tdx_guest",
        }
    }
}

/// A configfs-tsm attester.
#[derive(Debug)]
pub struct Tsm {
    root: PathBuf,
    provider: TsmProvider,
    lock: tokio::sync::Mutex<()>,
}

/// One report directory, removed on drop.
struct Entry {
    dir: PathBuf,
}

impl Entry {
    fn create(root: &Path) -> Result<Self, AttestError> {
        let mut n = [0u8; 8];
        getrandom::fill(&mut n).map_err(|e| AttestError::Internal(e.to_string()))?;
        let dir = root.join(format!("peerpod-{}", hex::encode(n)));
        std::fs::create_dir(&dir).map_err(|source| AttestError::Io {
            action: "cannot create the TSM report",
            path: dir.display().to_string(),
            source,
        })?;
        Ok(Self { dir })
    }

    /// Reads an attribute. configfs creates a report's attributes with its directory; an
    /// emulated provider (a user-space one, or a test double) may add them a moment later, so a
    /// missing attribute is waited for briefly.
    fn read(&self, name: &'static str) -> Result<Vec<u8>, AttestError> {
        let path = self.dir.join(name);
        let started = Instant::now();
        loop {
            match std::fs::read(&path) {
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound
                        && started.elapsed() < Duration::from_secs(1) =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                other => {
                    return other.map_err(|source| AttestError::Io {
                        action: "cannot read",
                        path: path.display().to_string(),
                        source,
                    });
                }
            }
        }
    }

    fn write(&self, name: &'static str, data: &[u8]) -> Result<(), AttestError> {
        let path = self.dir.join(name);
        std::fs::write(&path, data).map_err(|source| AttestError::Io {
            action: "cannot write",
            path: path.display().to_string(),
            source,
        })
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn provider_of(text: &[u8]) -> Option<TsmProvider> {
    match std::str::from_utf8(text).ok()?.trim() {
        "sev_guest" => Some(TsmProvider::SevGuest),
        "tdx_guest" => Some(TsmProvider::TdxGuest),
        _ => None,
    }
}

impl Tsm {
    /// The TSM provider under `root`, if there is one we support.
    pub fn probe(root: &Path) -> Option<TsmProvider> {
        if !root.is_dir() {
            return None;
        }
        let entry = Entry::create(root).ok()?;
        provider_of(&entry.read("provider").ok()?)
    }

    /// An attester for `provider` under `root`.
    pub fn new(root: impl Into<PathBuf>, provider: TsmProvider) -> Self {
        Self {
            root: root.into(),
            provider,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    async fn report_async(&self, data: [u8; 64]) -> Result<(Vec<u8>, Vec<u8>), AttestError> {
        let _g = self.lock.lock().await;
        let (root, provider) = (self.root.clone(), self.provider);
        tokio::task::spawn_blocking(move || report(&root, provider, &data))
            .await
            .map_err(|e| AttestError::Internal(format!("TSM task failed: {e}")))?
    }
}

/// One report: `(outblob, auxblob)`.
fn report(
    root: &Path,
    expected: TsmProvider,
    data: &[u8; 64],
) -> Result<(Vec<u8>, Vec<u8>), AttestError> {
    {
        let entry = Entry::create(root)?;
        let provider = entry.read("provider")?;
        if provider_of(&provider) != Some(expected) {
            return Err(AttestError::Internal(format!(
                "TSM provider is {:?}, expected {}",
                String::from_utf8_lossy(&provider).trim(),
                expected.name()
            )));
        }
        let before = generation(&entry.read("generation")?);
        entry.write("inblob", data)?;
        // A provider may take a moment to produce the report.
        let started = Instant::now();
        let out = loop {
            let out = entry.read("outblob")?;
            if !out.is_empty() || started.elapsed() > Duration::from_secs(5) {
                break out;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if out.is_empty() {
            return Err(AttestError::Timeout(
                "the TSM provider produced no report".into(),
            ));
        }
        let after = generation(&entry.read("generation")?);
        if after != before.map(|g| g + 1) {
            return Err(AttestError::Internal(format!(
                "TSM report generation went from {before:?} to {after:?}: another writer used our report"
            )));
        }
        let aux = if expected == TsmProvider::SevGuest {
            entry.read("auxblob").unwrap_or_default()
        } else {
            Vec::new()
        };
        Ok((out, aux))
    }
}

fn generation(text: &[u8]) -> Option<u64> {
    std::str::from_utf8(text).ok()?.trim().parse().ok()
}

fn pad<const N: usize>(data: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = data.len().min(N);
    out[..n].copy_from_slice(&data[..n]);
    out
}

/// The SNP certificate table of an extended report: 24-byte entries (GUID, offset, length) up to
/// an all-zero entry.
fn cert_chain(aux: &[u8]) -> Value {
    const VCEK: &str = "63da758d-e664-4564-adc5-f4b93be8accd";
    const ASK: &str = "4ab7b379-bbac-4fe4-a02f-05aef327c782";
    const ARK: &str = "c0b406a4-a803-4952-9743-3fb6014cd0ae";
    let mut out = Vec::new();
    for entry in aux.chunks_exact(24) {
        if entry.iter().all(|b| *b == 0) {
            break;
        }
        let g = &entry[..16];
        let guid = format!(
            "{:08x}-{:04x}-{:04x}-{}-{}",
            u32::from_le_bytes([g[0], g[1], g[2], g[3]]),
            u16::from_le_bytes([g[4], g[5]]),
            u16::from_le_bytes([g[6], g[7]]),
            hex::encode(&g[8..10]),
            hex::encode(&g[10..16])
        );
        let offset = u32::from_le_bytes([entry[16], entry[17], entry[18], entry[19]]) as usize;
        let len = u32::from_le_bytes([entry[20], entry[21], entry[22], entry[23]]) as usize;
        let Some(data) = aux.get(offset..offset.saturating_add(len)) else {
            continue;
        };
        let kind = match guid.as_str() {
            VCEK => "VCEK",
            ASK => "ASK",
            ARK => "ARK",
            _ => "OTHER",
        };
        out.push(json!({"cert_type": kind, "data": data}));
    }
    if out.is_empty() {
        Value::Null
    } else {
        Value::Array(out)
    }
}

fn snp_json(r: &SnpReport) -> Value {
    let tcb = |t: peerpod_tee::snp::TcbVersion| json!({"bootloader": t.bootloader, "tee": t.tee, "snp": t.snp, "microcode": t.microcode});
    json!({
        "version": r.version,
        "guest_svn": r.guest_svn,
        "policy": r.policy,
        "family_id": r.family_id,
        "image_id": r.image_id,
        "vmpl": r.vmpl,
        "sig_algo": r.signature_algo,
        "current_tcb": tcb(r.current_tcb),
        "plat_info": r.platform_info,
        "key_info": r.key_info,
        "report_data": r.report_data.to_vec(),
        "measurement": r.measurement.to_vec(),
        "host_data": r.host_data,
        "id_key_digest": r.id_key_digest.to_vec(),
        "author_key_digest": r.author_key_digest.to_vec(),
        "report_id": r.report_id,
        "report_id_ma": r.report_id_ma,
        "reported_tcb": tcb(r.reported_tcb),
        // Version 3+ reports carry the CPUID fields a verifier chooses the AMD chain by;
        // Trustee refuses a report without them.
        "cpuid_fam_id": r.cpuid_family_model().map(|(family, _)| family),
        "cpuid_mod_id": r.cpuid_family_model().map(|(_, model)| model),
        "cpuid_step": (r.version >= 3).then_some(r.cpuid[2]),
        "chip_id": r.chip_id.to_vec(),
        "committed_tcb": tcb(r.committed_tcb),
        "current": r.current_version,
        "committed": r.committed_version,
        "launch_tcb": tcb(r.launch_tcb),
        "signature": {"r": r.signature_r.to_vec(), "s": r.signature_s.to_vec()},
    })
}

#[async_trait]
impl Attester for Tsm {
    fn tee(&self) -> &'static str {
        match self.provider {
            TsmProvider::SevGuest => "snp",
            TsmProvider::TdxGuest => "tdx",
        }
    }

    async fn evidence(&self, report_data: &[u8]) -> Result<Value, AttestError> {
        if report_data.len() > 64 {
            return Err(AttestError::ReportDataSize {
                len: report_data.len(),
                max: 64,
            });
        }
        let (out, aux) = self.report_async(pad::<64>(report_data)).await?;
        match self.provider {
            TsmProvider::TdxGuest => {
                Ok(json!({"cc_eventlog": null, "quote": STANDARD.encode(out)}))
            }
            TsmProvider::SevGuest => {
                let report = SnpReport::parse(&out).map_err(|source| AttestError::Format {
                    what: "SNP report",
                    source,
                })?;
                Ok(json!({"attestation_report": snp_json(&report), "cert_chain": cert_chain(&aux)}))
            }
        }
    }

    async fn bind_init_data(&self, digest: &[u8]) -> Result<(), AttestError> {
        let (out, _) = self.report_async([0u8; 64]).await?;
        match self.provider {
            TsmProvider::SevGuest => {
                let report = SnpReport::parse(&out).map_err(|source| AttestError::Format {
                    what: "SNP report",
                    source,
                })?;
                let want = pad::<32>(digest);
                if report.host_data != want {
                    return Err(AttestError::InitDataMismatch(format!(
                        "HOSTDATA is {} but the initdata digest gives {}",
                        hex::encode(report.host_data),
                        hex::encode(want)
                    )));
                }
            }
            TsmProvider::TdxGuest => {
                let quote = TdQuote::parse(&out).map_err(|source| AttestError::Format {
                    what: "TD quote",
                    source,
                })?;
                let want = pad::<48>(digest);
                if quote.body.mr_config_id != want {
                    return Err(AttestError::InitDataMismatch(format!(
                        "MRCONFIGID is {} but the initdata digest gives {}",
                        hex::encode(quote.body.mr_config_id),
                        hex::encode(want)
                    )));
                }
            }
        }
        Ok(())
    }

    async fn extend(&self, _index: u64, _digest: &[u8]) -> Result<Measured, AttestError> {
        // RTMR extension goes through /dev/tdx_guest ioctls, not configfs-tsm: not built.
        Ok(Measured::NotSupported)
    }

    async fn register(&self, _index: u64) -> Result<Vec<u8>, AttestError> {
        Err(AttestError::NotSupported(
            "reading a runtime measurement register",
        ))
    }
}
