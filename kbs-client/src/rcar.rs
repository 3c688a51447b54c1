//! The RCAR handshake (`/auth` → evidence → `/attest`), shared by the attestation agent, which
//! makes evidence with its own attester, and the CDH, which asks the agent's `GetEvidence` for
//! it (as upstream's CDH does) and so holds its own KBS session.
//!
//! The caller passes the evidence as a function of the report data: the runtime-data digest of
//! `{"tee-pubkey", "nonce", "additional-evidence": ""}` in the hash the KBS selects (SHA-384
//! when it selects none, as Trustee does).

use std::future::Future;

use peerpod_kbs_protocol::PROTOCOL_VERSION;
use peerpod_kbs_protocol::keys::TeeKeyPair;
use peerpod_kbs_protocol::messages::{
    Attestation, Challenge, InitDataBody, Request, RuntimeData, TeeEvidence, TokenResponse,
};
use peerpod_kbs_protocol::runtime_data::{self, HashAlgorithm};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::{BodyError, MAX_KBS_REPLY, StatusError, checked, read_body};

/// Why a handshake failed. `E` is the evidence provider's error.
#[derive(Debug, thiserror::Error)]
pub enum RcarError<E: std::error::Error + 'static> {
    /// The request did not complete (connection refused, timeout, TLS).
    #[error("KBS {what} request to {url} failed")]
    Http {
        /// The step (`auth`, `attest`).
        what: &'static str,
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The KBS answered with an error status.
    #[error("KBS {what} {source}")]
    Status {
        /// The step.
        what: &'static str,
        /// The answer.
        #[source]
        source: StatusError,
    },
    /// The KBS's reply could not be read, or is too large.
    #[error("KBS {what} reply")]
    Body {
        /// The step.
        what: &'static str,
        /// Why.
        #[source]
        source: BodyError,
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
    /// The KBS selected a hash we do not know, or the runtime data cannot be hashed.
    #[error("KBS protocol error: {0}")]
    Protocol(String),
    /// The evidence could not be made.
    #[error("cannot make evidence")]
    Evidence(#[source] E),
}

impl<E: std::error::Error + 'static> RcarError<E> {
    /// Whether retrying may help: network failures and server errors, not refusals.
    pub fn is_transient(&self) -> bool {
        match self {
            RcarError::Http { .. } => true,
            RcarError::Body { source, .. } => matches!(source, BodyError::Read(_)),
            RcarError::Status { source, .. } => source.status >= 500,
            _ => false,
        }
    }
}

/// One handshake's inputs.
pub struct Handshake<'a> {
    /// The HTTP client (it needs a cookie store: the session is a cookie).
    pub http: &'a reqwest::Client,
    /// The KBS's base URL.
    pub base: &'a str,
    /// The TEE name sent in `/auth`.
    pub tee: &'a str,
    /// The TEE key whose public half the token will bind.
    pub key: &'a TeeKeyPair,
    /// The initdata document to send in `/attest`, if any.
    pub init_data: Option<&'a str>,
}

async fn read_json<T: serde::de::DeserializeOwned, E: std::error::Error + 'static>(
    what: &'static str,
    expected: &'static str,
    resp: reqwest::Response,
) -> Result<T, RcarError<E>> {
    let resp = checked(resp)
        .await
        .map_err(|source| RcarError::Status { what, source })?;
    let body = read_body(resp, MAX_KBS_REPLY)
        .await
        .map_err(|source| RcarError::Body { what, source })?;
    let body = Zeroizing::new(body);
    serde_json::from_slice(&body).map_err(|_| RcarError::Malformed { what, expected })
}

impl Handshake<'_> {
    /// Runs `/auth`, asks `evidence` for evidence binding the report data, runs `/attest`;
    /// returns the token.
    pub async fn run<F, Fut, E>(&self, evidence: F) -> Result<Zeroizing<String>, RcarError<E>>
    where
        F: FnOnce(Vec<u8>) -> Fut,
        Fut: Future<Output = Result<Value, E>>,
        E: std::error::Error + 'static,
    {
        let base = self.base.trim_end_matches('/');
        let auth_url = format!("{base}/kbs/v0/auth");
        let request = Request {
            version: PROTOCOL_VERSION.to_string(),
            tee: self.tee.to_string(),
            extra_params: json!({
                "supported-hash-algorithms": HashAlgorithm::ALL.map(HashAlgorithm::name)
            }),
        };
        let resp = self
            .http
            .post(&auth_url)
            .json(&request)
            .send()
            .await
            .map_err(|source| RcarError::Http {
                what: "auth",
                url: auth_url.clone(),
                source,
            })?;
        let challenge: Challenge = read_json("auth", "a challenge", resp).await?;
        let alg = match challenge.selected_hash_algorithm() {
            Some(name) => {
                HashAlgorithm::from_name(name).map_err(|e| RcarError::Protocol(e.to_string()))?
            }
            None => HashAlgorithm::default(),
        };
        let tee_pubkey = self.key.public_key();
        let report_data = runtime_data::digest(alg, &tee_pubkey, &challenge.nonce, "")
            .map_err(|e| RcarError::Protocol(e.to_string()))?;
        let evidence = evidence(report_data).await.map_err(RcarError::Evidence)?;
        let body = Attestation {
            init_data: self.init_data.map(|text| InitDataBody {
                format: "toml".into(),
                body: text.to_string(),
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
            .map_err(|source| RcarError::Http {
                what: "attest",
                url: attest_url.clone(),
                source,
            })?;
        let token: TokenResponse = read_json("attest", "a token", resp).await?;
        Ok(Zeroizing::new(token.token))
    }
}
