//! The REST endpoint for containers (upstream's `api-server-rest`): plain HTTP on the pod's
//! loopback, so a container can fetch a secret or evidence without a ttrpc client.
//!
//! | route | answers |
//! |---|---|
//! | `GET /info` | JSON: version, enabled features, and the TEE when attestation is enabled |
//! | `GET /cdh/resource/<repo>/<type>/<tag>` | the resource (through the CDH's `GetResource`) |
//! | `GET /aa/token?token_type=<type>` | the attestation agent's `GetToken` reply |
//! | `GET /aa/evidence?runtime_data=<text>[&encoding=base64]` | `GetEvidence` of the text (or of its base64url decoding) |
//! | `POST /aa/aael` `{"domain","operation","content"}` | `ExtendRuntimeMeasurement` → `{"success": "true"\|"false", ...}` |
//!
//! Bodies are `application/octet-stream`. Failures keep their kind: a bad request is 400, a
//! missing resource 404, a refusal 403, an unreachable agent, CDH or KBS 503, anything else 500;
//! the body is the reason. A caller that is not on the loopback gets 403, a disabled feature
//! 404. Neither secrets nor query strings (which may carry runtime data) are logged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use peerpod_protocols::cdh::api::GetResourceRequest;
use peerpod_protocols::cdh::api_ttrpc::GetResourceServiceClient;
use serde::Deserialize;
use serde_json::json;

use crate::error::CdhError;
use crate::kbc::AaClient;
use peerpod_protocols::client::Connection;

/// What the endpoint serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// `/cdh/resource/...`.
    pub resource: bool,
    /// `/aa/...`.
    pub attestation: bool,
}

impl Features {
    /// `resource`, `attestation` or `all`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "resource" => Some(Self {
                resource: true,
                attestation: false,
            }),
            "attestation" => Some(Self {
                resource: false,
                attestation: true,
            }),
            "all" => Some(Self {
                resource: true,
                attestation: true,
            }),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match (self.resource, self.attestation) {
            (true, true) => "all",
            (false, true) => "attestation",
            _ => "resource",
        }
    }
}

/// The endpoint's peers.
pub struct Rest {
    features: Features,
    cdh: Connection,
    aa: AaClient,
}

impl Rest {
    /// The endpoint for `features`, calling the CDH at `cdh_addr` and the agent at `aa_addr`.
    pub fn new(features: Features, cdh_addr: &str, aa_addr: &str, timeout: Duration) -> Self {
        Self {
            features,
            cdh: Connection::new("the confidential data hub", "--cdh_addr", cdh_addr, timeout),
            aa: AaClient::new(aa_addr, timeout),
        }
    }
}

fn failure(e: CdhError) -> Response {
    let status = match e.code() {
        ttrpc::Code::INVALID_ARGUMENT => StatusCode::BAD_REQUEST,
        ttrpc::Code::NOT_FOUND => StatusCode::NOT_FOUND,
        ttrpc::Code::PERMISSION_DENIED => StatusCode::FORBIDDEN,
        ttrpc::Code::UNAVAILABLE => StatusCode::SERVICE_UNAVAILABLE,
        ttrpc::Code::UNIMPLEMENTED => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let message = peerpod_kbs_client::error_chain(&e);
    tracing::warn!(status = status.as_u16(), error = %message, "request failed");
    (status, message).into_response()
}

fn bytes(data: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response()
}

fn local_only(peer: SocketAddr) -> Option<Response> {
    (!peer.ip().is_loopback()).then(|| (StatusCode::FORBIDDEN, "Forbidden").into_response())
}

fn disabled(feature: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        format!("{feature} Feature Not Enabled"),
    )
        .into_response()
}

async fn info(
    State(rest): State<Arc<Rest>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    if let Some(r) = local_only(peer) {
        return r;
    }
    let mut v = json!({"version": env!("CARGO_PKG_VERSION"), "feature": rest.features.name()});
    if rest.features.attestation
        && let Ok(tee) = rest.aa.tee().await
    {
        v["tee"] = json!(tee);
    }
    Json(v).into_response()
}

async fn resource(
    State(rest): State<Arc<Rest>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((repo, kind, tag)): Path<(String, String, String)>,
) -> Response {
    if let Some(r) = local_only(peer) {
        return r;
    }
    if !rest.features.resource {
        return disabled("Resource");
    }
    let req = GetResourceRequest {
        ResourcePath: format!("kbs:///{repo}/{kind}/{tag}"),
        ..Default::default()
    };
    let result = crate::conn::call(&rest.cdh, "GetResource", ttrpc::Code::INTERNAL, |c, ctx| {
        let req = req.clone();
        async move {
            GetResourceServiceClient::new(c)
                .get_resource(ctx, &req)
                .await
                .map(|r| r.Resource)
        }
    })
    .await;
    match result {
        Ok(data) => bytes(data),
        Err(e) => failure(e),
    }
}

#[derive(Deserialize)]
struct TokenQuery {
    token_type: Option<String>,
}

async fn token(
    State(rest): State<Arc<Rest>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<TokenQuery>,
) -> Response {
    if let Some(r) = local_only(peer) {
        return r;
    }
    if !rest.features.attestation {
        return disabled("Attestation");
    }
    let Some(kind) = q.token_type.filter(|t| !t.is_empty()) else {
        return failure(CdhError::Query {
            reason: "token_type is required, e.g. /aa/token?token_type=kbs",
        });
    };
    match rest.aa.get_token(&kind).await {
        Ok(data) => bytes(data),
        Err(e) => failure(e),
    }
}

#[derive(Deserialize)]
struct EvidenceQuery {
    runtime_data: Option<String>,
    encoding: Option<String>,
}

async fn evidence(
    State(rest): State<Arc<Rest>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<EvidenceQuery>,
) -> Response {
    if let Some(r) = local_only(peer) {
        return r;
    }
    if !rest.features.attestation {
        return disabled("Attestation");
    }
    let Some(text) = q.runtime_data else {
        return failure(CdhError::Query {
            reason: "runtime_data is required, e.g. /aa/evidence?runtime_data=nonce",
        });
    };
    let data = match q.encoding.as_deref() {
        None => text.into_bytes(),
        Some("base64") => match peerpod_text::decode_b64url(&text) {
            Ok(d) => d,
            Err(_) => {
                return failure(CdhError::Query {
                    reason: "runtime_data is not base64url",
                });
            }
        },
        Some(other) => {
            return failure(CdhError::Unsupported {
                what: "encoding",
                value: other.chars().take(100).collect(),
                supported: "base64",
            });
        }
    };
    match rest.aa.get_evidence(&data).await {
        Ok(data) => bytes(data),
        Err(e) => failure(e),
    }
}

#[derive(Deserialize)]
struct Aael {
    domain: String,
    operation: String,
    content: String,
}

async fn aael(
    State(rest): State<Arc<Rest>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = local_only(peer) {
        return r;
    }
    if !rest.features.attestation {
        return disabled("Attestation");
    }
    let event: Aael = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(_) => {
            return failure(CdhError::Query {
                reason: "the body is not {\"domain\", \"operation\", \"content\"}",
            });
        }
    };
    match rest
        .aa
        .extend_runtime_measurement(&event.domain, &event.operation, &event.content)
        .await
    {
        Ok(result) if result == "OK" => Json(json!({"success": "true"})).into_response(),
        Ok(result) => Json(json!({"success": "false", "message": result})).into_response(),
        Err(e) => failure(e),
    }
}

/// The routes.
pub fn router(rest: Arc<Rest>) -> axum::Router {
    axum::Router::new()
        .route("/info", get(info))
        .route("/cdh/resource/{repo}/{kind}/{tag}", get(resource))
        .route("/aa/token", get(token))
        .route("/aa/evidence", get(evidence))
        .route("/aa/aael", post(aael))
        .fallback(|| async { (StatusCode::NOT_FOUND, "URL NOT FOUND") })
        .with_state(rest)
}

/// Serves on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    rest: Arc<Rest>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(rest).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
