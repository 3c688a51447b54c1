//! A hand-made Azure vTPM attester for tests: the minimum a guest does to produce `az-snp-vtpm`
//! or `az-tdx-vtpm` evidence, written straight on the TPM command layer so the test world can be
//! checked on its own. (The product's attester is the attestation agent.)

use std::time::{Duration, Instant};

use peerpod_tee::evidence::{AzSnpEvidence, AzTdxEvidence, TpmQuote, VERSION};
use peerpod_tee::hcl::HclReport;
use peerpod_tpm::types::{NvPublic, PcrSelection, alg, handle, nv_attr};
use peerpod_tpm::{AZURE_AK_HANDLE, AZURE_HCL_REPORT_INDEX, AZURE_REPORT_DATA_INDEX, PcrBank, Tpm};

use super::error::CvmError;

/// Writes up to 64 bytes of report data to `0x01400002`, defining the index when needed.
pub fn write_report_data(tpm: &mut Tpm, data: &[u8]) -> Result<(), CvmError> {
    let size = u16::try_from(data.len()).unwrap_or(u16::MAX).min(64);
    match tpm.nv_read_public(AZURE_REPORT_DATA_INDEX) {
        Ok((public, _)) if public.data_size == size => {}
        Ok(_) => {
            tpm.nv_undefine_space(handle::OWNER, AZURE_REPORT_DATA_INDEX)?;
            define_report_data(tpm, size)?;
        }
        Err(_) => define_report_data(tpm, size)?,
    }
    tpm.nv_write(AZURE_REPORT_DATA_INDEX, &data[..usize::from(size)], 0)?;
    Ok(())
}

fn define_report_data(tpm: &mut Tpm, size: u16) -> Result<(), CvmError> {
    tpm.nv_define_space(
        handle::OWNER,
        &NvPublic {
            index: AZURE_REPORT_DATA_INDEX,
            name_alg: alg::SHA256,
            attributes: nv_attr::OWNERWRITE | nv_attr::OWNERREAD | nv_attr::PPREAD,
            auth_policy: Vec::new(),
            data_size: size,
        },
    )?;
    Ok(())
}

/// Reads the HCL report once.
pub fn read_hcl_report(tpm: &mut Tpm) -> Result<Vec<u8>, CvmError> {
    Ok(tpm.nv_read_all(AZURE_HCL_REPORT_INDEX)?)
}

/// Reads the HCL report until its `user-data` starts with `report_data`, or `timeout` passes.
pub fn read_fresh_hcl_report(
    tpm: &mut Tpm,
    report_data: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, CvmError> {
    let deadline = Instant::now() + timeout;
    loop {
        let bytes = read_hcl_report(tpm)?;
        let fresh = HclReport::parse(&bytes)
            .ok()
            .and_then(|r| r.claims().ok())
            .and_then(|c| c.user_data_bytes().ok().flatten())
            .is_some_and(|u| u.starts_with(report_data));
        if fresh {
            return Ok(bytes);
        }
        if Instant::now() > deadline {
            return Err(CvmError::Timeout {
                what: "an HCL report carrying our report data".into(),
                seconds: timeout.as_secs(),
                hint: String::new(),
            });
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Quotes all 24 SHA-256 PCRs with the attestation key and reads them.
pub fn quote(tpm: &mut Tpm, nonce: &[u8]) -> Result<TpmQuote, CvmError> {
    let q = tpm.quote(AZURE_AK_HANDLE, nonce, &PcrSelection::all(alg::SHA256))?;
    let pcrs = tpm.pcr_read(PcrBank::Sha256, &(0..24).collect::<Vec<u8>>())?;
    Ok(TpmQuote {
        signature: q.signature.signature,
        message: q.message,
        pcrs,
    })
}

/// Extends PCR 8 with an initdata digest (its first 32 bytes), as the guest does at boot.
pub fn extend_initdata(tpm: &mut Tpm, digest: &[u8]) -> Result<(), CvmError> {
    let mut d = [0u8; 32];
    let n = digest.len().min(32);
    d[..n].copy_from_slice(&digest[..n]);
    tpm.pcr_extend(8, PcrBank::Sha256, &d)?;
    Ok(())
}

/// `az-snp-vtpm` evidence from parts.
pub fn snp_evidence(tpm_quote: TpmQuote, hcl_report: Vec<u8>, vcek_der: Vec<u8>) -> AzSnpEvidence {
    AzSnpEvidence {
        version: VERSION,
        tpm_quote,
        hcl_report,
        vcek: vcek_der,
    }
}

/// `az-tdx-vtpm` evidence from parts.
pub fn tdx_evidence(tpm_quote: TpmQuote, hcl_report: Vec<u8>, td_quote: Vec<u8>) -> AzTdxEvidence {
    AzTdxEvidence {
        version: VERSION,
        tpm_quote,
        hcl_report,
        td_quote,
    }
}

/// Fetches the VCEK (DER) from IMDS, as an SNP attester does.
pub async fn fetch_vcek(imds_url: &str) -> Result<Vec<u8>, CvmError> {
    use der::{DecodePem, Encode};
    let body: serde_json::Value = crate::http::client()
        .get(format!("{imds_url}/metadata/THIM/amd/certification"))
        .header("Metadata", "true")
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| CvmError::Imds(format!("VCEK request failed: {e}")))?
        .json()
        .await
        .map_err(|e| CvmError::Imds(format!("VCEK response: {e}")))?;
    let pem = body["vcekCert"]
        .as_str()
        .ok_or_else(|| CvmError::Imds("no vcekCert in the response".into()))?;
    let cert = x509_cert::Certificate::from_pem(pem.as_bytes())
        .map_err(|e| CvmError::Imds(format!("vcekCert: {e}")))?;
    cert.to_der()
        .map_err(|e| CvmError::Imds(format!("vcekCert: {e}")))
}

/// Asks IMDS to quote a TD report, as a TDX attester does.
pub async fn fetch_td_quote(imds_url: &str, td_report: &[u8]) -> Result<Vec<u8>, CvmError> {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let body: serde_json::Value = crate::http::client()
        .post(format!("{imds_url}/acc/tdquote"))
        .json(&serde_json::json!({"report": URL_SAFE_NO_PAD.encode(td_report)}))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| CvmError::Imds(format!("TD quote request failed: {e}")))?
        .json()
        .await
        .map_err(|e| CvmError::Imds(format!("TD quote response: {e}")))?;
    let quote = body["quote"]
        .as_str()
        .ok_or_else(|| CvmError::Imds("no quote in the response".into()))?;
    peerpod_tee::evidence::decode_b64url(quote).map_err(|e| CvmError::Imds(format!("quote: {e}")))
}
