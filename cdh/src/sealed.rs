//! Sealed secrets: `sealed.` followed by a compact JWS (`<header>.<payload>.<signature>`,
//! base64url without padding), the format upstream's CDH and its `secret` tool use.
//!
//! The header names `alg` (only `ES256`) and `kid`, the verification key: a `kbs://` resource
//! holding a P-256 public JWK, or the name of a JWK file in the sealed-secret key directory. The
//! payload is JSON with `version` `"0.1.0"` and a `type`:
//!
//! - `vault`: `name` is a `kbs://` URI (`provider` `kbs`); the secret is that resource.
//! - `envelope`: `provider` `kbs`, `key_id` a `kbs://` URI of a 32-byte key-encryption key;
//!   `encrypted_key` (standard base64) is the data key sealed with it by AES-256-GCM, nonce
//!   first; `encrypted_data` is the secret sealed with the data key by `wrap_type` `A256GCM`
//!   under `iv`. (Upstream knows only cloud KMS providers for envelopes; the `kbs` provider is
//!   ours, so an envelope secret needs nothing outside the KBS.)
//!
//! Verification is on unless `skip_sealed_secret_verification` is set; then only the payload is
//! read. Every way a secret can be malformed is a [`CdhError::Sealed`] that says what is wrong;
//! a signature that does not verify is [`CdhError::Signature`]. The verification key and the
//! key-encryption key come from outside (the KBS or a file): when one is unusable the error says
//! so without quoting it.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use p256::ecdsa::signature::{Signer, Verifier};
use serde::Deserialize;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::error::CdhError;
use crate::uri::ResourceUri;

/// The prefix that marks a sealed secret.
pub const PREFIX: &str = "sealed.";
/// The payload version.
pub const VERSION: &str = "0.1.0";

fn invalid(reason: &'static str) -> CdhError {
    CdhError::Sealed { reason }
}

/// Where resources come from (the hub's key broker client).
#[async_trait::async_trait]
pub trait Resources: Send + Sync {
    /// The resource at `uri`.
    async fn resource(&self, uri: &ResourceUri) -> Result<Zeroizing<Vec<u8>>, CdhError>;
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: String,
}

/// What a payload names.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Secret {
    /// A secret held by a provider.
    Vault {
        /// For `kbs`: the resource URI.
        name: String,
        /// The provider (`kbs`).
        provider: String,
    },
    /// A secret encrypted under a data key that a provider's key unwraps.
    Envelope {
        /// For `kbs`: the key-encryption key's resource URI.
        key_id: String,
        /// The wrapped data key (standard base64).
        encrypted_key: String,
        /// The encrypted secret (standard base64).
        encrypted_data: String,
        /// `A256GCM`.
        wrap_type: String,
        /// The data's nonce (standard base64, 12 bytes).
        iv: String,
        /// The provider (`kbs`).
        provider: String,
    },
}

/// A parsed sealed secret.
pub struct Sealed {
    kid: Option<String>,
    signing_input: String,
    signature: Vec<u8>,
    /// What it names.
    pub secret: Secret,
}

fn b64url(reason: &'static str, part: &str) -> Result<Vec<u8>, CdhError> {
    peerpod_text::decode_b64url(part).map_err(|_| invalid(reason))
}

impl Sealed {
    /// Parses `sealed.<JWS>`. With `verify`, the header must name `ES256` and a `kid`; without,
    /// only the payload is read.
    pub fn parse(text: &str, verify: bool) -> Result<Self, CdhError> {
        let jws = text
            .strip_prefix(PREFIX)
            .ok_or_else(|| invalid("does not start with \"sealed.\""))?;
        let parts: Vec<&str> = jws.split('.').collect();
        let [header, payload, signature] = parts.as_slice() else {
            return Err(invalid(
                "after \"sealed.\" comes a compact JWS of 3 parts (header.payload.signature)",
            ));
        };
        let payload_bytes = b64url("the payload is not base64url", payload)?;
        let value: Value = serde_json::from_slice(&payload_bytes)
            .map_err(|_| invalid("the payload is not JSON"))?;
        match value.get("version").and_then(Value::as_str) {
            Some(VERSION) => {}
            Some(_) => return Err(invalid("the payload's version is not \"0.1.0\"")),
            None => return Err(invalid("the payload has no version")),
        }
        let secret: Secret = serde_json::from_value(value)
            .map_err(|_| invalid("the payload is not a vault or envelope secret"))?;
        let kid = if verify {
            let h: Header =
                serde_json::from_slice(&b64url("the JWS header is not base64url", header)?)
                    .map_err(|_| invalid("the JWS header needs alg and kid"))?;
            if h.alg != "ES256" {
                return Err(invalid("the JWS alg is not ES256"));
            }
            Some(h.kid)
        } else {
            None
        };
        Ok(Self {
            kid,
            signing_input: format!("{header}.{payload}"),
            signature: if verify {
                b64url("the signature is not base64url", signature)?
            } else {
                Vec::new()
            },
            secret,
        })
    }

    /// The verification key's name, when the secret was parsed for verification.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// Checks the signature with `jwk` (a P-256 public JWK). The key comes from outside: when
    /// it is unusable the error names the kid, never the key's contents.
    pub fn verify(&self, jwk: &[u8]) -> Result<(), CdhError> {
        let kid = || self.kid().unwrap_or_default().to_string();
        let key = verifying_key(jwk).ok_or_else(|| CdhError::BadKey { kid: kid() })?;
        let signature = p256::ecdsa::Signature::from_slice(&self.signature)
            .map_err(|_| invalid("the ES256 signature is not 64 bytes of r and s"))?;
        key.verify(self.signing_input.as_bytes(), &signature)
            .map_err(|_| CdhError::Signature { kid: kid() })
    }

    /// Resolves the secret through `resources`.
    pub async fn unseal(&self, resources: &dyn Resources) -> Result<Zeroizing<Vec<u8>>, CdhError> {
        match &self.secret {
            Secret::Vault { name, provider } => {
                kbs_provider(provider)?;
                let uri = ResourceUri::parse(name)?;
                resources.resource(&uri).await
            }
            Secret::Envelope {
                key_id,
                encrypted_key,
                encrypted_data,
                wrap_type,
                iv,
                provider,
            } => {
                kbs_provider(provider)?;
                if wrap_type != "A256GCM" {
                    return Err(CdhError::Unsupported {
                        what: "sealed secret: wrap_type",
                        value: wrap_type.clone(),
                        supported: "A256GCM",
                    });
                }
                let uri = ResourceUri::parse(key_id)?;
                let std =
                    |reason: &'static str, s: &str| STANDARD.decode(s).map_err(|_| invalid(reason));
                let wrapped = std("encrypted_key is not standard base64", encrypted_key)?;
                let iv = std("iv is not standard base64", iv)?;
                let iv: [u8; 12] = iv
                    .as_slice()
                    .try_into()
                    .map_err(|_| invalid("iv is not 12 bytes"))?;
                let data = std("encrypted_data is not standard base64", encrypted_data)?;
                let kek = resources.resource(&uri).await?;
                let dek = gcm_open(&kek, &wrapped, "encrypted_key")?;
                decrypt(&dek, &iv, &data, "encrypted_data")
            }
        }
    }
}

fn kbs_provider(provider: &str) -> Result<(), CdhError> {
    if provider.eq_ignore_ascii_case("kbs") {
        Ok(())
    } else {
        Err(CdhError::Unsupported {
            what: "sealed secret: provider",
            value: provider.to_string(),
            supported: "kbs",
        })
    }
}

/// `nonce ‖ ciphertext ‖ tag` opened with `key`.
fn gcm_open(key: &[u8], sealed: &[u8], what: &'static str) -> Result<Zeroizing<Vec<u8>>, CdhError> {
    if sealed.len() < 12 + 16 {
        return Err(invalid("encrypted_key is too short for a nonce and a tag"));
    }
    let (nonce, body) = sealed.split_at(12);
    let nonce: [u8; 12] = nonce
        .try_into()
        .map_err(|_| invalid("encrypted_key's nonce"))?;
    decrypt(key, &nonce, body, what)
}

/// AES-256-GCM `body` (ciphertext ‖ tag) opened with `key` and `nonce`.
pub(crate) fn aes_gcm_open(
    key: &[u8],
    nonce: &[u8; 12],
    body: &[u8],
    what: &'static str,
) -> Result<Zeroizing<Vec<u8>>, CdhError> {
    decrypt(key, nonce, body, what)
}

fn decrypt(
    key: &[u8],
    nonce: &[u8; 12],
    body: &[u8],
    what: &'static str,
) -> Result<Zeroizing<Vec<u8>>, CdhError> {
    // The key comes from outside: its length is not reported.
    let cipher = Aes256Gcm::new_from_slice(key).map_err(|_| CdhError::KeySize { what })?;
    cipher
        .decrypt(&Nonce::from(*nonce), body)
        .map(Zeroizing::new)
        .map_err(|_| CdhError::Decrypt { what })
}

/// The P-256 key in a public JWK; `None` for anything else (why is not said: the bytes come
/// from outside and may be anything, even a secret named by mistake).
fn verifying_key(jwk: &[u8]) -> Option<p256::ecdsa::VerifyingKey> {
    #[derive(Deserialize)]
    struct Jwk {
        kty: String,
        crv: String,
        x: String,
        y: String,
    }
    let jwk: Jwk = serde_json::from_slice(jwk).ok()?;
    if jwk.kty != "EC" || jwk.crv != "P-256" {
        return None;
    }
    let decode = |c: &str| peerpod_text::decode_b64url(c).ok();
    let (x, y) = (decode(&jwk.x)?, decode(&jwk.y)?);
    if x.len() != 32 || y.len() != 32 {
        return None;
    }
    let point = [&[0x04][..], &x, &y].concat();
    p256::ecdsa::VerifyingKey::from_sec1_bytes(&point).ok()
}

/// Making sealed secrets: what `confidential-data-hub seal` and the tests use.
pub mod make {
    use super::*;

    /// A fresh P-256 signing key.
    pub fn generate_key() -> Result<p256::ecdsa::SigningKey, CdhError> {
        loop {
            let mut bytes = Zeroizing::new([0u8; 32]);
            getrandom::fill(&mut bytes[..]).map_err(|_| CdhError::Random)?;
            // A draw outside the curve's order (about 2^-32 likely) is drawn again.
            if let Ok(key) = p256::ecdsa::SigningKey::from_slice(&bytes[..]) {
                return Ok(key);
            }
        }
    }

    /// The public JWK of `key`, to store as the `kid` resource or file.
    pub fn public_jwk(key: &p256::ecdsa::SigningKey) -> Value {
        let point = key.verifying_key().to_sec1_point(false);
        let bytes = point.as_bytes();
        json!({"kty": "EC", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&bytes[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&bytes[33..65])})
    }

    /// A vault payload naming the resource `uri`.
    pub fn vault(uri: &str) -> Value {
        json!({"version": VERSION, "type": "vault", "name": uri, "provider": "kbs",
            "provider_settings": {}, "annotations": {}})
    }

    /// An envelope payload: `plaintext` under a fresh data key, wrapped with `kek` (the
    /// 32-byte resource at `key_id`).
    pub fn envelope(kek: &[u8; 32], key_id: &str, plaintext: &[u8]) -> Result<Value, CdhError> {
        let mut dek = Zeroizing::new([0u8; 32]);
        let (mut nonce, mut iv) = ([0u8; 12], [0u8; 12]);
        for buf in [&mut dek[..], &mut nonce[..], &mut iv[..]] {
            getrandom::fill(buf).map_err(|_| CdhError::Random)?;
        }
        let seal = |key: &[u8], nonce: &[u8; 12], data: &[u8]| {
            Aes256Gcm::new_from_slice(key)
                .map_err(|_| CdhError::KeySize { what: "sealing" })?
                .encrypt(&Nonce::from(*nonce), data)
                .map_err(|_| CdhError::Decrypt { what: "sealing" })
        };
        let wrapped = [&nonce[..], &seal(kek, &nonce, &dek[..])?].concat();
        Ok(
            json!({"version": VERSION, "type": "envelope", "provider": "kbs",
            "key_id": key_id, "wrap_type": "A256GCM",
            "encrypted_key": STANDARD.encode(wrapped),
            "encrypted_data": STANDARD.encode(seal(&dek[..], &iv, plaintext)?),
            "iv": STANDARD.encode(iv),
            "provider_settings": {}, "annotations": {}}),
        )
    }

    /// `sealed.` + the payload signed with `key` as ES256 under `kid`.
    pub fn seal(payload: &Value, key: &p256::ecdsa::SigningKey, kid: &str) -> String {
        let header = URL_SAFE_NO_PAD.encode(json!({"alg": "ES256", "kid": kid}).to_string());
        let body = URL_SAFE_NO_PAD.encode(payload.to_string());
        let signature: p256::ecdsa::Signature = key.sign(format!("{header}.{body}").as_bytes());
        format!(
            "{PREFIX}{header}.{body}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    struct Map(BTreeMap<String, Vec<u8>>);

    #[async_trait::async_trait]
    impl Resources for Map {
        async fn resource(&self, uri: &ResourceUri) -> Result<Zeroizing<Vec<u8>>, CdhError> {
            self.0
                .get(&uri.to_string())
                .map(|v| Zeroizing::new(v.clone()))
                .ok_or_else(|| CdhError::NotFound {
                    uri: uri.to_string(),
                    source: None,
                })
        }
    }

    fn world() -> (p256::ecdsa::SigningKey, Map) {
        let key = make::generate_key().expect("key");
        let mut m = BTreeMap::new();
        m.insert("kbs:///default/key/secret".into(), b"vault secret".to_vec());
        m.insert("kbs:///default/key/kek".into(), vec![7u8; 32]);
        (key, Map(m))
    }

    #[tokio::test]
    async fn vault_and_envelope_round_trip() {
        let (key, store) = world();
        let jwk = make::public_jwk(&key).to_string();
        let vault = make::seal(&make::vault("kbs:///default/key/secret"), &key, "k1");
        let s = Sealed::parse(&vault, true).expect("parses");
        assert_eq!(s.kid(), Some("k1"));
        s.verify(jwk.as_bytes()).expect("verifies");
        assert_eq!(&*s.unseal(&store).await.expect("unseal"), b"vault secret");

        let payload =
            make::envelope(&[7u8; 32], "kbs:///default/key/kek", b"envelope secret").expect("env");
        let env = make::seal(&payload, &key, "k1");
        let s = Sealed::parse(&env, true).expect("parses");
        s.verify(jwk.as_bytes()).expect("verifies");
        assert_eq!(
            &*s.unseal(&store).await.expect("unseal"),
            b"envelope secret"
        );
    }

    #[tokio::test]
    async fn tampering_and_wrong_keys_are_refused() {
        let (key, store) = world();
        let other = make::generate_key().expect("key");
        let sealed = make::seal(&make::vault("kbs:///default/key/secret"), &key, "k1");
        let s = Sealed::parse(&sealed, true).expect("parses");
        let err = s
            .verify(make::public_jwk(&other).to_string().as_bytes())
            .expect_err("other key");
        assert!(matches!(err, CdhError::Signature { .. }), "{err}");

        // A payload swapped under the same signature.
        let parts: Vec<&str> = sealed.split('.').collect();
        let swapped = URL_SAFE_NO_PAD.encode(make::vault("kbs:///default/key/kek").to_string());
        let forged = format!("{}.{}.{}.{}", parts[0], parts[1], swapped, parts[3]);
        let s = Sealed::parse(&forged, true).expect("parses");
        assert!(
            s.verify(make::public_jwk(&key).to_string().as_bytes())
                .is_err()
        );

        // An envelope under the wrong key-encryption key.
        let payload = make::envelope(&[9u8; 32], "kbs:///default/key/kek", b"x").expect("env");
        let s = Sealed::parse(&make::seal(&payload, &key, "k1"), true).expect("parses");
        let err = s.unseal(&store).await.expect_err("wrong KEK");
        assert!(matches!(err, CdhError::Decrypt { .. }), "{err}");
    }

    #[test]
    fn malformed_secrets_say_what_is_wrong() {
        let key = make::generate_key().expect("key");
        let good = make::vault("kbs:///default/key/secret");
        let cases: Vec<(String, &str)> = vec![
            ("plain".into(), "does not start"),
            ("sealed.a.b".into(), "3 parts"),
            ("sealed.a.!!.c".into(), "not base64url"),
            (
                format!("sealed.e30.{}.c", URL_SAFE_NO_PAD.encode("[1]")),
                "no version",
            ),
            (
                make::seal(&json!({"version": "0.2.0", "type": "vault"}), &key, "k"),
                "is not \"0.1.0\"",
            ),
            (
                make::seal(&json!({"version": "0.1.0", "type": "safe"}), &key, "k"),
                "not a vault or envelope",
            ),
            (
                {
                    let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","kid":"k"}"#);
                    let b = URL_SAFE_NO_PAD.encode(good.to_string());
                    format!("sealed.{h}.{b}.AAAA")
                },
                "not ES256",
            ),
        ];
        for (text, needle) in cases {
            let err = match Sealed::parse(&text, true) {
                Ok(_) => panic!("{text} parsed"),
                Err(e) => e,
            };
            assert!(matches!(err, CdhError::Sealed { .. }), "{err}");
            assert!(err.to_string().contains(needle), "{text}: {err}");
        }
        // Without verification the header and signature are not read.
        let b = URL_SAFE_NO_PAD.encode(good.to_string());
        assert!(Sealed::parse(&format!("sealed.fakeheader.{b}.fakesignature"), false).is_ok());
    }
}
