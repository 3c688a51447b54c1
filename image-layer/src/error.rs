//! The one error type of the crate, grouped by who has to act: the layer's author (malformed,
//! refused, over a limit), the caller (invalid digest, not installed, misuse), the machine (I/O).

use std::io;

/// Why unpacking, installing, mounting or collecting a layer failed.
///
/// Names and paths that come from a layer are quoted with non-printable bytes escaped and
/// clipped, so an error (or a log line made of one) cannot be forged by the archive.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayerError {
    /// The stream could not be read or is not a well-formed tar archive (this includes the
    /// error a digest-verifying reader returns on a mismatch: it is the source).
    #[error("failed to read the layer archive at entry {entry}")]
    Archive {
        /// Index of the tar header being read (0-based, extension headers counted).
        entry: u64,
        /// What the reader or the tar parser reported.
        #[source]
        source: io::Error,
    },
    /// The archive is well formed tar but breaks a rule of OCI layers.
    #[error("malformed layer archive at entry {entry}: {reason}")]
    Malformed {
        /// Index of the tar header.
        entry: u64,
        /// What is wrong.
        reason: String,
    },
    /// An entry would write outside the layer, or is of a kind this unpacker refuses.
    #[error("layer entry {path} refused: {reason}")]
    Refused {
        /// The entry's name, quoted.
        path: String,
        /// Why.
        reason: String,
    },
    /// The layer is bigger than the configured limits allow.
    #[error(
        "layer exceeds the limit on {what} ({limit}): raise UnpackOptions::{field} if the image is legitimate"
    )]
    Limit {
        /// What was counted.
        what: &'static str,
        /// The limit in force.
        limit: u64,
        /// The option that sets it.
        field: &'static str,
    },
    /// The [`ChargeHook`](crate::ChargeHook) refused a member: what the layer costs its
    /// filesystem is over the caller's budget.
    #[error("layer entry {path} refused: {reason}")]
    Charge {
        /// The member's name.
        path: String,
        /// The hook's reason.
        reason: String,
    },
    /// A filesystem operation failed.
    #[error("failed to {op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what (quoted when it comes from the layer).
        path: String,
        /// The operating system's answer.
        #[source]
        source: io::Error,
    },
    /// A diff ID is not `sha256:<64 lowercase hex>` or `sha512:<128 lowercase hex>`.
    #[error(
        "invalid layer diff ID {0}: expected sha256:<64 lowercase hex digits> or sha512:<128 lowercase hex digits>"
    )]
    InvalidDiffId(String),
    /// `mount_rootfs` was asked for a layer the store does not hold.
    #[error("layer {0} is not in the layer store: install it before mounting")]
    NotInstalled(String),
    /// A bundle's root filesystem is already mounted by this store.
    #[error("the root filesystem of bundle {0} is already mounted: unmount it first")]
    AlreadyMounted(String),
    /// The caller passed something the store cannot use.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl LayerError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<String>,
        source: impl Into<io::Error>,
    ) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source: source.into(),
        }
    }

    pub(crate) fn refused(path: &[u8], reason: impl Into<String>) -> Self {
        Self::Refused {
            path: quote(path),
            reason: reason.into(),
        }
    }
}

/// At most this many bytes of a layer-supplied name go into an error.
const QUOTE_MAX: usize = 200;

/// `bytes` as a double-quoted string with every byte outside printable ASCII escaped, clipped
/// to [`QUOTE_MAX`] bytes (marked with `...`).
pub(crate) fn quote(bytes: &[u8]) -> String {
    let clipped = &bytes[..bytes.len().min(QUOTE_MAX)];
    let mut out = String::with_capacity(clipped.len() + 8);
    out.push('"');
    out.push_str(&clipped.escape_ascii().to_string());
    if bytes.len() > QUOTE_MAX {
        out.push_str("...");
    }
    out.push('"');
    out
}

/// A path of ours (not from a layer) for an error message.
pub(crate) fn show(path: &std::path::Path) -> String {
    quote(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_escapes_control_bytes_and_clips() {
        assert_eq!(quote(b"a\nb\x1b[31m\""), "\"a\\nb\\x1b[31m\\\"\"");
        let long = vec![b'x'; 500];
        let q = quote(&long);
        assert!(q.ends_with("...\""));
        assert_eq!(q.len(), QUOTE_MAX + 5);
    }
}
