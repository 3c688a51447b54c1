//! The KBS client: the RCAR handshake (auth → evidence → attest), a token cache, resources.
//!
//! One attestation serves every caller until the token is about to expire: the token and the
//! TEE key it binds are cached, and concurrent callers wait for the one attestation in flight
//! instead of starting their own. A resource request answered 401 (the KBS forgot us, or the
//! token expired early) triggers exactly one re-attestation.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use peerpod_kbs_protocol::PROTOCOL_VERSION;
use peerpod_kbs_protocol::keys::TeeKeyPair;
use peerpod_kbs_protocol::messages::{
    Attestation, Challenge, InitDataBody, Request, ResourcePath, RuntimeData, TeeEvidence,
    TokenResponse,
};
use peerpod_kbs_protocol::runtime_data::{self, HashAlgorithm};
use serde_json::json;
use zeroize::Zeroizing;

use crate::attester::{AttestError, Attester};

/// The TEE key's algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyAlgorithm {
    /// EC P-256 with ECDH-ES+A256KW (the default).
    #[default]
    EcP256,
    /// EC P-521 with ECDH-ES+A256KW.
    EcP521,
    /// RSA-2048 with RSA-OAEP-256.
    Rsa,
}

impl KeyAlgorithm {
    fn generate(self) -> Result<TeeKeyPair, KbsError> {
        match self {
            KeyAlgorithm::EcP256 => Ok(TeeKeyPair::generate()),
            KeyAlgorithm::EcP521 => Ok(TeeKeyPair::generate_p521()),
            KeyAlgorithm::Rsa => {
                TeeKeyPair::generate_rsa().map_err(|e| KbsError::Protocol(e.to_string()))
            }
        }
    }
}

/// How to reach the KBS.
#[derive(Debug, Clone)]
pub struct KbsConfig {
    /// Base URL, e.g. `https://kbs.example:8080`.
    pub url: String,
    /// A CA certificate (PEM) to trust for HTTPS instead of the system's roots.
    pub cert: Option<String>,
    /// The TEE key's algorithm.
    pub key_algorithm: KeyAlgorithm,
    /// The initdata document (TOML) to send in `/attest`.
    pub init_data: Option<String>,
    /// Timeout of each HTTP request.
    pub request_timeout: Duration,
    /// Attempts of a handshake on transient failures (network, 5xx).
    pub attempts: u32,
    /// Re-attest this long before the token expires.
    pub refresh_margin: Duration,
    /// Accept a plain-`http://` URL (`[peerpod] insecure_http`; tests only).
    pub insecure_http: bool,
}

impl KbsConfig {
    /// Defaults for a KBS URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            cert: None,
            key_algorithm: KeyAlgorithm::default(),
            init_data: None,
            request_timeout: Duration::from_secs(30),
            attempts: 3,
            refresh_margin: Duration::from_secs(30),
            insecure_http: false,
        }
    }
}

/// Why talking to the KBS failed.
#[derive(Debug, thiserror::Error)]
pub enum KbsError {
    /// The request did not complete (connection refused, timeout, TLS).
    #[error("KBS {what} request to {url} failed")]
    Http {
        /// The step.
        what: &'static str,
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The KBS answered with an error status.
    #[error("KBS {what} answered {status}: {detail}")]
    Status {
        /// The step.
        what: &'static str,
        /// HTTP status.
        status: u16,
        /// The error body's type and detail, or the raw body.
        detail: String,
    },
    /// The KBS answered something we cannot use.
    #[error("KBS protocol error: {0}")]
    Protocol(String),
    /// The KBS's reply could not be read, or is too large.
    #[error("KBS {what} reply")]
    Body {
        /// The step.
        what: &'static str,
        /// Why.
        #[source]
        source: peerpod_kbs_client::BodyError,
    },
    /// The KBS's reply is not the message expected. The parser's complaint is left out: it
    /// would quote the reply, and a token reply holds the token.
    #[error("the KBS's {what} reply is not {expected}")]
    Malformed {
        /// The step.
        what: &'static str,
        /// The message expected.
        expected: &'static str,
    },
    /// The configuration cannot be used.
    #[error(transparent)]
    Client(#[from] peerpod_kbs_client::ClientError),
    /// The attester failed.
    #[error("cannot make evidence")]
    Attester(#[from] AttestError),
    /// The resource could not be fetched or decrypted.
    #[error(transparent)]
    Resource(peerpod_kbs_client::ResourceError),
}

impl KbsError {
    /// Whether retrying may help: network failures and server errors, not refusals.
    pub fn is_transient(&self) -> bool {
        match self {
            KbsError::Http { .. } => true,
            KbsError::Body { source, .. } => {
                matches!(source, peerpod_kbs_client::BodyError::Read(_))
            }
            KbsError::Status { status, .. } => *status >= 500,
            KbsError::Resource(e) => e.is_transient(),
            _ => false,
        }
    }

    /// The HTTP status of a KBS error answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            KbsError::Status { status, .. } => Some(*status),
            KbsError::Resource(e) => e.status(),
            _ => None,
        }
    }
}

/// A token and the TEE key it binds.
pub struct Session {
    /// The attestation token (EAR JWT).
    pub token: String,
    /// The TEE key resources are encrypted to.
    pub key: TeeKeyPair,
    /// When the token expires.
    pub expires: SystemTime,
}

/// A KBS client for one TEE.
pub struct KbsClient {
    config: KbsConfig,
    http: reqwest::Client,
    attester: Arc<dyn Attester>,
    cache: tokio::sync::Mutex<Option<Arc<Session>>>,
    attestations: AtomicU64,
}

/// Reads a response, turning an error status into [`KbsError::Status`] with the error body.
async fn checked(
    what: &'static str,
    resp: reqwest::Response,
) -> Result<reqwest::Response, KbsError> {
    peerpod_kbs_client::checked(resp)
        .await
        .map_err(|e| KbsError::Status {
            what,
            status: e.status,
            detail: e.detail,
        })
}

/// A successful reply's body, at most [`peerpod_kbs_client::MAX_KBS_REPLY`] bytes, as `T`.
async fn read_json<T: serde::de::DeserializeOwned>(
    what: &'static str,
    expected: &'static str,
    resp: reqwest::Response,
) -> Result<T, KbsError> {
    let resp = checked(what, resp).await?;
    let body = peerpod_kbs_client::read_body(resp, peerpod_kbs_client::MAX_KBS_REPLY)
        .await
        .map_err(|source| KbsError::Body { what, source })?;
    let body = Zeroizing::new(body);
    serde_json::from_slice(&body).map_err(|_| KbsError::Malformed { what, expected })
}

impl KbsClient {
    /// A client of the configured KBS, attesting with `attester`.
    pub fn new(config: KbsConfig, attester: Arc<dyn Attester>) -> Result<Self, KbsError> {
        peerpod_kbs_client::check_scheme(
            &config.url,
            config.insecure_http,
            "[peerpod] insecure_http = true in aa.toml",
        )?;
        let http = peerpod_kbs_client::http_client(
            &config.url,
            config.cert.as_deref(),
            config.request_timeout,
            concat!("peerpod-attestation-agent/", env!("CARGO_PKG_VERSION")),
            true,
        )
        .map_err(|e| KbsError::Protocol(format!("{e} (see [token_configs.kbs] cert)")))?;
        Ok(Self {
            config,
            http,
            attester,
            cache: tokio::sync::Mutex::new(None),
            attestations: AtomicU64::new(0),
        })
    }

    /// How many attestations this client has run.
    pub fn attestations(&self) -> u64 {
        self.attestations.load(Ordering::Relaxed)
    }

    /// The cached session, or a new one. Concurrent callers share one attestation.
    pub async fn session(&self) -> Result<Arc<Session>, KbsError> {
        let mut cache = self.cache.lock().await;
        if let Some(s) = cache.as_ref()
            && SystemTime::now() + self.config.refresh_margin < s.expires
        {
            return Ok(Arc::clone(s));
        }
        let session = Arc::new(self.attest().await?);
        *cache = Some(Arc::clone(&session));
        Ok(session)
    }

    /// Forgets the cached session, if it is `stale` (so a racing caller's fresh one survives).
    async fn forget(&self, stale: &Arc<Session>) {
        let mut cache = self.cache.lock().await;
        if cache.as_ref().is_some_and(|s| Arc::ptr_eq(s, stale)) {
            *cache = None;
        }
    }

    async fn attest(&self) -> Result<Session, KbsError> {
        let mut delay = Duration::from_millis(500);
        let attempts = self.config.attempts.max(1);
        for attempt in 1..=attempts {
            match self.handshake().await {
                Ok(session) => return Ok(session),
                Err(e) if e.is_transient() && attempt < attempts => {
                    tracing::warn!(attempt, error = %e, "attestation failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => return Err(e),
            }
        }
        Err(KbsError::Protocol("no attempt was made".into()))
    }

    async fn handshake(&self) -> Result<Session, KbsError> {
        let base = self.config.url.trim_end_matches('/');
        let key = self.config.key_algorithm.generate()?;
        let auth_url = format!("{base}/kbs/v0/auth");
        let request = Request {
            version: PROTOCOL_VERSION.to_string(),
            tee: self.attester.tee().to_string(),
            extra_params: json!({"supported-hash-algorithms": HashAlgorithm::ALL.map(HashAlgorithm::name)}),
        };
        let resp = self
            .http
            .post(&auth_url)
            .json(&request)
            .send()
            .await
            .map_err(|source| KbsError::Http {
                what: "auth",
                url: auth_url.clone(),
                source,
            })?;
        let challenge: Challenge = read_json("auth", "a challenge", resp).await?;
        let alg = match challenge.selected_hash_algorithm() {
            Some(name) => {
                HashAlgorithm::from_name(name).map_err(|e| KbsError::Protocol(e.to_string()))?
            }
            None => HashAlgorithm::default(),
        };
        let tee_pubkey = key.public_key();
        let report_data = runtime_data::digest(alg, &tee_pubkey, &challenge.nonce, "")
            .map_err(|e| KbsError::Protocol(e.to_string()))?;
        let evidence = self.attester.evidence(&report_data).await?;
        let body = Attestation {
            init_data: self.config.init_data.as_ref().map(|text| InitDataBody {
                format: "toml".into(),
                body: text.clone(),
            }),
            runtime_data: RuntimeData {
                nonce: challenge.nonce,
                tee_pubkey,
            },
            tee_evidence: TeeEvidence {
                primary_evidence: evidence,
                additional_evidence: String::new(),
            },
        };
        let attest_url = format!("{base}/kbs/v0/attest");
        let resp = self
            .http
            .post(&attest_url)
            .json(&body)
            .send()
            .await
            .map_err(|source| KbsError::Http {
                what: "attest",
                url: attest_url.clone(),
                source,
            })?;
        let token: TokenResponse = read_json("attest", "a token", resp).await?;
        self.attestations.fetch_add(1, Ordering::Relaxed);
        tracing::info!(tee = self.attester.tee(), "attested to the KBS");
        Ok(Session {
            expires: peerpod_kbs_client::token_expiry(&token.token),
            token: token.token,
            key,
        })
    }

    /// Fetches and decrypts a resource (`<repository>/<type>/<tag>`).
    pub async fn resource(&self, path: &str) -> Result<Zeroizing<Vec<u8>>, KbsError> {
        let path = ResourcePath::parse(path).map_err(|e| KbsError::Protocol(e.to_string()))?;
        let mut retried = false;
        loop {
            let session = self.session().await?;
            match peerpod_kbs_client::get_resource(
                &self.http,
                &self.config.url,
                &path,
                &session.token,
                &session.key,
            )
            .await
            {
                Err(e) if e.status() == Some(401) && !retried => {
                    tracing::info!(resource = %path, "the KBS refused our token; attesting again");
                    self.forget(&session).await;
                    retried = true;
                }
                other => return other.map_err(KbsError::Resource),
            }
        }
    }
}
