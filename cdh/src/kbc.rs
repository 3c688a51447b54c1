//! Key broker clients: where resources come from.
//!
//! - [`CcKbc`]: the KBS, with the attestation agent's token and TEE key (`GetToken("kbs")` over
//!   ttrpc). The agent attests once and caches; this client also keeps the token and key until
//!   shortly before the token expires, so a fetch costs one HTTP round trip to the KBS. A 401
//!   drops them and asks the agent again, once.
//! - [`OfflineFs`]: `offline_fs_kbc`, resources from local JSON files
//!   (`{"<repo>/<type>/<tag>": "<base64>"}`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use peerpod_kbs_client::ResourceError;
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

/// A token and the TEE key it binds, as the agent handed them over.
struct Session {
    token: Zeroizing<String>,
    key: TeeKeyPair,
    expires: SystemTime,
}

/// Resources from the KBS with the attestation agent's token.
pub struct CcKbc {
    url: String,
    http: reqwest::Client,
    aa: Arc<AaClient>,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
}

/// Re-fetch the token this long before it expires.
const REFRESH_MARGIN: Duration = Duration::from_secs(30);

impl CcKbc {
    /// The KBS at `url` (trusting only `cert` when given), through the agent `aa`. A plain
    /// `http://` URL is refused unless `insecure_http`. An empty `url` is accepted, as upstream
    /// does: each fetch then fails naming `[kbc] url`.
    pub fn new(
        url: &str,
        cert: Option<&str>,
        insecure_http: bool,
        aa: Arc<AaClient>,
        timeout: Duration,
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
            false,
        )?;
        Ok(Self {
            url: url.to_string(),
            http,
            aa,
            session: tokio::sync::Mutex::new(None),
        })
    }

    async fn session(&self) -> Result<Arc<Session>, CdhError> {
        let mut guard = self.session.lock().await;
        if let Some(s) = guard.as_ref()
            && SystemTime::now() + REFRESH_MARGIN < s.expires
        {
            return Ok(Arc::clone(s));
        }
        let reply = Zeroizing::new(self.aa.get_token("kbs").await?);
        #[derive(serde::Deserialize)]
        struct Reply {
            token: String,
            tee_keypair: String,
        }
        let reply: Reply = serde_json::from_slice(&reply).map_err(|_| CdhError::TokenReply {
            reason: "is not {token, tee_keypair}",
        })?;
        let pem = Zeroizing::new(reply.tee_keypair);
        let key = TeeKeyPair::from_pem(&pem).map_err(|_| CdhError::TokenReply {
            reason: "holds a TEE key that does not parse",
        })?;
        let session = Arc::new(Session {
            expires: peerpod_kbs_client::token_expiry(&reply.token),
            token: Zeroizing::new(reply.token),
            key,
        });
        *guard = Some(Arc::clone(&session));
        Ok(session)
    }

    async fn forget(&self, stale: &Arc<Session>) {
        let mut guard = self.session.lock().await;
        if guard.as_ref().is_some_and(|s| Arc::ptr_eq(s, stale)) {
            *guard = None;
        }
    }

    /// Fetches and decrypts a resource.
    pub async fn get(&self, uri: &ResourceUri) -> Result<Zeroizing<Vec<u8>>, CdhError> {
        if self.url.is_empty() {
            return Err(CdhError::NoKbsUrl);
        }
        let mut retried = false;
        loop {
            let session = self.session().await?;
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
                Err(e) if e.status() == Some(401) && !retried => {
                    tracing::info!(resource = %uri, "the KBS refused the token; asking the attestation agent again");
                    self.forget(&session).await;
                    retried = true;
                }
                Err(source) if source.status() == Some(401) => {
                    return Err(CdhError::TokenRefused {
                        uri: uri.to_string(),
                        source,
                    });
                }
                Err(e) => return Err(resource_error(uri, e)),
            }
        }
    }
}

fn resource_error(uri: &ResourceUri, source: ResourceError) -> CdhError {
    let uri = uri.to_string();
    match source.status() {
        Some(404) => CdhError::NotFound {
            uri,
            source: Some(source),
        },
        Some(401 | 403) => CdhError::Refused { uri, source },
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
