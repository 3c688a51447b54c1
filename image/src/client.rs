//! The OCI distribution client: one HTTP client (rustls, the configured roots and proxies) and
//! per-repository sessions that authenticate as the registry asks (Bearer tokens from its
//! realm, or Basic), retry what is transient with backoff, and bound every reply they read.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Response, StatusCode};
use serde::Deserialize;
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use crate::auth::Credential;
use crate::challenge::{self, Challenge};
use crate::config::{ImageConfig, Transfer};
use crate::digest::{Digest, clipped};
use crate::error::ImageError;
use crate::registries::Source;

/// The largest token reply read.
const MAX_TOKEN_REPLY: usize = 1 << 20;
/// The most of an error body read for its error code.
const MAX_ERROR_BODY: usize = 16 << 10;

/// The HTTP side shared by every pull.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    transfer: Transfer,
}

impl Client {
    /// Builds the client from `[image]`: `extra_root_certificates`, `image_pull_proxy`, the
    /// transfer timeouts.
    pub fn new(config: &ImageConfig) -> Result<Self, ImageError> {
        peerpod_kbs_client::install_crypto_provider();
        let t = &config.transfer;
        let mut b = reqwest::Client::builder()
            .user_agent(concat!("peerpod-image/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(t.connect_timeout)
            .read_timeout(t.read_timeout)
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
        let http = b.build().map_err(|e| {
            ImageError::Config(format!(
                "cannot build the registry HTTP client: {}",
                peerpod_text::error_chain(&e)
            ))
        })?;
        Ok(Self {
            http,
            transfer: t.clone(),
        })
    }

    /// A session for one source's repository.
    pub fn session(&self, source: &Source, credential: Option<Credential>) -> Session {
        let scheme = if source.insecure { "http" } else { "https" };
        Session {
            client: self.clone(),
            base: format!(
                "{scheme}://{}/v2/{}",
                source.reference.api_host(),
                source.reference.repository
            ),
            registry: source.reference.registry.clone(),
            repository: source.reference.repository.clone(),
            secure: !source.insecure,
            credential,
            authorization: Arc::new(Mutex::new(None)),
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

/// Requests to one repository, sharing their authorization.
#[derive(Clone)]
pub struct Session {
    client: Client,
    base: String,
    registry: String,
    repository: String,
    secure: bool,
    credential: Option<Credential>,
    authorization: Arc<Mutex<Option<Zeroizing<String>>>>,
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
    /// authentication; `range_from` asks for the bytes from that offset on.
    pub async fn get(
        &self,
        path: &str,
        accept: Option<&str>,
        range_from: Option<u64>,
    ) -> Result<Reply, ImageError> {
        let url = format!("{}/{path}", self.base);
        let t = &self.client.transfer;
        let mut last = String::new();
        let mut reauthenticated = false;
        let mut attempt = 0;
        while attempt < t.attempts {
            if attempt > 0 {
                tokio::time::sleep(backoff(t, attempt)).await;
            }
            attempt += 1;
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
            if let Some(auth) = self.authorization.lock().await.as_ref()
                && let Ok(mut v) = HeaderValue::from_str(auth)
            {
                v.set_sensitive(true);
                headers.insert(header::AUTHORIZATION, v);
            }
            let response = match self.client.http.get(&url).headers(headers).send().await {
                Ok(r) => r,
                Err(e) => {
                    last = describe(&e);
                    tracing::warn!(url = %url, attempt, error = %last, "registry request failed");
                    continue;
                }
            };
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && !reauthenticated {
                reauthenticated = true;
                self.authenticate(&response).await?;
                // The retry with credentials is not a transport attempt.
                attempt -= 1;
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
                last = format!("the registry answered {status}");
                tracing::warn!(url = %url, attempt, %status, "registry busy or failing");
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
            return Ok(Reply { response, url });
        }
        Err(ImageError::Transport {
            url,
            reason: last,
            attempts: attempt,
        })
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
                Zeroizing::new(format!("Basic {}", basic(c).as_str()))
            }
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let token = self.token(&realm, service, scope).await?;
                Zeroizing::new(format!("Bearer {}", token.as_str()))
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
    ) -> Result<Zeroizing<String>, ImageError> {
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
        let mut req = self.client.http.get(url);
        if let Some(c) = &self.credential {
            let mut v = HeaderValue::from_str(&format!("Basic {}", basic(c).as_str()))
                .map_err(|_| ImageError::Config("a credential is not a valid header".into()))?;
            v.set_sensitive(true);
            req = req.header(header::AUTHORIZATION, v);
        }
        let response = req.send().await.map_err(|e| ImageError::Transport {
            url: shown.clone(),
            reason: describe(&e),
            attempts: 1,
        })?;
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
            token: Option<String>,
            access_token: Option<String>,
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
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ImageError::Status {
                url: shown,
                status: status.as_u16(),
                detail: ": the token is not printable ASCII".into(),
            });
        }
        Ok(Zeroizing::new(token))
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
        let mut attempt = 0;
        loop {
            attempt += 1;
            let reply = self.get(path, accept, None).await?;
            let ct = header_text(&reply.response, header::CONTENT_TYPE);
            let dcd = header_text(&reply.response, "docker-content-digest");
            match read_limited(reply.response, limit, what, &reply.url).await {
                Ok(body) => {
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
                Err(ImageError::Transport { url, reason, .. }) if attempt < t.attempts => {
                    tracing::warn!(url = %url, attempt, error = %reason, "reply cut short, retrying");
                    tokio::time::sleep(backoff(t, attempt)).await;
                }
                Err(ImageError::Transport { url, reason, .. }) => {
                    return Err(ImageError::Transport {
                        url,
                        reason,
                        attempts: attempt,
                    });
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// The wait before attempt `n + 1`.
pub(crate) fn backoff(t: &Transfer, n: u32) -> Duration {
    t.backoff.saturating_mul(1u32 << n.saturating_sub(1).min(6))
}

fn basic(c: &Credential) -> Zeroizing<String> {
    let plain = Zeroizing::new(format!("{}:{}", c.username, c.password.as_str()));
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
