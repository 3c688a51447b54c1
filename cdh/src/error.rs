//! One error type for every operation, with the ttrpc status each maps to.

/// Why an operation failed. Each message names the cause and, where there is one, the fix; none
/// carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum CdhError {
    /// The request is malformed (a bad URI, a sealed secret that does not parse, bad options).
    #[error("{0}")]
    InvalidArgument(String),
    /// The KBS or the offline store has no such resource.
    #[error("{0}")]
    NotFound(String),
    /// The KBS or the key's owner refused (policy, token, signature).
    #[error("{0}")]
    PermissionDenied(String),
    /// The attestation agent or the KBS could not be reached in time.
    #[error("{0}")]
    Unavailable(String),
    /// The operation is not supported here.
    #[error("{0}")]
    Unimplemented(String),
    /// Anything else (a local tool failed, an I/O error).
    #[error("{0}")]
    Internal(String),
}

impl CdhError {
    /// The ttrpc status code.
    pub fn code(&self) -> ttrpc::Code {
        match self {
            CdhError::InvalidArgument(_) => ttrpc::Code::INVALID_ARGUMENT,
            CdhError::NotFound(_) => ttrpc::Code::NOT_FOUND,
            CdhError::PermissionDenied(_) => ttrpc::Code::PERMISSION_DENIED,
            CdhError::Unavailable(_) => ttrpc::Code::UNAVAILABLE,
            CdhError::Unimplemented(_) => ttrpc::Code::UNIMPLEMENTED,
            CdhError::Internal(_) => ttrpc::Code::INTERNAL,
        }
    }

    /// The same error with `context: ` in front of its message.
    pub fn context(self, context: &str) -> Self {
        let wrap = |m: String| format!("{context}: {m}");
        match self {
            CdhError::InvalidArgument(m) => CdhError::InvalidArgument(wrap(m)),
            CdhError::NotFound(m) => CdhError::NotFound(wrap(m)),
            CdhError::PermissionDenied(m) => CdhError::PermissionDenied(wrap(m)),
            CdhError::Unavailable(m) => CdhError::Unavailable(wrap(m)),
            CdhError::Unimplemented(m) => CdhError::Unimplemented(wrap(m)),
            CdhError::Internal(m) => CdhError::Internal(wrap(m)),
        }
    }
}
