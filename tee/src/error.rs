//! Errors of the evidence parsers.

/// Why a piece of evidence could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input is shorter than the format needs.
    #[error("{what} is truncated: needs {expected} bytes, got {got}")]
    Truncated {
        /// The structure being read.
        what: &'static str,
        /// Bytes needed.
        expected: usize,
        /// Bytes available.
        got: usize,
    },
    /// A field holds a value the format does not allow.
    #[error("{what}: {detail}")]
    Invalid {
        /// The field.
        what: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// A JSON document could not be parsed.
    #[error("{what} is not valid JSON of the expected shape")]
    Json {
        /// The document.
        what: &'static str,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    pub(crate) fn invalid(what: &'static str, detail: impl Into<String>) -> Self {
        Self::Invalid {
            what,
            detail: detail.into(),
        }
    }
}
