//! The simulated Azure Instance Metadata Service: the VCEK for SNP CVMs
//! (`GET /metadata/THIM/amd/certification`) and the TD quoting endpoint for TDX CVMs
//! (`POST /acc/tdquote`).

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
use crate::http::{ServerThread, serve_axum};

/// A running IMDS; dropping it stops the server.
pub struct ImdsServer {
    server: ServerThread,
}

impl ImdsServer {
    /// Starts serving on 127.0.0.1 at a free port, on its own thread.
    pub fn start(hardware: Hardware) -> Result<Self, CvmError> {
        let app = axum::Router::new()
            .route("/metadata/THIM/amd/certification", get(certification))
            .route("/acc/tdquote", post(td_quote))
            .with_state(Arc::new(hardware));
        let server = ServerThread::spawn("simulated-imds", "127.0.0.1:0", move |listener, stop| {
            serve_axum(listener, app, stop)
        })
        .map_err(|e| CvmError::Imds(format!("cannot start: {e}")))?;
        Ok(Self { server })
    }

    /// The base URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr())
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
        .and_then(|r| peerpod_tee::evidence::decode_b64url(&r).ok());
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
