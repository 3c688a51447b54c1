//! ttrpc servers on Unix sockets: preparing the path, serving until told to stop.

use std::path::Path;

/// Creates the socket's directory, and removes a stale socket file left by a server that died
/// (one nobody listens on); a live one is left alone so that binding reports it in use.
pub fn prepare_unix_socket(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() && std::os::unix::net::UnixStream::connect(path).is_err() {
        std::fs::remove_file(path)?;
    }
    Ok(())
}

/// Why a ttrpc server could not run.
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

/// The services of one ttrpc server, as the generated `create_*_service` functions make them.
pub type Services = Vec<std::collections::HashMap<String, ttrpc::r#async::Service>>;

/// Serves `services` on `addr` (`unix:///<absolute path>`) until `shutdown` completes, then
/// gives requests in flight up to 5 s and removes the socket. `name` is logged with the address.
pub async fn serve_unix(
    name: &str,
    addr: &str,
    services: Services,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    let path = addr
        .strip_prefix("unix://")
        .filter(|p| p.starts_with('/'))
        .ok_or_else(|| ServeError::Address(addr.to_string()))?;
    prepare_unix_socket(Path::new(path)).map_err(|e| ServeError::Socket(path.to_string(), e))?;
    let mut server = ttrpc::r#async::Server::new()
        .bind(addr)
        .map_err(|e| ServeError::Ttrpc(addr.to_string(), e))?;
    for service in services {
        server = server.register_service(service);
    }
    server
        .start()
        .await
        .map_err(|e| ServeError::Ttrpc(addr.to_string(), e))?;
    tracing::info!(%addr, "{name} serving");
    shutdown.await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), server.shutdown()).await;
    let _ = std::fs::remove_file(path);
    Ok(())
}

/// Completes when the process is told to stop: SIGTERM, SIGHUP or SIGINT, as the attestation
/// agent and the CDH stop (if the SIGTERM/SIGHUP handlers cannot be installed, SIGINT only). For
/// [`serve_unix`]'s `shutdown`.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = hup.recv() => {}
    }
}
