//! Calls to a peer (the attestation agent, or the CDH for the REST endpoint) over the shared
//! reconnecting ttrpc [`Connection`], with the peer's failures as [`CdhError`]s.

use peerpod_protocols::client::{CallError, Connection};

use crate::error::CdhError;

/// Runs `f` on `conn`. A status from the peer keeps its kind; the peer's INTERNAL becomes
/// `internal`'s kind; a peer that cannot be reached is unavailable.
pub async fn call<T, F, Fut>(
    conn: &Connection,
    what: &str,
    internal: fn(String) -> CdhError,
    f: F,
) -> Result<T, CdhError>
where
    F: Fn(ttrpc::r#async::Client, ttrpc::context::Context) -> Fut,
    Fut: std::future::Future<Output = ttrpc::Result<T>>,
{
    conn.call(f).await.map_err(|e| match e {
        CallError::Status(s) => {
            let message = format!("{}'s {what} failed: {}", conn.peer(), s.message());
            match s.code() {
                ttrpc::Code::INVALID_ARGUMENT | ttrpc::Code::FAILED_PRECONDITION => {
                    CdhError::InvalidArgument(message)
                }
                ttrpc::Code::NOT_FOUND => CdhError::NotFound(message),
                ttrpc::Code::PERMISSION_DENIED => CdhError::PermissionDenied(message),
                ttrpc::Code::UNIMPLEMENTED => CdhError::Unimplemented(message),
                ttrpc::Code::INTERNAL => internal(message),
                _ => CdhError::Unavailable(message),
            }
        }
        CallError::Unreachable(m) => CdhError::Unavailable(m),
        CallError::Transport(m) => CdhError::Unavailable(format!("{what} failed: {m}")),
    })
}
