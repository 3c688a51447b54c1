//! Serving the API on a Unix socket until told to stop.

use std::future::Future;
use std::sync::Arc;

use peerpod_protocols::aa::attestation_agent_ttrpc;

use crate::api::AttestationAgent;
use crate::rpc::AaService;

/// The socket upstream's agent listens on, and its callers dial.
pub const DEFAULT_SOCKET: &str =
    "unix:///run/confidential-containers/attestation-agent/attestation-agent.sock";

pub use peerpod_protocols::socket::ServeError;

/// Serves `aa` on `addr` until `shutdown` completes, then removes the socket.
pub async fn serve(
    addr: &str,
    aa: Arc<AttestationAgent>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let service =
        attestation_agent_ttrpc::create_attestation_agent_service(Arc::new(AaService::new(aa)));
    peerpod_protocols::socket::serve_unix("attestation agent", addr, vec![service], shutdown).await
}
