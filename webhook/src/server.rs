//! The HTTPS server: `POST /mutate-v1-pod` (AdmissionReview v1), `GET /healthz` and
//! `GET /readyz`, over rustls and hyper's HTTP/1.1 with keep-alive.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
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
/// Connections served at once; more wait in the listen backlog until one closes.
pub const MAX_CONNECTIONS: usize = 1024;

/// Serves `handler` on `listener` with `tls` until `shutdown` completes; connections already
/// open are then left to finish on their own tasks.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    handler: Handler,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let handler = Arc::new(handler);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            _ = &mut shutdown => return,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(s) => s,
                // The semaphore is never closed.
                Err(_) => return,
            },
        };
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
        let handler = Arc::clone(&handler);
        tokio::spawn(async move {
            let _slot = slot;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |req| {
                let handler = Arc::clone(&handler);
                async move { Ok::<_, Infallible>(route(&handler, req).await) }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(true);
            if let Err(e) = http.serve_connection(TokioIo::new(tls), service).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

async fn route(handler: &Handler, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::POST, MUTATE_PATH) => admit(handler, req).await,
        (&Method::GET, "/healthz" | "/readyz") => text(StatusCode::OK, "ok"),
        (_, MUTATE_PATH) => text(StatusCode::METHOD_NOT_ALLOWED, "use POST"),
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

async fn admit(handler: &Handler, req: Request<Incoming>) -> Response<Full<Bytes>> {
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
    let collected = tokio::time::timeout(
        BODY_TIMEOUT,
        Limited::new(req.into_body(), MAX_REVIEW_BYTES).collect(),
    )
    .await;
    let Ok(collected) = collected else {
        return text(
            StatusCode::REQUEST_TIMEOUT,
            &format!(
                "the AdmissionReview's body did not arrive within {} s",
                BODY_TIMEOUT.as_secs()
            ),
        );
    };
    let body = match collected {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the AdmissionReview is larger than {MAX_REVIEW_BYTES} bytes"),
            );
        }
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("the request body could not be read: {e}"),
            );
        }
    };
    match handle(handler, &body) {
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
