//! Redirects (blob storage on another origin) are followed here, not by reqwest: at most
//! [`MAX_REDIRECTS`], never from `https` to `http` (the redirect is refused and named; an
//! insecure registry is plain HTTP from the start, so it is not affected), and the
//! `Authorization` header goes only to the origin it is for (the registry's, or the token
//! realm's for the token request) on every hop. reqwest 0.13's own following re-sends the first
//! request's headers on each hop and drops them only when a hop changes origin, so storage
//! that redirects to itself once got the registry's credentials. A 401 or 403 from anywhere
//! but the registry's own origin is never answered: the session's credentials go only to the
//! registry and the token realm the registry itself named.
//!
//! The OCI distribution client: one HTTP client (rustls, the configured roots and proxies) and
//! per-repository sessions that authenticate as the registry asks (Bearer tokens from its
//! realm, or Basic), retry what is transient with backoff, and bound every reply they read.
//!
//! Retries never nest: every request a session makes for one path (a manifest, the
//! configuration, a layer blob) draws on one budget of `attempts` requests, whoever makes
//! it. A caller that resumes a blob cut short by asking for the rest continues the same
//! budget, so a registry that fails every way at once costs `attempts` requests per blob, not
//! the product of two retry loops.
//!
//! Redirects (blob storage on another origin): at most [`MAX_REDIRECTS`], never from `https`
//! to `http` (the redirect is refused and named; an insecure registry is plain HTTP from the
//! start, so it is not affected). reqwest drops the `Authorization` header whenever a redirect
//! changes scheme, host or port, and a 401 from anywhere but the registry's own origin is
//! never answered: the session's credentials go only to the registry and the token realm the
//! registry itself named.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use base64::Engine;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Response, StatusCode};
use serde::Deserialize;
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use crate::auth::{Credential, Secret};
use crate::challenge::{self, Challenge};
use crate::config::{ImageConfig, Transfer};
use crate::digest::{Digest, clipped};
use crate::error::ImageError;
use crate::registries::Source;

/// The largest token reply read.
const MAX_TOKEN_REPLY: usize = 1 << 20;
/// The most of an error body read for its error code.
const MAX_ERROR_BODY: usize = 16 << 10;
/// The most redirects followed for one request (reqwest's default).
pub const MAX_REDIRECTS: usize = 10;

/// The policy of the client lent out for lookaside signature stores (no credentials): follow
/// unless the redirect leaves TLS or is one too many, then return the redirect reply itself.
fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        if redirect_refusal(attempt.url(), attempt.previous()).is_some() {
            attempt.stop()
        } else {
            attempt.follow()
        }
    })
}

/// A reply after the redirects that were followed.
struct Followed {
    response: Response,
    /// Set when the reply is a redirect that was not followed: why, and where it pointed.
    refused: Option<(&'static str, Option<reqwest::Url>)>,
}

/// GETs `url` with `headers` on `http` (a client that follows no redirect), following
/// redirects here: `authorization` is added on every hop to `origin` and on no other, a
/// redirect that leaves TLS or is the eleventh is not followed.
async fn get_following(
    http: &reqwest::Client,
    mut url: reqwest::Url,
    headers: &HeaderMap,
    authorization: Option<&Secret>,
    origin: Option<&reqwest::Url>,
) -> Result<Followed, reqwest::Error> {
    let mut chain: Vec<reqwest::Url> = Vec::new();
    loop {
        let mut h = headers.clone();
        if let (Some(a), Some(o)) = (authorization, origin)
            && same_origin(&url, o)
            && let Ok(mut v) = HeaderValue::from_str(a.expose())
        {
            v.set_sensitive(true);
            h.insert(header::AUTHORIZATION, v);
        }
        let response = http.get(url.clone()).headers(h).send().await?;
        if !matches!(response.status().as_u16(), 301 | 302 | 303 | 307 | 308) {
            return Ok(Followed {
                response,
                refused: None,
            });
        }
        let next = response
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| url.join(l).ok());
        chain.push(url);
        let why = match &next {
            None => Some("a redirect without a usable Location"),
            Some(n) if !matches!(n.scheme(), "http" | "https") => {
                Some("a redirect to neither http nor https")
            }
            Some(n) => redirect_refusal(n, &chain),
        };
        match (why, next) {
            (None, Some(n)) => url = n,
            (why, next) => {
                return Ok(Followed {
                    response,
                    refused: Some((why.unwrap_or("a redirect that was not followed"), next)),
                });
            }
        }
    }
}

/// Why a redirect to `next` after `previous` is not followed, if it is not.
fn redirect_refusal(next: &reqwest::Url, previous: &[reqwest::Url]) -> Option<&'static str> {
    if previous.len() > MAX_REDIRECTS {
        return Some("more than 10 redirects");
    }
    if next.scheme() != "https" && previous.iter().any(|u| u.scheme() == "https") {
        return Some("the redirect leaves TLS (https to http); refused");
    }
    None
}

/// `scheme://host[:port]/path` of a URL, without its query (blob storage signs URLs in it).
fn shown(url: &reqwest::Url) -> String {
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    format!(
        "{}://{}{port}{}",
        url.scheme(),
        url.host_str().unwrap_or_default(),
        url.path()
    )
}

/// Whether two URLs share scheme, host and port.
fn same_origin(a: &reqwest::Url, b: &reqwest::Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// The HTTP side shared by every pull.
#[derive(Clone)]
pub struct Client {
    /// Registry and token requests: follows no redirect (the session does).
    direct: reqwest::Client,
    /// Lent out for lookaside signature stores: follows redirects by [`redirect_policy`].
    http: reqwest::Client,
    transfer: Transfer,
}

impl Client {
    /// Builds the client from `[image]`: `extra_root_certificates`, `image_pull_proxy`, the
    /// transfer timeouts.
    pub fn new(config: &ImageConfig) -> Result<Self, ImageError> {
        peerpod_kbs_client::install_crypto_provider();
        Ok(Self {
            direct: build(config, reqwest::redirect::Policy::none())?,
            http: build(config, redirect_policy())?,
            transfer: config.transfer.clone(),
        })
    }

    /// A session for one source's repository.
    pub fn session(&self, source: &Source, credential: Option<Credential>) -> Session {
        let scheme = if source.insecure { "http" } else { "https" };
        let base = format!(
            "{scheme}://{}/v2/{}",
            source.reference.api_host(),
            source.reference.repository
        );
        Session {
            client: self.clone(),
            origin: reqwest::Url::parse(&base).ok(),
            base,
            registry: source.reference.registry.clone(),
            repository: source.reference.repository.clone(),
            secure: !source.insecure,
            credential,
            authorization: Arc::new(Mutex::new(None)),
            budgets: Arc::new(StdMutex::new(HashMap::new())),
        }
    }

    /// The transfer settings.
    pub fn transfer(&self) -> &Transfer {
        &self.transfer
    }

    /// The HTTP client (its TLS trust and proxies), for lookaside signature stores.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

/// A reqwest client with `[image]`'s roots, proxies and timeouts and `redirects`.
fn build(
    config: &ImageConfig,
    redirects: reqwest::redirect::Policy,
) -> Result<reqwest::Client, ImageError> {
    let t = &config.transfer;
    let mut b = reqwest::Client::builder()
        .user_agent(concat!("peerpod-image/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(t.connect_timeout)
        .read_timeout(t.read_timeout)
        .redirect(redirects)
        .no_proxy();
    let mut certs = Vec::new();
    for (i, pem) in config.extra_root_certificates.iter().enumerate() {
        let cert = reqwest::Certificate::from_pem(pem.as_bytes()).map_err(|_| {
            ImageError::Config(format!(
                "[image] extra_root_certificates[{i}] is not a PEM certificate"
            ))
        })?;
        certs.push(cert);
    }
    if !certs.is_empty() {
        b = b.tls_certs_merge(certs);
    }
    if let Some(p) = &config.image_pull_proxy {
        let no_proxy = p
            .no_proxy
            .as_deref()
            .and_then(reqwest::NoProxy::from_string);
        let bad = |k: &str| {
            ImageError::Config(format!("[image.image_pull_proxy] {k} is not a proxy URL"))
        };
        if let Some(u) = &p.https_proxy {
            b = b.proxy(
                reqwest::Proxy::https(u)
                    .map_err(|_| bad("https_proxy"))?
                    .no_proxy(no_proxy.clone()),
            );
        }
        if let Some(u) = &p.http_proxy {
            b = b.proxy(
                reqwest::Proxy::http(u)
                    .map_err(|_| bad("http_proxy"))?
                    .no_proxy(no_proxy),
            );
        }
    }
    b.build().map_err(|e| {
        ImageError::Config(format!(
            "cannot build the registry HTTP client: {}",
            peerpod_text::error_chain(&e)
        ))
    })
}

/// Requests to one repository, sharing their authorization.
#[derive(Clone)]
pub struct Session {
    client: Client,
    base: String,
    /// The registry's origin: the only one whose challenges are answered.
    origin: Option<reqwest::Url>,
    registry: String,
    repository: String,
    secure: bool,
    credential: Option<Credential>,
    authorization: Arc<Mutex<Option<Secret>>>,
    /// Requests spent per path: one retry budget per fetch.
    budgets: Arc<StdMutex<HashMap<String, Spent>>>,
}

/// What one path's fetch has spent so far.
#[derive(Default)]
struct Spent {
    requests: u32,
    /// The last failure, for the error when the budget runs out.
    last: String,
}

/// A successful reply, with the URL it answered.
pub struct Reply {
    /// The reply.
    pub response: Response,
    /// The URL requested (for messages).
    pub url: String,
}

impl Session {
    /// The transfer settings.
    pub fn transfer(&self) -> &Transfer {
        &self.client.transfer
    }

    /// The repository's URL prefix (`https://host/v2/repo`).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET {base}/{path}` with retries on transient failures and the registry's
    /// authentication; `range_from` asks for the bytes from that offset on. Every request
    /// draws on the path's one budget (see the module): asking again for a path whose reply
    /// was cut short continues it.
    pub async fn get(
        &self,
        path: &str,
        accept: Option<&str>,
        range_from: Option<u64>,
    ) -> Result<Reply, ImageError> {
        let url = format!("{}/{path}", self.base);
        let t = &self.client.transfer;
        let mut reauthenticated = false;
        let mut retrying = false;
        loop {
            let attempt = self.spend(path, &url)?;
            if retrying {
                tokio::time::sleep(backoff(t, attempt - 1)).await;
            }
            retrying = true;
            let mut headers = HeaderMap::new();
            if let Some(a) = accept {
                headers.insert(
                    header::ACCEPT,
                    HeaderValue::from_str(a)
                        .map_err(|_| ImageError::Config("bad Accept".into()))?,
                );
            }
            if let Some(from) = range_from.filter(|f| *f > 0)
                && let Ok(v) = HeaderValue::from_str(&format!("bytes={from}-"))
            {
                headers.insert(header::RANGE, v);
            }
            let authorization = self.authorization.lock().await.clone();
            let Ok(target) = reqwest::Url::parse(&url) else {
                return Err(ImageError::Config(format!(
                    "{}: {} is not a URL",
                    self.registry,
                    clipped(&url)
                )));
            };
            let followed = match get_following(
                &self.client.direct,
                target,
                &headers,
                authorization.as_ref(),
                self.origin.as_ref(),
            )
            .await
            {
                Ok(f) => f,
                Err(e) => {
                    let last = describe(&e);
                    tracing::warn!(url = %url, attempt, error = %last, "registry request failed");
                    self.note(path, last);
                    continue;
                }
            };
            let response = followed.response;
            let status = response.status();
            let answered_by = response.url().clone();
            if let Some((why, to)) = followed.refused {
                return Err(ImageError::Status {
                    url: shown(&answered_by),
                    status: status.as_u16(),
                    detail: format!(
                        ": redirect to {}: {why}",
                        to.as_ref().map(shown).unwrap_or_else(|| "nowhere".into())
                    ),
                });
            }
            if (status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN)
                && !self
                    .origin
                    .as_ref()
                    .is_some_and(|o| same_origin(o, &answered_by))
            {
                // Blob storage the registry redirected to: its challenge (a realm of its
                // choosing) would get the registry's credentials. Never answered.
                return Err(ImageError::Status {
                    url: shown(&answered_by),
                    status: status.as_u16(),
                    detail: format!(
                        ": the registry redirected {path} to another origin, which refused it; \
                         its authentication challenge is not answered (credentials go only to \
                         {}): the registry or its storage is misconfigured, or hostile",
                        self.registry
                    ),
                });
            }
            if status == StatusCode::UNAUTHORIZED && !reauthenticated {
                reauthenticated = true;
                self.authenticate(&response).await?;
                // The retry with credentials is not a transport attempt.
                self.refund(path);
                retrying = false;
                continue;
            }
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                return Err(ImageError::Unauthorized {
                    registry: self.registry.clone(),
                    repository: self.repository.clone(),
                    status: status.as_u16(),
                    hint: if self.credential.is_some() {
                        "check the credentials for this registry in the auth.json of \
                         authenticated_registry_credentials_uri"
                    } else {
                        "no credentials for this registry: add them to the auth.json named by \
                         authenticated_registry_credentials_uri"
                    },
                });
            }
            if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                tracing::warn!(url = %url, attempt, %status, "registry busy or failing");
                self.note(path, format!("the registry answered {status}"));
                continue;
            }
            if !status.is_success() {
                let detail = error_code(response).await;
                return Err(ImageError::Status {
                    url,
                    status: status.as_u16(),
                    detail,
                });
            }
            // Asked again, this path's reply did not arrive whole.
            self.note(path, "the reply was cut short".into());
            return Ok(Reply { response, url });
        }
    }

    /// Spends one request of `path`'s budget: its number, or the error when none is left.
    fn spend(&self, path: &str, url: &str) -> Result<u32, ImageError> {
        let attempts = self.client.transfer.attempts;
        let mut budgets = lock(&self.budgets);
        let spent = budgets.entry(path.to_string()).or_default();
        if spent.requests >= attempts {
            return Err(ImageError::Transport {
                url: url.to_string(),
                reason: spent.last.clone(),
                attempts: spent.requests,
            });
        }
        spent.requests += 1;
        Ok(spent.requests)
    }

    /// Gives back the request a 401 took (the retry with credentials is not a retry).
    fn refund(&self, path: &str) {
        if let Some(s) = lock(&self.budgets).get_mut(path) {
            s.requests = s.requests.saturating_sub(1);
        }
    }

    /// Records why the last request for `path` failed.
    fn note(&self, path: &str, reason: String) {
        lock(&self.budgets)
            .entry(path.to_string())
            .or_default()
            .last = reason;
    }

    /// The requests spent on `path`.
    fn spent(&self, path: &str) -> u32 {
        lock(&self.budgets).get(path).map_or(0, |s| s.requests)
    }

    /// `path` arrived whole: a later fetch of it starts a new budget.
    fn forget(&self, path: &str) {
        lock(&self.budgets).remove(path);
    }

    /// Answers a 401: a token from the Bearer realm, or Basic with our credential.
    async fn authenticate(&self, response: &Response) -> Result<(), ImageError> {
        let header = response
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let unauthorized = |hint| ImageError::Unauthorized {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            status: 401,
            hint,
        };
        let challenge = challenge::parse(&header).map_err(|_| {
            unauthorized(
                "the registry asked for authentication without a usable WWW-Authenticate challenge",
            )
        })?;
        let value = match challenge {
            Challenge::Basic => {
                let c = self.credential.as_ref().ok_or_else(|| {
                    unauthorized(
                        "no credentials for this registry: add them to the auth.json named by \
                         authenticated_registry_credentials_uri",
                    )
                })?;
                Secret::new(format!("Basic {}", basic(c).as_str()))
            }
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let token = self.token(&realm, service, scope).await?;
                Secret::new(format!("Bearer {}", token.expose()))
            }
        };
        *self.authorization.lock().await = Some(value);
        Ok(())
    }

    async fn token(
        &self,
        realm: &str,
        service: Option<String>,
        scope: Option<String>,
    ) -> Result<Secret, ImageError> {
        let mut url = reqwest::Url::parse(realm).map_err(|_| {
            ImageError::Config(format!(
                "{}: the token realm {:?} is not a URL",
                self.registry,
                clipped(realm)
            ))
        })?;
        // Credentials go to the realm: never over plain HTTP when the registry uses TLS.
        let scheme_ok = url.scheme() == "https" || (url.scheme() == "http" && !self.secure);
        if !scheme_ok {
            return Err(ImageError::Config(format!(
                "{}: the token realm {:?} is not https; refused (credentials would travel in clear)",
                self.registry,
                clipped(realm)
            )));
        }
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = &service {
                q.append_pair("service", s);
            }
            let scope = scope.unwrap_or_else(|| format!("repository:{}:pull", self.repository));
            q.append_pair("scope", &scope);
        }
        let shown = format!(
            "{}://{}{}",
            url.scheme(),
            url.host_str().unwrap_or_default(),
            url.path()
        );
        let basic_auth = self
            .credential
            .as_ref()
            .map(|c| Secret::new(format!("Basic {}", basic(c).as_str())));
        let realm_origin = url.clone();
        let followed = get_following(
            &self.client.direct,
            url,
            &HeaderMap::new(),
            basic_auth.as_ref(),
            Some(&realm_origin),
        )
        .await
        .map_err(|e| ImageError::Transport {
            url: shown.clone(),
            reason: describe(&e),
            attempts: 1,
        })?;
        if let Some((why, to)) = followed.refused {
            return Err(ImageError::Status {
                url: shown,
                status: followed.response.status().as_u16(),
                detail: format!(
                    ": the token service's redirect to {}: {why}",
                    to.as_ref()
                        .map(self::shown)
                        .unwrap_or_else(|| "nowhere".into())
                ),
            });
        }
        let response = followed.response;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(ImageError::Unauthorized {
                registry: self.registry.clone(),
                repository: self.repository.clone(),
                status: status.as_u16(),
                hint: "the token service refused the credentials: check this registry's entry \
                       in the auth.json of authenticated_registry_credentials_uri",
            });
        }
        if !status.is_success() {
            return Err(ImageError::Status {
                url: shown,
                status: status.as_u16(),
                detail: String::new(),
            });
        }
        let body = Zeroizing::new(
            read_limited(response, MAX_TOKEN_REPLY, "the token reply", &shown).await?,
        );
        #[derive(Deserialize)]
        struct TokenReply {
            token: Option<Secret>,
            access_token: Option<Secret>,
        }
        let reply: TokenReply = serde_json::from_slice(&body).map_err(|_| ImageError::Status {
            url: shown.clone(),
            status: status.as_u16(),
            detail: ": the token reply is not JSON with \"token\"".into(),
        })?;
        let token = reply
            .token
            .filter(|t| !t.is_empty())
            .or(reply.access_token)
            .ok_or_else(|| ImageError::Status {
                url: shown.clone(),
                status: status.as_u16(),
                detail: ": the token reply has no \"token\"".into(),
            })?;
        if !token.expose().bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ImageError::Status {
                url: shown,
                status: status.as_u16(),
                detail: ": the token is not printable ASCII".into(),
            });
        }
        Ok(token)
    }

    /// A small document (manifest, configuration) read whole within `limit`, with retries;
    /// its digest is checked against `expected` when given.
    pub async fn small(
        &self,
        path: &str,
        accept: Option<&str>,
        limit: usize,
        what: &str,
        expected: Option<&Digest>,
    ) -> Result<(Vec<u8>, Option<String>, Option<String>), ImageError> {
        let t = &self.client.transfer;
        loop {
            let reply = self.get(path, accept, None).await?;
            let ct = header_text(&reply.response, header::CONTENT_TYPE);
            let dcd = header_text(&reply.response, "docker-content-digest");
            match read_limited(reply.response, limit, what, &reply.url).await {
                Ok(body) => {
                    self.forget(path);
                    if let Some(e) = expected {
                        let actual = Digest::of(&body);
                        if &actual != e {
                            return Err(ImageError::DigestMismatch {
                                what: what.to_string(),
                                expected: e.clone(),
                                actual,
                            });
                        }
                    }
                    return Ok((body, ct, dcd));
                }
                Err(ImageError::Transport { url, reason, .. }) => {
                    let attempt = self.spent(path);
                    if attempt >= t.attempts {
                        return Err(ImageError::Transport {
                            url,
                            reason,
                            attempts: attempt,
                        });
                    }
                    tracing::warn!(url = %url, attempt, error = %reason, "reply cut short, retrying");
                    self.note(path, reason);
                    tokio::time::sleep(backoff(t, attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The wait before attempt `n + 1`.
pub(crate) fn backoff(t: &Transfer, n: u32) -> Duration {
    t.backoff.saturating_mul(1u32 << n.saturating_sub(1).min(6))
}

fn basic(c: &Credential) -> Zeroizing<String> {
    let plain = Zeroizing::new(format!("{}:{}", c.username, c.password.expose()));
    Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(plain.as_bytes()))
}

fn header_text(r: &Response, name: impl header::AsHeaderName) -> Option<String> {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(clipped)
}

/// A reqwest error and its causes, without the URL's query.
pub(crate) fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else if e.is_body() || e.is_decode() {
        "the reply was cut short".to_string()
    } else {
        "request failed".to_string()
    };
    peerpod_text::push_causes(&mut text, std::error::Error::source(e));
    peerpod_kbs_client::printable(&text, 300)
}

/// Reads a whole reply within `limit`, refusing a larger one as it arrives.
pub(crate) async fn read_limited(
    mut response: Response,
    limit: usize,
    what: &str,
    url: &str,
) -> Result<Vec<u8>, ImageError> {
    if response.content_length().is_some_and(|l| l > limit as u64) {
        return Err(ImageError::TooLarge {
            what: what.to_string(),
            limit: limit as u64,
        });
    }
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(c)) => {
                if body.len() + c.len() > limit {
                    return Err(ImageError::TooLarge {
                        what: what.to_string(),
                        limit: limit as u64,
                    });
                }
                body.extend_from_slice(&c);
            }
            Ok(None) => return Ok(body),
            Err(e) => {
                return Err(ImageError::Transport {
                    url: url.to_string(),
                    reason: describe(&e),
                    attempts: 1,
                });
            }
        }
    }
}

/// `: CODE message` from a registry error body (`{"errors":[{"code":…,"message":…}]}`).
async fn error_code(response: Response) -> String {
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        code: Option<String>,
        message: Option<String>,
    }
    let url = response.url().to_string();
    let Ok(body) = read_limited(response, MAX_ERROR_BODY, "error body", &url).await else {
        return String::new();
    };
    match serde_json::from_slice::<Errors>(&body) {
        Ok(e) => e
            .errors
            .first()
            .map(|e| {
                format!(
                    ": {} {}",
                    clipped(e.code.as_deref().unwrap_or_default()),
                    clipped(e.message.as_deref().unwrap_or_default())
                )
            })
            .unwrap_or_default(),
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(u: &str) -> reqwest::Url {
        reqwest::Url::parse(u).expect("test URL")
    }

    #[test]
    fn redirects_never_leave_tls_and_are_bounded() {
        let https = url("https://registry.example/v2/a/blobs/x");
        let http = url("http://registry.example/v2/a/blobs/x");
        let storage_https = url("https://storage.example/x?sig=1");
        let storage_http = url("http://storage.example/x?sig=1");
        assert_eq!(
            redirect_refusal(&storage_https, std::slice::from_ref(&https)),
            None
        );
        assert_eq!(
            redirect_refusal(&storage_http, std::slice::from_ref(&http)),
            None
        );
        assert_eq!(
            redirect_refusal(&storage_https, std::slice::from_ref(&http)),
            None
        );
        assert!(redirect_refusal(&storage_http, std::slice::from_ref(&https)).is_some());
        // Through a TLS hop and back to plain HTTP: still leaving TLS.
        assert!(redirect_refusal(&storage_http, &[http.clone(), storage_https.clone()]).is_some());
        let chain = vec![https.clone(); MAX_REDIRECTS + 1];
        assert!(redirect_refusal(&storage_https, &chain).is_some());
        let chain = vec![https.clone(); MAX_REDIRECTS];
        assert_eq!(redirect_refusal(&storage_https, &chain), None);
    }

    #[test]
    fn origins_and_shown_urls() {
        let registry = url("https://127.0.0.1:5000/v2/a/b");
        assert!(same_origin(
            &registry,
            &url("https://127.0.0.1:5000/v2/a/b/blobs/x")
        ));
        assert!(!same_origin(&registry, &url("https://127.0.0.1:5001/x")));
        assert!(!same_origin(&registry, &url("http://127.0.0.1:5000/x")));
        assert!(!same_origin(&registry, &url("https://localhost:5000/x")));
        assert!(same_origin(
            &url("https://quay.io/x"),
            &url("https://quay.io:443/y")
        ));
        assert_eq!(
            shown(&url("https://s.example:8443/b/x?X-Amz-Signature=secret")),
            "https://s.example:8443/b/x"
        );
    }
}
