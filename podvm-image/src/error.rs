//! The harness's errors: each names what failed and, where there is one, the fix.

use std::path::PathBuf;

/// What can go wrong while building inputs for, booting or driving a pod VM.
#[derive(Debug, thiserror::Error)]
pub enum PodvmError {
    /// A host tool is not installed.
    #[error("{tool} is missing on the host: apt-get install {package} (or run `make deps`)")]
    MissingTool {
        /// The command.
        tool: &'static str,
        /// The Debian package that has it.
        package: &'static str,
    },
    /// The image has not been built.
    #[error("the pod VM image is not built ({0} is missing): run `make podvm`")]
    NotBuilt(PathBuf),
    /// The image's description is malformed.
    #[error("{path}: {reason}")]
    BadImage {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A command ran and failed.
    #[error("{command} failed: {output}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status and stderr.
        output: String,
    },
    /// The simulated Azure CVM (vTPM) did not start.
    #[error("the simulated Azure CVM did not start: {0}")]
    Cvm(#[from] peerpod_tests::cvm::CvmError),
    /// Test certificates could not be made.
    #[error("test certificates: {0}")]
    Certificates(String),
    /// TLS set-up or handshake failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// A ttrpc call failed.
    #[error("ttrpc: {0}")]
    Ttrpc(#[from] ttrpc::Error),
    /// Something did not happen in time.
    #[error("timed out after {secs} s waiting for {what}; console tail:\n{tail}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        secs: u64,
        /// The console's last lines.
        tail: String,
    },
    /// The VM stopped.
    #[error("QEMU exited ({status}) while waiting for {what}; console tail:\n{tail}")]
    Exited {
        /// QEMU's exit status.
        status: String,
        /// What was awaited.
        what: String,
        /// The console's last lines.
        tail: String,
    },
}

impl PodvmError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}
