//! The per-node pod VM limit: `kata.peerpods.io/vm` capacity on this node's status.
//!
//! As cloud-api-adaptor does at start-up, the advertiser JSON-patches the node's `status`
//! subresource with `add /status/capacity/kata.peerpods.io~1vm = "<PEERPODS_LIMIT_PER_NODE>"`
//! (a negative limit: nothing is advertised), so the scheduler places at most that many peer
//! pods on the node. Unlike upstream it marks the node with an owner annotation
//! ([`OWNER_ANNOTATION`]) in the same patch, and at shutdown removes the capacity only while
//! that annotation still names it — the removal patch `test`s the annotation, so it is atomic:
//! a newer advertiser's capacity is never removed by an old one going away.
//!
//! Only `get` on nodes and `patch` on `nodes/status` are needed (see `deploy/advertiser.yaml`).

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::error_chain;
use crate::mutate::DEFAULT_VM_RESOURCE;

/// The node annotation naming the advertiser that set the capacity.
pub const OWNER_ANNOTATION: &str = "kata.peerpods.io/vm-capacity-owner";
/// The limit when `PEERPODS_LIMIT_PER_NODE` is not set (peer-pods-cm's default).
pub const DEFAULT_LIMIT: i64 = 10;
/// Where a pod finds its service account's token and the cluster CA.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The largest API server reply read: a Node with a long image list is a few hundred KiB.
/// A reply announced larger is refused unread; one that grows past it is refused there.
pub const MAX_REPLY_BYTES: usize = 4 << 20;
/// How much of an error reply is read for the error message.
pub const MAX_ERROR_BODY_BYTES: usize = 512;
/// The largest service-account token read (a projected token is about 1 KiB).
pub const MAX_TOKEN_BYTES: usize = 64 << 10;

/// Why advertising or withdrawing failed.
#[derive(Debug, thiserror::Error)]
pub enum AdvertiseError {
    /// A required environment variable is missing or bad.
    #[error("{name}: {problem}")]
    Env {
        /// The variable.
        name: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// The service account's token or CA could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The CA file holds no certificate.
    #[error("{0} holds no PEM certificate")]
    Ca(String),
    /// The HTTP client could not be built, or the request failed on the way.
    #[error("request to the API server failed")]
    Http(#[source] reqwest::Error),
    /// The API server answered with an error status.
    #[error("the API server answered {status} to {what}: {body}")]
    Status {
        /// What was being done.
        what: String,
        /// The HTTP status.
        status: u16,
        /// The start of the reply's body.
        body: String,
    },
    /// The reply is not the JSON expected.
    #[error("the API server's reply to {0} is not a Node")]
    Reply(String),
    /// The reply is larger than [`MAX_REPLY_BYTES`].
    #[error(
        "the API server's reply to {what} is larger than {limit} bytes: refused without \
         reading the rest"
    )]
    TooLarge {
        /// What was being done.
        what: String,
        /// The limit.
        limit: usize,
    },
    /// The service account token file is unusable.
    #[error("the service account token {path}: {problem}")]
    Token {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
}

/// Where the bearer token comes from.
#[derive(Clone)]
enum Token {
    /// Given once.
    Fixed(String),
    /// Re-read before every request, as client-go re-reads a projected token that the
    /// kubelet rotates.
    File(PathBuf),
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Token::Fixed(_) => f.write_str("Token::Fixed(<redacted>)"),
            Token::File(path) => write!(f, "Token::File({})", path.display()),
        }
    }
}

impl Token {
    fn get(&self) -> Result<String, AdvertiseError> {
        let path = match self {
            Token::Fixed(t) => return Ok(t.clone()),
            Token::File(path) => path,
        };
        let bad = |problem: String| AdvertiseError::Token {
            path: path.display().to_string(),
            problem,
        };
        let file = std::fs::File::open(path).map_err(|e| bad(format!("cannot be read: {e}")))?;
        let mut bytes = Vec::with_capacity(2048);
        file.take(MAX_TOKEN_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| bad(format!("cannot be read: {e}")))?;
        if bytes.len() > MAX_TOKEN_BYTES {
            return Err(bad(format!("is larger than {MAX_TOKEN_BYTES} bytes")));
        }
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| bad("is not UTF-8 text".to_owned()))?
            .trim();
        if text.is_empty() {
            return Err(bad("is empty".to_owned()));
        }
        if text.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(bad(
                "holds characters a bearer token cannot (space, control or non-ASCII)".to_owned(),
            ));
        }
        Ok(text.to_owned())
    }
}

/// The advertiser's settings.
#[derive(Debug, Clone)]
pub struct AdvertiserConfig {
    /// The node whose status is patched (`NODE_NAME`).
    pub node_name: String,
    /// The limit (`PEERPODS_LIMIT_PER_NODE`); negative: nothing is advertised.
    pub limit: i64,
    /// The extended resource (`POD_VM_EXTENDED_RESOURCE`).
    pub resource: String,
    /// This advertiser's name in [`OWNER_ANNOTATION`] (`POD_NAME`, else the host name).
    pub owner: String,
}

impl AdvertiserConfig {
    /// From the environment, through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, AdvertiseError> {
        let get = |n: &str| lookup(n).filter(|v| !v.trim().is_empty());
        let node_name = get("NODE_NAME").ok_or(AdvertiseError::Env {
            name: "NODE_NAME",
            problem: "not set: give the pod `fieldRef: spec.nodeName` in it".to_owned(),
        })?;
        let limit = match get("PEERPODS_LIMIT_PER_NODE") {
            None => DEFAULT_LIMIT,
            Some(v) => v.trim().parse().map_err(|_| AdvertiseError::Env {
                name: "PEERPODS_LIMIT_PER_NODE",
                problem: format!(
                    "{:?} is not an integer",
                    v.chars().take(32).collect::<String>()
                ),
            })?,
        };
        let resource =
            get("POD_VM_EXTENDED_RESOURCE").unwrap_or_else(|| DEFAULT_VM_RESOURCE.to_owned());
        let owner = get("POD_NAME")
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|h| h.trim().to_owned())
            })
            .unwrap_or_else(|| "peerpod-vm-advertiser".to_owned());
        Ok(Self {
            node_name,
            limit,
            resource,
            owner,
        })
    }
}

/// What [`Advertiser::advertise`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Advertised {
    /// The capacity is set and owned by us.
    Set,
    /// A negative limit: nothing was done.
    Skipped,
}

/// What [`Advertiser::withdraw`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Withdrawn {
    /// The capacity and our annotation were removed.
    Removed,
    /// Another advertiser (named) owns the capacity now, or nobody does: left alone.
    NotOwner(Option<String>),
    /// A negative limit: nothing was advertised, nothing is removed.
    Skipped,
}

/// A client of the API server's node endpoints.
#[derive(Debug, Clone)]
pub struct Advertiser {
    base: String,
    token: Token,
    client: reqwest::Client,
    config: AdvertiserConfig,
}

/// JSON Pointer escaping of one path segment (RFC 6901).
pub fn pointer_segment(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

impl Advertiser {
    /// An advertiser talking to `base` (`https://host:port`) with a bearer `token`, trusting
    /// the CA certificates in `ca_pem`.
    pub fn new(
        base: &str,
        ca_pem: &[u8],
        token: &str,
        config: AdvertiserConfig,
    ) -> Result<Self, AdvertiseError> {
        Self::with_token(base, ca_pem, Token::Fixed(token.trim().to_owned()), config)
    }

    /// As [`Advertiser::new`], with the token read from `token_file` before every request (at
    /// most [`MAX_TOKEN_BYTES`]), so a rotated token is used from the next request on.
    pub fn with_token_file(
        base: &str,
        ca_pem: &[u8],
        token_file: &Path,
        config: AdvertiserConfig,
    ) -> Result<Self, AdvertiseError> {
        let token = Token::File(token_file.to_owned());
        token.get()?;
        Self::with_token(base, ca_pem, token, config)
    }

    fn with_token(
        base: &str,
        ca_pem: &[u8],
        token: Token,
        config: AdvertiserConfig,
    ) -> Result<Self, AdvertiseError> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem).flatten() {
            roots
                .add(cert)
                .map_err(|_| AdvertiseError::Ca("the CA bundle".to_owned()))?;
        }
        if roots.is_empty() {
            return Err(AdvertiseError::Ca("the CA bundle".to_owned()));
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|_| AdvertiseError::Ca("the TLS set-up".to_owned()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(AdvertiseError::Http)?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            token,
            client,
            config,
        })
    }

    /// In a pod: the API server from `KUBERNETES_SERVICE_HOST`/`_PORT`, the service account's
    /// `token` (re-read before every request: the kubelet rotates it) and `ca.crt` from
    /// `account_dir` (normally [`SERVICE_ACCOUNT_DIR`]).
    pub fn in_cluster(
        config: AdvertiserConfig,
        account_dir: &Path,
    ) -> Result<Self, AdvertiseError> {
        let env = |name: &'static str| {
            std::env::var(name).map_err(|_| AdvertiseError::Env {
                name,
                problem: "not set: the advertiser runs in a pod".to_owned(),
            })
        };
        let host = env("KUBERNETES_SERVICE_HOST")?;
        let port = env("KUBERNETES_SERVICE_PORT")?;
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        let read = |name: &str| {
            let path = account_dir.join(name);
            std::fs::read(&path).map_err(|source| AdvertiseError::Read {
                path: path.display().to_string(),
                source,
            })
        };
        Self::with_token_file(
            &format!("https://{host}:{port}"),
            &read("ca.crt")?,
            &account_dir.join("token"),
            config,
        )
    }

    /// The settings in use.
    pub fn config(&self) -> &AdvertiserConfig {
        &self.config
    }

    fn node_url(&self, status: bool) -> String {
        let name: String = self
            .config
            .node_name
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let suffix = if status { "/status" } else { "" };
        format!("{}/api/v1/nodes/{name}{suffix}", self.base)
    }

    async fn send(
        &self,
        what: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<Value, AdvertiseError> {
        let mut reply = request
            .bearer_auth(self.token.get()?)
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(AdvertiseError::Http)?;
        let status = reply.status();
        if !status.is_success() {
            let (body, _) = read_at_most(&mut reply, MAX_ERROR_BODY_BYTES).await?;
            let text = String::from_utf8_lossy(&body);
            return Err(AdvertiseError::Status {
                what: what.to_owned(),
                status: status.as_u16(),
                body: crate::review::clip(text.trim(), MAX_ERROR_BODY_BYTES),
            });
        }
        let too_large = || AdvertiseError::TooLarge {
            what: what.to_owned(),
            limit: MAX_REPLY_BYTES,
        };
        if reply
            .content_length()
            .is_some_and(|n| n > MAX_REPLY_BYTES as u64)
        {
            return Err(too_large());
        }
        let (body, complete) = read_at_most(&mut reply, MAX_REPLY_BYTES).await?;
        if !complete {
            return Err(too_large());
        }
        serde_json::from_slice(&body).map_err(|_| AdvertiseError::Reply(what.to_owned()))
    }

    /// Reads the node.
    pub async fn node(&self) -> Result<Value, AdvertiseError> {
        self.send("GET node", self.client.get(self.node_url(false)))
            .await
    }

    async fn patch_status(&self, what: &str, ops: Value) -> Result<Value, AdvertiseError> {
        let request = self
            .client
            .patch(self.node_url(true))
            .header("Content-Type", "application/json-patch+json")
            .body(ops.to_string());
        self.send(what, request).await
    }

    /// Sets the node's capacity to the limit, with our owner annotation.
    pub async fn advertise(&self) -> Result<Advertised, AdvertiseError> {
        let c = &self.config;
        if c.limit < 0 {
            tracing::info!(
                limit = c.limit,
                "negative limit: no pod VM capacity advertised"
            );
            return Ok(Advertised::Skipped);
        }
        let node = self.node().await?;
        let mut ops = Vec::with_capacity(4);
        if !node["metadata"]["annotations"].is_object() {
            ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": {}}));
        }
        if !node["status"]["capacity"].is_object() {
            ops.push(json!({"op": "add", "path": "/status/capacity", "value": {}}));
        }
        ops.push(json!({
            "op": "add",
            "path": format!("/status/capacity/{}", pointer_segment(&c.resource)),
            "value": c.limit.to_string(),
        }));
        ops.push(json!({
            "op": "add",
            "path": format!("/metadata/annotations/{}", pointer_segment(OWNER_ANNOTATION)),
            "value": c.owner,
        }));
        self.patch_status("PATCH node status (advertise)", Value::Array(ops))
            .await?;
        tracing::info!(node = %c.node_name, resource = %c.resource, limit = c.limit, "pod VM capacity advertised");
        Ok(Advertised::Set)
    }

    /// Re-adds the capacity when it has gone (a kubelet restart may drop it) and the node is
    /// ours or nobody's; `Ok(true)` when it was re-added.
    pub async fn ensure(&self) -> Result<bool, AdvertiseError> {
        let c = &self.config;
        if c.limit < 0 {
            return Ok(false);
        }
        let node = self.node().await?;
        let owner = node["metadata"]["annotations"][OWNER_ANNOTATION].as_str();
        let present = node["status"]["capacity"][&c.resource].is_string();
        if present || owner.is_some_and(|o| o != c.owner) {
            return Ok(false);
        }
        self.advertise().await?;
        Ok(true)
    }

    /// Removes the capacity and our annotation if the annotation still names us.
    pub async fn withdraw(&self) -> Result<Withdrawn, AdvertiseError> {
        let c = &self.config;
        if c.limit < 0 {
            return Ok(Withdrawn::Skipped);
        }
        let node = self.node().await?;
        let owner = node["metadata"]["annotations"][OWNER_ANNOTATION]
            .as_str()
            .map(str::to_owned);
        if owner.as_deref() != Some(c.owner.as_str()) {
            tracing::info!(owner = ?owner, "pod VM capacity owned by another advertiser: left alone");
            return Ok(Withdrawn::NotOwner(owner));
        }
        let annotation = format!(
            "/metadata/annotations/{}",
            pointer_segment(OWNER_ANNOTATION)
        );
        let mut ops = vec![json!({"op": "test", "path": annotation, "value": c.owner})];
        if node["status"]["capacity"][&c.resource].is_string() {
            ops.push(json!({
                "op": "remove",
                "path": format!("/status/capacity/{}", pointer_segment(&c.resource)),
            }));
        }
        ops.push(json!({"op": "remove", "path": annotation}));
        match self
            .patch_status("PATCH node status (withdraw)", Value::Array(ops))
            .await
        {
            Ok(_) => {
                tracing::info!(node = %c.node_name, "pod VM capacity withdrawn");
                Ok(Withdrawn::Removed)
            }
            // The `test` failed: someone took over between our read and our patch.
            Err(AdvertiseError::Status { status: 422, .. }) => {
                let now = self.node().await?;
                let owner = now["metadata"]["annotations"][OWNER_ANNOTATION]
                    .as_str()
                    .map(str::to_owned);
                Ok(Withdrawn::NotOwner(owner))
            }
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "pod VM capacity not withdrawn");
                Err(e)
            }
        }
    }
}

/// Reads at most `cap` bytes of `reply`'s body; whether that was all of it. Stops reading
/// (and so drops the connection) at the first chunk past the cap.
async fn read_at_most(
    reply: &mut reqwest::Response,
    cap: usize,
) -> Result<(Vec<u8>, bool), AdvertiseError> {
    let mut body = Vec::new();
    while let Some(chunk) = reply.chunk().await.map_err(AdvertiseError::Http)? {
        if body.len() + chunk.len() > cap {
            let room = cap - body.len();
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, false));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, true))
}
