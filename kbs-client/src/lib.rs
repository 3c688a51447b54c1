//! Talking HTTP to Trustee's KBS from inside the pod VM, shared by the attestation agent (which
//! attests and fetches) and the confidential data hub (which fetches with the agent's token).
//!
//! - [`http_client`] builds the reqwest client for a KBS URL: a configured certificate is the
//!   only trust (see [`tls`], which also accepts a pinned self-signed certificate); without one,
//!   `https` uses the system's roots and plain HTTP loads none. It follows no redirect: the
//!   token and the session cookie go to the configured KBS only, and [`checked`] turns a
//!   redirect into an error naming the origin it pointed to.
//! - [`get_resource`] fetches `/kbs/v0/resource/<path>` with a token and opens the JWE with the
//!   TEE key; [`checked`] turns an error answer into a [`StatusError`] carrying the KBS's error
//!   type and detail.
//! - [`token_expiry`] reads a token's `exp` for caches, with checked arithmetic: a token is
//!   outside input.
//! - [`read_body`] reads a reply with a size cap ([`MAX_KBS_REPLY`], [`MAX_IMDS_REPLY`]): a
//!   hostile KBS or IMDS cannot make the guest buffer without bound.
//! - [`check_scheme`] refuses a plain-`http://` KBS unless the configuration opts in: the
//!   resource JWE is not authenticated, so on plain HTTP the host can swap a resource.
//! - [`rcar::Handshake`] runs the RCAR handshake with evidence from the caller; [`Refusal`]
//!   says what a KBS error answer means, by Trustee's error type.
//! - [`error_chain`] and [`rpc::status`] are the one error flattening and the one ttrpc status
//!   builder that the attestation agent and the CDH share.

pub mod rcar;
mod refusal;
pub mod rpc;
pub mod tls;

pub use refusal::Refusal;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
/// never uses TLS. It follows no redirect (reqwest's default follows ten, re-POSTing a body on
/// 307/308 to any origin, also from https to plain http): none of the services the pod VM
/// talks to (KBS, attestation service, IMDS, WireServer) answers with one, so a redirect is
/// an error ([`refused_redirect`] describes it).
pub fn http_builder(url: &str) -> reqwest::ClientBuilder {
    install_crypto_provider();
    let builder = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
    if url.starts_with("https://") {
        builder
    } else {
        builder.tls_certs_only([])
    }
}

/// The largest KBS reply read (4 MiB): a resource's JWE, a challenge, a token or an error body.
/// Trustee's own request limit is 2 MiB; resources are keys, certificates and small files.
pub const MAX_KBS_REPLY: usize = 4 << 20;

/// The largest IMDS reply read (1 MiB): a VCEK certificate or a TD quote is a few KiB.
pub const MAX_IMDS_REPLY: usize = 1 << 20;

/// The most of an error body read to describe a refusal.
const MAX_ERROR_BODY: usize = 64 << 10;

/// Refuses a plain-`http://` `url` unless `insecure_http`; with it, warns loudly. `opt_in` says
/// how the configuration opts in (`[peerpod] insecure_http = true in aa.toml`), for messages.
pub fn check_scheme(
    url: &str,
    insecure_http: bool,
    opt_in: &'static str,
) -> Result<(), ClientError> {
    if !url.starts_with("http://") {
        return Ok(());
    }
    if !insecure_http {
        return Err(ClientError::PlainHttp {
            url: url.to_string(),
            opt_in,
        });
    }
    tracing::warn!(
        url,
        "INSECURE: the KBS is reached over plain HTTP ({opt_in}). The host can read the \
         attestation exchange and replace any resource; use https:// outside tests."
    );
    Ok(())
}

/// Why an HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A plain-HTTP KBS URL without the opt-in.
    #[error(
        "refusing the plain-HTTP KBS {url}: resources would cross the host unauthenticated; use \
         https://, or set {opt_in} (tests only)"
    )]
    PlainHttp {
        /// The URL.
        url: String,
        /// How the configuration opts in.
        opt_in: &'static str,
    },
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
///
/// Redirects are not followed (upstream's kbs_protocol keeps reqwest's default, which follows
/// ten). reqwest re-sends the first request's headers on every hop and drops them only on the
/// hop that changes origin, and its cookie store sends a host's cookies to any port of that
/// host: a KBS stand-in redirecting to another origin that redirects to itself would get the
/// bearer token, and one on another port of the KBS's host the session cookie. Trustee's KBS
/// answers its API without redirects, so a redirect is an error ([`checked`]).
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
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10).min(timeout))
        .timeout(timeout)
        .user_agent(user_agent)
        .build()
        .map_err(|e| ClientError::Build(error_chain(&e)))
}

/// An error and its sources, `: `-separated (the workspace's one definition, from
/// `peerpod-text`, which the kata agent uses too).
pub use peerpod_text::error_chain;

/// Why a reply body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body is larger than the cap.
    #[error("the reply is larger than {limit} bytes")]
    TooLarge {
        /// The cap.
        limit: usize,
    },
    /// The connection failed while reading.
    #[error("the reply could not be read")]
    Read(#[source] reqwest::Error),
}

/// Reads `resp`'s body, refusing one larger than `limit` bytes (by its `Content-Length`, or as
/// it arrives) without buffering more than `limit`.
pub async fn read_body(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    if resp
        .content_length()
        .is_some_and(|n| n > u64::try_from(limit).unwrap_or(u64::MAX))
    {
        return Err(BodyError::TooLarge { limit });
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(BodyError::Read)? {
        if body.len().saturating_add(chunk.len()) > limit {
            return Err(BodyError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The KBS answered with an error status.
#[derive(Debug, thiserror::Error)]
#[error("answered {status}: {detail}")]
pub struct StatusError {
    /// HTTP status.
    pub status: u16,
    /// The error body's type and detail, or the start of the raw body.
    pub detail: String,
    /// The Trustee error variant named by the body's RFC 7807 `type` (`PolicyDeny`,
    /// `TokenVerifierError`, …), when the body is a KBS error body with Trustee's prefix.
    pub kind: Option<String>,
}

impl StatusError {
    /// What the refusal means for the client, by Trustee's error type first and the status
    /// second (see [`Refusal`]).
    pub fn refusal(&self) -> Refusal {
        Refusal::classify(self.status, self.kind.as_deref())
    }
}

/// Passes a successful response; turns an error status into a [`StatusError`], and a redirect
/// (which [`http_client`] does not follow) into one naming the origin it points to.
pub async fn checked(resp: reqwest::Response) -> Result<reqwest::Response, StatusError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    if status.is_redirection() {
        return Err(StatusError {
            status: status.as_u16(),
            detail: redirect_detail(&resp),
            kind: None,
        });
    }
    let mut kind = None;
    let detail = match read_body(resp, MAX_ERROR_BODY).await {
        Ok(body) => match serde_json::from_slice::<ErrorInformation>(&body) {
            Ok(info) => {
                kind = info
                    .variant()
                    .filter(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric()))
                    .map(str::to_string);
                printable(&info.to_string(), 400)
            }
            Err(_) => format!(
                "(not a KBS error body) {}",
                printable(&String::from_utf8_lossy(&body), 200)
            ),
        },
        Err(e) => format!("(error body unreadable: {e})"),
    };
    Err(StatusError {
        status: status.as_u16(),
        detail,
        kind,
    })
}

/// The origin (scheme, host, port) a redirect points to, never its path or query; or what is
/// wrong with its Location.
fn redirect_target(resp: &reqwest::Response) -> Result<String, &'static str> {
    let target = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(|location| resp.url().join(location));
    match target {
        None => Err("a redirect without a usable Location"),
        Some(Err(_)) => Err("a redirect to an unparseable Location"),
        Some(Ok(url)) => Ok(origin(&url)),
    }
}

/// When `resp` is a redirect (which clients from [`http_builder`] and [`http_client`] do not
/// follow), why it is refused: `service` (e.g. "the attestation service") answered it, its
/// status, and the origin it points to (never its path or query).
pub fn refused_redirect(resp: &reqwest::Response, service: &str) -> Option<String> {
    let status = resp.status();
    if !status.is_redirection() {
        return None;
    }
    let from = origin(resp.url());
    let what = match redirect_target(resp) {
        Ok(to) => format!("a redirect to {to}"),
        Err(what) => what.to_string(),
    };
    Some(format!(
        "{service} at {from} answered {} with {what}, not followed: requests go only to the \
         configured URL (configure the service's final URL instead)",
        status.as_u16()
    ))
}

/// Why a redirect is refused, naming the origin (scheme, host, port) it points to, never its
/// path or query.
fn redirect_detail(resp: &reqwest::Response) -> String {
    let from = origin(resp.url());
    let to = match redirect_target(resp) {
        Err(what) => {
            return format!("{what} from {from}; a KBS is never followed through redirects");
        }
        Ok(to) => to,
    };
    format!(
        "a redirect to {to}, not followed: the KBS token and session go only to the configured \
         KBS {from}; if {to} is the KBS, configure its URL instead"
    )
}

/// `scheme://host:port` of `url` (printable, bounded), or its scheme when it has no host.
fn origin(url: &reqwest::Url) -> String {
    let origin = url.origin();
    let text = if origin.is_tuple() {
        origin.ascii_serialization()
    } else {
        format!("a {}: URL", url.scheme())
    };
    printable(&text, 300)
}

/// At most `max` characters of `text`, control characters replaced: text from a KBS or an
/// attestation service goes into logs and errors.
pub fn printable(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Trustee's default token lifetime, assumed when a token's `exp` is missing or unusable.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(300);

/// When a token expires: its `exp` claim, or five minutes from now (Trustee's default lifetime)
/// when it has none or one beyond what the clock can hold.
pub fn token_expiry(token: &str) -> SystemTime {
    let exp = token
        .split('.')
        .nth(1)
        .and_then(|p| peerpod_text::decode_b64url(p).ok())
        .and_then(|p| serde_json::from_slice::<serde_json::Value>(&p).ok())
        .and_then(|c| c["exp"].as_u64());
    let default = || SystemTime::now() + DEFAULT_TOKEN_LIFETIME;
    match exp {
        Some(secs) => UNIX_EPOCH
            .checked_add(Duration::from_secs(secs))
            .unwrap_or_else(|| {
                tracing::warn!(
                    exp = secs,
                    "the token's exp is out of range; assuming 5 minutes"
                );
                default()
            }),
        None => default(),
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
    /// The KBS refused or failed. The answer is the source only, so a chain shows it once.
    #[error("KBS resource {path}")]
    Status {
        /// The resource.
        path: String,
        /// The answer.
        #[source]
        source: StatusError,
    },
    /// The answer could not be read, or is too large.
    #[error("the KBS's answer for {path} could not be read")]
    Body {
        /// The resource.
        path: String,
        /// Why.
        #[source]
        source: BodyError,
    },
    /// The answer is not a JWE. The parser's complaint is left out: it would quote the body.
    #[error("the KBS's answer for {path} is not a JWE")]
    NotJwe {
        /// The resource.
        path: String,
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

    /// What a refusal means (`None` when the KBS did not answer with an error status).
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            ResourceError::Status { source, .. } => Some(source.refusal()),
            _ => None,
        }
    }

    /// Whether retrying may help: network failures and server errors.
    pub fn is_transient(&self) -> bool {
        match self {
            ResourceError::Http { .. } => true,
            ResourceError::Body { source, .. } => matches!(source, BodyError::Read(_)),
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
    let body = read_body(resp, MAX_KBS_REPLY)
        .await
        .map_err(|source| ResourceError::Body {
            path: path.to_string(),
            source,
        })?;
    let sealed: JweResponse = serde_json::from_slice(&body).map_err(|_| ResourceError::NotJwe {
        path: path.to_string(),
    })?;
    jwe::open(key, &sealed).map_err(|source| ResourceError::Decrypt {
        path: path.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn token(claims: &str) -> String {
        format!(
            "eyJhbGciOiJub25lIn0.{}.sig",
            URL_SAFE_NO_PAD.encode(claims.as_bytes())
        )
    }

    #[test]
    fn token_expiry_survives_any_exp() {
        let exact = token_expiry(&token(r#"{"exp": 2000000000}"#));
        assert_eq!(exact, UNIX_EPOCH + Duration::from_secs(2_000_000_000));
        // Beyond what SystemTime holds: the default lifetime, not a panic.
        for claims in [
            format!(r#"{{"exp": {}}}"#, u64::MAX),
            r#"{"exp": -1}"#.to_string(),
            r#"{"exp": 1e300}"#.to_string(),
            r#"{"exp": "soon"}"#.to_string(),
        ] {
            let expiry = token_expiry(&token(&claims));
            let left = expiry.duration_since(SystemTime::now()).unwrap_or_default();
            assert!(left <= DEFAULT_TOKEN_LIFETIME, "{claims}: {left:?}");
            assert!(left > Duration::from_secs(200), "{claims}: {left:?}");
        }
        assert!(token_expiry("not a token") > SystemTime::now());
    }

    #[test]
    fn plain_http_needs_the_opt_in() {
        let opt_in = "[peerpod] insecure_http = true in cdh.toml";
        let err = check_scheme("http://kbs:8080", false, opt_in).expect_err("refused");
        let text = err.to_string();
        assert!(
            text.contains("http://kbs:8080") && text.contains(&format!("set {opt_in} (tests")),
            "{text}"
        );
        check_scheme("http://kbs:8080", true, "x").expect("opted in");
        check_scheme("https://kbs:8080", false, "x").expect("https");
        check_scheme("", false, "x").expect("no URL is not plain HTTP");
    }
}
