//! From a layer's annotations to its key: choose the key-provider annotation, fetch each
//! entry's KEK through the resolver, unwrap and check the options.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::{Zeroize as _, Zeroizing};

use crate::error::{CryptError, quote};
use crate::jwe::JwePrivateKey;
use crate::options::{Tag, parse_private, parse_public};
use crate::packet::Packet;
use crate::{JWE_ANNOTATION, KEYPROVIDER_ANNOTATION, KEYS_ANNOTATION_PREFIX, PUBOPTS_ANNOTATION};

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
    /// Which key unwrapped this one: the KEK's resource URI, or `jwe:` and the kind of the JWE
    /// private key (`jwe:P-256`, `jwe:RSA`, …).
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
/// [`CryptError::UnsupportedProtocol`]; [`layer_key_with`] also reads `jwe`.
pub async fn layer_key(
    annotations: &BTreeMap<String, String>,
    keys: &dyn KeyResolver,
) -> Result<LayerKey, CryptError> {
    layer_key_with(annotations, keys, &[]).await
}

/// [`layer_key`], and when the key-provider annotation is missing or gives no key, the `jwe`
/// protocol's annotation (`org.opencontainers.image.enc.keys.jwe`, what
/// `skopeo copy --encryption-key jwe:pub.pem` writes) opened with one of `jwe_keys`. With no
/// `jwe_keys` it is [`layer_key`]. The error, when neither gives a key, is the key provider's
/// if that annotation is there, else the JWE one's.
pub async fn layer_key_with(
    annotations: &BTreeMap<String, String>,
    keys: &dyn KeyResolver,
    jwe_keys: &[JwePrivateKey],
) -> Result<LayerKey, CryptError> {
    let provider = annotations.get(KEYPROVIDER_ANNOTATION);
    let jwe = annotations
        .get(JWE_ANNOTATION)
        .filter(|_| !jwe_keys.is_empty());
    if provider.is_none() && jwe.is_none() {
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
    }
    let public_tag = public_tag(annotations)?;
    let mut first = None;
    if let Some(wrapped) = provider {
        match each_entry(wrapped, "the key-provider annotation", |entry| {
            unwrap_entry(entry, public_tag, keys)
        })
        .await
        {
            Ok(key) => return Ok(key),
            Err(e) => first = Some(e),
        }
    }
    if let Some(wrapped) = jwe {
        let opened = each_entry(wrapped, "the jwe annotation", |entry| async move {
            let (opts, label) = crate::jwe::open(&crate::jwe::entry_json(entry)?, jwe_keys)?;
            key_from_options(&opts, public_tag, label)
        })
        .await;
        match opened {
            Ok(key) => return Ok(key),
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    Err(first.unwrap_or(CryptError::NoKeyAnnotation {
        annotation: KEYPROVIDER_ANNOTATION,
    }))
}

/// Tries `f` on each comma-separated entry of an annotation (bounded in size and count) until
/// one gives a key.
async fn each_entry<'a, F, Fut>(
    value: &'a str,
    what: &'static str,
    f: F,
) -> Result<LayerKey, CryptError>
where
    F: Fn(&'a str) -> Fut,
    Fut: std::future::Future<Output = Result<LayerKey, CryptError>>,
{
    if value.len() > MAX_KEYS_ANNOTATION {
        return Err(CryptError::TooLarge {
            what,
            len: value.len(),
            max: MAX_KEYS_ANNOTATION,
        });
    }
    let entries: Vec<&str> = value.split(',').collect();
    if entries.len() > MAX_ENTRIES {
        return Err(CryptError::TooLarge {
            what: "an annotation's entry count",
            len: entries.len(),
            max: MAX_ENTRIES,
        });
    }
    let mut first = None;
    for entry in &entries {
        match f(entry).await {
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
    key_from_options(&opts, public_tag, packet.kid)
}

/// Checks unwrapped private options against the public HMAC and makes the key.
fn key_from_options(
    opts: &[u8],
    public_tag: Option<Tag>,
    kid: String,
) -> Result<LayerKey, CryptError> {
    let private = parse_private(opts)?;
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
        kid,
    })
}
