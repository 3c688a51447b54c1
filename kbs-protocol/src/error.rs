//! Errors of the protocol layer.

/// Why a protocol operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A message is not valid JSON of the expected shape.
    #[error("invalid {what}")]
    Json {
        /// The message.
        what: &'static str,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// A field holds a value the protocol does not allow.
    #[error("invalid {what}: {detail}")]
    Invalid {
        /// The field.
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The key or algorithm is one the protocol does not support.
    #[error("unsupported {what}: {value}")]
    Unsupported {
        /// What kind of thing.
        what: &'static str,
        /// The value given.
        value: String,
    },
    /// Decryption failed: wrong key, or the ciphertext was altered.
    #[error("cannot decrypt the resource: {0}")]
    Decrypt(&'static str),
    /// A cryptographic operation failed unexpectedly.
    #[error("{0} failed")]
    Crypto(&'static str),
    /// The system's random number generator failed.
    #[error("no randomness available: {0}")]
    Random(String),
}

impl Error {
    pub(crate) fn invalid(what: &'static str, detail: impl Into<String>) -> Self {
        Self::Invalid {
            what,
            detail: detail.into(),
        }
    }
}
