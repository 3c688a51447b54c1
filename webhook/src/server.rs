//! The HTTPS server: `POST /mutate-v1-pod` (AdmissionReview v1), `GET /healthz` and
//! `GET /readyz`, over rustls and hyper's HTTP/1.1 with keep-alive.
//!
//! Anyone in the cluster network can connect, and with `failurePolicy: Fail` a webhook that
//! cannot answer stops every pod creation, so what a client can hold is bounded:
//!
//! - connections in their TLS handshake: at most [`MAX_HANDSHAKES`], each for at most
//!   [`HANDSHAKE_TIMEOUT`]; one more ends the oldest handshake still pending (a real client's
//!   takes milliseconds, so stalled ones cannot keep it out);
//! - connections served after the handshake: at most [`MAX_CONNECTIONS`], and at most
//!   [`MAX_CONNECTIONS_PER_PEER`] from one peer: an IPv4 address, or an IPv6 /64 prefix (what
//!   one host is routed; an IPv4-mapped IPv6 address counts as its IPv4 address). One more
//!   from a peer at its cap ends that peer's own connection idle or stalled longest; one more
//!   beyond the total ends, of the peers holding the most connections, the connection idle or
//!   stalled longest (so a flood from many addresses ends its own connections before a lone
//!   client's keep-alive, however long that was idle). Idle: no request, or a request whose
//!   body has not begun; stalled: a body with no frame for [`EVICT_AFTER`]. A connection whose
//!   request is answered or whose body is arriving is never ended; when all candidates are
//!   such, the newcomer is closed. Request headers within
//!   [`HEADER_TIMEOUT`] and [`MAX_HEADER_BYTES`];
//! - a review body: at most [`MAX_REVIEW_BYTES`] (HTTP 413), complete within [`BODY_TIMEOUT`]
//!   of its headers (HTTP 408);
//! - review bodies held at once, over all connections: at most [`MAX_BODY_BYTES_IN_FLIGHT`]
//!   bytes of body buffers. A buffer is counted as it grows with the bytes that arrived
//!   (doubling from [`BODY_CHUNK`], up to the declared length), so headers declaring a large
//!   body hold nothing until the bytes come. A body that finds the budget spent ends, every
//!   [`EVICT_AFTER`] it waits, another body still arriving that holds some budget: the
//!   oldest of those that had no bytes for [`EVICT_AFTER`], else the oldest (answered HTTP
//!   503: a real client's body arrives in milliseconds, so one still incomplete after that
//!   is a stalled or trickling sender's), for [`IN_FLIGHT_WAIT`] in all, else is
//!   answered 503 itself. A review's memory is about its body's size
//!   ([`crate::view`]), so this bounds the memory reviews take whatever the clients send.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio_rustls::TlsAcceptor;

use crate::error_chain;
use crate::review::{Handler, MAX_REVIEW_BYTES, handle};

/// The path the API server posts reviews to (upstream's).
pub const MUTATE_PATH: &str = "/mutate-v1-pod";
/// The port upstream's webhook listens on.
pub const DEFAULT_PORT: u16 = 9443;
/// How long a client may take to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's headers (an idle keep-alive connection is
/// closed after this too).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client may take to send a request's body once its headers are in: a body sent
/// a byte at a time would otherwise hold its connection slot for as long as the sender likes.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections in their TLS handshake at once; a new one beyond this ends the oldest.
pub const MAX_HANDSHAKES: usize = 256;
/// Connections served at once after their handshake; one more ends the one idle longest.
pub const MAX_CONNECTIONS: usize = 1024;
/// Connections served at once from one peer (an IPv4 address or an IPv6 /64, see
/// [`peer_of`]); one more ends that peer's own connection idle longest. The API server's
/// concurrent reviews to one webhook replica stay far below this, and an attacker's address
/// (or prefix) cannot take more of [`MAX_CONNECTIONS`].
pub const MAX_CONNECTIONS_PER_PEER: usize = 64;
/// The most a connection buffers of a request's headers (hyper's read buffer; the API
/// server's headers are a few hundred bytes).
pub const MAX_HEADER_BYTES: usize = 16 << 10;
/// Review body bytes held at once over all connections.
pub const MAX_BODY_BYTES_IN_FLIGHT: usize = 16 << 20;
/// How long a body waits for room under [`MAX_BODY_BYTES_IN_FLIGHT`] before HTTP 503.
pub const IN_FLIGHT_WAIT: Duration = Duration::from_secs(2);
/// How long a body waits for room before it ends the oldest body still arriving.
pub const EVICT_AFTER: Duration = Duration::from_millis(250);

/// The peer a connection counts against: an IPv4 address as it is (also when it arrives
/// IPv4-mapped on a dual-stack socket), an IPv6 address as its /64 prefix, since one host is
/// routed a whole /64 and may send from any of its 2^64 addresses.
pub fn peer_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

/// Things in progress (handshakes, bodies arriving), oldest first, each with the means to end
/// it.
#[derive(Default)]
struct Pending {
    next: u64,
    queue: VecDeque<Entry>,
}

/// One thing in progress.
struct Entry {
    id: u64,
    /// Bytes of the in-flight budget held (bodies only).
    held: usize,
    /// When its last bytes came (bodies only).
    last: std::time::Instant,
    /// Whether it is waiting for room itself (then not stalled by its sender).
    waiting: bool,
    evict: oneshot::Sender<()>,
}

impl Pending {
    /// Registers a new one, ending the oldest first if `cap` are in progress.
    fn admit(this: &Mutex<Self>, cap: usize) -> (u64, oneshot::Receiver<()>) {
        let mut me = this
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if me.queue.len() >= cap
            && let Some(oldest) = me.queue.pop_front()
        {
            let _ = oldest.evict.send(());
        }
        let id = me.next;
        me.next += 1;
        let (tx, rx) = oneshot::channel();
        me.queue.push_back(Entry {
            id,
            held: 0,
            last: std::time::Instant::now(),
            waiting: false,
            evict: tx,
        });
        (id, rx)
    }

    /// Records that bytes of `id` came now, and that it holds `held` bytes of the budget.
    fn arrived(this: &Mutex<Self>, id: u64, held: usize) {
        let mut me = this
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(entry) = me.queue.iter_mut().find(|e| e.id == id) {
            entry.held = held;
            entry.last = std::time::Instant::now();
        }
    }

    /// Records whether `id` is waiting for room.
    fn waiting(this: &Mutex<Self>, id: u64, waiting: bool) {
        let mut me = this
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(entry) = me.queue.iter_mut().find(|e| e.id == id) {
            entry.waiting = waiting;
        }
    }

    /// Ends one other than `id` that holds some of the budget (ending one that holds none
    /// would free nothing): the oldest of those with no bytes for [`EVICT_AFTER`] while not
    /// waiting for room themselves (stalled), else the oldest of all. Whether there was one.
    fn evict_holder_but(this: &Mutex<Self>, id: u64) -> bool {
        let mut me = this
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let holds = |e: &Entry| e.id != id && e.held > 0;
        let Some(at) = me
            .queue
            .iter()
            .position(|e| holds(e) && !e.waiting && e.last.elapsed() > EVICT_AFTER)
            .or_else(|| me.queue.iter().position(holds))
        else {
            return false;
        };
        me.queue
            .remove(at)
            .is_some_and(|e| e.evict.send(()).is_ok())
    }

    /// Forgets one that ended.
    fn done(this: &Mutex<Self>, id: u64) {
        let mut me = this
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(at) = me.queue.iter().position(|e| e.id == id) {
            me.queue.remove(at);
        }
    }
}

/// A served connection with no request, or waiting for its request's body.
const IDLE: u8 = 0;
/// A served connection whose request's body is arriving.
const READING: u8 = 1;
/// A served connection whose request is being answered.
const ANSWERING: u8 = 2;

/// One served connection: what it is doing, and since when (milliseconds from `start`): its
/// last request's end, or its body's last frame.
struct ConnState {
    start: std::time::Instant,
    phase: AtomicU8,
    since: AtomicU64,
}

impl ConnState {
    fn new(start: std::time::Instant) -> Self {
        let state = ConnState {
            start,
            phase: AtomicU8::new(IDLE),
            since: AtomicU64::new(0),
        };
        state.touch();
        state
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Something happened on it now.
    fn touch(&self) {
        self.since.store(self.now(), Ordering::Release);
    }

    fn set(&self, phase: u8) {
        self.phase.store(phase, Ordering::Release);
        self.touch();
    }

    /// Since when it may be closed for a newcomer: idle, or its body had no frame for
    /// [`EVICT_AFTER`] (a real client's body arrives in milliseconds); `None` while a request
    /// is answered or a body is arriving.
    fn evictable_since(&self, now: u64) -> Option<u64> {
        let since = self.since.load(Ordering::Acquire);
        match self.phase.load(Ordering::Acquire) {
            IDLE => Some(since),
            READING
                if now.saturating_sub(since)
                    > u64::try_from(EVICT_AFTER.as_millis()).unwrap_or(u64::MAX) =>
            {
                Some(since)
            }
            _ => None,
        }
    }
}

/// The connections served: peer ([`peer_of`]), state and the means to end each.
struct Served {
    start: std::time::Instant,
    next: u64,
    list: Vec<(u64, IpAddr, Arc<ConnState>, oneshot::Sender<()>)>,
}

impl Served {
    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Registers a new connection from `ip`. If its peer ([`peer_of`]) already has
    /// [`MAX_CONNECTIONS_PER_PEER`], the one of its own idle or stalled longest is ended
    /// first; else if [`MAX_CONNECTIONS`] are served, the one idle or stalled longest of the
    /// peers that hold the most connections (among those with one that may be ended). `None`
    /// (the newcomer is not served) when none of those may be ended. Also says how long the
    /// ended one was idle, and whether it was the peer's own.
    #[allow(clippy::type_complexity)]
    fn admit(
        this: &Mutex<Self>,
        ip: IpAddr,
    ) -> Option<(
        u64,
        Arc<ConnState>,
        oneshot::Receiver<()>,
        Option<(Duration, bool)>,
    )> {
        let mut me = this
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = me.now();
        let peer = peer_of(ip);
        let mut held: HashMap<IpAddr, usize> = HashMap::new();
        for (_, p, _, _) in &me.list {
            *held.entry(*p).or_default() += 1;
        }
        let mut ended = None;
        let own_full = held.get(&peer).copied().unwrap_or(0) >= MAX_CONNECTIONS_PER_PEER;
        if own_full || me.list.len() >= MAX_CONNECTIONS {
            // Most connections held first, then idle or stalled longest.
            let (at, _, since) = me
                .list
                .iter()
                .enumerate()
                .filter(|(_, (_, p, _, _))| !own_full || *p == peer)
                .filter_map(|(at, (_, p, state, _))| {
                    let holds = held.get(p).copied().unwrap_or(0);
                    Some((at, holds, state.evictable_since(now)?))
                })
                .min_by_key(|(_, holds, since)| (std::cmp::Reverse(*holds), *since))?;
            let (_, _, _, evict) = me.list.swap_remove(at);
            ended = Some((Duration::from_millis(now.saturating_sub(since)), own_full));
            let _ = evict.send(());
        }
        let id = me.next;
        me.next += 1;
        let state = Arc::new(ConnState::new(me.start));
        let (tx, rx) = oneshot::channel();
        me.list.push((id, peer, Arc::clone(&state), tx));
        Some((id, state, rx, ended))
    }

    fn done(this: &Mutex<Self>, id: u64) {
        let mut me = this
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(at) = me.list.iter().position(|(i, _, _, _)| *i == id) {
            me.list.swap_remove(at);
        }
    }
}

/// Marks a connection's request in progress (idle until its body's first frame), idle from
/// now when it ends.
struct Busy<'a>(&'a ConnState);

impl<'a> Busy<'a> {
    fn new(state: &'a ConnState) -> Self {
        state.set(IDLE);
        Busy(state)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.set(IDLE);
    }
}

/// What every connection's requests share.
struct Shared {
    handler: Handler,
    /// [`MAX_BODY_BYTES_IN_FLIGHT`] permits, one per body byte held.
    in_flight: Arc<Semaphore>,
    /// The bodies still arriving.
    arriving: Mutex<Pending>,
}

/// Forgets a body in [`Shared::arriving`] however its reading ends.
struct Arriving<'a>(&'a Mutex<Pending>, u64);

impl Drop for Arriving<'_> {
    fn drop(&mut self) {
        Pending::done(self.0, self.1);
    }
}

/// Serves `handler` on `listener` with `tls` until `shutdown` completes; connections already
/// open are then left to finish on their own tasks.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    handler: Handler,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let shared = Arc::new(Shared {
        handler,
        in_flight: Arc::new(Semaphore::new(MAX_BODY_BYTES_IN_FLIGHT)),
        arriving: Mutex::new(Pending::default()),
    });
    let pending = Arc::new(Mutex::new(Pending::default()));
    let served = Arc::new(Mutex::new(Served {
        start: std::time::Instant::now(),
        next: 0,
        list: Vec::new(),
    }));
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let shared = Arc::clone(&shared);
        let served = Arc::clone(&served);
        let (id, evicted) = Pending::admit(&pending, MAX_HANDSHAKES);
        let pending = Arc::clone(&pending);
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
            let outcome = tokio::select! {
                r = handshake => Some(r),
                _ = evicted => None,
            };
            Pending::done(&pending, id);
            let tls = match outcome {
                Some(Ok(Ok(tls))) => tls,
                Some(Ok(Err(e))) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Some(Err(_)) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
                None => {
                    tracing::info!(%peer, "TLS handshake ended unfinished: {MAX_HANDSHAKES} newer connections were waiting for theirs");
                    return;
                }
            };
            let Some((conn, state, ended, idle)) = Served::admit(&served, peer.ip()) else {
                tracing::warn!(%peer, "connection closed: the connections it would replace are all answering requests or receiving bodies");
                return;
            };
            match idle {
                Some((idle, true)) => {
                    tracing::info!(%peer, "{MAX_CONNECTIONS_PER_PEER} connections from this address (IPv6: its /64): its own idle or stalled longest ({idle:?}) was closed for this one")
                }
                Some((idle, false)) => {
                    tracing::info!(%peer, "{MAX_CONNECTIONS} connections served: the one idle or stalled longest of the address holding the most ({idle:?}) was closed for this one")
                }
                None => {}
            }
            let service = hyper::service::service_fn(move |req| {
                let shared = Arc::clone(&shared);
                let state = Arc::clone(&state);
                async move {
                    let _busy = Busy::new(&state);
                    Ok::<_, Infallible>(route(&shared, &state, req).await)
                }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEADER_BYTES)
                .keep_alive(true);
            let connection = http.serve_connection(TokioIo::new(tls), service);
            tokio::select! {
                r = connection => if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                },
                _ = ended => tracing::debug!(%peer, "idle or stalled connection closed for a newer one"),
            }
            Served::done(&served, conn);
        });
    }
}

async fn route(shared: &Shared, conn: &ConnState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::POST, MUTATE_PATH) => admit(shared, conn, req).await,
        (&Method::GET, "/healthz" | "/readyz") => text(StatusCode::OK, "ok"),
        (_, MUTATE_PATH) => text(StatusCode::METHOD_NOT_ALLOWED, "use POST"),
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Why a body was not read whole.
enum BodyRefusal {
    TooLarge,
    Busy,
    Evicted,
    Slow,
    Broken(hyper::Error),
}

/// The first allocation for a body (less when the declared length is less).
pub const BODY_CHUNK: usize = 64 << 10;

/// `n` bytes of room under [`MAX_BODY_BYTES_IN_FLIGHT`] for the body `id`: at once if free;
/// else, every [`EVICT_AFTER`] without room, another body still arriving that holds some of
/// the budget is ended ([`Pending::evict_holder_but`]), for [`IN_FLIGHT_WAIT`] at most.
async fn room(
    shared: &Shared,
    id: u64,
    evicted: &mut oneshot::Receiver<()>,
    n: usize,
) -> Result<OwnedSemaphorePermit, BodyRefusal> {
    let n = u32::try_from(n).map_err(|_| BodyRefusal::TooLarge)?;
    if let Ok(p) = Arc::clone(&shared.in_flight).try_acquire_many_owned(n) {
        return Ok(p);
    }
    // Reviews arriving together make room for each other within milliseconds; a body still
    // arriving after that wait is a stalled sender's, older than this one.
    Pending::waiting(&shared.arriving, id, true);
    let got = wait_for_room(shared, id, evicted, n).await;
    Pending::waiting(&shared.arriving, id, false);
    got
}

/// [`room`] once the budget was found spent.
async fn wait_for_room(
    shared: &Shared,
    id: u64,
    evicted: &mut oneshot::Receiver<()>,
    n: u32,
) -> Result<OwnedSemaphorePermit, BodyRefusal> {
    let deadline = tokio::time::Instant::now() + IN_FLIGHT_WAIT;
    loop {
        let until = (tokio::time::Instant::now() + EVICT_AFTER).min(deadline);
        let acquire =
            tokio::time::timeout_at(until, Arc::clone(&shared.in_flight).acquire_many_owned(n));
        tokio::select! {
            _ = &mut *evicted => return Err(BodyRefusal::Evicted),
            got = acquire => if let Ok(Ok(p)) = got {
                return Ok(p);
            },
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(BodyRefusal::Busy);
        }
        Pending::evict_holder_but(&shared.arriving, id);
    }
}

/// Reads a body of at most [`MAX_REVIEW_BYTES`], holding one in-flight permit per byte of
/// its buffer (see the module documentation for what happens when none are left).
async fn read_body(
    shared: &Shared,
    conn: &ConnState,
    declared: Option<usize>,
    mut body: Incoming,
) -> Result<(Vec<u8>, Vec<OwnedSemaphorePermit>), BodyRefusal> {
    let declared = declared.unwrap_or(0);
    if declared > MAX_REVIEW_BYTES {
        return Err(BodyRefusal::TooLarge);
    }
    let (id, mut evicted) = Pending::admit(&shared.arriving, usize::MAX);
    let _arriving = Arriving(&shared.arriving, id);
    let mut permits = Vec::new();
    let mut buf = Vec::new();
    let mut held = 0;
    let deadline = tokio::time::Instant::now() + BODY_TIMEOUT;
    loop {
        let frame = tokio::select! {
            _ = &mut evicted => return Err(BodyRefusal::Evicted),
            frame = tokio::time::timeout_at(deadline, body.frame()) => frame,
        };
        let frame = match frame {
            Err(_) => return Err(BodyRefusal::Slow),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(BodyRefusal::Broken(e)),
            Ok(Some(Ok(frame))) => frame,
        };
        conn.set(READING);
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if buf.len() + data.len() > MAX_REVIEW_BYTES {
            return Err(BodyRefusal::TooLarge);
        }
        let needed = buf.len() + data.len();
        if needed > held {
            // The buffer grows by doubling as bytes arrive, up to the declared length (or the
            // cap when there is none, or a wrong one), and its whole capacity is counted. A
            // declared length alone reserves nothing: budget follows bytes that came.
            let cap = if declared >= needed {
                declared
            } else {
                MAX_REVIEW_BYTES
            };
            let grown = needed.max(held * 2).max(BODY_CHUNK).min(cap);
            permits.push(room(shared, id, &mut evicted, grown - held).await?);
            buf.reserve_exact(grown - buf.len());
            held = grown;
        }
        Pending::arrived(&shared.arriving, id, held);
        buf.extend_from_slice(&data);
    }
    Ok((buf, permits))
}

async fn admit(shared: &Shared, conn: &ConnState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let json = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return text(
            StatusCode::BAD_REQUEST,
            "the Content-Type must be application/json",
        );
    }
    // hyper has checked the header is a valid length; a length beyond usize is over the cap.
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    let (body, _permits) = match read_body(shared, conn, declared, req.into_body()).await {
        Ok(read) => {
            conn.set(ANSWERING);
            read
        }
        Err(BodyRefusal::TooLarge) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "the AdmissionReview is larger than {MAX_REVIEW_BYTES} bytes (the API \
                     server's own limit on a request)"
                ),
            );
        }
        Err(BodyRefusal::Busy) => {
            tracing::warn!(
                "review refused: {MAX_BODY_BYTES_IN_FLIGHT} bytes of other reviews are being read"
            );
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "the webhook is reading {MAX_BODY_BYTES_IN_FLIGHT} bytes of other reviews; \
                     retry"
                ),
            );
        }
        Err(BodyRefusal::Evicted) => {
            tracing::warn!("review dropped unfinished: a newer review needed its room");
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "the AdmissionReview's body was still arriving when {MAX_BODY_BYTES_IN_FLIGHT} \
                     bytes of reviews were held; it was dropped to make room for a newer one"
                ),
            );
        }
        Err(BodyRefusal::Slow) => {
            return text(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "the AdmissionReview's body did not arrive within {} s",
                    BODY_TIMEOUT.as_secs()
                ),
            );
        }
        Err(BodyRefusal::Broken(e)) => {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("the request body could not be read: {e}"),
            );
        }
    };
    match handle(&shared.handler, &body) {
        Ok(answer) => {
            let mut r = Response::new(Full::new(Bytes::from(answer)));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        Err(e) => {
            let reason = error_chain(&e);
            tracing::info!(reason = %reason, "malformed AdmissionReview refused");
            text(StatusCode::BAD_REQUEST, &reason)
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn served() -> Mutex<Served> {
        Mutex::new(Served {
            start: std::time::Instant::now(),
            next: 0,
            list: Vec::new(),
        })
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// Whether the connection behind `ended` was told to close.
    fn closed(ended: &mut oneshot::Receiver<()>) -> bool {
        ended.try_recv().is_ok()
    }

    #[test]
    fn peers_are_ipv4_addresses_and_ipv6_slash_64_prefixes() {
        assert_eq!(peer_of(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(peer_of(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(
            peer_of(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        assert_ne!(
            peer_of(ip("2001:db8:1:2::1")),
            peer_of(ip("2001:db8:1:3::1"))
        );
    }

    /// Every address of one /64 counts against one cap: the 65th connection from a new
    /// address of the prefix ends one of the prefix's own, and a connection from the next
    /// /64 ends nothing.
    #[test]
    fn one_ipv6_prefix_is_capped_whatever_addresses_it_sends_from() {
        let served = served();
        let mut flood = Vec::new();
        for i in 1..=MAX_CONNECTIONS_PER_PEER {
            let from = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, i as u16));
            let (_, _, ended, evicted) = Served::admit(&served, from).unwrap();
            assert!(evicted.is_none(), "connection {i} ended another");
            flood.push(ended);
        }
        let (_, _, _, evicted) = Served::admit(&served, ip("2001:db8:0:1::ffff")).unwrap();
        assert!(matches!(evicted, Some((_, true))), "{evicted:?}");
        assert_eq!(flood.iter_mut().map(closed).filter(|c| *c).count(), 1);
        let (_, _, _, evicted) = Served::admit(&served, ip("2001:db8:0:2::1")).unwrap();
        assert!(evicted.is_none(), "{evicted:?}");
        assert_eq!(
            served.lock().unwrap().list.len(),
            MAX_CONNECTIONS_PER_PEER + 1
        );
    }

    /// All slots filled by 16 addresses at their cap but one, taken by a lone client idle
    /// longest of all: a newcomer from yet another address ends a flooding address's
    /// connection, not the lone client's.
    #[test]
    fn a_full_server_ends_a_connection_of_the_peer_holding_most_not_a_lone_idle_one() {
        let served = served();
        let (_, _, mut lone, _) = Served::admit(&served, ip("10.1.0.1")).unwrap();
        let mut flood = Vec::new();
        let addresses = MAX_CONNECTIONS / MAX_CONNECTIONS_PER_PEER;
        for a in 0..addresses {
            let from = IpAddr::V4(Ipv4Addr::new(10, 2, 0, a as u8));
            let count = MAX_CONNECTIONS_PER_PEER - usize::from(a + 1 == addresses);
            for _ in 0..count {
                let (_, _, ended, evicted) = Served::admit(&served, from).unwrap();
                assert!(evicted.is_none());
                flood.push((from, ended));
            }
        }
        assert_eq!(served.lock().unwrap().list.len(), MAX_CONNECTIONS);
        // The last flooding address holds one fewer: the ones ended are from the others.
        let last = IpAddr::V4(Ipv4Addr::new(10, 2, 0, (addresses - 1) as u8));
        for newcomer in ["10.3.0.1", "10.1.0.1", "10.2.0.15"] {
            let (_, _, _, evicted) = Served::admit(&served, ip(newcomer)).unwrap();
            assert!(
                matches!(evicted, Some((_, false))),
                "{newcomer}: {evicted:?}"
            );
            assert!(
                !closed(&mut lone),
                "the lone client was closed for {newcomer}"
            );
        }
        let ended: Vec<IpAddr> = flood
            .iter_mut()
            .filter_map(|(from, e)| closed(e).then_some(*from))
            .collect();
        assert_eq!(ended.len(), 3);
        assert!(!ended.contains(&last), "{ended:?}");
    }
}
