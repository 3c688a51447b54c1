//! The KBS client: the RCAR handshake (auth → evidence → attest), a token cache, resources.
//!
//! One attestation serves every caller until the token is about to expire: the token and the
//! TEE key it binds are cached, and concurrent callers wait for the one attestation in flight
//! instead of starting their own. A resource request the KBS refuses in a way a fresh token may
//! pass (a token it no longer accepts, or a policy denial of this token's claims, by Trustee's
//! error type) triggers exactly one re-attestation. The handshake itself is
//! [`peerpod_kbs_client::rcar`], shared with the CDH.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use peerpod_kbs_protocol::keys::TeeKeyPair;
use peerpod_kbs_protocol::messages::ResourcePath;
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
        use peerpod_kbs_client::rcar::{Handshake, RcarError};
        let key = self.config.key_algorithm.generate()?;
        let handshake = Handshake {
            http: &self.http,
            base: &self.config.url,
            tee: self.attester.tee(),
            key: &key,
            init_data: self.config.init_data.as_deref(),
        };
        let attester = Arc::clone(&self.attester);
        let token = handshake
            .run(|report_data| async move { attester.evidence(&report_data).await })
            .await
            .map_err(|e| match e {
                RcarError::Http { what, url, source } => KbsError::Http { what, url, source },
                RcarError::Status { what, source } => KbsError::Status {
                    what,
                    status: source.status,
                    detail: source.detail,
                },
                RcarError::Body { what, source } => KbsError::Body { what, source },
                RcarError::Malformed { what, expected } => KbsError::Malformed { what, expected },
                RcarError::Protocol(text) => KbsError::Protocol(text),
                RcarError::Evidence(e) => KbsError::Attester(e),
            })?;
        self.attestations.fetch_add(1, Ordering::Relaxed);
        tracing::info!(tee = self.attester.tee(), "attested to the KBS");
        Ok(Session {
            expires: peerpod_kbs_client::token_expiry(&token),
            token: token.to_string(),
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
                // A refused token or a denial of this token's claims: one fresh attestation
                // may pass (see peerpod_kbs_client::Refusal).
                Err(e)
                    if !retried && e.refusal().is_some_and(|r| r.may_pass_with_a_fresh_token()) =>
                {
                    tracing::info!(resource = %path, "the KBS refused our token; attesting again");
                    self.forget(&session).await;
                    retried = true;
                }
                other => return other.map_err(KbsError::Resource),
            }
        }
    }
}
