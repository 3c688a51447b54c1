//! A stand-in of the API server's node endpoints, for the advertiser's tests (`advertiser.rs`,
//! and `image.rs`, which runs the advertiser from the container image): a real HTTPS server
//! (hyper over rustls) that checks the bearer token and applies the JSON Patches it receives
//! with RFC 6902 semantics (`test` included) to a node object, answering 422 when a patch does
//! not apply, as kube-apiserver does. (Debian has no kube-apiserver package, so a real one
//! cannot run here.)

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, SizeHint};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use peerpod_webhook::advertiser::{Advertiser, AdvertiserConfig, OWNER_ANNOTATION};
use serde_json::{Value, json};

use super::{Certs, TempDir, TestResult};

pub const TOKEN: &str = "sa-token-for-the-advertiser";
pub const NODE: &str = "worker-0";

#[derive(Default)]
pub struct State {
    pub node: Value,
    pub log: Vec<(String, String, String)>,
    /// After this many GETs, another advertiser (this name) takes the node over.
    pub takeover: Option<(usize, String)>,
    pub gets: usize,
    /// The bearer token accepted (TOKEN unless a test rotates it).
    pub token: String,
    /// Answer every request with this many bytes of whitespace (status 200, or 500 with
    /// `huge_error`), its length announced or not.
    pub huge: Option<(u64, bool)>,
    pub huge_error: bool,
    /// Bytes of huge replies handed to the connection so far.
    pub huge_sent: Arc<AtomicU64>,
}

/// A reply body of `left` bytes of spaces, made as it is sent.
pub struct Huge {
    left: u64,
    announce: bool,
    chunk: Bytes,
    sent: Arc<AtomicU64>,
}

impl hyper::body::Body for Huge {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(self.chunk.len() as u64);
        self.left -= n;
        self.sent.fetch_add(n, Ordering::Relaxed);
        let data = self.chunk.slice(..usize::try_from(n).unwrap_or(0));
        Poll::Ready(Some(Ok(Frame::data(data))))
    }
    fn size_hint(&self) -> SizeHint {
        if self.announce {
            SizeHint::with_exact(self.left)
        } else {
            SizeHint::default()
        }
    }
}

pub type Body = BoxBody<Bytes, Infallible>;

pub struct ApiServer {
    pub url: String,
    pub certs: Certs,
    pub state: Arc<Mutex<State>>,
}

pub fn status(code: u16, message: &str) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                      "message": message, "code": code});
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *r.status_mut() = hyper::StatusCode::from_u16(code).expect("status code");
    r
}

pub async fn api(state: Arc<Mutex<State>>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return status(400, "body"),
    };
    let mut s = state.lock().expect("state");
    s.log.push((
        method.clone(),
        path.clone(),
        String::from_utf8_lossy(&body).into_owned(),
    ));
    if auth.as_deref() != Some(&format!("Bearer {}", s.token)) {
        return status(401, "Unauthorized");
    }
    if let Some((size, announce)) = s.huge {
        let mut r = Response::new(
            Huge {
                left: size,
                announce,
                chunk: Bytes::from(vec![b' '; 64 << 10]),
                sent: Arc::clone(&s.huge_sent),
            }
            .boxed(),
        );
        if s.huge_error {
            *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
        }
        return r;
    }
    let node_path = format!("/api/v1/nodes/{NODE}");
    let ok = |v: &Value| Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    match (method.as_str(), path.as_str()) {
        ("GET", p) if p == node_path => {
            s.gets += 1;
            if let Some((after, other)) = s.takeover.clone()
                && s.gets >= after
            {
                s.node["metadata"]["annotations"][OWNER_ANNOTATION] = json!(other);
                s.takeover = None;
                // The takeover lands after this GET's answer was made.
                let before = s.node.clone();
                let mut answer = before;
                answer["metadata"]["annotations"][OWNER_ANNOTATION] = json!("advertiser-a");
                return ok(&answer);
            }
            ok(&s.node)
        }
        ("PATCH", p) if p == format!("{node_path}/status") => {
            if content_type.as_deref() != Some("application/json-patch+json") {
                return status(415, "unsupported patch type");
            }
            let Ok(patch) = serde_json::from_slice::<json_patch::Patch>(&body) else {
                return status(400, "not a JSON patch");
            };
            let mut node = s.node.clone();
            if let Err(e) = json_patch::patch(&mut node, &patch) {
                return status(
                    422,
                    &format!("the server rejected our request due to an error in our request: {e}"),
                );
            }
            s.node = node;
            ok(&s.node)
        }
        _ => status(404, "not found"),
    }
}

impl ApiServer {
    pub async fn start(node: Value) -> Self {
        super::install_provider();
        let certs = Certs::generate("kubernetes");
        let state = Arc::new(Mutex::new(State {
            node,
            token: TOKEN.to_owned(),
            ..State::default()
        }));
        let dir = TempDir::new("api");
        certs.write(&dir.0);
        let cert = peerpod_webhook::tls::ReloadingCert::load(
            &dir.0.join("tls.crt"),
            &dir.0.join("tls.key"),
        )
        .expect("certificate");
        let tls = peerpod_webhook::tls::TlsOptions::default()
            .server_config(cert)
            .expect("tls");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!(
            "https://localhost:{}",
            listener.local_addr().expect("addr").port()
        );
        let st = Arc::clone(&state);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let st = Arc::clone(&st);
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        let st = Arc::clone(&st);
                        async move { Ok::<_, Infallible>(api(st, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        ApiServer { url, certs, state }
    }

    pub fn advertiser(&self, owner: &str, limit: i64, token: &str) -> Advertiser {
        let config = AdvertiserConfig {
            node_name: NODE.to_owned(),
            limit,
            resource: "kata.peerpods.io/vm".to_owned(),
            owner: owner.to_owned(),
        };
        Advertiser::new(&self.url, self.certs.ca_pem.as_bytes(), token, config).expect("advertiser")
    }

    pub fn node(&self) -> Value {
        self.state.lock().expect("state").node.clone()
    }

    pub fn requests(&self) -> usize {
        self.state.lock().expect("state").log.len()
    }
}

pub fn a_node() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE, "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
        "spec": {"podCIDR": "10.244.0.0/24"},
        "status": {"capacity": {"cpu": "4", "memory": "16Gi", "pods": "110"},
                   "allocatable": {"cpu": "4", "memory": "16Gi", "pods": "110"}}
    })
}

/// Waits until `check` holds on the stand-in's node (10 s at most).
pub async fn wait_for(api: &ApiServer, what: &str, check: impl Fn(&Value) -> bool) -> TestResult {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !check(&api.node()) {
        if std::time::Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}: {}", api.node()).into());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Ok(())
}
