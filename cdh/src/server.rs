//! Serving the services on the CDH's Unix socket until told to stop.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::hub::Hub;
use crate::rpc::Services;

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address is not `unix://<absolute path>`.
    #[error("{0:?} is not unix:///absolute/path")]
    Address(String),
    /// The socket's directory could not be prepared.
    #[error("cannot prepare the socket {0}")]
    Socket(String, #[source] std::io::Error),
    /// ttrpc failed.
    #[error("ttrpc server on {0}")]
    Ttrpc(String, #[source] ttrpc::Error),
}

/// Serves `hub` on `addr` until `shutdown` completes, then removes the socket.
pub async fn serve(
    addr: &str,
    hub: Arc<Hub>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let path = addr
        .strip_prefix("unix://")
        .filter(|p| p.starts_with('/'))
        .ok_or_else(|| ServeError::Address(addr.to_string()))?;
    peerpod_protocols::socket::prepare_unix_socket(std::path::Path::new(path))
        .map_err(|e| ServeError::Socket(path.to_string(), e))?;
    let mut server = ttrpc::r#async::Server::new()
        .bind(addr)
        .map_err(|e| ServeError::Ttrpc(addr.to_string(), e))?;
    for service in Services::new(hub).all() {
        server = server.register_service(service);
    }
    server
        .start()
        .await
        .map_err(|e| ServeError::Ttrpc(addr.to_string(), e))?;
    tracing::info!(%addr, "confidential data hub serving");
    shutdown.await;
    let _ = tokio::time::timeout(Duration::from_secs(5), server.shutdown()).await;
    let _ = std::fs::remove_file(path);
    Ok(())
}
