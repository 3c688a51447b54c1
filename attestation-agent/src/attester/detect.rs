//! Which TEE are we in? Upstream's order: `tdx`, then the Azure vTPMs (`az-tdx-vtpm`,
//! `az-snp-vtpm`, told apart by the HCL report in the vTPM), then `snp`. When nothing is found
//! it is an error, unless the configuration allows the `sample` TEE (`[peerpod] allow_sample`),
//! which is then used loudly. A vTPM that exists but fails is an error, never "another TEE":
//! falling through to the sample TEE would attest without binding the initdata.

use std::path::PathBuf;
use std::sync::Arc;

use super::{AttestError, Attester, AzureOptions, AzureVtpm, Sample, Tsm, TsmProvider};

/// Where to look.
#[derive(Debug, Clone)]
pub struct DetectOptions {
    /// The vTPM and IMDS for Azure CVMs.
    pub azure: AzureOptions,
    /// The configfs-tsm report directory.
    pub tsm_root: PathBuf,
    /// Whether to fall back to the sample TEE when no TEE is found (default: no).
    pub allow_sample: bool,
}

impl Default for DetectOptions {
    fn default() -> Self {
        Self {
            azure: AzureOptions::default(),
            tsm_root: PathBuf::from(super::tsm::TSM_ROOT),
            allow_sample: false,
        }
    }
}

/// Detects the TEE and returns its attester.
pub fn detect(options: &DetectOptions) -> Result<Arc<dyn Attester>, AttestError> {
    let tsm = Tsm::probe(&options.tsm_root);
    if tsm == Some(TsmProvider::TdxGuest) {
        tracing::info!("TEE: tdx (configfs-tsm)");
        return Ok(Arc::new(Tsm::new(&options.tsm_root, TsmProvider::TdxGuest)));
    }
    if let Some(flavour) = AzureVtpm::probe(&options.azure.tpm)? {
        let attester = AzureVtpm::new(flavour, options.azure.clone())?;
        tracing::info!(tee = attester.tee(), tpm = %options.azure.tpm, "TEE: Azure confidential VM");
        return Ok(Arc::new(attester));
    }
    if tsm == Some(TsmProvider::SevGuest) {
        tracing::info!("TEE: snp (configfs-tsm)");
        return Ok(Arc::new(Tsm::new(&options.tsm_root, TsmProvider::SevGuest)));
    }
    if !options.allow_sample {
        return Err(AttestError::NoTee {
            tpm: options.azure.tpm.clone(),
            tsm_root: options.tsm_root.display().to_string(),
        });
    }
    tracing::warn!(
        "NO TEE FOUND: using the sample TEE ([peerpod] allow_sample = true), whose evidence \
         proves nothing. Expected a TEE? Check /dev/tpmrm0 (Azure CVMs) or \
         /sys/kernel/config/tsm/report (bare SEV-SNP/TDX)."
    );
    Ok(Arc::new(Sample::default()))
}
