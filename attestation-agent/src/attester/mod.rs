//! Attesters: one per TEE, behind one trait.
//!
//! An attester produces evidence binding report data, binds an initdata digest to the TEE, and
//! extends a runtime measurement register. [`detect`] picks the attester for the machine we run
//! on, in upstream's order.

mod azure;
mod detect;
mod sample;
mod tsm;

use async_trait::async_trait;
use serde_json::Value;

pub use azure::{AzureFlavour, AzureOptions, AzureVtpm};
pub use detect::{DetectOptions, detect};
pub use sample::Sample;
pub use tsm::{Tsm, TsmProvider};

/// Why an attester failed.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// A TPM command failed.
    #[error("vTPM: {action}")]
    Tpm {
        /// What we were doing.
        action: &'static str,
        /// The TPM layer's error.
        #[source]
        source: peerpod_tpm::Error,
    },
    /// The TEE's evidence is malformed.
    #[error("malformed {what}")]
    Format {
        /// The structure.
        what: &'static str,
        /// Why.
        #[source]
        source: peerpod_tee::Error,
    },
    /// The instance metadata service failed.
    #[error("Azure IMDS {what} failed: {detail}")]
    Imds {
        /// The endpoint.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// Something took too long.
    #[error("{0}")]
    Timeout(String),
    /// The report data does not fit the TEE.
    #[error("report data is {len} bytes; this TEE binds at most {max}")]
    ReportDataSize {
        /// Given length.
        len: usize,
        /// Maximum.
        max: usize,
    },
    /// The TEE was started with other initdata than the one given.
    #[error("initdata mismatch: {0}")]
    InitDataMismatch(String),
    /// The operation does not exist for this TEE.
    #[error("{0} is not supported by this TEE")]
    NotSupported(&'static str),
    /// A file of the TEE interface could not be used.
    #[error("{action} {path}")]
    Io {
        /// What we were doing.
        action: &'static str,
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No TEE was found and the sample TEE is not allowed.
    #[error(
        "no TEE found (no Azure vTPM HCL report at {tpm}, no configfs-tsm provider in \
         {tsm_root}); to run outside a TEE with the sample TEE, whose evidence proves nothing, \
         set [peerpod] allow_sample = true in aa.toml"
    )]
    NoTee {
        /// The TPM transport probed.
        tpm: String,
        /// The configfs-tsm directory probed.
        tsm_root: String,
    },
    /// An internal task failed.
    #[error("internal error: {0}")]
    Internal(String),
}

impl AttestError {
    pub(crate) fn tpm(action: &'static str) -> impl FnOnce(peerpod_tpm::Error) -> Self {
        move |source| AttestError::Tpm { action, source }
    }
}

/// The outcome of a runtime measurement request, as the API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measured {
    /// The register was extended.
    Extended,
    /// This TEE has no runtime measurement register.
    NotSupported,
}

/// A TEE's attester.
#[async_trait]
pub trait Attester: Send + Sync {
    /// The TEE's name as the KBS protocol spells it (`az-snp-vtpm`, `sample`, ...).
    fn tee(&self) -> &'static str;

    /// Evidence binding `report_data` (the KBS runtime-data digest, or a caller's data).
    async fn evidence(&self, report_data: &[u8]) -> Result<Value, AttestError>;

    /// Binds an initdata digest to the TEE, or checks that the TEE was launched with it. Binding
    /// the same digest twice is not an error; binding a different one is.
    async fn bind_init_data(&self, digest: &[u8]) -> Result<(), AttestError>;

    /// Extends runtime measurement register `index` with `digest` (SHA-256 on a vTPM).
    async fn extend(&self, index: u64, digest: &[u8]) -> Result<Measured, AttestError>;

    /// The current value of runtime measurement register `index`.
    async fn register(&self, index: u64) -> Result<Vec<u8>, AttestError>;
}

/// The default configfs-tsm report directory.
pub fn tsm_root() -> &'static str {
    tsm::TSM_ROOT
}
