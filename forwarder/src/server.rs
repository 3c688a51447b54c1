//! The listener on 15150: accept, TLS handshake (bounded in time), then hand each connection
//! to a [`Connections`] handler in its own task until shutdown: the separate forwarder's relay
//! ([`Forwarder`]) or the agent's in-process dispatch ([`Dispatcher`]).
//!
//! Before a client is authenticated it costs a task and a file descriptor, so both are
//! bounded: at most [`MAX_HANDSHAKES`] connections are in their TLS handshake at once (a new
//! one beyond that ends the oldest pending handshake, so idle or stalled connections cannot
//! keep a real shim out: its handshake takes milliseconds), each for at most
//! [`HANDSHAKE_TIMEOUT`]; at most [`MAX_CONNECTIONS`] connections are served at once (more are
//! closed at once, with a log line). In the agent this keeps a flood of connections to 15150
//! from exhausting kata-agent's file descriptors.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, oneshot};

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
/// The most connections in their TLS handshake (not yet authenticated) at once.
pub const MAX_HANDSHAKES: usize = 256;
/// The most connections served at once (after the handshake).
pub const MAX_CONNECTIONS: usize = 128;

/// How many connections the listener holds at once.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections in their TLS handshake (not yet authenticated); a new one beyond this
    /// ends the oldest.
    pub handshakes: usize,
    /// Connections served after the handshake; more are closed.
    pub connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshakes: MAX_HANDSHAKES,
            connections: MAX_CONNECTIONS,
        }
    }
}

/// The handshakes in progress, oldest first, each with the means to end it.
#[derive(Default)]
struct Pending {
    next: u64,
    queue: VecDeque<(u64, oneshot::Sender<()>)>,
}

impl Pending {
    /// Registers a new handshake, ending the oldest if `cap` are in progress.
    fn admit(this: &Mutex<Self>, cap: usize) -> (u64, oneshot::Receiver<()>) {
        let mut me = this
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if me.queue.len() >= cap.max(1)
            && let Some((_, evict)) = me.queue.pop_front()
        {
            let _ = evict.send(());
        }
        let id = me.next;
        me.next += 1;
        let (tx, rx) = oneshot::channel();
        me.queue.push_back((id, tx));
        (id, rx)
    }

    /// Forgets a handshake that ended.
    fn done(this: &Mutex<Self>, id: u64) {
        let mut me = this
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(at) = me.queue.iter().position(|(i, _)| *i == id) {
            me.queue.remove(at);
        }
    }
}

/// Accepts connections on `listener` until `shutdown` completes; with `tls`, each must
/// complete a TLS handshake (with a client certificate if the configuration requires one).
/// The default [`Limits`] apply.
pub async fn serve<C: Connections>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    forwarder: Arc<C>,
    shutdown: impl Future<Output = ()>,
) {
    serve_with_limits(listener, tls, forwarder, shutdown, Limits::default()).await;
}

/// [`serve`] with other [`Limits`].
pub async fn serve_with_limits<C: Connections>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    forwarder: Arc<C>,
    shutdown: impl Future<Output = ()>,
    limits: Limits,
) {
    tokio::pin!(shutdown);
    let pending = Arc::new(Mutex::new(Pending::default()));
    let serving = Arc::new(Semaphore::new(limits.connections));
    let (max_handshakes, max_connections) = (limits.handshakes, limits.connections);
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
        let serving = Arc::clone(&serving);
        let Some(acceptor) = tls.clone() else {
            let Ok(permit) = serving.try_acquire_owned() else {
                warn!(%peer, "connection closed: {max_connections} connections are already served");
                continue;
            };
            tokio::spawn(async move {
                let result = forwarder.serve(tcp).await;
                drop(permit);
                log_end(&peer.to_string(), result);
            });
            continue;
        };
        let (id, evicted) = Pending::admit(&pending, max_handshakes);
        let pending = Arc::clone(&pending);
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
            let outcome = tokio::select! {
                r = handshake => Some(r),
                _ = evicted => None,
            };
            Pending::done(&pending, id);
            let stream = match outcome {
                Some(Ok(Ok(stream))) => stream,
                Some(Ok(Err(e))) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    info!(%peer, "connection closed before the TLS handshake finished");
                    return;
                }
                Some(Ok(Err(e))) => {
                    warn!(%peer, error = %e, "TLS handshake refused: the client is not a shim this pod VM trusts (wrong or missing client certificate, or an old TLS version)");
                    return;
                }
                Some(Err(_)) => {
                    warn!(%peer, "TLS handshake not completed within {HANDSHAKE_TIMEOUT:?}");
                    return;
                }
                None => {
                    info!(%peer, "TLS handshake ended unfinished: {max_handshakes} newer connections were waiting for theirs");
                    return;
                }
            };
            let Ok(permit) = serving.try_acquire_owned() else {
                warn!(%peer, "connection closed: {max_connections} connections are already served");
                return;
            };
            let result = forwarder.serve(stream).await;
            drop(permit);
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
