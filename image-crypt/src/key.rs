//! From a layer's annotations to its key: choose the key-provider annotation, fetch each
//! entry's KEK through the resolver, unwrap and check the options.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::{Zeroize as _, Zeroizing};

use crate::error::{CryptError, quote};
use crate::options::{Tag, parse_private, parse_public};
use crate::packet::Packet;
use crate::{KEYPROVIDER_ANNOTATION, KEYS_ANNOTATION_PREFIX, PUBOPTS_ANNOTATION};

/// Longest key-provider annotation value (base64 text).
pub(crate) const MAX_KEYS_ANNOTATION: usize = 64 * 1024;
/// Most comma-separated wrapped keys in it.
pub(crate) const MAX_ENTRIES: usize = 16;
/// Longest pubopts annotation value (base64 text).
pub(crate) const MAX_PUBOPTS_ANNOTATION: usize = 8 * 1024;

/// Where KEKs come from: the confidential data hub implements it with a KBS resource fetch
/// after attestation, so that only an attested pod VM gets a layer's key.
#[async_trait::async_trait]
pub trait KeyResolver: Send + Sync {
    /// The contents of the resource `uri` (a `kbs:///…` URI from the image). The error is a
    /// reason for a person: it must not contain the resource's contents.
    async fn resource(&self, uri: &str) -> Result<Zeroizing<Vec<u8>>, String>;
}

/// An unwrapped layer key with what decryption needs. The key is zeroized on drop; `Debug`
/// shows only the `kid` and the plaintext digest.
pub struct LayerKey {
    pub(crate) symkey: Zeroizing<[u8; 32]>,
    pub(crate) nonce: [u8; 16],
    pub(crate) hmac: Tag,
    pub(crate) digest: String,
    pub(crate) kid: String,
}

impl LayerKey {
    /// The resource URI of the KEK that unwrapped this key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The digest of the decrypted layer (the plain blob, compressed as its decrypted media type
    /// says) that the encrypter recorded in the private options, when it did. It comes from the
    /// authenticated options: a caller may check the decrypted bytes against it.
    pub fn plain_digest(&self) -> Option<&str> {
        Some(self.digest.as_str()).filter(|d| !d.is_empty())
    }
}

impl Drop for LayerKey {
    fn drop(&mut self) {
        self.nonce.zeroize();
    }
}

impl fmt::Debug for LayerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LayerKey")
            .field("kid", &self.kid)
            .field("plain_digest", &self.plain_digest())
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Unwraps the key of an encrypted layer from its descriptor's annotations.
///
/// Reads the `org.opencontainers.image.enc.keys.provider.attestation-agent` annotation (one or
/// more comma-separated wrapped keys) and `org.opencontainers.image.enc.pubopts`; for each
/// wrapped key in turn asks `keys` for the KEK its `kid` names, opens the wrapped options with
/// AES-256-GCM and checks them. The first that works gives the key; when none does, the error
/// is the first one's (wrapped in [`CryptError::NoUsableKey`] when there were several).
///
/// A layer whose key is wrapped only for other protocols (`jwe`, `pgp`, …) is refused with
/// [`CryptError::UnsupportedProtocol`].
pub async fn layer_key(
    annotations: &BTreeMap<String, String>,
    keys: &dyn KeyResolver,
) -> Result<LayerKey, CryptError> {
    let Some(wrapped) = annotations.get(KEYPROVIDER_ANNOTATION) else {
        let others: Vec<String> = annotations
            .keys()
            .filter_map(|k| k.strip_prefix(KEYS_ANNOTATION_PREFIX))
            .map(quote)
            .collect();
        return Err(if others.is_empty() {
            CryptError::NoKeyAnnotation {
                annotation: KEYPROVIDER_ANNOTATION,
            }
        } else {
            CryptError::UnsupportedProtocol {
                protocols: others.join(", "),
            }
        });
    };
    let public_tag = public_tag(annotations)?;
    if wrapped.len() > MAX_KEYS_ANNOTATION {
        return Err(CryptError::TooLarge {
            what: "the key-provider annotation",
            len: wrapped.len(),
            max: MAX_KEYS_ANNOTATION,
        });
    }
    let entries: Vec<&str> = wrapped.split(',').collect();
    if entries.len() > MAX_ENTRIES {
        return Err(CryptError::TooLarge {
            what: "the key-provider annotation's entry count",
            len: entries.len(),
            max: MAX_ENTRIES,
        });
    }
    let mut first = None;
    for entry in &entries {
        match unwrap_entry(entry, public_tag, keys).await {
            Ok(key) => return Ok(key),
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    let first = first.unwrap_or(CryptError::NoKeyAnnotation {
        annotation: KEYPROVIDER_ANNOTATION,
    });
    Err(if entries.len() == 1 {
        first
    } else {
        CryptError::NoUsableKey {
            count: entries.len(),
            first: Box::new(first),
        }
    })
}

fn public_tag(annotations: &BTreeMap<String, String>) -> Result<Option<Tag>, CryptError> {
    let text = annotations
        .get(PUBOPTS_ANNOTATION)
        .ok_or(CryptError::NoPublicOptions {
            annotation: PUBOPTS_ANNOTATION,
        })?;
    if text.len() > MAX_PUBOPTS_ANNOTATION {
        return Err(CryptError::TooLarge {
            what: "the pubopts annotation",
            len: text.len(),
            max: MAX_PUBOPTS_ANNOTATION,
        });
    }
    let json = STANDARD
        .decode(text.trim())
        .map_err(|_| CryptError::Malformed {
            what: "the pubopts annotation",
            reason: "not standard base64".into(),
        })?;
    parse_public(&json)
}

async fn unwrap_entry(
    entry: &str,
    public_tag: Option<Tag>,
    keys: &dyn KeyResolver,
) -> Result<LayerKey, CryptError> {
    let json = STANDARD
        .decode(entry.trim())
        .map_err(|_| CryptError::Malformed {
            what: "the key-provider annotation",
            reason: "an entry is not standard base64".into(),
        })?;
    let packet = Packet::parse(&json)?;
    let kek = keys
        .resource(&packet.kid)
        .await
        .map_err(|reason| CryptError::Resolver {
            kid: packet.kid.clone(),
            reason: quote(&reason),
        })?;
    let opts = packet.open(&kek)?;
    drop(kek);
    let private = parse_private(&opts)?;
    drop(opts);
    let hmac = match (public_tag, private.hmac) {
        (Some(p), Some(q)) if p != q => {
            return Err(CryptError::Malformed {
                what: "the layer options",
                reason: "the public and private HMACs differ".into(),
            });
        }
        (Some(t), _) | (None, Some(t)) => t,
        (None, None) => {
            return Err(CryptError::Malformed {
                what: "the pubopts annotation",
                reason: "no hmac: the layer cannot be authenticated".into(),
            });
        }
    };
    Ok(LayerKey {
        symkey: private.symkey,
        nonce: private.nonce,
        hmac,
        digest: private.digest,
        kid: packet.kid,
    })
}
