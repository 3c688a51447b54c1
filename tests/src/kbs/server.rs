//! The HTTP side: routes, sessions, tokens, admin endpoints.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use peerpod_kbs_protocol::messages::{
    Attestation, Challenge, Request, ResourcePath, TokenResponse,
};
use peerpod_kbs_protocol::runtime_data::{self, HashAlgorithm};
use peerpod_kbs_protocol::{PROTOCOL_VERSION, SESSION_COOKIE, jwe, keys::TeePubKey};
use peerpod_policy::initdata::InitData;
use serde_json::{Value, json};

use super::appraisal::{self, TokenSigner};
use super::error::{KbsError, TrusteeErrors};
use super::verifier::{Expected, Verifier};
use crate::http::{ServerThread, serve_axum};

/// Who may use the admin endpoints.
#[derive(Debug, Clone)]
pub enum AdminAuth {
    /// Anyone (tests and demos on a private address only).
    InsecureAllowAll,
    /// No one.
    DenyAll,
    /// Holders of the Ed25519 key whose public half this is (PEM): `Authorization: Bearer` with
    /// an EdDSA JWT (`exp` and `nbf` are checked when present), as Trustee's admin personas.
    Ed25519PublicKey(String),
}

/// How the KBS is set up.
#[derive(Debug, Clone)]
pub struct KbsOptions {
    /// The evidence verifiers and their trust anchors.
    pub verifier: Verifier,
    /// Session lifetime (Trustee: 5 minutes).
    pub session_timeout: Duration,
    /// Token lifetime (Trustee: 5 minutes).
    pub token_lifetime: Duration,
    /// Admin access.
    pub admin: AdminAuth,
    /// The attestation (appraisal) policy, Rego.
    pub attestation_policy: String,
    /// The resource policy, Rego.
    pub resource_policy: String,
    /// Reference values, by name.
    pub reference_values: BTreeMap<String, Value>,
    /// Resources, by `repo/type/tag`.
    pub resources: BTreeMap<String, Vec<u8>>,
    /// Largest request body.
    pub max_body: usize,
    /// Counters, shared with whoever holds a clone of the `Arc`.
    pub stats: Arc<KbsStats>,
    /// Whose status codes error answers carry (default: the pinned Trustee's).
    pub trustee_errors: TrusteeErrors,
}

/// What the KBS has done, for tests.
#[derive(Debug, Default)]
pub struct KbsStats {
    /// Successful `/auth` calls.
    pub auths: std::sync::atomic::AtomicU64,
    /// Successful `/attest` calls that verified evidence (not repeats on an attested session).
    pub attestations: std::sync::atomic::AtomicU64,
    /// Resources released.
    pub resources: std::sync::atomic::AtomicU64,
}

impl KbsStats {
    fn bump(counter: &std::sync::atomic::AtomicU64) {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl KbsOptions {
    /// Defaults with a verifier.
    pub fn new(verifier: Verifier) -> Self {
        Self {
            verifier,
            session_timeout: Duration::from_secs(300),
            token_lifetime: Duration::from_secs(300),
            admin: AdminAuth::DenyAll,
            attestation_policy: appraisal::DEFAULT_ATTESTATION_POLICY.to_string(),
            resource_policy: appraisal::DEFAULT_RESOURCE_POLICY.to_string(),
            reference_values: BTreeMap::new(),
            resources: BTreeMap::new(),
            max_body: 2 << 20,
            stats: Arc::new(KbsStats::default()),
            trustee_errors: TrusteeErrors::default(),
        }
    }

    /// A KBS that trusts `cvm`'s test roots and expects its launch measurement (SNP) or MRTD
    /// (TDX); with `initdata`, also that document's PCR 8 (reference value `init_data`).
    pub fn for_cvm(
        cvm: &crate::cvm::SimulatedCvm,
        initdata: Option<&[u8]>,
    ) -> Result<Self, String> {
        use crate::cvm::platform::{SnpConfig, TdxConfig};
        let anchors = cvm.trust_anchors().map_err(|e| e.to_string())?;
        let mut trust = super::verifier::TrustAnchors::default();
        if let Some(pem) = anchors.amd_chain_pem {
            trust.amd = Some(super::verifier::AmdAnchors::from_pem(pem.as_bytes())?);
        }
        if let Some(pem) = anchors.intel_root_pem {
            trust.intel_roots = vec![super::verifier::x509::from_pem(
                "Intel root",
                pem.as_bytes(),
            )?];
        }
        let mut options = Self::new(Verifier {
            anchors: trust,
            ..Verifier::default()
        });
        let (name, value) = match cvm.flavour() {
            crate::cvm::Flavour::Snp => (
                "snp_launch_measurement",
                STANDARD.encode(SnpConfig::default().measurement),
            ),
            crate::cvm::Flavour::Tdx => (
                "mr_td",
                hex::encode(TdxConfig::default().measurements.mr_td),
            ),
        };
        options.reference_values.insert(name.into(), json!([value]));
        if let Some(doc) = initdata {
            let digest = InitData::parse(doc).map_err(|e| e.to_string())?.digest();
            options.reference_values.insert(
                "init_data".into(),
                json!([hex::encode(digest.azure_vtpm_pcr8())]),
            );
        }
        Ok(options)
    }
}

struct Session {
    nonce: String,
    tee: String,
    expires: SystemTime,
    token: Option<(String, Value)>,
}

struct AppState {
    options: KbsOptions,
    sessions: Mutex<HashMap<String, Session>>,
    attestation_policy: RwLock<String>,
    resource_policy: RwLock<String>,
    reference_values: RwLock<BTreeMap<String, Value>>,
    resources: RwLock<BTreeMap<String, Vec<u8>>>,
    signer: RwLock<Arc<TokenSigner>>,
}

impl AppState {
    fn signer(&self) -> Arc<TokenSigner> {
        read(&self.signer)
    }
}

type Shared = Arc<AppState>;

fn read<T: Clone>(lock: &RwLock<T>) -> T {
    lock.read().unwrap_or_else(|p| p.into_inner()).clone()
}

fn write<T>(lock: &RwLock<T>, value: T) {
    *lock.write().unwrap_or_else(|p| p.into_inner()) = value;
}

/// Builds the KBS's router.
pub fn router(options: KbsOptions) -> Result<axum::Router, appraisal::AppraisalError> {
    Ok(router_and_state(options)?.0)
}

fn router_and_state(
    options: KbsOptions,
) -> Result<(axum::Router, Shared), appraisal::AppraisalError> {
    appraisal::compile_check(&options.attestation_policy)?;
    let state = Arc::new(AppState {
        sessions: Mutex::new(HashMap::new()),
        attestation_policy: RwLock::new(options.attestation_policy.clone()),
        resource_policy: RwLock::new(options.resource_policy.clone()),
        reference_values: RwLock::new(options.reference_values.clone()),
        resources: RwLock::new(options.resources.clone()),
        signer: RwLock::new(Arc::new(TokenSigner::new(
            options.token_lifetime.as_secs(),
        )?)),
        options,
    });
    let max_body = state.options.max_body;
    let router = axum::Router::new()
        .route("/kbs/v0/auth", post(auth))
        .route("/kbs/v0/attest", post(attest))
        .route(
            "/kbs/v0/resource/{*path}",
            get(get_resource).post(put_resource),
        )
        .route(
            "/kbs/v0/resource-policy",
            post(set_resource_policy).get(get_resource_policy),
        )
        .route("/kbs/v0/attestation-policy", post(set_attestation_policy))
        .route("/kbs/v0/reference-value", post(set_reference_value))
        .route("/kbs/v0/reference-value/{id}", get(get_reference_value))
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(Arc::clone(&state));
    Ok((router, state))
}

async fn fallback(uri: axum::http::Uri) -> KbsError {
    let path = uri.path();
    match path.strip_prefix("/kbs/v0/") {
        Some(rest) if !rest.is_empty() => {
            let plugin = rest.split('/').next().unwrap_or_default();
            if plugin == "resource" {
                KbsError::InvalidRequestPath(format!(
                    "{path}: a resource is /kbs/v0/resource/<repository>/<type>/<tag>"
                ))
            } else {
                KbsError::PluginNotFound(plugin.to_string())
            }
        }
        _ => KbsError::InvalidRequestPath(path.to_string()),
    }
}

fn random_hex(n: usize) -> Result<String, KbsError> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).map_err(|e| KbsError::Auth(format!("no randomness: {e}")))?;
    Ok(hex::encode(b))
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.to_string())
}

fn set_cookie(id: &str, expires: SystemTime) -> HeaderValue {
    let text = format!(
        "{SESSION_COOKIE}={id}; Expires={}",
        httpdate::fmt_http_date(expires)
    );
    HeaderValue::from_str(&text)
        .unwrap_or_else(|_| HeaderValue::from_static("kbs-session-id=invalid"))
}

const KNOWN_TEES: [&str; 3] = ["sample", "az-snp-vtpm", "az-tdx-vtpm"];

async fn auth(State(st): State<Shared>, body: axum::body::Bytes) -> Result<Response, KbsError> {
    let req: Request = serde_json::from_slice(&body)
        .map_err(|e| KbsError::Auth(format!("invalid request body: {e}")))?;
    if req.version != PROTOCOL_VERSION {
        return Err(KbsError::Auth(format!(
            "KBS Client Protocol Version Mismatch: expect ={PROTOCOL_VERSION} while the request is {}",
            req.version
        )));
    }
    if !KNOWN_TEES.contains(&req.tee.as_str()) {
        return Err(KbsError::Auth(format!(
            "TEE {:?} is not supported here (supported: {})",
            req.tee,
            KNOWN_TEES.join(", ")
        )));
    }
    let mut nonce = [0u8; 32];
    getrandom::fill(&mut nonce).map_err(|e| KbsError::Auth(format!("no randomness: {e}")))?;
    let nonce = STANDARD.encode(nonce);
    let id = random_hex(16)?;
    let now = SystemTime::now();
    let expires = now + st.options.session_timeout;
    {
        let mut sessions = st.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|_, s| s.expires > now);
        sessions.insert(
            id.clone(),
            Session {
                nonce: nonce.clone(),
                tee: req.tee,
                expires,
                token: None,
            },
        );
    }
    KbsStats::bump(&st.options.stats.auths);
    let challenge = Challenge {
        nonce,
        extra_params: Value::String(String::new()),
    };
    let mut resp = Json(challenge).into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, set_cookie(&id, expires));
    Ok(resp)
}

async fn attest(
    State(st): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, KbsError> {
    let id = cookie(&headers)
        .ok_or_else(|| KbsError::Attest("no kbs-session-id cookie: call /auth first".into()))?;
    let (nonce, tee, expires) = {
        let sessions = st.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let s = sessions
            .get(&id)
            .ok_or_else(|| KbsError::Attest("unknown session: call /auth again".into()))?;
        if s.expires <= SystemTime::now() {
            return Err(KbsError::Attest("session expired: call /auth again".into()));
        }
        if let Some((token, _)) = &s.token {
            let mut resp = Json(TokenResponse {
                token: token.clone(),
            })
            .into_response();
            resp.headers_mut()
                .insert(header::SET_COOKIE, set_cookie(&id, s.expires));
            return Ok(resp);
        }
        (s.nonce.clone(), s.tee.clone(), s.expires)
    };
    let req: Attestation = serde_json::from_slice(&body)
        .map_err(|e| KbsError::Attest(format!("invalid request body: {e}")))?;
    if req.runtime_data.nonce != nonce {
        return Err(KbsError::Attest(
            "runtime-data nonce does not match this session's challenge".into(),
        ));
    }
    let init_data = match &req.init_data {
        Some(d) if d.format != "toml" => {
            return Err(KbsError::Attest(format!(
                "unsupported initdata format {:?} (only toml)",
                d.format
            )));
        }
        Some(d) => Some(
            InitData::parse(d.body.as_bytes())
                .map_err(|e| KbsError::Attest(format!("initdata: {e}")))?,
        ),
        None => None,
    };
    let digest = runtime_data::digest(
        HashAlgorithm::Sha384,
        &req.runtime_data.tee_pubkey,
        &nonce,
        &req.tee_evidence.additional_evidence,
    )
    .map_err(|e| KbsError::Attest(e.to_string()))?;
    let init_digest = init_data.as_ref().map(|d| d.digest());
    let expected = Expected {
        report_data: &digest,
        init_data_digest: init_digest.as_ref().map(|d| d.as_bytes()),
    };
    let mut claims = st
        .options
        .verifier
        .verify(&tee, &req.tee_evidence.primary_evidence, &expected)
        .map_err(|e| KbsError::Attest(e.to_string()))?;
    let mut input = serde_json::Map::new();
    if let Some(obj) = claims.as_object_mut() {
        if let Some(v) = obj.remove("init_data") {
            input.insert("init_data".into(), v);
            let data = init_data
                .as_ref()
                .map(|d| json!(d.data()))
                .unwrap_or(json!({}));
            input.insert("init_data_claims".into(), data);
        }
        if let Some(v) = obj.remove("report_data") {
            input.insert("report_data".into(), v);
            input.insert(
                "runtime_data_claims".into(),
                json!({
                    "tee-pubkey": req.runtime_data.tee_pubkey,
                    "nonce": nonce,
                    "additional-evidence": req.tee_evidence.additional_evidence,
                }),
            );
        }
    }
    input.insert(tee.clone(), claims);
    // Verifiers that emit no report_data still bind the key for resource encryption.
    input.entry("runtime_data_claims").or_insert_with(|| {
        json!({"tee-pubkey": req.runtime_data.tee_pubkey, "nonce": nonce,
               "additional-evidence": req.tee_evidence.additional_evidence})
    });
    let input = Value::Object(input);
    let refs = read(&st.reference_values);
    let policy = read(&st.attestation_policy);
    let appraisal =
        appraisal::appraise(&policy, &input, &refs).map_err(|e| KbsError::Attest(e.to_string()))?;
    let signer = st.signer();
    let token = signer
        .issue(&appraisal, input)
        .map_err(|e| KbsError::Attest(e.to_string()))?;
    let token_claims = signer
        .verify(&token)
        .map_err(|e| KbsError::Attest(e.to_string()))?;
    {
        let mut sessions = st.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = sessions.get_mut(&id) {
            s.token = Some((token.clone(), token_claims));
        }
    }
    KbsStats::bump(&st.options.stats.attestations);
    let mut resp = Json(TokenResponse { token }).into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, set_cookie(&id, expires));
    Ok(resp)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

fn token_claims(st: &AppState, headers: &HeaderMap) -> Result<Value, KbsError> {
    if let Some(id) = cookie(headers) {
        let sessions = st.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = sessions.get(&id)
            && s.expires > SystemTime::now()
            && let Some((token, _)) = &s.token
        {
            return st
                .signer()
                .verify(token)
                .map_err(|e| KbsError::TokenVerifier(e.to_string()));
        }
    }
    match bearer(headers) {
        Some(token) => st
            .signer()
            .verify(token)
            .map_err(|e| KbsError::TokenVerifier(e.to_string())),
        None => Err(KbsError::TokenNotFound),
    }
}

fn deny_reason(claims: &Value) -> String {
    let cpu = &claims["submods"]["cpu0"];
    format!(
        "cpu0 is {} with trust vector {}",
        cpu["ear.status"].as_str().unwrap_or("unknown"),
        cpu["ear.trustworthiness-vector"]
    )
}

async fn get_resource(
    State(st): State<Shared>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    let errors = st.options.trustee_errors;
    release_resource(&st, &path, &headers).unwrap_or_else(|e| e.respond(errors))
}

fn release_resource(st: &AppState, path: &str, headers: &HeaderMap) -> Result<Response, KbsError> {
    let path =
        ResourcePath::parse(path).map_err(|e| KbsError::InvalidRequestPath(e.to_string()))?;
    let claims = token_claims(st, headers)?;
    let policy = read(&st.resource_policy);
    let allowed =
        appraisal::resource_allowed(&policy, &claims, &path.to_string()).map_err(|e| {
            KbsError::PolicyDeny(format!("resource policy failed ({e}), so access is denied"))
        })?;
    if !allowed {
        return Err(KbsError::PolicyDeny(deny_reason(&claims)));
    }
    let data = st
        .resources
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&path.to_string())
        .cloned()
        .ok_or_else(|| KbsError::ResourceNotFound(path.to_string()))?;
    let key = claims
        .pointer("/submods/cpu0/ear.veraison.annotated-evidence/runtime_data_claims/tee-pubkey")
        .cloned()
        .ok_or_else(|| KbsError::Jwe("the token carries no tee-pubkey".into()))?;
    let key: TeePubKey =
        serde_json::from_value(key).map_err(|e| KbsError::Jwe(format!("tee-pubkey: {e}")))?;
    let sealed = jwe::seal(&key, &data).map_err(|e| KbsError::Jwe(e.to_string()))?;
    KbsStats::bump(&st.options.stats.resources);
    Ok(Json(sealed).into_response())
}

fn check_admin(st: &AppState, headers: &HeaderMap) -> Result<(), KbsError> {
    match &st.options.admin {
        AdminAuth::InsecureAllowAll => Ok(()),
        AdminAuth::DenyAll => Err(KbsError::AdminAuth("Admin endpoints disabled.".into())),
        AdminAuth::Ed25519PublicKey(pem) => {
            let token = bearer(headers)
                .ok_or_else(|| KbsError::AdminAuth("no Authorization: Bearer token".into()))?;
            let key = jsonwebtoken::DecodingKey::from_ed_pem(pem.as_bytes())
                .map_err(|e| KbsError::AdminAuth(format!("admin key: {e}")))?;
            let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
            v.required_spec_claims.clear();
            v.validate_aud = false;
            v.validate_nbf = true;
            jsonwebtoken::decode::<Value>(token, &key, &v)
                .map(|_| ())
                .map_err(|e| KbsError::AdminAuth(format!("Admin Token could not be verified: {e}")))
        }
    }
}

async fn put_resource(
    State(st): State<Shared>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, KbsError> {
    check_admin(&st, &headers)?;
    let path =
        ResourcePath::parse(&path).map_err(|e| KbsError::InvalidRequestPath(e.to_string()))?;
    st.resources
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .insert(path.to_string(), body.to_vec());
    Ok(StatusCode::OK.into_response())
}

fn decode_policy(body: &[u8]) -> Result<(Value, String), KbsError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| KbsError::AdminRequest(format!("Illegal SetPolicy Request Json: {e}")))?;
    let text = v["policy"].as_str().ok_or_else(|| {
        KbsError::AdminRequest("No `policy` field inside SetPolicy Request Json".into())
    })?;
    let rego = URL_SAFE_NO_PAD.decode(text).map_err(|e| {
        KbsError::AdminRequest(format!("policy is not base64url without padding: {e}"))
    })?;
    let rego = String::from_utf8(rego)
        .map_err(|_| KbsError::AdminRequest("policy is not UTF-8".into()))?;
    Ok((v, rego))
}

async fn set_resource_policy(
    State(st): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, KbsError> {
    check_admin(&st, &headers)?;
    let (_, rego) = decode_policy(&body)?;
    // Compile it now so a broken policy is refused instead of denying everything later.
    appraisal::resource_allowed(&rego, &json!({}), "a/b/c")
        .map_err(|e| KbsError::AdminRequest(format!("InvalidPolicy: {e}")))?;
    write(&st.resource_policy, rego);
    Ok(StatusCode::OK.into_response())
}

async fn get_resource_policy(
    State(st): State<Shared>,
    headers: HeaderMap,
) -> Result<Response, KbsError> {
    check_admin(&st, &headers)?;
    Ok(URL_SAFE_NO_PAD
        .encode(read(&st.resource_policy))
        .into_response())
}

async fn set_attestation_policy(
    State(st): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, KbsError> {
    check_admin(&st, &headers)?;
    let (v, rego) = decode_policy(&body)?;
    let id = v["policy_id"].as_str().unwrap_or("default");
    // CPU evidence is appraised with policy "default_cpu"; "default" is accepted as its alias.
    if id != "default_cpu" && id != "default" {
        return Err(KbsError::AdminRequest(format!(
            "policy id {id:?} is not used by this KBS: CPU evidence is appraised with \"default_cpu\""
        )));
    }
    appraisal::compile_check(&rego).map_err(|e| KbsError::AdminRequest(e.to_string()))?;
    write(&st.attestation_policy, rego);
    Ok(StatusCode::OK.into_response())
}

async fn set_reference_value(
    State(st): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, KbsError> {
    check_admin(&st, &headers)?;
    let fail = |d: String| {
        KbsError::AdminRequest(format!("RVPS: Failed to register reference value: {d}"))
    };
    let msg: Value = serde_json::from_slice(&body).map_err(|e| fail(e.to_string()))?;
    let version = msg["version"].as_str().unwrap_or("0.1.0");
    if version != "0.1.0" {
        return Err(fail(format!(
            "Version unmatched! Need 0.1.0, given {version}"
        )));
    }
    if msg["type"].as_str() != Some("sample") {
        return Err(fail(format!("unsupported provenance type {}", msg["type"])));
    }
    let payload = msg["payload"]
        .as_str()
        .ok_or_else(|| fail("no payload".into()))?;
    let payload = STANDARD
        .decode(payload)
        .map_err(|e| fail(format!("payload is not base64: {e}")))?;
    let values: BTreeMap<String, Value> =
        serde_json::from_slice(&payload).map_err(|e| fail(format!("payload: {e}")))?;
    let mut refs = st
        .reference_values
        .write()
        .unwrap_or_else(|p| p.into_inner());
    for (k, v) in values {
        refs.insert(k, v);
    }
    Ok(StatusCode::OK.into_response())
}

async fn get_reference_value(
    State(st): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, KbsError> {
    check_admin(&st, &headers)?;
    read(&st.reference_values)
        .get(&id)
        .map(|v| Json(v.clone()).into_response())
        .ok_or_else(|| {
            KbsError::AdminRequest(format!(
                "RVPS: No reference value found for the given id: {id}"
            ))
        })
}

/// A KBS running on its own thread (with its own runtime); dropping it stops the server.
pub struct RunningKbs {
    server: ServerThread,
    scheme: &'static str,
    state: Shared,
}

/// TLS material for HTTPS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain, PEM.
    pub cert_pem: String,
    /// Private key, PEM.
    pub key_pem: String,
}

impl RunningKbs {
    /// Starts the KBS on `listen` (`127.0.0.1:0` for a free port), over HTTPS when `tls` is set.
    pub fn start(options: KbsOptions, listen: &str, tls: Option<TlsFiles>) -> Result<Self, String> {
        let (app, state) = router_and_state(options).map_err(|e| e.to_string())?;
        let acceptor = match &tls {
            Some(t) => Some(super::tls::acceptor(t)?),
            None => None,
        };
        let server = ServerThread::spawn("test-kbs", listen, move |listener, stop| async move {
            match acceptor {
                None => serve_axum(listener, app, stop).await,
                Some(acceptor) => super::tls::serve(listener, acceptor, app, stop).await,
            }
        })
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        Ok(Self {
            server,
            scheme: if tls.is_some() { "https" } else { "http" },
            state,
        })
    }

    /// Replaces the token-signing key, as a Trustee whose key is rotated (or which restarts
    /// without a configured one): every token issued so far stops verifying
    /// (`TokenVerifierError`).
    pub fn rotate_token_key(&self) -> Result<(), String> {
        let fresh = TokenSigner::new(self.state.options.token_lifetime.as_secs())
            .map_err(|e| e.to_string())?;
        write(&self.state.signer, Arc::new(fresh));
        Ok(())
    }

    /// The base URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.server.addr())
    }

    /// The address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Blocks until the server stops (for the binary).
    pub fn wait(self) {
        self.server.wait();
    }
}
