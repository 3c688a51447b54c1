//! The one ttrpc status builder of the attestation agent and the CDH: each crate picks the code
//! for its own error type; this flattens the error, logs the failure and builds the status.

/// A ttrpc error for `method` failing with `error`: code `code`, message `<method>: <error
/// chain>`. The failure is logged at WARN with the same message, so the error types must carry
/// no secret (they are built so that none can).
pub fn status(method: &str, code: ttrpc::Code, error: &dyn std::error::Error) -> ttrpc::Error {
    let message = format!("{method}: {}", crate::error_chain(error));
    tracing::warn!(method, code = ?code, error = %message, "request failed");
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message))
}
