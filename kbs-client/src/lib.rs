//! Talking HTTP to Trustee's KBS from inside the pod VM, shared by the attestation agent (which
//! attests and fetches) and the confidential data hub (which fetches with the agent's token).
//!
//! - [`http_client`] builds the reqwest client for a KBS URL: a configured certificate is the
//!   only trust (see [`tls`], which also accepts a pinned self-signed certificate); without one,
//!   `https` uses the system's roots and plain HTTP loads none.
//! - [`get_resource`] fetches `/kbs/v0/resource/<path>` with a token and opens the JWE with the
//!   TEE key; [`checked`] turns an error answer into a [`StatusError`] carrying the KBS's error
//!   type and detail.
//! - [`token_expiry`] reads a token's `exp` for caches.

pub mod tls;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use peerpod_kbs_protocol::jwe::{self, JweResponse};
use peerpod_kbs_protocol::keys::TeeKeyPair;
use peerpod_kbs_protocol::messages::{ErrorInformation, ResourcePath};
use zeroize::Zeroizing;

/// Installs rustls's ring provider as the process default before any HTTP client is built
/// (reqwest is built without a provider of its own).
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Another component may have installed one already; either is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A client builder for `url` trusting the system's roots for `https`. For plain HTTP no roots
/// are loaded: a pod VM image may have none, and loading them would fail for a client that
/// never uses TLS.
pub fn http_builder(url: &str) -> reqwest::ClientBuilder {
    install_crypto_provider();
    let builder = reqwest::Client::builder();
    if url.starts_with("https://") {
        builder
    } else {
        builder.tls_certs_only([])
    }
}

/// Why an HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The configured certificate is unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsConfigError),
    /// reqwest refused the configuration.
    #[error(
        "cannot build the HTTP client: {0} (an https KBS on a system without root certificates \
         needs its certificate configured)"
    )]
    Build(String),
}

/// A client for the KBS at `url`, trusting only `cert` (PEM) when given; requests time out
/// after `timeout` (connecting after at most 10 s).
pub fn http_client(
    url: &str,
    cert: Option<&str>,
    timeout: Duration,
    user_agent: &str,
    cookies: bool,
) -> Result<reqwest::Client, ClientError> {
    let builder = match cert {
        Some(pem) => {
            install_crypto_provider();
            reqwest::Client::builder().tls_backend_preconfigured(tls::client_config(pem)?)
        }
        None => http_builder(url),
    };
    builder
        .cookie_store(cookies)
        .connect_timeout(Duration::from_secs(10).min(timeout))
        .timeout(timeout)
        .user_agent(user_agent)
        .build()
        .map_err(|e| ClientError::Build(error_chain(&e)))
}

/// An error and its sources, `: `-separated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The KBS answered with an error status.
#[derive(Debug, thiserror::Error)]
#[error("answered {status}: {detail}")]
pub struct StatusError {
    /// HTTP status.
    pub status: u16,
    /// The error body's type and detail, or the start of the raw body.
    pub detail: String,
}

/// Passes a successful response; turns an error status into a [`StatusError`].
pub async fn checked(resp: reqwest::Response) -> Result<reqwest::Response, StatusError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.bytes().await.unwrap_or_default();
    let detail = match serde_json::from_slice::<ErrorInformation>(&body) {
        Ok(info) => info.to_string(),
        Err(_) => format!(
            "(not a KBS error body) {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ),
    };
    Err(StatusError {
        status: status.as_u16(),
        detail,
    })
}

/// When a token expires: its `exp` claim, or five minutes from now (Trustee's default lifetime)
/// when it has none.
pub fn token_expiry(token: &str) -> SystemTime {
    let exp = token
        .split('.')
        .nth(1)
        .and_then(|p| URL_SAFE_NO_PAD.decode(p.trim_end_matches('=')).ok())
        .and_then(|p| serde_json::from_slice::<serde_json::Value>(&p).ok())
        .and_then(|c| c["exp"].as_u64());
    match exp {
        Some(secs) => UNIX_EPOCH + Duration::from_secs(secs),
        None => SystemTime::now() + Duration::from_secs(300),
    }
}

/// Why a resource could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    /// The request did not complete (connection refused, timeout, TLS).
    #[error("KBS resource request to {url} failed")]
    Http {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The KBS refused or failed.
    #[error("KBS resource {path} {source}")]
    Status {
        /// The resource.
        path: String,
        /// The answer.
        #[source]
        source: StatusError,
    },
    /// The answer is not a JWE.
    #[error("the KBS's answer for {path} is not a JWE: {detail}")]
    NotJwe {
        /// The resource.
        path: String,
        /// Why.
        detail: String,
    },
    /// The JWE does not open with our TEE key.
    #[error("cannot decrypt the resource {path}")]
    Decrypt {
        /// The resource.
        path: String,
        /// Why.
        #[source]
        source: peerpod_kbs_protocol::Error,
    },
}

impl ResourceError {
    /// The HTTP status of a refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            ResourceError::Status { source, .. } => Some(source.status),
            _ => None,
        }
    }

    /// Whether retrying may help: network failures and server errors.
    pub fn is_transient(&self) -> bool {
        match self {
            ResourceError::Http { .. } => true,
            ResourceError::Status { source, .. } => source.status >= 500,
            _ => false,
        }
    }
}

/// Fetches `path` from the KBS at `base` with `token` and decrypts it with `key`.
pub async fn get_resource(
    http: &reqwest::Client,
    base: &str,
    path: &ResourcePath,
    token: &str,
    key: &TeeKeyPair,
) -> Result<Zeroizing<Vec<u8>>, ResourceError> {
    let url = format!("{}/kbs/v0/resource/{path}", base.trim_end_matches('/'));
    let resp = http
        .get(&url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|source| ResourceError::Http {
            url: url.clone(),
            source,
        })?;
    let resp = checked(resp)
        .await
        .map_err(|source| ResourceError::Status {
            path: path.to_string(),
            source,
        })?;
    let sealed: JweResponse = resp.json().await.map_err(|e| ResourceError::NotJwe {
        path: path.to_string(),
        detail: e.to_string(),
    })?;
    jwe::open(key, &sealed).map_err(|source| ResourceError::Decrypt {
        path: path.to_string(),
        source,
    })
}
