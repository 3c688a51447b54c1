//! A hand-made KBS client for tests: each protocol step as a call, so tests can also break the
//! protocol on purpose. (The product's client is in the attestation agent.)

use peerpod_kbs_protocol::keys::TeeKeyPair;
use peerpod_kbs_protocol::messages::{
    Attestation, Challenge, ErrorInformation, InitDataBody, Request, RuntimeData, TeeEvidence,
    TokenResponse,
};
use peerpod_kbs_protocol::runtime_data::{self, HashAlgorithm};
use peerpod_kbs_protocol::{PROTOCOL_VERSION, jwe};
use serde_json::{Value, json};

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The HTTP exchange failed.
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    /// The KBS answered with an error.
    #[error("KBS answered {status}: {info}")]
    Kbs {
        /// HTTP status.
        status: u16,
        /// The error body.
        info: ErrorInformation,
    },
    /// The KBS answered something we cannot use.
    #[error("protocol: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The HTTP status of a KBS error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Kbs { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The Trustee error variant the body's `type` names (`PolicyDeny`, …).
    pub fn kind(&self) -> Option<&str> {
        match self {
            ClientError::Kbs { info, .. } => info.variant(),
            _ => None,
        }
    }

    /// The error body's detail, or the error's text.
    pub fn detail(&self) -> String {
        match self {
            ClientError::Kbs { info, .. } => info.detail.clone(),
            other => other.to_string(),
        }
    }
}

/// One TEE's view of a KBS: an HTTP client with a cookie store and a TEE key.
pub struct KbsClient {
    http: reqwest::Client,
    url: String,
    /// The TEE key resources are encrypted to.
    pub key: TeeKeyPair,
}

async fn check(resp: reqwest::Response) -> Result<reqwest::Response, ClientError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.bytes().await?;
    let info: ErrorInformation = serde_json::from_slice(&body).map_err(|e| {
        ClientError::Protocol(format!(
            "error {status} with a body that is not {{type, detail}}: {e}: {}",
            String::from_utf8_lossy(&body)
        ))
    })?;
    Err(ClientError::Kbs {
        status: status.as_u16(),
        info,
    })
}

impl KbsClient {
    /// A client of the KBS at `url` with a fresh P-256 TEE key.
    pub fn new(url: &str, http: reqwest::Client) -> Self {
        Self {
            http,
            url: url.trim_end_matches('/').to_string(),
            key: TeeKeyPair::generate(),
        }
    }

    /// The same TEE key on a new HTTP client (no cookies): a second connection of the same TEE.
    pub fn with_key(url: &str, http: reqwest::Client, key: TeeKeyPair) -> Self {
        Self {
            http,
            url: url.trim_end_matches('/').to_string(),
            key,
        }
    }

    /// `POST /kbs/v0/auth` with a protocol version of our choosing.
    pub async fn auth_with_version(
        &self,
        tee: &str,
        version: &str,
    ) -> Result<Challenge, ClientError> {
        let req = Request {
            version: version.to_string(),
            tee: tee.to_string(),
            extra_params: json!({"supported-hash-algorithms": ["sha256", "sha384", "sha512"]}),
        };
        let resp = check(
            self.http
                .post(format!("{}/kbs/v0/auth", self.url))
                .json(&req)
                .send()
                .await?,
        )
        .await?;
        Ok(resp.json().await?)
    }

    /// `POST /kbs/v0/auth`.
    pub async fn auth(&self, tee: &str) -> Result<Challenge, ClientError> {
        self.auth_with_version(tee, PROTOCOL_VERSION).await
    }

    /// The runtime data for a nonce, with this client's key.
    pub fn runtime_data(&self, nonce: &str) -> RuntimeData {
        RuntimeData {
            nonce: nonce.to_string(),
            tee_pubkey: self.key.public_key(),
        }
    }

    /// The digest the evidence must bind for a nonce (SHA-384, no additional evidence).
    pub fn report_data(&self, nonce: &str) -> Vec<u8> {
        runtime_data::digest(HashAlgorithm::Sha384, &self.key.public_key(), nonce, "")
            .unwrap_or_default()
    }

    /// An `/attest` body.
    pub fn attestation(
        &self,
        nonce: &str,
        evidence: Value,
        init_data: Option<&str>,
    ) -> Attestation {
        Attestation {
            init_data: init_data.map(|body| InitDataBody {
                format: "toml".into(),
                body: body.to_string(),
            }),
            runtime_data: self.runtime_data(nonce),
            tee_evidence: TeeEvidence {
                primary_evidence: evidence,
                additional_evidence: String::new(),
            },
        }
    }

    /// `POST /kbs/v0/attest`; returns the token.
    pub async fn attest(&self, body: &Attestation) -> Result<String, ClientError> {
        let resp = check(
            self.http
                .post(format!("{}/kbs/v0/attest", self.url))
                .json(body)
                .send()
                .await?,
        )
        .await?;
        let token: TokenResponse = resp.json().await?;
        Ok(token.token)
    }

    /// `GET /kbs/v0/resource/<path>` (session cookie, or `token` as Bearer); returns the
    /// decrypted resource.
    pub async fn resource(&self, path: &str, token: Option<&str>) -> Result<Vec<u8>, ClientError> {
        let mut req = self
            .http
            .get(format!("{}/kbs/v0/resource/{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = check(req.send().await?).await?;
        let sealed: jwe::JweResponse = resp
            .json()
            .await
            .map_err(|e| ClientError::Protocol(format!("resource is not a JWE: {e}")))?;
        jwe::open(&self.key, &sealed)
            .map(|p| p.to_vec())
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }
}

/// An administrator of a KBS whose admin auth is [`super::AdminAuth::Ed25519PublicKey`] (or
/// insecure).
pub struct KbsAdmin {
    http: reqwest::Client,
    url: String,
    token: Option<String>,
}

/// A fresh Ed25519 admin key pair: `(private PKCS#8 PEM, public SPKI PEM)`.
pub fn admin_keypair() -> Result<(String, String), String> {
    use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| e.to_string())?;
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let private = key
        .to_pkcs8_pem(der::pem::LineEnding::LF)
        .map_err(|e| e.to_string())?
        .to_string();
    let public = key
        .verifying_key()
        .to_public_key_pem(der::pem::LineEnding::LF)
        .map_err(|e| e.to_string())?;
    Ok((private, public))
}

impl KbsAdmin {
    /// An admin with an Ed25519 private key (PEM), or none for an insecure KBS.
    pub fn new(url: &str, private_key_pem: Option<&str>) -> Result<Self, String> {
        let token = match private_key_pem {
            Some(pem) => {
                let key = jsonwebtoken::EncodingKey::from_ed_pem(pem.as_bytes())
                    .map_err(|e| e.to_string())?;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let claims = json!({"iat": now, "nbf": now, "exp": now + 7200});
                Some(
                    jsonwebtoken::encode(
                        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
                        &claims,
                        &key,
                    )
                    .map_err(|e| e.to_string())?,
                )
            }
            None => None,
        };
        Ok(Self {
            http: crate::http::client(),
            url: url.trim_end_matches('/').to_string(),
            token,
        })
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.post(format!("{}/kbs/v0/{path}", self.url));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// Registers a resource.
    pub async fn set_resource(&self, path: &str, data: &[u8]) -> Result<(), ClientError> {
        check(
            self.post(&format!("resource/{path}"))
                .header("Content-Type", "application/octet-stream")
                .body(data.to_vec())
                .send()
                .await?,
        )
        .await
        .map(|_| ())
    }

    /// Replaces the resource policy.
    pub async fn set_resource_policy(&self, rego: &str) -> Result<(), ClientError> {
        use base64::Engine;
        let policy = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rego);
        check(
            self.post("resource-policy")
                .json(&json!({"policy": policy}))
                .send()
                .await?,
        )
        .await
        .map(|_| ())
    }

    /// Replaces the attestation policy (`default_cpu`).
    pub async fn set_attestation_policy(&self, rego: &str) -> Result<(), ClientError> {
        use base64::Engine;
        let policy = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rego);
        check(
            self.post("attestation-policy")
                .json(&json!({"type": "rego", "policy_id": "default_cpu", "policy": policy}))
                .send()
                .await?,
        )
        .await
        .map(|_| ())
    }

    /// Registers reference values (an RVPS `sample` message).
    pub async fn set_reference_values(&self, values: &Value) -> Result<(), ClientError> {
        use base64::Engine;
        let payload = base64::engine::general_purpose::STANDARD.encode(values.to_string());
        check(
            self.post("reference-value")
                .json(&json!({"version": "0.1.0", "type": "sample", "payload": payload}))
                .send()
                .await?,
        )
        .await
        .map(|_| ())
    }
}
