//! The layer block cipher options of ocicrypt, as JSON with byte strings in standard base64
//! (Go's `[]byte`, which may also be `null`):
//!
//! - public (`org.opencontainers.image.enc.pubopts`): `{"cipher", "hmac", "cipheroptions"}`.
//!   ocicrypt (Go) writes the HMAC as `cipheroptions.hmac`, ocicrypt-rs as `hmac`; either is
//!   read, and both must agree when both are there.
//! - private (the unwrapped key-provider payload): `{"symkey", "digest", "cipheroptions":
//!   {"nonce"}}`; Go's `previouslayersdigest` is ignored.
//!
//! Unlike ocicrypt, the counter block is taken from the private options only: the public ones
//! are not authenticated, and a `nonce` there is refused rather than preferred.

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use zeroize::{Zeroize as _, Zeroizing};

use crate::error::{CryptError, json_reason, quote};

/// Largest public options document (decoded JSON).
pub(crate) const MAX_PUBLIC: usize = 4096;
/// Largest private options document (decoded JSON).
pub(crate) const MAX_PRIVATE: usize = 4096;

/// The HMAC-SHA256 the ciphertext must have.
pub(crate) type Tag = [u8; 32];

#[derive(Deserialize)]
struct Public<'a> {
    #[serde(borrow)]
    cipher: Option<Cow<'a, str>>,
    #[serde(borrow)]
    hmac: Option<Cow<'a, str>>,
    #[serde(borrow)]
    cipheroptions: Option<BTreeMap<Cow<'a, str>, Option<Cow<'a, str>>>>,
}

/// The public options' HMAC, after checking the cipher.
pub(crate) fn parse_public(json: &[u8]) -> Result<Option<Tag>, CryptError> {
    const WHAT: &str = "the pubopts annotation";
    if json.len() > MAX_PUBLIC {
        return Err(CryptError::TooLarge {
            what: WHAT,
            len: json.len(),
            max: MAX_PUBLIC,
        });
    }
    let p: Public<'_> = serde_json::from_slice(json).map_err(|e| CryptError::Malformed {
        what: WHAT,
        reason: json_reason(&e),
    })?;
    let cipher = p.cipher.as_deref().unwrap_or_default();
    if cipher != crate::LAYER_CIPHER {
        return Err(CryptError::Unsupported {
            what: "layer cipher",
            value: quote(cipher),
            supported: crate::LAYER_CIPHER,
        });
    }
    let mut tags = Vec::new();
    if let Some(h) = p.hmac.as_deref().filter(|h| !h.is_empty()) {
        tags.push(h);
    }
    for (name, value) in p.cipheroptions.iter().flatten() {
        match name.as_ref() {
            "hmac" => tags.extend(value.as_deref().filter(|h| !h.is_empty())),
            other => {
                return Err(CryptError::Unsupported {
                    what: "public cipher option",
                    value: quote(other),
                    supported: "hmac",
                });
            }
        }
    }
    let mut found: Option<Tag> = None;
    for t in tags {
        let tag = decode_tag(t, "the pubopts HMAC")?;
        if found.is_some_and(|f| f != tag) {
            return Err(CryptError::Malformed {
                what: WHAT,
                reason: "hmac and cipheroptions.hmac differ".into(),
            });
        }
        found = Some(tag);
    }
    Ok(found)
}

fn decode_tag(text: &str, what: &'static str) -> Result<Tag, CryptError> {
    let bytes = STANDARD.decode(text).map_err(|_| CryptError::Malformed {
        what,
        reason: "not standard base64".into(),
    })?;
    bytes
        .as_slice()
        .try_into()
        .map_err(|_| CryptError::Malformed {
            what,
            reason: format!("{} bytes, not the 32 of HMAC-SHA256", bytes.len()),
        })
}

#[derive(Deserialize)]
struct Private<'a> {
    #[serde(borrow)]
    symkey: Option<Cow<'a, str>>,
    #[serde(borrow)]
    digest: Option<Cow<'a, str>>,
    #[serde(borrow)]
    cipheroptions: Option<BTreeMap<Cow<'a, str>, Option<Cow<'a, str>>>>,
}

impl Drop for Private<'_> {
    fn drop(&mut self) {
        // A string with JSON escapes in it was copied: wipe the copy of the key.
        if let Some(Cow::Owned(s)) = &mut self.symkey {
            s.zeroize();
        }
    }
}

/// What the private options give.
pub(crate) struct PrivateOptions {
    pub(crate) symkey: Zeroizing<[u8; 32]>,
    pub(crate) nonce: [u8; 16],
    /// The private options' own `cipheroptions.hmac`, if any (ocicrypt reads it when the public
    /// options have none).
    pub(crate) hmac: Option<Tag>,
    /// The plaintext's digest, empty when the encrypter left it out.
    pub(crate) digest: String,
}

/// Parses unwrapped private options. Errors never quote the document: it holds the layer key.
pub(crate) fn parse_private(json: &[u8]) -> Result<PrivateOptions, CryptError> {
    const WHAT: &str = "the unwrapped layer options";
    let bad = |reason: &str| CryptError::Malformed {
        what: WHAT,
        reason: reason.to_string(),
    };
    if json.len() > MAX_PRIVATE {
        return Err(CryptError::TooLarge {
            what: WHAT,
            len: json.len(),
            max: MAX_PRIVATE,
        });
    }
    let p: Private<'_> = serde_json::from_slice(json).map_err(|e| CryptError::Malformed {
        what: WHAT,
        reason: json_reason(&e),
    })?;
    let symkey_b64 = p.symkey.as_deref().ok_or_else(|| bad("no symkey"))?;
    let raw = Zeroizing::new(
        STANDARD
            .decode(symkey_b64)
            .map_err(|_| bad("symkey is not standard base64"))?,
    );
    let mut symkey = Zeroizing::new([0u8; 32]);
    if raw.len() != 32 {
        return Err(CryptError::Malformed {
            what: WHAT,
            reason: format!("symkey is {} bytes, not the 32 of AES-256", raw.len()),
        });
    }
    symkey.copy_from_slice(&raw);
    let mut nonce = None;
    let mut hmac = None;
    for (name, value) in p.cipheroptions.iter().flatten() {
        let value = value.as_deref().unwrap_or_default();
        match name.as_ref() {
            "nonce" => {
                let n = STANDARD
                    .decode(value)
                    .map_err(|_| bad("cipheroptions.nonce is not standard base64"))?;
                nonce = Some(<[u8; 16]>::try_from(n.as_slice()).map_err(|_| {
                    CryptError::Malformed {
                        what: WHAT,
                        reason: format!("cipheroptions.nonce is {} bytes, not 16", n.len()),
                    }
                })?);
            }
            "hmac" if !value.is_empty() => {
                hmac = Some(decode_tag(value, "the private options' HMAC")?);
            }
            "hmac" => {}
            other => {
                return Err(CryptError::Unsupported {
                    what: "private cipher option",
                    value: quote(other),
                    supported: "nonce, hmac",
                });
            }
        }
    }
    let nonce = nonce.ok_or_else(|| bad("no cipheroptions.nonce"))?;
    let digest = p.digest.as_deref().unwrap_or_default();
    if !digest.is_empty() && !valid_digest(digest) {
        return Err(bad("digest is not <algorithm>:<hex> (at most 200 bytes)"));
    }
    Ok(PrivateOptions {
        symkey,
        nonce,
        hmac,
        digest: digest.to_string(),
    })
}

/// An OCI digest's shape: `algorithm:encoded`, lowercase algorithm of `[a-z0-9+._-]`,
/// encoded of `[a-zA-Z0-9=_-]`, at most 200 bytes.
fn valid_digest(d: &str) -> bool {
    let Some((alg, enc)) = d.split_once(':') else {
        return false;
    };
    d.len() <= 200
        && !alg.is_empty()
        && !enc.is_empty()
        && alg
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b))
        && enc
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"=_-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(b: &[u8]) -> String {
        STANDARD.encode(b)
    }

    #[test]
    fn go_and_rust_public_forms_are_read() {
        let tag = [7u8; 32];
        let go = format!(
            r#"{{"cipher":"AES_256_CTR_HMAC_SHA256","hmac":null,"cipheroptions":{{"hmac":"{}"}}}}"#,
            b64(&tag)
        );
        assert_eq!(parse_public(go.as_bytes()).ok(), Some(Some(tag)));
        let rs = format!(
            r#"{{"cipher":"AES_256_CTR_HMAC_SHA256","hmac":"{}","cipheroptions":{{}}}}"#,
            b64(&tag)
        );
        assert_eq!(parse_public(rs.as_bytes()).ok(), Some(Some(tag)));
        let none = r#"{"cipher":"AES_256_CTR_HMAC_SHA256","hmac":null,"cipheroptions":null}"#;
        assert_eq!(parse_public(none.as_bytes()).ok(), Some(None));
    }

    #[test]
    fn public_options_that_disagree_or_add_a_nonce_are_refused() {
        let (a, b) = (b64(&[1; 32]), b64(&[2; 32]));
        let differ = format!(
            r#"{{"cipher":"AES_256_CTR_HMAC_SHA256","hmac":"{a}","cipheroptions":{{"hmac":"{b}"}}}}"#
        );
        assert!(parse_public(differ.as_bytes()).is_err());
        let nonce = format!(
            r#"{{"cipher":"AES_256_CTR_HMAC_SHA256","hmac":"{a}","cipheroptions":{{"nonce":"{}"}}}}"#,
            b64(&[0; 16])
        );
        let e = parse_public(nonce.as_bytes()).expect_err("nonce refused");
        assert!(e.to_string().contains("\"nonce\""), "{e}");
        let other = format!(r#"{{"cipher":"AES_128_CTR","hmac":"{a}"}}"#);
        assert!(parse_public(other.as_bytes()).is_err());
        let short = format!(
            r#"{{"cipher":"AES_256_CTR_HMAC_SHA256","hmac":"{}"}}"#,
            b64(&[1; 31])
        );
        assert!(parse_public(short.as_bytes()).is_err());
        assert!(parse_public(&vec![b' '; MAX_PUBLIC + 1]).is_err());
    }

    #[test]
    fn private_options_are_checked_without_quoting_them() {
        let key = [0x5au8; 32];
        let ok = format!(
            r#"{{"symkey":"{}","digest":"sha256:{}","cipheroptions":{{"nonce":"{}"}},"previouslayersdigest":""}}"#,
            b64(&key),
            "ab".repeat(32),
            b64(&[3; 16])
        );
        let p = parse_private(ok.as_bytes()).expect("valid options");
        assert_eq!(*p.symkey, key);
        assert_eq!(p.nonce, [3; 16]);
        assert!(p.digest.starts_with("sha256:"));
        for bad in [
            format!(r#"{{"symkey":"{}","cipheroptions":{{}}}}"#, b64(&key)),
            format!(
                r#"{{"symkey":"{}","cipheroptions":{{"nonce":"AAAA"}}}}"#,
                b64(&key)
            ),
            format!(
                r#"{{"symkey":"{}","cipheroptions":{{"nonce":"{}"}}}}"#,
                b64(&key[..16]),
                b64(&[0; 16])
            ),
            format!(
                r#"{{"symkey":"{}","digest":"x\ny","cipheroptions":{{"nonce":"{}"}}}}"#,
                b64(&key),
                b64(&[0; 16])
            ),
            format!(
                r#"{{"symkey":"{}","cipheroptions":{{"iv":"{}"}}}}"#,
                b64(&key),
                b64(&[0; 16])
            ),
            format!(r#"{{"symkey":"{}" "#, b64(&key)),
            format!(r#"{{"symkey":5,"x":"{}"}}"#, b64(&key)),
        ] {
            let e = parse_private(bad.as_bytes()).err().expect("refused");
            let text = format!("{e} {e:?}");
            assert!(!text.contains(&b64(&key)), "{text}");
            assert!(!text.contains(&b64(&key[..16])), "{text}");
        }
    }
}
