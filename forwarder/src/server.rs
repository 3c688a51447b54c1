//! The listener on 15150: accept, TLS handshake (bounded in time), then hand each connection
//! to a [`Connections`] handler in its own task until shutdown: the separate forwarder's relay
//! ([`Forwarder`]) or the agent's in-process dispatch ([`Dispatcher`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use tokio::io::{AsyncRead, AsyncWrite};

use crate::dispatch::Dispatcher;
use crate::proxy::{ConnectionError, Forwarder};

/// What serves an accepted (and TLS-terminated) client connection.
pub trait Connections: Send + Sync + 'static {
    /// Serves `client` until it closes.
    fn serve<S>(&self, client: S) -> impl Future<Output = Result<(), ConnectionError>> + Send
    where
        S: AsyncRead + AsyncWrite + Send + 'static;
}

impl Connections for Forwarder {
    fn serve<S>(&self, client: S) -> impl Future<Output = Result<(), ConnectionError>> + Send
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        self.serve_connection(client)
    }
}

impl Connections for Dispatcher {
    fn serve<S>(&self, client: S) -> impl Future<Output = Result<(), ConnectionError>> + Send
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        self.serve_connection(client)
    }
}

/// How long a client has to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections on `listener` until `shutdown` completes; with `tls`, each must
/// complete a TLS handshake (with a client certificate if the configuration requires one).
pub async fn serve<C: Connections>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    forwarder: Arc<C>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let forwarder = Arc::clone(&forwarder);
        let tls = tls.clone();
        tokio::spawn(async move {
            let result = match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => forwarder.serve(stream).await,
                        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                            info!(%peer, "connection closed before the TLS handshake finished");
                            return;
                        }
                        Ok(Err(e)) => {
                            warn!(%peer, error = %e, "TLS handshake refused: the client is not a shim this pod VM trusts (wrong or missing client certificate, or an old TLS version)");
                            return;
                        }
                        Err(_) => {
                            warn!(%peer, "TLS handshake not completed within {HANDSHAKE_TIMEOUT:?}");
                            return;
                        }
                    }
                }
                None => forwarder.serve(tcp).await,
            };
            log_end(&peer.to_string(), result);
        });
    }
}

/// Logs how a connection ended.
pub fn log_end(peer: &str, result: Result<(), ConnectionError>) {
    match result {
        Ok(()) => info!(%peer, "connection closed"),
        Err(e) => {
            warn!(%peer, reason = %peerpod_text::error_chain(&e), "connection closed by the front door")
        }
    }
}
