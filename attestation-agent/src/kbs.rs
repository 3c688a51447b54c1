//! The KBS client: the RCAR handshake (auth → evidence → attest), a token cache, resources.
//!
//! One attestation serves every caller until the token is about to expire: the token and the
//! TEE key it binds are cached, and concurrent callers wait for the one attestation in flight
//! instead of starting their own. That attestation runs as a task of its own, bounded as a
//! whole (retries, back-off, evidence) by [`KbsConfig::deadline`]; every caller waiting for it
//! gets its outcome, success or failure, so a KBS that stalls costs one attestation per deadline
//! however many callers queue, and no caller waits longer than the deadline. A caller that gives
//! up (its request cancelled) does not end the attestation the others wait for. A failure is not
//! cached: the next caller after it starts a new attestation. A resource request the KBS refuses in a way a fresh token may
//! pass (a token it no longer accepts, or a policy denial of this token's claims, by Trustee's
//! error type) triggers exactly one re-attestation. The handshake itself is
//! [`peerpod_kbs_client::rcar`], shared with the CDH.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;

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
    /// The most one attestation may take, retries, back-off and evidence included
    /// (`[peerpod] attestation_deadline_secs`); also the most a caller waits for one.
    pub deadline: Duration,
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
            deadline: Duration::from_secs(60),
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
    /// The attestation did not finish within its deadline.
    #[error(
        "attestation did not finish within {secs} s (attempt {attempt} was {during}); if the \
         KBS or the TEE is this slow, raise [peerpod] attestation_deadline_secs in aa.toml"
    )]
    Deadline {
        /// The deadline, in seconds.
        secs: u64,
        /// The handshake attempt under way (1-based).
        attempt: u32,
        /// What that attempt was doing.
        during: &'static str,
        /// The previous attempt's failure, when a retry was under way.
        #[source]
        last: Option<Box<KbsError>>,
    },
    /// The attestation this caller waited for did not end within the deadline.
    #[error(
        "gave up after waiting {secs} s for the attestation in flight; if the KBS or the TEE \
         is this slow, raise [peerpod] attestation_deadline_secs in aa.toml"
    )]
    Waited {
        /// The deadline, in seconds.
        secs: u64,
    },
    /// The attestation in flight ended without an outcome (its task was stopped).
    #[error("the attestation in flight ended without an outcome; try again")]
    Abandoned,
    /// The outcome of an attestation shared by every caller that waited for it.
    #[error(transparent)]
    Shared(Arc<KbsError>),
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
            KbsError::Shared(e) => e.is_transient(),
            _ => false,
        }
    }

    /// Whether the attestation ran out of time ([`KbsError::Deadline`], [`KbsError::Waited`]).
    pub fn is_deadline(&self) -> bool {
        match self {
            KbsError::Deadline { .. } | KbsError::Waited { .. } => true,
            KbsError::Shared(e) => e.is_deadline(),
            _ => false,
        }
    }

    /// The HTTP status of a KBS error answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            KbsError::Status { status, .. } => Some(*status),
            KbsError::Resource(e) => e.status(),
            KbsError::Shared(e) => e.status(),
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
    inner: Arc<Inner>,
}

/// An attestation's outcome, shared by every caller that waited for it.
type Outcome = Result<Arc<Session>, Arc<KbsError>>;

/// What the handshake under way is doing, for the deadline's error.
const AUTH: u8 = 0;
const EVIDENCE: u8 = 1;
const ATTEST: u8 = 2;

/// A waiter's slack past the attestation's own deadline, so that the attestation's error (which
/// says what it was doing) reaches the waiters before their own timer fires.
const WAIT_SLACK: Duration = Duration::from_millis(250);

struct Inner {
    config: KbsConfig,
    http: reqwest::Client,
    attester: Arc<dyn Attester>,
    cache: Mutex<Cache>,
    attestations: AtomicU64,
    handshakes: AtomicU64,
}

#[derive(Default)]
struct Cache {
    session: Option<Arc<Session>>,
    flight: Option<Flight>,
}

/// The attestation in flight: its outcome, once there is one, and when it will have given up.
struct Flight {
    outcome: watch::Receiver<Option<Outcome>>,
    ends: Instant,
}

/// Clears the flight when the attestation task ends, however it ends (even stopped or
/// panicking), so that a later caller starts a new one instead of waiting for a dead one.
struct Landing<'a>(&'a Inner);

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        self.0.cache().flight = None;
    }
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
            inner: Arc::new(Inner {
                config,
                http,
                attester,
                cache: Mutex::new(Cache::default()),
                attestations: AtomicU64::new(0),
                handshakes: AtomicU64::new(0),
            }),
        })
    }

    /// How many attestations this client has completed (tokens obtained).
    pub fn attestations(&self) -> u64 {
        self.inner.attestations.load(Ordering::Relaxed)
    }

    /// How many handshakes this client has started, retries included.
    pub fn handshakes(&self) -> u64 {
        self.inner.handshakes.load(Ordering::Relaxed)
    }

    /// The cached session, or a new one. Concurrent callers share one attestation and its
    /// outcome; none waits longer than [`KbsConfig::deadline`] (plus a moment for the
    /// attestation's own error to arrive).
    pub async fn session(&self) -> Result<Arc<Session>, KbsError> {
        let deadline = self.inner.config.deadline;
        let (mut outcome, ends) = {
            let mut cache = self.inner.cache();
            if let Some(s) = cache.session.as_ref()
                && SystemTime::now() + self.inner.config.refresh_margin < s.expires
            {
                return Ok(Arc::clone(s));
            }
            let flight = match &cache.flight {
                Some(flight) => flight,
                // The task needs the lock held here to land, so it cannot end before its flight
                // is recorded.
                None => cache.flight.insert(self.inner.launch()),
            };
            (flight.outcome.clone(), flight.ends)
        };
        let limit = ends.min(Instant::now() + deadline) + WAIT_SLACK;
        let outcome = tokio::time::timeout_at(limit, outcome.wait_for(Option::is_some))
            .await
            .map_err(|_| KbsError::Waited {
                secs: deadline.as_secs(),
            })?
            .map_err(|_| KbsError::Abandoned)?
            .clone();
        match outcome {
            Some(Ok(session)) => Ok(session),
            Some(Err(e)) => Err(KbsError::Shared(e)),
            None => Err(KbsError::Abandoned),
        }
    }

    /// Forgets the cached session, if it is `stale` (so a racing caller's fresh one survives).
    fn forget(&self, stale: &Arc<Session>) {
        let mut cache = self.inner.cache();
        if cache
            .session
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(s, stale))
        {
            cache.session = None;
        }
    }
}

impl Inner {
    fn cache(&self) -> MutexGuard<'_, Cache> {
        // The lock is never held across a panic point that leaves the cache inconsistent.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts an attestation as a task of its own, so that it ends (and its outcome reaches
    /// every waiter) even when the caller that started it gives up.
    fn launch(self: &Arc<Self>) -> Flight {
        let ends = Instant::now() + self.config.deadline;
        let (tx, rx) = watch::channel(None);
        let inner = Arc::clone(self);
        tokio::spawn(async move {
            let landing = Landing(&inner);
            let outcome = inner.attest(ends).await;
            let outcome: Outcome = outcome.map(Arc::new).map_err(Arc::new);
            if let Ok(session) = &outcome {
                inner.cache().session = Some(Arc::clone(session));
            }
            // Land before telling the waiters: a caller arriving after the outcome finds the
            // cached session, or no flight and starts a new attestation.
            drop(landing);
            tx.send_replace(Some(outcome));
        });
        Flight { outcome: rx, ends }
    }

    /// Handshakes until one succeeds, fails for good, the attempts run out, or `ends` passes.
    async fn attest(&self, ends: Instant) -> Result<Session, KbsError> {
        let secs = self.config.deadline.as_secs();
        let mut delay = Duration::from_millis(500);
        let attempts = self.config.attempts.max(1);
        let mut last: Option<KbsError> = None;
        for attempt in 1..=attempts {
            self.handshakes.fetch_add(1, Ordering::Relaxed);
            let stage = AtomicU8::new(AUTH);
            let error = match tokio::time::timeout_at(ends, self.handshake(&stage)).await {
                Ok(Ok(session)) => return Ok(session),
                Ok(Err(e)) => e,
                Err(_) => {
                    return Err(KbsError::Deadline {
                        secs,
                        attempt,
                        during: match stage.load(Ordering::Relaxed) {
                            AUTH => "waiting for the KBS's auth reply",
                            EVIDENCE => "making evidence in the TEE",
                            _ => "waiting for the KBS's attest reply",
                        },
                        last: last.map(Box::new),
                    });
                }
            };
            if !(error.is_transient() && attempt < attempts) {
                return Err(error);
            }
            if Instant::now() + delay >= ends {
                return Err(KbsError::Deadline {
                    secs,
                    attempt: attempt + 1,
                    during: "not started: the deadline passes before the retry's back-off ends",
                    last: Some(Box::new(error)),
                });
            }
            tracing::warn!(attempt, error = %error, "attestation failed; retrying");
            tokio::time::sleep(delay).await;
            delay *= 2;
            last = Some(error);
        }
        Err(KbsError::Protocol("no attempt was made".into()))
    }

    async fn handshake(&self, stage: &AtomicU8) -> Result<Session, KbsError> {
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
            .run(|report_data| async move {
                stage.store(EVIDENCE, Ordering::Relaxed);
                let evidence = attester.evidence(&report_data).await;
                stage.store(ATTEST, Ordering::Relaxed);
                evidence
            })
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
}

impl KbsClient {
    /// Fetches and decrypts a resource (`<repository>/<type>/<tag>`).
    pub async fn resource(&self, path: &str) -> Result<Zeroizing<Vec<u8>>, KbsError> {
        let path = ResourcePath::parse(path).map_err(|e| KbsError::Protocol(e.to_string()))?;
        let mut retried = false;
        loop {
            let session = self.session().await?;
            match peerpod_kbs_client::get_resource(
                &self.inner.http,
                &self.inner.config.url,
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
                    self.forget(&session);
                    retried = true;
                }
                other => return other.map_err(KbsError::Resource),
            }
        }
    }
}
