//! The `jwe` key-wrapping protocol of ocicrypt (what `skopeo copy --encryption-key jwe:pub.pem`
//! writes): the `org.opencontainers.image.enc.keys.jwe` annotation holds comma-separated
//! entries, each base64 of a JWE in JSON serialization (RFC 7516, general or flattened) whose
//! plaintext is the layer's private options. Content encryption `A256GCM` (AAD: the
//! `protected` member's text); key management `ECDH-ES+A256KW` (P-256, P-384, P-521: Concat KDF
//! with SHA-256 and the header's `apu`/`apv`, then AES key wrap) or `RSA-OAEP` (SHA-1, what
//! ocicrypt uses for RSA keys) and `RSA-OAEP-256`.
//!
//! The private keys are the caller's: the pod VM has none unless it is given one.
//!
//! Only the JSON forms and the choice of key are this module's: the Concat KDF, the AES key
//! unwrap and the `A256GCM` decryption are `peerpod_kbs_protocol::jwe`'s, the code that opens
//! KBS resources.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use peerpod_kbs_protocol::jwe::{
    EcdhRefusal, EcdhSecret, a256gcm_open, a256kw_unwrap, aad_of, concat_kdf,
};
use serde::Deserialize;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::{CryptError, json_reason, quote};

/// Most recipients in one JWE.
pub(crate) const MAX_RECIPIENTS: usize = 16;
/// Largest JWE (decoded JSON of one entry).
pub(crate) const MAX_JWE: usize = 32 * 1024;

/// A private key that layers may be encrypted to with the `jwe` protocol. Zeroized on drop;
/// `Debug` shows its kind only.
pub struct JwePrivateKey(Kind);

enum Kind {
    P256(p256::SecretKey),
    P384(p384::SecretKey),
    P521(p521::SecretKey),
    Rsa(Box<rsa::PrivateKey>),
}

impl fmt::Debug for JwePrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JwePrivateKey({}, private)", self.kind())
    }
}

impl JwePrivateKey {
    /// Reads a PEM private key: PKCS#8 (EC P-256, P-384, P-521 or RSA, what
    /// `openssl genpkey` writes), SEC1 EC or PKCS#1 RSA. Errors do not quote the text.
    pub fn from_pem(pem: &str) -> Result<Self, CryptError> {
        use p256::pkcs8::DecodePrivateKey as _;
        use rsa::pkcs1::DecodeRsaPrivateKey as _;
        let kind = if let Ok(k) = p256::SecretKey::from_pkcs8_pem(pem) {
            Kind::P256(k)
        } else if let Ok(k) = p384::SecretKey::from_pkcs8_pem(pem) {
            Kind::P384(k)
        } else if let Ok(k) = p521::SecretKey::from_pkcs8_pem(pem) {
            Kind::P521(k)
        } else if let Ok(k) = rsa::PrivateKey::from_pkcs8_pem(pem) {
            Kind::Rsa(Box::new(k))
        } else if let Ok(k) = rsa::PrivateKey::from_pkcs1_pem(pem) {
            Kind::Rsa(Box::new(k))
        } else if let Ok(k) = p256::SecretKey::from_sec1_pem(pem) {
            Kind::P256(k)
        } else if let Ok(k) = p384::SecretKey::from_sec1_pem(pem) {
            Kind::P384(k)
        } else if let Ok(k) = p521::SecretKey::from_sec1_pem(pem) {
            Kind::P521(k)
        } else {
            return Err(CryptError::Malformed {
                what: "the JWE private key",
                reason: "not a PEM EC P-256/P-384/P-521 or RSA private key (PKCS#8, SEC1, PKCS#1)"
                    .into(),
            });
        };
        Ok(Self(kind))
    }

    /// A fixed P-256 key for the fuzz target.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn fuzz_key() -> Option<Self> {
        p256::SecretKey::from_slice(&[7u8; 32])
            .ok()
            .map(|k| Self(Kind::P256(k)))
    }

    fn kind(&self) -> &'static str {
        match self.0 {
            Kind::P256(_) => "P-256",
            Kind::P384(_) => "P-384",
            Kind::P521(_) => "P-521",
            Kind::Rsa(_) => "RSA",
        }
    }

    /// What a layer key unwrapped with this key names as its `kid`.
    pub(crate) fn label(&self) -> String {
        format!("jwe:{}", self.kind())
    }
}

#[derive(Deserialize, Default, Clone)]
struct Header {
    alg: Option<String>,
    enc: Option<String>,
    epk: Option<Epk>,
    apu: Option<String>,
    apv: Option<String>,
}

#[derive(Deserialize, Clone)]
struct Epk {
    kty: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

#[derive(Deserialize)]
struct Recipient {
    header: Option<Header>,
    encrypted_key: Option<String>,
}

#[derive(Deserialize)]
struct Jwe {
    protected: Option<String>,
    unprotected: Option<Header>,
    header: Option<Header>,
    encrypted_key: Option<String>,
    recipients: Option<Vec<Recipient>>,
    iv: Option<String>,
    ciphertext: Option<String>,
    tag: Option<String>,
    aad: Option<String>,
}

fn bad(reason: impl Into<String>) -> CryptError {
    CryptError::Malformed {
        what: "the JWE",
        reason: reason.into(),
    }
}

fn b64url(text: &str, what: &str) -> Result<Vec<u8>, CryptError> {
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| bad(format!("{what} is not base64url")))
}

/// The first of the header layers that has the field.
fn pick<T: Clone>(layers: &[&Header], f: impl Fn(&Header) -> Option<&T>) -> Option<T> {
    layers.iter().find_map(|h| f(h)).cloned()
}

/// Opens one entry (the base64-decoded JWE JSON) with the first key that fits a recipient:
/// the layer's private options and the key's label.
pub(crate) fn open(
    json: &[u8],
    keys: &[JwePrivateKey],
) -> Result<(Zeroizing<Vec<u8>>, String), CryptError> {
    if json.len() > MAX_JWE {
        return Err(CryptError::TooLarge {
            what: "a JWE entry",
            len: json.len(),
            max: MAX_JWE,
        });
    }
    let jwe: Jwe = serde_json::from_slice(json).map_err(|e| bad(json_reason(&e)))?;
    let protected_text = jwe.protected.clone().unwrap_or_default();
    let protected: Header = if protected_text.is_empty() {
        Header::default()
    } else {
        serde_json::from_slice(&b64url(&protected_text, "protected")?)
            .map_err(|e| bad(format!("protected header: {}", json_reason(&e))))?
    };
    let unprotected = jwe.unprotected.clone().unwrap_or_default();
    let recipients: Vec<Recipient> = match jwe.recipients {
        Some(r) => r,
        None => vec![Recipient {
            header: jwe.header.clone(),
            encrypted_key: jwe.encrypted_key.clone(),
        }],
    };
    if recipients.len() > MAX_RECIPIENTS {
        return Err(CryptError::TooLarge {
            what: "the JWE's recipient count",
            len: recipients.len(),
            max: MAX_RECIPIENTS,
        });
    }
    let iv = b64url(jwe.iv.as_deref().unwrap_or_default(), "iv")?;
    let iv: [u8; 12] = iv
        .as_slice()
        .try_into()
        .map_err(|_| bad(format!("iv is {} bytes, not 12", iv.len())))?;
    let ciphertext = b64url(jwe.ciphertext.as_deref().unwrap_or_default(), "ciphertext")?;
    let tag = b64url(jwe.tag.as_deref().unwrap_or_default(), "tag")?;
    if tag.len() != 16 {
        return Err(bad("tag is not 16 bytes"));
    }
    let aad = aad_of(&protected_text, jwe.aad.as_deref());
    let mut algs = Vec::new();
    for r in &recipients {
        let own = r.header.clone().unwrap_or_default();
        let layers = [&own, &unprotected, &protected];
        let enc = pick(&layers, |h| h.enc.as_ref()).unwrap_or_default();
        if enc != "A256GCM" {
            return Err(CryptError::Unsupported {
                what: "JWE content encryption",
                value: quote(&enc),
                supported: "A256GCM",
            });
        }
        let alg = pick(&layers, |h| h.alg.as_ref()).unwrap_or_default();
        let encrypted_key = b64url(
            r.encrypted_key.as_deref().unwrap_or_default(),
            "encrypted_key",
        )?;
        for key in keys {
            let Some(cek) = unwrap_cek(key, &alg, &layers, &encrypted_key)? else {
                continue;
            };
            if let Some(plain) = a256gcm_open(&cek, &iv, &ciphertext, &tag, &aad) {
                return Ok((plain, key.label()));
            }
        }
        algs.push(quote(&alg));
    }
    Err(CryptError::JweNoKey {
        recipients: algs.join(", "),
        keys: keys
            .iter()
            .map(JwePrivateKey::kind)
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// The content key, if `key` fits this recipient and unwraps it; `None` when it does not fit
/// or the unwrap fails (another recipient's key).
fn unwrap_cek(
    key: &JwePrivateKey,
    alg: &str,
    layers: &[&Header],
    encrypted_key: &[u8],
) -> Result<Option<Zeroizing<Vec<u8>>>, CryptError> {
    match (alg, &key.0) {
        ("RSA-OAEP", Kind::Rsa(k)) => Ok(k
            .decrypt(rsa::Oaep::<sha1::Sha1>::new(), encrypted_key)
            .ok()
            .map(Zeroizing::new)),
        ("RSA-OAEP-256", Kind::Rsa(k)) => Ok(k
            .decrypt(rsa::Oaep::<Sha256>::new(), encrypted_key)
            .ok()
            .map(Zeroizing::new)),
        ("ECDH-ES+A256KW", Kind::Rsa(_)) => Ok(None),
        ("ECDH-ES+A256KW", _) => {
            let epk = pick(layers, |h| h.epk.as_ref()).ok_or_else(|| bad("no epk"))?;
            if epk.kty.as_deref() != Some("EC") {
                return Err(bad("epk is not an EC key"));
            }
            let x = b64url(epk.x.as_deref().unwrap_or_default(), "epk.x")?;
            let y = b64url(epk.y.as_deref().unwrap_or_default(), "epk.y")?;
            let secret = match &key.0 {
                Kind::P256(sk) => EcdhSecret::P256(sk),
                Kind::P384(sk) => EcdhSecret::P384(sk),
                Kind::P521(sk) => EcdhSecret::P521(sk),
                Kind::Rsa(_) => return Ok(None),
            };
            let z = match secret.agree(epk.crv.as_deref().unwrap_or_default(), &x, &y) {
                Ok(z) => z,
                Err(EcdhRefusal::OtherCurve) => return Ok(None),
                Err(EcdhRefusal::NotOnCurve) => return Err(bad("epk is not a point on its curve")),
            };
            let apu = match pick(layers, |h| h.apu.as_ref()) {
                Some(a) => b64url(&a, "apu")?,
                None => Vec::new(),
            };
            let apv = match pick(layers, |h| h.apv.as_ref()) {
                Some(a) => b64url(&a, "apv")?,
                None => Vec::new(),
            };
            let kek = concat_kdf(&z, alg, &apu, &apv);
            if encrypted_key.len() != 40 {
                return Err(bad("the wrapped content key is not 40 bytes"));
            }
            Ok(a256kw_unwrap(&kek, encrypted_key))
        }
        ("RSA-OAEP" | "RSA-OAEP-256", _) => Ok(None),
        (other, _) => Err(CryptError::Unsupported {
            what: "JWE key management",
            value: quote(other),
            supported: "ECDH-ES+A256KW, RSA-OAEP, RSA-OAEP-256",
        }),
    }
}

/// The `jwe` annotation's entries decoded from standard base64.
pub(crate) fn entry_json(entry: &str) -> Result<Vec<u8>, CryptError> {
    STANDARD
        .decode(entry.trim())
        .map_err(|_| CryptError::Malformed {
            what: "the jwe annotation",
            reason: "an entry is not standard base64".into(),
        })
}
