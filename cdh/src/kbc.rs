//! Key broker clients: where resources come from.
//!
//! - [`CcKbc`]: the KBS. The CDH attests itself (the RCAR handshake, with evidence from the
//!   attestation agent's `GetEvidence`, as upstream's CDH does) and keeps the token and its TEE
//!   key until shortly before the token expires, so a fetch costs one HTTP round trip to the
//!   KBS. A refusal a fresh token may pass (Trustee's `TokenNotFound`, `TokenVerifierError`,
//!   `PolicyDeny`) drops them and attests again, once, within the same call.
//! - [`OfflineFs`]: `offline_fs_kbc`, resources from local JSON files
//!   (`{"<repo>/<type>/<tag>": "<base64>"}`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use peerpod_kbs_client::{Refusal, ResourceError};
use peerpod_kbs_protocol::keys::TeeKeyPair;
use peerpod_protocols::aa::attestation_agent::{
    ExtendRuntimeMeasurementRequest, GetEvidenceRequest, GetTeeTypeRequest, GetTokenRequest,
};
use peerpod_protocols::aa::attestation_agent_ttrpc::AttestationAgentServiceClient;
use zeroize::Zeroizing;

use crate::error::CdhError;
use crate::uri::ResourceUri;
use peerpod_protocols::client::Connection;

/// The attestation agent, over ttrpc.
pub struct AaClient {
    conn: Connection,
}

impl AaClient {
    /// The agent at `addr` (`unix:///…`); each call times out after `timeout`.
    pub fn new(addr: impl Into<String>, timeout: Duration) -> Self {
        Self {
            conn: Connection::new(
                "the attestation agent",
                "[aa] aa_socket in cdh.toml",
                addr,
                timeout,
            ),
        }
    }

    /// `GetToken(token_type)`: the reply bytes. The agent's INTERNAL (its KBS failed) is
    /// reported as unavailable.
    pub async fn get_token(&self, token_type: &str) -> Result<Vec<u8>, CdhError> {
        let req = GetTokenRequest {
            TokenType: token_type.into(),
            ..Default::default()
        };
        crate::conn::call(
            &self.conn,
            "GetToken",
            ttrpc::Code::UNAVAILABLE,
            |c, ctx| {
                let req = req.clone();
                async move {
                    AttestationAgentServiceClient::new(c)
                        .get_token(ctx, &req)
                        .await
                        .map(|r| r.Token)
                }
            },
        )
        .await
    }

    /// `GetEvidence(runtime_data)`: the evidence bytes.
    pub async fn get_evidence(&self, runtime_data: &[u8]) -> Result<Vec<u8>, CdhError> {
        let req = GetEvidenceRequest {
            RuntimeData: runtime_data.to_vec(),
            ..Default::default()
        };
        crate::conn::call(
            &self.conn,
            "GetEvidence",
            ttrpc::Code::INTERNAL,
            |c, ctx| {
                let req = req.clone();
                async move {
                    AttestationAgentServiceClient::new(c)
                        .get_evidence(ctx, &req)
                        .await
                        .map(|r| r.Evidence)
                }
            },
        )
        .await
    }

    /// `GetTeeType`.
    pub async fn tee(&self) -> Result<String, CdhError> {
        crate::conn::call(
            &self.conn,
            "GetTeeType",
            ttrpc::Code::INTERNAL,
            |c, ctx| async move {
                AttestationAgentServiceClient::new(c)
                    .get_tee_type(ctx, &GetTeeTypeRequest::default())
                    .await
                    .map(|r| r.tee)
            },
        )
        .await
    }

    /// `ExtendRuntimeMeasurement` into the agent's default register; the result's name.
    pub async fn extend_runtime_measurement(
        &self,
        domain: &str,
        operation: &str,
        content: &str,
    ) -> Result<String, CdhError> {
        let req = ExtendRuntimeMeasurementRequest {
            Domain: domain.into(),
            Operation: operation.into(),
            Content: content.into(),
            ..Default::default()
        };
        crate::conn::call(
            &self.conn,
            "ExtendRuntimeMeasurement",
            ttrpc::Code::INTERNAL,
            |c, ctx| {
                let req = req.clone();
                async move {
                    AttestationAgentServiceClient::new(c)
                        .extend_runtime_measurement(ctx, &req)
                        .await
                        .map(|r| format!("{:?}", r.Result.enum_value_or_default()))
                }
            },
        )
        .await
    }
}

/// A token and the TEE key it binds, from this CDH's own attestation.
struct Session {
    token: Zeroizing<String>,
    key: TeeKeyPair,
    expires: SystemTime,
}

/// Resources from the KBS. The CDH holds its own KBS session: it runs the RCAR handshake itself
/// with evidence from the attestation agent's `GetEvidence`, as upstream's CDH does. So a token
/// the KBS refuses is replaced within the same call (one re-attestation), whatever the agent
/// caches, and an agent that attests anew on every `GetToken` works the same.
pub struct CcKbc {
    url: String,
    http: reqwest::Client,
    aa: Arc<AaClient>,
    tee: tokio::sync::OnceCell<String>,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    fetch_timeout: Duration,
    init_data: Option<String>,
    attestations: std::sync::atomic::AtomicU64,
}

/// Re-attest this long before the token expires.
const REFRESH_MARGIN: Duration = Duration::from_secs(30);

/// Why the CDH's attestation to the KBS failed.
pub type AttestError = peerpod_kbs_client::rcar::RcarError<CdhError>;

impl CcKbc {
    /// The KBS at `url` (trusting only `cert` when given), with evidence from the agent `aa`.
    /// Each HTTP request times out after `timeout`; one fetch, with at most one attestation,
    /// after `fetch_timeout`. `init_data`, the document the TEE was bound to, goes into each
    /// `/attest` when given. A plain `http://` URL is refused unless `insecure_http`. An empty
    /// `url` is accepted, as upstream does: each fetch then fails naming `[kbc] url`.
    pub fn new(
        url: &str,
        cert: Option<&str>,
        insecure_http: bool,
        aa: Arc<AaClient>,
        timeout: Duration,
        fetch_timeout: Duration,
        init_data: Option<String>,
    ) -> Result<Self, CdhError> {
        peerpod_kbs_client::check_scheme(
            url,
            insecure_http,
            "[peerpod] insecure_http = true in cdh.toml",
        )?;
        let http = peerpod_kbs_client::http_client(
            url,
            cert,
            timeout,
            concat!("peerpod-confidential-data-hub/", env!("CARGO_PKG_VERSION")),
            // The KBS session of the handshake is a cookie.
            true,
        )?;
        Ok(Self {
            url: url.to_string(),
            http,
            aa,
            tee: tokio::sync::OnceCell::new(),
            session: tokio::sync::Mutex::new(None),
            fetch_timeout,
            init_data,
            attestations: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// How many attestations this client has run.
    pub fn attestations(&self) -> u64 {
        self.attestations.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The cached session, or a new one from a fresh attestation (`true` when new). Concurrent
    /// callers share one attestation: the lock is held across it on purpose.
    async fn session(&self) -> Result<(Arc<Session>, bool), CdhError> {
        let mut guard = self.session.lock().await;
        if let Some(s) = guard.as_ref()
            && SystemTime::now() + REFRESH_MARGIN < s.expires
        {
            return Ok((Arc::clone(s), false));
        }
        let tee = self.tee.get_or_try_init(|| self.aa.tee()).await?.clone();
        let key = TeeKeyPair::generate();
        let handshake = peerpod_kbs_client::rcar::Handshake {
            http: &self.http,
            base: &self.url,
            tee: &tee,
            key: &key,
            init_data: self.init_data.as_deref(),
        };
        let aa = Arc::clone(&self.aa);
        let token = handshake
            .run(|report_data| async move {
                let bytes = Zeroizing::new(aa.get_evidence(&report_data).await?);
                serde_json::from_slice::<serde_json::Value>(&bytes).map_err(|_| {
                    CdhError::AgentReply {
                        method: "GetEvidence",
                        reason: "is not JSON evidence",
                    }
                })
            })
            .await
            .map_err(|source| CdhError::Attestation {
                url: self.url.clone(),
                source: Box::new(source),
            })?;
        self.attestations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(tee = %tee, "attested to the KBS");
        let session = Arc::new(Session {
            expires: peerpod_kbs_client::token_expiry(&token),
            token,
            key,
        });
        *guard = Some(Arc::clone(&session));
        Ok((session, true))
    }

    async fn forget(&self, stale: &Arc<Session>) {
        let mut guard = self.session.lock().await;
        if guard.as_ref().is_some_and(|s| Arc::ptr_eq(s, stale)) {
            *guard = None;
        }
    }

    /// Fetches and decrypts a resource, within the fetch timeout.
    pub async fn get(&self, uri: &ResourceUri) -> Result<Zeroizing<Vec<u8>>, CdhError> {
        if self.url.is_empty() {
            return Err(CdhError::NoKbsUrl);
        }
        tokio::time::timeout(self.fetch_timeout, self.fetch(uri))
            .await
            .map_err(|_| CdhError::KbsTimeout {
                uri: uri.to_string(),
                seconds: self.fetch_timeout.as_secs(),
            })?
    }

    async fn fetch(&self, uri: &ResourceUri) -> Result<Zeroizing<Vec<u8>>, CdhError> {
        let mut retried = false;
        loop {
            let (session, fresh) = self.session().await?;
            match peerpod_kbs_client::get_resource(
                &self.http,
                &self.url,
                &uri.path,
                &session.token,
                &session.key,
            )
            .await
            {
                Ok(bytes) => return Ok(bytes),
                // A refused token (rotated signing key, expired) or a denial of this token's
                // claims (reference values or the attestation policy fixed since it was
                // issued): one fresh attestation may pass. Bounded to one per call.
                Err(e)
                    if !fresh
                        && !retried
                        && e.refusal()
                            .is_some_and(Refusal::may_pass_with_a_fresh_token) =>
                {
                    tracing::info!(
                        resource = %uri,
                        refusal = ?e.refusal(),
                        "the KBS refused our token; attesting again"
                    );
                    self.forget(&session).await;
                    retried = true;
                }
                Err(e) => return Err(resource_error(uri, e)),
            }
        }
    }
}

fn resource_error(uri: &ResourceUri, source: ResourceError) -> CdhError {
    let uri = uri.to_string();
    match source.refusal() {
        Some(Refusal::NotFound) => CdhError::NotFound {
            uri,
            source: Some(source),
        },
        Some(Refusal::Policy) => CdhError::Refused { uri, source },
        Some(Refusal::Token) => CdhError::TokenRefused { uri, source },
        _ => CdhError::Kbs { uri, source },
    }
}

/// `offline_fs_kbc`: resources from JSON files mapping `<repo>/<type>/<tag>` to base64.
pub struct OfflineFs {
    resources: BTreeMap<String, Zeroizing<Vec<u8>>>,
}

impl OfflineFs {
    /// Loads the files; a missing one is skipped with a warning.
    pub fn load(files: &[PathBuf]) -> Result<Self, CdhError> {
        let mut resources = BTreeMap::new();
        for file in files {
            let text = match std::fs::read(file) {
                Ok(t) => Zeroizing::new(t),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    tracing::warn!(file = %file.display(), "offline_fs_kbc file missing; skipped");
                    continue;
                }
                Err(source) => {
                    return Err(CdhError::Io {
                        action: "read",
                        path: file.clone(),
                        source,
                    });
                }
            };
            // The parser's complaint would quote the file, which holds secrets: only where.
            let map: BTreeMap<String, String> =
                serde_json::from_slice(&text).map_err(|e| CdhError::OfflineFile {
                    path: file.clone(),
                    line: e.line(),
                    column: e.column(),
                })?;
            for (path, b64) in map {
                let b64 = Zeroizing::new(b64);
                let value = base64::engine::general_purpose::STANDARD
                    .decode(b64.as_bytes())
                    .map_err(|_| CdhError::OfflineValue {
                        path: file.clone(),
                        resource: path.clone(),
                    })?;
                if resources
                    .insert(path.clone(), Zeroizing::new(value))
                    .is_some()
                {
                    tracing::warn!(resource = %path, "offline_fs_kbc: a later file overrides a resource");
                }
            }
        }
        Ok(Self { resources })
    }

    /// The resource, if present.
    pub fn get(&self, uri: &ResourceUri) -> Result<Zeroizing<Vec<u8>>, CdhError> {
        self.resources
            .get(&uri.path.to_string())
            .cloned()
            .ok_or_else(|| CdhError::NotFound {
                uri: uri.to_string(),
                source: None,
            })
    }
}
