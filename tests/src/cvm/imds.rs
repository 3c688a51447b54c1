//! The simulated Azure Instance Metadata Service: the VCEK for SNP CVMs
//! (`GET /metadata/THIM/amd/certification`) and the TD quoting endpoint for TDX CVMs
//! (`POST /acc/tdquote`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;

use super::error::CvmError;
use super::paravisor::Hardware;

/// A running IMDS; dropping it stops the server.
pub struct ImdsServer {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ImdsServer {
    /// Starts serving on 127.0.0.1 at a free port, on its own thread.
    pub fn start(hardware: Hardware) -> Result<Self, CvmError> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| CvmError::Imds(format!("cannot bind: {e}")))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| CvmError::Imds(e.to_string()))?;
        let addr = listener
            .local_addr()
            .map_err(|e| CvmError::Imds(e.to_string()))?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = axum::Router::new()
            .route("/metadata/THIM/amd/certification", get(certification))
            .route("/acc/tdquote", post(td_quote))
            .with_state(Arc::new(hardware));
        let thread = std::thread::Builder::new()
            .name("simulated-imds".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = rx.await;
                        })
                        .await;
                });
            })
            .map_err(|e| CvmError::Imds(e.to_string()))?;
        Ok(Self {
            addr,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// The base URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for ImdsServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

async fn certification(State(hw): State<Arc<Hardware>>, headers: HeaderMap) -> Response {
    if headers.get("Metadata").and_then(|v| v.to_str().ok()) != Some("true") {
        return error(
            StatusCode::BAD_REQUEST,
            "Required metadata header not specified",
        );
    }
    let Hardware::Snp(chip) = hw.as_ref() else {
        return error(StatusCode::NOT_FOUND, "not an SEV-SNP VM");
    };
    match (chip.vcek_pem(), chip.chain_pem()) {
        (Ok(vcek), Ok(chain)) => Json(json!({
            "vcekCert": vcek,
            "tcbm": format!("{:016X}", chip.config().tcb.to_u64()),
            "certificateChain": chain,
            "cacheControl": "86400",
        }))
        .into_response(),
        _ => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode certificates",
        ),
    }
}

async fn td_quote(State(hw): State<Arc<Hardware>>, body: axum::body::Bytes) -> Response {
    let Hardware::Tdx(tdx) = hw.as_ref() else {
        return error(StatusCode::NOT_FOUND, "not a TDX VM");
    };
    let report = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("report").and_then(|r| r.as_str()).map(str::to_string))
        .and_then(|r| URL_SAFE_NO_PAD.decode(r.trim_end_matches('=')).ok());
    let Some(report) = report else {
        return error(
            StatusCode::BAD_REQUEST,
            "body must be {\"report\": <base64url TD report>}",
        );
    };
    match tdx.quote(&report) {
        Ok(quote) => Json(json!({"quote": URL_SAFE_NO_PAD.encode(quote)})).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}
