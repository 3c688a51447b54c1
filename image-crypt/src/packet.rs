//! The key-provider annotation packet of Confidential Containers (one entry of the
//! `…keys.provider.attestation-agent` annotation, base64 of JSON), in both of upstream's forms:
//!
//! - v1: `{"kid", "wrapped_data", "iv", "wrap_type"}`;
//! - v2: the same with `"version": "0.1.0"`, `"provider": "kbs"`, and `provider_settings` and
//!   `annotations` (used only by upstream's other KMS providers).
//!
//! `kid` names the KEK as a KBS resource (`kbs:///repository/type/tag`, or with a host),
//! `wrapped_data` is AES-256-GCM ciphertext with its 16-byte tag of the layer's private options,
//! `iv` the 12-byte GCM nonce, all byte strings in standard base64.

use aes_gcm::aead::{Aead as _, KeyInit as _};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::error::{CryptError, json_reason, quote};

/// Largest packet (decoded JSON).
pub(crate) const MAX_PACKET: usize = 16 * 1024;
/// Longest `kid`.
pub(crate) const MAX_KID: usize = 512;
/// The packet version upstream writes and accepts.
pub(crate) const VERSION: &str = "0.1.0";
/// The only wrap type accepted.
pub(crate) const WRAP_TYPE: &str = "A256GCM";

/// A parsed packet: which KEK, and the sealed options.
pub(crate) struct Packet {
    pub(crate) kid: String,
    pub(crate) iv: [u8; 12],
    pub(crate) wrapped: Vec<u8>,
}

#[derive(Deserialize)]
struct Raw {
    version: Option<String>,
    kid: Option<String>,
    wrapped_data: Option<String>,
    provider: Option<String>,
    iv: Option<String>,
    wrap_type: Option<String>,
    // Upstream's fields for its other KMS providers; not read for `kbs`.
    #[allow(dead_code)]
    provider_settings: Option<serde_json::Value>,
    #[allow(dead_code)]
    annotations: Option<serde_json::Value>,
}

/// A `kid` that can be quoted in errors and logs and handed to the resolver: a `kbs://` URI of
/// visible ASCII, at most [`MAX_KID`] bytes. The resolver parses it fully.
pub(crate) fn check_kid(kid: &str) -> Result<(), CryptError> {
    let ok = kid.len() <= MAX_KID
        && kid.starts_with("kbs://")
        && kid.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(CryptError::Malformed {
            what: "the key packet's kid",
            reason: format!(
                "not a kbs:// resource URI of visible ASCII of at most {MAX_KID} bytes ({} bytes)",
                kid.len()
            ),
        })
    }
}

impl Packet {
    /// Parses one packet (the base64-decoded annotation entry).
    pub(crate) fn parse(json: &[u8]) -> Result<Self, CryptError> {
        const WHAT: &str = "the key packet";
        let bad = |reason: &str| CryptError::Malformed {
            what: WHAT,
            reason: reason.to_string(),
        };
        if json.len() > MAX_PACKET {
            return Err(CryptError::TooLarge {
                what: WHAT,
                len: json.len(),
                max: MAX_PACKET,
            });
        }
        let raw: Raw = serde_json::from_slice(json).map_err(|e| CryptError::Malformed {
            what: WHAT,
            reason: json_reason(&e),
        })?;
        if let Some(v) = raw.version.as_deref()
            && v != VERSION
        {
            return Err(CryptError::Unsupported {
                what: "key packet version",
                value: quote(v),
                supported: VERSION,
            });
        }
        if let Some(p) = raw.provider.as_deref()
            && p != "kbs"
        {
            return Err(CryptError::Unsupported {
                what: "key packet provider",
                value: quote(p),
                supported: "kbs",
            });
        }
        let kid = raw.kid.ok_or_else(|| bad("no kid"))?;
        check_kid(&kid)?;
        let wrap_type = raw.wrap_type.ok_or_else(|| bad("no wrap_type"))?;
        if wrap_type != WRAP_TYPE {
            return Err(CryptError::Unsupported {
                what: "key packet wrap_type",
                value: quote(&wrap_type),
                supported: "A256GCM (A256CTR is not authenticated and is refused)",
            });
        }
        let iv = STANDARD
            .decode(raw.iv.ok_or_else(|| bad("no iv"))?)
            .map_err(|_| bad("iv is not standard base64"))?;
        let iv: [u8; 12] = iv
            .as_slice()
            .try_into()
            .map_err(|_| CryptError::Malformed {
                what: WHAT,
                reason: format!("iv is {} bytes, not the 12 of AES-GCM", iv.len()),
            })?;
        let wrapped = STANDARD
            .decode(raw.wrapped_data.ok_or_else(|| bad("no wrapped_data"))?)
            .map_err(|_| bad("wrapped_data is not standard base64"))?;
        if wrapped.len() < 16 {
            return Err(bad("wrapped_data is shorter than an AES-GCM tag"));
        }
        Ok(Self { kid, iv, wrapped })
    }

    /// Opens the wrapped options with the KEK.
    pub(crate) fn open(&self, kek: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptError> {
        let cipher = Aes256Gcm::new_from_slice(kek).map_err(|_| CryptError::KekSize {
            kid: self.kid.clone(),
        })?;
        cipher
            .decrypt(&Nonce::from(self.iv), self.wrapped.as_slice())
            .map(Zeroizing::new)
            .map_err(|_| CryptError::Unwrap {
                kid: self.kid.clone(),
            })
    }
}
