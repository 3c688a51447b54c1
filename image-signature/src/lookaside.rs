//! Where simple-signing signatures live: the registries.d lookaside configuration
//! (containers-registries.d(5), the document image-rs reads from `sigstore_config_uri`) and the
//! fetch of `signature-1`, `signature-2`, … until the first one that does not exist.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::SignatureError;
use crate::policy::quote;
use crate::reference::{self, ImageIdentity};

/// The largest lookaside configuration read.
pub(crate) const MAX_CONFIG_BYTES: usize = 256 << 10;
/// The most signatures read for one image (containers/image reads until the first missing one;
/// a store that never ends must not keep the pull waiting).
pub(crate) const MAX_SIGNATURES: usize = 16;
/// The largest signature read (a GnuPG signature of the small JSON payload is under 1 KiB).
pub(crate) const MAX_SIGNATURE_BYTES: usize = 64 << 10;
/// The time one signature fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// The time reading all of an image's signatures may take (a store that answers slowly, one
/// signature after another, must not hold the pull for [`MAX_SIGNATURES`] × [`FETCH_TIMEOUT`]).
const LIST_TIMEOUT: Duration = Duration::from_secs(60);

/// The lookaside (signature store) configuration: `default-docker` and per-namespace `docker`
/// entries, each with a `lookaside` (or the older `sigstore`) base URL.
#[derive(Debug, Clone)]
pub struct LookasideConfig {
    default: Option<String>,
    namespaces: BTreeMap<String, String>,
    client: Option<reqwest::Client>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    #[serde(rename = "default-docker")]
    default_docker: Option<Entry>,
    docker: Option<BTreeMap<String, Entry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    lookaside: Option<String>,
    sigstore: Option<String>,
    #[serde(rename = "lookaside-staging")]
    lookaside_staging: Option<String>,
    #[serde(rename = "sigstore-staging")]
    sigstore_staging: Option<String>,
    #[serde(rename = "use-sigstore-attachments")]
    use_sigstore_attachments: Option<bool>,
}

impl LookasideConfig {
    /// Parses a registries.d YAML document.
    ///
    /// # Errors
    /// [`SignatureError::InvalidLookasideConfig`] naming the entry.
    pub fn parse(yaml: &[u8]) -> Result<Self, SignatureError> {
        if yaml.len() > MAX_CONFIG_BYTES {
            return Err(invalid(
                "(document)",
                format!("larger than {MAX_CONFIG_BYTES} bytes"),
            ));
        }
        let text =
            std::str::from_utf8(yaml).map_err(|_| invalid("(document)", "not UTF-8".into()))?;
        let doc: Document = if text.trim().is_empty() {
            Document {
                default_docker: None,
                docker: None,
            }
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| invalid("(document)", e.to_string()))?
        };
        let default = match doc.default_docker {
            Some(entry) => entry.base("default-docker")?,
            None => None,
        };
        let mut namespaces = BTreeMap::new();
        for (scope, entry) in doc.docker.unwrap_or_default() {
            let at = format!("docker[{}]", quote(&scope));
            check_namespace(&scope).map_err(|r| invalid(&at, r))?;
            if let Some(base) = entry.base(&at)? {
                namespaces.insert(scope, base);
            }
        }
        Ok(Self {
            default,
            namespaces,
            client: None,
        })
    }

    /// Uses `client` for `http(s)://` lookasides (the image crate's, with its TLS trust and
    /// proxy) instead of a client trusting the system's roots.
    #[must_use]
    pub fn with_http_client(mut self, client: reqwest::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// The base URL for `image`: the most specific `docker` namespace, else `default-docker`.
    pub(crate) fn base_for(&self, image: &ImageIdentity) -> Option<&str> {
        image
            .scopes()
            .iter()
            .find_map(|scope| self.namespaces.get(scope))
            .or(self.default.as_ref())
            .map(String::as_str)
    }

    /// The signatures stored for `image`: `signature-1` … until the first that does not exist,
    /// at most [`MAX_SIGNATURES`].
    pub(crate) async fn signatures(&self, image: &ImageIdentity) -> Result<Vec<Vec<u8>>, String> {
        tokio::time::timeout(LIST_TIMEOUT, self.signatures_unbounded(image))
            .await
            .map_err(|_| {
                format!(
                    "reading the signatures of {} from the lookaside took more than {} s",
                    image.name(),
                    LIST_TIMEOUT.as_secs()
                )
            })?
    }

    async fn signatures_unbounded(&self, image: &ImageIdentity) -> Result<Vec<Vec<u8>>, String> {
        let base = self.base_for(image).ok_or_else(|| {
            format!(
                "no lookaside for {} (add a docker or default-docker entry with a lookaside URL to the sigstore_config_uri document)",
                image.name()
            )
        })?;
        let (algorithm, hex) = image
            .manifest_digest
            .split_once(':')
            .ok_or("manifest digest without algorithm")?;
        let dir = format!(
            "{}/{}@{algorithm}={hex}",
            base.trim_end_matches('/'),
            image.repository
        );
        let mut out = Vec::new();
        for n in 1..=MAX_SIGNATURES {
            let url = format!("{dir}/signature-{n}");
            match self.fetch(&url).await? {
                Some(sig) => out.push(sig),
                None => return Ok(out),
            }
        }
        tracing::warn!(
            image = %image.display(),
            "lookaside holds more than {MAX_SIGNATURES} signatures; the rest are not read"
        );
        Ok(out)
    }

    /// One signature, or `None` when it does not exist.
    async fn fetch(&self, url: &str) -> Result<Option<Vec<u8>>, String> {
        if let Some(path) = url.strip_prefix("file://") {
            return read_file(path).await;
        }
        let client = match &self.client {
            Some(c) => c.clone(),
            None => default_client()?,
        };
        let mut response = client
            .get(url)
            .timeout(FETCH_TIMEOUT)
            .send()
            .await
            .map_err(|e| format!("lookaside {url}: {}", error_chain(&e)))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(format!("lookaside {url}: HTTP status {status}"));
        }
        if response
            .content_length()
            .is_some_and(|len| len > MAX_SIGNATURE_BYTES as u64)
        {
            return Err(format!(
                "lookaside {url}: signature larger than {MAX_SIGNATURE_BYTES} bytes"
            ));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("lookaside {url}: {}", error_chain(&e)))?
        {
            if body.len() + chunk.len() > MAX_SIGNATURE_BYTES {
                return Err(format!(
                    "lookaside {url}: signature larger than {MAX_SIGNATURE_BYTES} bytes"
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Some(body))
    }
}

impl Entry {
    fn base(&self, at: &str) -> Result<Option<String>, SignatureError> {
        let _ = (
            &self.lookaside_staging,
            &self.sigstore_staging,
            self.use_sigstore_attachments,
        );
        let (key, base) = match (&self.lookaside, &self.sigstore) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    at,
                    "both lookaside and sigstore are set: keep lookaside".into(),
                ));
            }
            (Some(b), None) => ("lookaside", b),
            (None, Some(b)) => ("sigstore", b),
            (None, None) => return Ok(None),
        };
        let ok_scheme = ["https://", "http://", "file:///"]
            .iter()
            .any(|s| base.starts_with(s));
        if !ok_scheme || base.len() > 1024 || base.chars().any(|c| c.is_control() || c == ' ') {
            return Err(invalid(
                &format!("{at}.{key}"),
                format!(
                    "{:?} is not an https://, http:// or file:/// URL",
                    reference::peerpod_clip(base)
                ),
            ));
        }
        if base.contains('?') || base.contains('#') {
            return Err(invalid(
                &format!("{at}.{key}"),
                "a lookaside URL has no query or fragment".into(),
            ));
        }
        Ok(Some(base.clone()))
    }
}

/// registries.d namespaces: `host[:port][/path]` or `*.domain`.
fn check_namespace(scope: &str) -> Result<(), String> {
    if let Some(domain) = scope.strip_prefix("*.") {
        return reference::check_registry(domain);
    }
    match scope.split_once('/') {
        Some((host, path)) => {
            reference::check_registry(host)?;
            reference::check_repository(path)
        }
        None => reference::check_registry(scope),
    }
}

async fn read_file(path: &str) -> Result<Option<Vec<u8>>, String> {
    use tokio::io::AsyncReadExt;
    let file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("lookaside file {path}: {e}")),
    };
    let mut body = Vec::new();
    file.take(MAX_SIGNATURE_BYTES as u64 + 1)
        .read_to_end(&mut body)
        .await
        .map_err(|e| format!("lookaside file {path}: {e}"))?;
    if body.len() > MAX_SIGNATURE_BYTES {
        return Err(format!(
            "lookaside file {path}: signature larger than {MAX_SIGNATURE_BYTES} bytes"
        ));
    }
    Ok(Some(body))
}

fn default_client() -> Result<reqwest::Client, String> {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Another component may have installed one already; either is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("lookaside HTTP client: {}", error_chain(&e)))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn invalid(at: &str, reason: String) -> SignatureError {
    SignatureError::InvalidLookasideConfig {
        at: at.to_string(),
        reason,
    }
}
