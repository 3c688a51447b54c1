//! Calls to a peer (the attestation agent, or the CDH for the REST endpoint) over the shared
//! reconnecting ttrpc [`Connection`], with the peer's failures as [`CdhError`]s.

use peerpod_protocols::client::{CallError, Connection};

use crate::error::CdhError;

/// Runs `f` on `conn`. A status from the peer keeps its kind (FAILED_PRECONDITION becomes
/// INVALID_ARGUMENT; codes we do not answer become UNAVAILABLE); the peer's INTERNAL becomes
/// `internal`; a peer that cannot be reached is unavailable.
pub async fn call<T, F, Fut>(
    conn: &Connection,
    method: &'static str,
    internal: ttrpc::Code,
    f: F,
) -> Result<T, CdhError>
where
    F: Fn(ttrpc::r#async::Client, ttrpc::context::Context) -> Fut,
    Fut: std::future::Future<Output = ttrpc::Result<T>>,
{
    conn.call(f).await.map_err(|e| match e {
        CallError::Status(s) => {
            use ttrpc::Code;
            let code = match s.code() {
                Code::INVALID_ARGUMENT | Code::FAILED_PRECONDITION => Code::INVALID_ARGUMENT,
                c @ (Code::NOT_FOUND | Code::PERMISSION_DENIED | Code::UNIMPLEMENTED) => c,
                Code::INTERNAL => internal,
                _ => Code::UNAVAILABLE,
            };
            CdhError::Peer {
                peer: conn.peer(),
                method,
                code,
                message: s.message().to_string(),
            }
        }
        source => CdhError::Unreachable { method, source },
    })
}
