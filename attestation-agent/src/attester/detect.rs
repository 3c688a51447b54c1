//! Which TEE are we in? Upstream's order: `tdx`, then the Azure vTPMs (`az-tdx-vtpm`,
//! `az-snp-vtpm`, told apart by the HCL report in the vTPM), then `snp`; `sample` when nothing is
//! found, loudly — or an error when the configuration forbids it.

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
    /// Whether to fall back to the sample TEE when no TEE is found.
    pub allow_sample: bool,
}

impl Default for DetectOptions {
    fn default() -> Self {
        Self {
            azure: AzureOptions::default(),
            tsm_root: PathBuf::from(super::tsm::TSM_ROOT),
            allow_sample: true,
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
        return Err(AttestError::NotSupported(
            "running outside a TEE (no configfs-tsm provider, no Azure vTPM HCL report) while the \
             configuration forbids the sample TEE;",
        ));
    }
    tracing::warn!(
        "NO TEE FOUND: using the sample TEE, whose evidence proves nothing. Expected a TEE? Check \
         /dev/tpmrm0 (Azure CVMs) or /sys/kernel/config/tsm/report (bare SEV-SNP/TDX); set \
         allow_sample = false in aa.toml to make this an error."
    );
    Ok(Arc::new(Sample::default()))
}
