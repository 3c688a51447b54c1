//! The JSON bodies of the KBS protocol.
//!
//! Member names are Trustee's: kebab-case at the top of `/auth` and `/attest`, snake_case inside
//! `tee-evidence`. Unknown members are ignored, as Trustee ignores them.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Error;
use crate::keys::TeePubKey;

/// Prefix of the `type` member of error bodies.
pub const ERROR_TYPE_PREFIX: &str = "https://github.com/confidential-containers/kbs/errors/";

/// TEE names as the `tee` member spells them.
pub mod tee {
    /// Azure SEV-SNP CVM, evidence through the vTPM.
    pub const AZ_SNP_VTPM: &str = "az-snp-vtpm";
    /// Azure TDX CVM, evidence through the vTPM.
    pub const AZ_TDX_VTPM: &str = "az-tdx-vtpm";
    /// The sample TEE (no hardware; for tests only).
    pub const SAMPLE: &str = "sample";
    /// Plain SEV-SNP.
    pub const SNP: &str = "snp";
    /// Plain TDX.
    pub const TDX: &str = "tdx";
}

/// `POST /kbs/v0/auth` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Protocol version, `0.4.0`.
    pub version: String,
    /// The TEE the client runs in.
    pub tee: String,
    /// TEE-specific parameters (the client's supported hash algorithms).
    #[serde(rename = "extra-params", default)]
    pub extra_params: Value,
}

/// `POST /kbs/v0/auth` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Challenge {
    /// Standard base64 of 32 random bytes; must come back in the runtime data.
    pub nonce: String,
    /// Server parameters; Trustee sends the empty string.
    #[serde(rename = "extra-params", default)]
    pub extra_params: Value,
}

impl Challenge {
    /// The hash algorithm the server selected, if it selected one (`extra-params` may be a
    /// string, in which case it selected none).
    pub fn selected_hash_algorithm(&self) -> Option<&str> {
        self.extra_params
            .get("selected-hash-algorithm")
            .and_then(Value::as_str)
    }
}

/// `POST /kbs/v0/attest` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attestation {
    /// The initdata document the TEE was started with.
    #[serde(rename = "init-data", default, skip_serializing_if = "Option::is_none")]
    pub init_data: Option<InitDataBody>,
    /// The nonce and TEE key bound into the evidence.
    #[serde(rename = "runtime-data")]
    pub runtime_data: RuntimeData,
    /// The evidence.
    #[serde(rename = "tee-evidence")]
    pub tee_evidence: TeeEvidence,
}

/// Initdata as carried in `/attest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitDataBody {
    /// `toml`.
    pub format: String,
    /// The document's text, exactly as measured.
    pub body: String,
}

/// Runtime data: what the evidence binds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuntimeData {
    /// The challenge nonce.
    pub nonce: String,
    /// The TEE's public key for resource encryption.
    #[serde(rename = "tee-pubkey")]
    pub tee_pubkey: TeePubKey,
}

/// The evidence of `/attest`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeeEvidence {
    /// Evidence of the TEE named in `/auth`.
    pub primary_evidence: Value,
    /// A JSON map of further TEEs (devices) to their evidence, as a string; empty for none.
    #[serde(default)]
    pub additional_evidence: String,
}

/// `POST /kbs/v0/attest` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    /// The attestation token (an EAR JWT).
    pub token: String,
}

/// An error body: `{"type": "<prefix><Variant>", "detail": "<text>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInformation {
    /// [`ERROR_TYPE_PREFIX`] followed by the variant name.
    #[serde(rename = "type")]
    pub error_type: String,
    /// Human-readable detail.
    pub detail: String,
}

impl ErrorInformation {
    /// An error body for a variant.
    pub fn new(variant: &str, detail: impl Into<String>) -> Self {
        Self {
            error_type: format!("{ERROR_TYPE_PREFIX}{variant}"),
            detail: detail.into(),
        }
    }

    /// The variant name, when the type has Trustee's prefix.
    pub fn variant(&self) -> Option<&str> {
        self.error_type.strip_prefix(ERROR_TYPE_PREFIX)
    }
}

impl fmt::Display for ErrorInformation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.variant() {
            Some(v) => write!(f, "{v}: {}", self.detail),
            None => write!(f, "{}: {}", self.error_type, self.detail),
        }
    }
}

/// A resource's path: `<repository>/<type>/<tag>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourcePath {
    /// Repository (`default` unless the user chose one).
    pub repository: String,
    /// Type, e.g. `key`.
    pub kind: String,
    /// Tag, e.g. `pod-secret`.
    pub tag: String,
}

impl ResourcePath {
    /// Parses `repo/type/tag`. Each segment is letters, digits, `_`, `-` and `.`, and does not
    /// start with a dot, so no segment can climb out of a directory.
    pub fn parse(path: &str) -> Result<Self, Error> {
        let parts: Vec<&str> = path.split('/').collect();
        let [repository, kind, tag] = parts.as_slice() else {
            return Err(Error::invalid(
                "resource path",
                format!("{path:?} is not <repository>/<type>/<tag>"),
            ));
        };
        for segment in [repository, kind, tag] {
            if !peerpod_text::is_safe_name(segment) {
                return Err(Error::invalid(
                    "resource path",
                    format!(
                        "segment {segment:?} of {path:?} must be [A-Za-z0-9_.-] and not start with '.'"
                    ),
                ));
            }
        }
        Ok(Self {
            repository: repository.to_string(),
            kind: kind.to_string(),
            tag: tag.to_string(),
        })
    }
}

impl fmt::Display for ResourcePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.repository, self.kind, self.tag)
    }
}

/// Parses a JSON message, naming it in the error.
pub fn parse<'a, T: Deserialize<'a>>(what: &'static str, json: &'a [u8]) -> Result<T, Error> {
    serde_json::from_slice(json).map_err(|source| Error::Json { what, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_request_shape() {
        let r = Request {
            version: crate::PROTOCOL_VERSION.into(),
            tee: tee::AZ_SNP_VTPM.into(),
            extra_params: serde_json::json!({"supported-hash-algorithms": ["sha256", "sha384", "sha512"]}),
        };
        let v = serde_json::to_value(&r).expect("json");
        assert_eq!(v["tee"], "az-snp-vtpm");
        assert!(v["extra-params"]["supported-hash-algorithms"].is_array());
    }

    #[test]
    fn challenge_with_string_extra_params() {
        let c: Challenge =
            parse("challenge", br#"{"nonce":"abc","extra-params":""}"#).expect("parse");
        assert_eq!(c.selected_hash_algorithm(), None);
        let c: Challenge = parse(
            "challenge",
            br#"{"nonce":"abc","extra-params":{"selected-hash-algorithm":"sha512"}}"#,
        )
        .expect("parse");
        assert_eq!(c.selected_hash_algorithm(), Some("sha512"));
    }

    #[test]
    fn error_information() {
        let e = ErrorInformation::new("PolicyDeny", "Access denied by policy");
        assert_eq!(
            serde_json::to_string(&e).expect("json"),
            r#"{"type":"https://github.com/confidential-containers/kbs/errors/PolicyDeny","detail":"Access denied by policy"}"#
        );
        assert_eq!(e.variant(), Some("PolicyDeny"));
        assert_eq!(e.to_string(), "PolicyDeny: Access denied by policy");
    }

    #[test]
    fn resource_paths() {
        let p = ResourcePath::parse("default/key/pod-secret").expect("valid");
        assert_eq!(p.to_string(), "default/key/pod-secret");
        assert_eq!(p.kind, "key");
        for bad in [
            "default/key",
            "a/b/c/d",
            "../key/x",
            "default/.hidden/x",
            "default//x",
            "default/key/x y",
            "default/key/é",
        ] {
            assert!(ResourcePath::parse(bad).is_err(), "{bad}");
        }
    }
}
