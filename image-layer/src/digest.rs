//! Diff IDs: the digest of a layer's uncompressed tar stream, the store's key.

use crate::error::LayerError;

/// A checked diff ID split into its algorithm and lowercase hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DiffId<'a> {
    pub(crate) algorithm: &'a str,
    pub(crate) hex: &'a str,
}

impl<'a> DiffId<'a> {
    /// Accepts `sha256:<64 lowercase hex>` and `sha512:<128 lowercase hex>` only: the text
    /// becomes a directory name, so nothing else gets through.
    pub(crate) fn parse(text: &'a str) -> Result<Self, LayerError> {
        let invalid = || LayerError::InvalidDiffId(crate::error::quote(text.as_bytes()));
        let (algorithm, hex) = text.split_once(':').ok_or_else(invalid)?;
        let len = match algorithm {
            "sha256" => 64,
            "sha512" => 128,
            _ => return Err(invalid()),
        };
        if hex.len() != len
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(invalid());
        }
        Ok(Self { algorithm, hex })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_canonical_digests() {
        let good = format!("sha256:{}", "a1".repeat(32));
        assert!(DiffId::parse(&good).is_ok());
        assert!(DiffId::parse(&format!("sha512:{}", "0f".repeat(64))).is_ok());
        for bad in [
            format!("sha256:{}", "A1".repeat(32)),
            format!("sha256:{}", "a1".repeat(31)),
            format!("sha256:../{}", "a".repeat(61)),
            format!("md5:{}", "a".repeat(64)),
            "sha256".to_string(),
            String::new(),
            format!("sha256:{}/", "a".repeat(63)),
        ] {
            assert!(DiffId::parse(&bad).is_err(), "{bad}");
        }
    }
}
