//! Errors of the simulated CVM.

use std::path::PathBuf;

/// Why the simulated CVM could not be set up or run.
#[derive(Debug, thiserror::Error)]
pub enum CvmError {
    /// A host tool is missing.
    #[error("{tool} is not installed: install the Debian package {package} (make deps does)")]
    MissingTool {
        /// The executable.
        tool: &'static str,
        /// The Debian package that provides it.
        package: &'static str,
    },
    /// A process could not be started.
    #[error("cannot start {what}")]
    Spawn {
        /// The process.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Something did not become ready in time.
    #[error("{what} did not become ready within {seconds} s{hint}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long we waited.
        seconds: u64,
        /// Where to look.
        hint: String,
    },
    /// File or socket I/O failed.
    #[error("{action} {}", path.display())]
    Io {
        /// What we were doing.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A TPM command failed.
    #[error("vTPM: {0}")]
    Tpm(#[from] peerpod_tpm::Error),
    /// Certificates could not be made.
    #[error("test certificates: {0}")]
    Cert(#[from] super::certs::CertError),
    /// The IMDS server could not start.
    #[error("simulated IMDS: {0}")]
    Imds(String),
}

impl CvmError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| CvmError::Io {
            action,
            path,
            source,
        }
    }
}
