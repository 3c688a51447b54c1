//! Content digests (`sha256:<64 lowercase hex>`) and the hashing reader/writer helpers that
//! check them while bytes stream past.

use std::fmt;

use sha2::{Digest as _, Sha256};

/// A `sha256:` content digest. Other algorithms are refused by [`Digest::parse`]: every digest
/// the puller checks must be one it can compute.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

/// Why a digest string is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("digest {value:?}: {reason}")]
pub struct DigestError {
    /// The offending text (clipped).
    pub value: String,
    /// What is wrong.
    pub reason: &'static str,
}

impl Digest {
    /// Parses `sha256:<64 lowercase hex digits>`.
    pub fn parse(text: &str) -> Result<Self, DigestError> {
        let bad = |reason| DigestError {
            value: clipped(text),
            reason,
        };
        let (algo, hex) = text
            .split_once(':')
            .ok_or_else(|| bad("not <algorithm>:<hex>"))?;
        if algo != "sha256" {
            return Err(bad("only sha256 digests are supported"));
        }
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad("a sha256 digest is 64 lowercase hex digits"));
        }
        Ok(Self {
            hex: hex.to_string(),
        })
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self::from_hasher(Sha256::new_with_prefix(bytes))
    }

    /// The digest a finished hasher computed.
    pub fn from_hasher(hasher: Sha256) -> Self {
        Self {
            hex: hex::encode(hasher.finalize()),
        }
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

/// Outside text for an error message: printable and at most 100 bytes.
pub(crate) fn clipped(text: &str) -> String {
    peerpod_kbs_client::printable(text, 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let good = format!("sha256:{}", "a".repeat(64));
        assert_eq!(Digest::parse(&good).map(|d| d.to_string()), Ok(good));
        for bad in [
            "",
            "sha256",
            "sha512:abcd",
            &format!("sha256:{}", "A".repeat(64)),
            &format!("sha256:{}", "a".repeat(63)),
            &format!("sha256:{}g", "a".repeat(63)),
            &format!("sha256:{}/../x", "a".repeat(64)),
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Digest::of(b"").hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
