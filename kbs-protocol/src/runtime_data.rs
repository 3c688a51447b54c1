//! Binding the challenge nonce and the TEE key into the evidence.
//!
//! The attester hashes the RFC 8785 canonical JSON of
//! `{"tee-pubkey": <JWK>, "nonce": <nonce>, "additional-evidence": <string>}` and puts the digest
//! where its TEE lets it bind data (report data, TPM quote qualifying data); the verifier
//! rebuilds the same JSON from the `/attest` request and compares. SHA-384 unless the server's
//! challenge selected another algorithm.

use serde::Serialize;
use sha2::{Digest, Sha256, Sha384, Sha512};

use crate::Error;
use crate::keys::TeePubKey;

/// A hash algorithm the protocol can negotiate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HashAlgorithm {
    /// SHA-256 (32 bytes).
    Sha256,
    /// SHA-384 (48 bytes): the default.
    #[default]
    Sha384,
    /// SHA-512 (64 bytes).
    Sha512,
}

impl HashAlgorithm {
    /// All algorithms, in the order clients advertise them.
    pub const ALL: [HashAlgorithm; 3] = [Self::Sha256, Self::Sha384, Self::Sha512];

    /// The protocol's name for the algorithm.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha384 => "sha384",
            Self::Sha512 => "sha512",
        }
    }

    /// Parses a protocol name (case-insensitive).
    pub fn from_name(name: &str) -> Result<Self, Error> {
        match name.to_ascii_lowercase().as_str() {
            "sha256" => Ok(Self::Sha256),
            "sha384" => Ok(Self::Sha384),
            "sha512" => Ok(Self::Sha512),
            _ => Err(Error::Unsupported {
                what: "hash algorithm",
                value: name.to_string(),
            }),
        }
    }

    /// Hashes bytes.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha256 => Sha256::digest(data).to_vec(),
            Self::Sha384 => Sha384::digest(data).to_vec(),
            Self::Sha512 => Sha512::digest(data).to_vec(),
        }
    }
}

#[derive(Serialize)]
struct Bound<'a> {
    #[serde(rename = "tee-pubkey")]
    tee_pubkey: &'a TeePubKey,
    nonce: &'a str,
    #[serde(rename = "additional-evidence")]
    additional_evidence: &'a str,
}

/// The canonical JSON (RFC 8785) the digest is computed over.
pub fn canonical_json(
    tee_pubkey: &TeePubKey,
    nonce: &str,
    additional_evidence: &str,
) -> Result<Vec<u8>, Error> {
    serde_jcs::to_vec(&Bound {
        tee_pubkey,
        nonce,
        additional_evidence,
    })
    .map_err(|source| Error::Json {
        what: "runtime data",
        source,
    })
}

/// The digest the evidence must carry.
pub fn digest(
    alg: HashAlgorithm,
    tee_pubkey: &TeePubKey,
    nonce: &str,
    additional_evidence: &str,
) -> Result<Vec<u8>, Error> {
    Ok(alg.digest(&canonical_json(tee_pubkey, nonce, additional_evidence)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form_sorts_members_and_drops_whitespace() {
        let key = TeePubKey::Ec {
            crv: "P-256".into(),
            alg: "ECDH-ES+A256KW".into(),
            x: "xx".into(),
            y: "yy".into(),
        };
        let text = canonical_json(&key, "bm9uY2U=", "").expect("json");
        assert_eq!(
            String::from_utf8(text).expect("utf8"),
            r#"{"additional-evidence":"","nonce":"bm9uY2U=","tee-pubkey":{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"xx","y":"yy"}}"#
        );
        // Python: hashlib.sha384(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode())
        let d = digest(HashAlgorithm::Sha384, &key, "bm9uY2U=", "").expect("digest");
        assert_eq!(
            hex_of(&d),
            "d355f31bf43a395834fcc96ff85ba9e9daf5d988d80ed7e481fabfec983d8c9d4136ae521d456f560916472a53a16032"
        );
    }

    fn hex_of(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn names() {
        assert_eq!(
            HashAlgorithm::from_name("SHA384").expect("known"),
            HashAlgorithm::Sha384
        );
        assert!(HashAlgorithm::from_name("md5").is_err());
        assert_eq!(HashAlgorithm::default().digest(b"").len(), 48);
    }
}
