//! The KBS's errors, shaped like Trustee's: `{"type": ".../errors/<Variant>", "detail"}`, with
//! the statuses of the Trustee commit the docs name ([`TrusteeErrors::Pinned`], 33e1bc57): 404
//! for unknown paths and plugins, 401 for everything else — a policy denial (`PolicyDeny`) and
//! a missing resource (`PluginInternalError`) included. [`TrusteeErrors::Newer`] answers 403
//! for `PolicyDeny`, as Trustee 079fcf84 does. Our `detail` texts add the cause, so a failing
//! client learns what to fix.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use peerpod_kbs_protocol::messages::ErrorInformation;

/// A KBS error.
#[derive(Debug, thiserror::Error)]
pub enum KbsError {
    /// `/auth` failed.
    #[error("Attestation error: RCAR handshake Auth failed: {0}")]
    Auth(String),
    /// `/attest` failed.
    #[error("Attestation error: RCAR handshake Attest failed: {0}")]
    Attest(String),
    /// No attested session and no bearer token.
    #[error("Attestation Token not found")]
    TokenNotFound,
    /// The token does not verify.
    #[error("Token Verifier error: {0}")]
    TokenVerifier(String),
    /// The resource policy said no.
    #[error("Access denied by policy: {0}")]
    PolicyDeny(String),
    /// Unknown plugin (first path segment).
    #[error("Plugin {0} not found")]
    PluginNotFound(String),
    /// A path the KBS does not serve.
    #[error("Invalid request path: {0}")]
    InvalidRequestPath(String),
    /// The resource does not exist (Trustee: the resource plugin fails).
    #[error("Plugin internal error: resource not found: {0}")]
    ResourceNotFound(String),
    /// The resource could not be encrypted to the TEE key.
    #[error("JWE failed: {0}")]
    Jwe(String),
    /// Admin authentication failed.
    #[error("Admin auth error: {0}")]
    AdminAuth(String),
    /// An admin request was malformed.
    #[error("{0}")]
    AdminRequest(String),
}

impl KbsError {
    fn variant(&self) -> &'static str {
        match self {
            KbsError::Auth(_) | KbsError::Attest(_) => "AttestationError",
            KbsError::TokenNotFound => "TokenNotFound",
            KbsError::TokenVerifier(_) => "TokenVerifierError",
            KbsError::PolicyDeny(_) => "PolicyDeny",
            KbsError::PluginNotFound(_) => "PluginNotFound",
            KbsError::InvalidRequestPath(_) => "InvalidRequestPath",
            KbsError::ResourceNotFound(_) => "PluginInternalError",
            KbsError::Jwe(_) => "JweError",
            KbsError::AdminAuth(_) => "AdminAuth",
            KbsError::AdminRequest(_) => "PolicyEngine",
        }
    }

    fn status(&self, errors: TrusteeErrors) -> StatusCode {
        match self {
            KbsError::PluginNotFound(_) | KbsError::InvalidRequestPath(_) => StatusCode::NOT_FOUND,
            KbsError::PolicyDeny(_) if errors == TrusteeErrors::Newer => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// The answer, with the statuses of `errors`.
    pub fn respond(self, errors: TrusteeErrors) -> Response {
        let status = self.status(errors);
        let body = ErrorInformation::new(self.variant(), self.to_string());
        (status, Json(body)).into_response()
    }
}

/// Which Trustee's status codes the KBS answers with (the `type`s are the same in both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrusteeErrors {
    /// Trustee 33e1bc57 (`kbs/src/error.rs`): 404 for `InvalidRequestPath` and
    /// `PluginNotFound`, 401 for every other error.
    #[default]
    Pinned,
    /// Trustee 079fcf84: as `Pinned`, but 403 for `PolicyDeny`.
    Newer,
}

impl IntoResponse for KbsError {
    fn into_response(self) -> Response {
        self.respond(TrusteeErrors::Pinned)
    }
}
