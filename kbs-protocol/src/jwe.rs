//! Resources as a flattened JWE (RFC 7516), the way Trustee wraps them.
//!
//! Content: `A256GCM` with a random 256-bit key and 96-bit IV; AAD is the ASCII of the
//! `protected` member. Key management by the TEE key's type:
//! - EC: `ECDH-ES+A256KW` — an ephemeral key on the TEE key's curve (carried as `epk`), the
//!   shared secret through the Concat KDF (SHA-256, no PartyU/PartyV info) to a key-wrapping
//!   key, the content key wrapped with AES-256 key wrap;
//! - RSA: `RSA-OAEP-256` — the content key encrypted with RSA-OAEP (SHA-256, MGF1-SHA-256).
//!
//! The steps both JWE readers of this project need — the Concat KDF, AES-256 key unwrap,
//! `A256GCM` decryption and its AAD, the ECDH key agreement — are public ([`concat_kdf`],
//! [`a256kw_unwrap`], [`a256gcm_open`], [`aad_of`], [`EcdhSecret`]) so that ocicrypt's `jwe` layer keys (`peerpod-image-crypt`)
//! are opened by the same code as KBS resources.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use aes_kw::KwAes256;
use p256::elliptic_curve::sec1::ToSec1Point;
use rsa::Oaep;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::keys::{ALG_ECDH_ES_A256KW, ALG_RSA_OAEP_256, Curve, TeeKeyPair, TeePubKey, b64, enc};
use crate::{Error, random_bytes};

/// `enc` of every resource.
pub const ENC_A256GCM: &str = "A256GCM";

/// A flattened JWE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JweResponse {
    /// base64url of the protected header JSON.
    pub protected: String,
    /// base64url of the wrapped or encrypted content key.
    pub encrypted_key: String,
    /// base64url of the 12-byte IV.
    pub iv: String,
    /// base64url of the ciphertext.
    pub ciphertext: String,
    /// base64url of the 16-byte authentication tag.
    pub tag: String,
    /// Additional authenticated data, if any (Trustee sends none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aad: Option<String>,
}

/// The Concat KDF (NIST SP 800-56A, as RFC 7518 §4.6.2 uses it) for a 256-bit key from the
/// ECDH shared secret `z`, the algorithm name and the header's decoded `apu`/`apv` (Trustee
/// sends none: empty).
pub fn concat_kdf(z: &[u8], alg: &str, apu: &[u8], apv: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&concat_kdf_one_round(z, alg, apu, apv, 256));
    out
}

/// The 256-bit content key wrapped with AES-256 key wrap (RFC 3394) under `kek`; `None` when
/// `wrapped` is not 40 bytes or fails its integrity check (another key's, or altered).
pub fn a256kw_unwrap(kek: &[u8; 32], wrapped: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if wrapped.len() != 40 {
        return None;
    }
    let kw = KwAes256::new_from_slice(kek).ok()?;
    let mut out = Zeroizing::new(vec![0u8; 32]);
    kw.unwrap_key(wrapped, &mut out).ok()?;
    Some(out)
}

/// `A256GCM` decryption of `ciphertext` followed by its 16-byte `tag`; `None` when `cek` is not
/// 256 bits, the tag not 16 bytes, or authentication fails.
pub fn a256gcm_open(
    cek: &[u8],
    iv: &[u8; 12],
    ciphertext: &[u8],
    tag: &[u8],
    aad: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    if tag.len() != 16 {
        return None;
    }
    let cipher = Aes256Gcm::new_from_slice(cek).ok()?;
    let sealed = [ciphertext, tag].concat();
    let plain = cipher
        .decrypt(&Nonce::from(*iv), Payload { msg: &sealed, aad })
        .ok()?;
    Some(Zeroizing::new(plain))
}

/// One SHA-256 round of the Concat KDF: enough for keys up to 256 bits.
fn concat_kdf_one_round(z: &[u8], alg: &str, apu: &[u8], apv: &[u8], bits: u32) -> Vec<u8> {
    let len32 = |b: &[u8]| u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes();
    let mut h = Sha256::new();
    h.update(1u32.to_be_bytes());
    h.update(z);
    h.update(len32(alg.as_bytes()));
    h.update(alg.as_bytes());
    h.update(len32(apu));
    h.update(apu);
    h.update(len32(apv));
    h.update(apv);
    h.update(bits.to_be_bytes());
    let digest = h.finalize();
    digest[..usize::try_from(bits / 8).unwrap_or(32).min(32)].to_vec()
}

/// An EC private key for `ECDH-ES` key agreement (P-384 for ocicrypt's keys; the TEE keys
/// are P-256 or P-521).
#[derive(Clone, Copy)]
pub enum EcdhSecret<'a> {
    /// NIST P-256.
    P256(&'a p256::SecretKey),
    /// NIST P-384.
    P384(&'a p384::SecretKey),
    /// NIST P-521.
    P521(&'a p521::SecretKey),
}

/// Why [`EcdhSecret::agree`] found no shared secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EcdhRefusal {
    /// The peer's key is on another curve (or its coordinates are not this curve's size).
    OtherCurve,
    /// The peer's coordinates are not a point on the curve.
    NotOnCurve,
}

impl EcdhSecret<'_> {
    /// The JWK `crv` name of the key's curve.
    pub fn crv(self) -> &'static str {
        match self {
            EcdhSecret::P256(_) => "P-256",
            EcdhSecret::P384(_) => "P-384",
            EcdhSecret::P521(_) => "P-521",
        }
    }

    /// The ECDH shared secret (`Z`) with the public key (`x`, `y`) on the curve named `crv`.
    pub fn agree(self, crv: &str, x: &[u8], y: &[u8]) -> Result<Zeroizing<Vec<u8>>, EcdhRefusal> {
        let size = match self {
            EcdhSecret::P256(_) => 32,
            EcdhSecret::P384(_) => 48,
            EcdhSecret::P521(_) => 66,
        };
        if crv != self.crv() || x.len() != size || y.len() != size {
            return Err(EcdhRefusal::OtherCurve);
        }
        let point = [&[4u8][..], x, y].concat();
        let z = match self {
            EcdhSecret::P256(sk) => {
                let peer = p256::PublicKey::from_sec1_bytes(&point)
                    .map_err(|_| EcdhRefusal::NotOnCurve)?;
                let z = p256::ecdh::diffie_hellman(sk.to_nonzero_scalar(), peer.as_affine());
                z.raw_secret_bytes().to_vec()
            }
            EcdhSecret::P384(sk) => {
                let peer = p384::PublicKey::from_sec1_bytes(&point)
                    .map_err(|_| EcdhRefusal::NotOnCurve)?;
                let z = p384::ecdh::diffie_hellman(sk.to_nonzero_scalar(), peer.as_affine());
                z.raw_secret_bytes().to_vec()
            }
            EcdhSecret::P521(sk) => {
                let peer = p521::PublicKey::from_sec1_bytes(&point)
                    .map_err(|_| EcdhRefusal::NotOnCurve)?;
                let z = p521::ecdh::diffie_hellman(sk.to_nonzero_scalar(), peer.as_affine());
                z.raw_secret_bytes().to_vec()
            }
        };
        Ok(Zeroizing::new(z))
    }
}

/// The AAD of a JWE's content encryption (RFC 7516 §5.1 step 14): the `protected` member's
/// text, then `.` and the `aad` member's when there is one.
pub fn aad_of(protected: &str, aad: Option<&str>) -> Vec<u8> {
    match aad {
        Some(a) => format!("{protected}.{a}").into_bytes(),
        None => protected.as_bytes().to_vec(),
    }
}

/// Encrypts `plaintext` to a TEE key.
pub fn seal(key: &TeePubKey, plaintext: &[u8]) -> Result<JweResponse, Error> {
    let cek = Zeroizing::new(random_bytes::<32>()?);
    let iv = random_bytes::<12>()?;
    let (header, encrypted_key) = match key {
        TeePubKey::Ec { alg, .. } => {
            if alg != ALG_ECDH_ES_A256KW {
                return Err(Error::Unsupported {
                    what: "EC key algorithm",
                    value: alg.clone(),
                });
            }
            let (curve, point) = key.ec_point()?;
            let (z, epk) = ecdh_ephemeral(curve, &point)?;
            let kek = concat_kdf(&z, ALG_ECDH_ES_A256KW, b"", b"");
            let wrapped = wrap(&kek, &cek)?;
            let n = curve.coordinate_len();
            let header = json!({
                "alg": ALG_ECDH_ES_A256KW,
                "enc": ENC_A256GCM,
                "epk": {
                    "crv": curve.name(),
                    "kty": "EC",
                    "x": enc(&epk[1..1 + n]),
                    "y": enc(&epk[1 + n..1 + 2 * n]),
                },
            });
            (header, wrapped)
        }
        TeePubKey::Rsa { alg, .. } => {
            if alg != ALG_RSA_OAEP_256 {
                return Err(Error::Unsupported {
                    what: "RSA key algorithm",
                    value: alg.clone(),
                });
            }
            let public = key.rsa_key()?;
            let mut rng = getrandom::SysRng;
            let encrypted = public
                .encrypt(&mut rng, Oaep::<Sha256>::new(), cek.as_slice())
                .map_err(|_| Error::Crypto("RSA-OAEP encryption"))?;
            (
                json!({"alg": ALG_RSA_OAEP_256, "enc": ENC_A256GCM}),
                encrypted,
            )
        }
    };
    let protected = enc(&serde_json::to_vec(&header).map_err(|source| Error::Json {
        what: "JWE header",
        source,
    })?);
    let cipher = Aes256Gcm::new_from_slice(cek.as_slice())
        .map_err(|_| Error::Crypto("AES-GCM key setup"))?;
    let mut sealed = cipher
        .encrypt(
            &Nonce::from(iv),
            Payload {
                msg: plaintext,
                aad: protected.as_bytes(),
            },
        )
        .map_err(|_| Error::Crypto("AES-GCM encryption"))?;
    let tag = sealed.split_off(sealed.len() - 16);
    Ok(JweResponse {
        protected,
        encrypted_key: enc(&encrypted_key),
        iv: enc(&iv),
        ciphertext: enc(&sealed),
        tag: enc(&tag),
        aad: None,
    })
}

fn ecdh_ephemeral(curve: Curve, peer: &[u8]) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), Error> {
    use p256::elliptic_curve::Generate;
    let bad = || Error::invalid("TEE key", "not a point on its curve");
    match curve {
        Curve::P256 => {
            let peer = p256::PublicKey::from_sec1_bytes(peer).map_err(|_| bad())?;
            let eph = p256::ecdh::EphemeralSecret::generate();
            let z = eph.diffie_hellman(&peer);
            let epk = eph.public_key().to_sec1_point(false).as_bytes().to_vec();
            Ok((Zeroizing::new(z.raw_secret_bytes().to_vec()), epk))
        }
        Curve::P521 => {
            let peer = p521::PublicKey::from_sec1_bytes(peer).map_err(|_| bad())?;
            let eph = p521::ecdh::EphemeralSecret::generate();
            let z = eph.diffie_hellman(&peer);
            let epk = eph.public_key().to_sec1_point(false).as_bytes().to_vec();
            Ok((Zeroizing::new(z.raw_secret_bytes().to_vec()), epk))
        }
    }
}

fn wrap(kek: &[u8; 32], cek: &[u8; 32]) -> Result<Vec<u8>, Error> {
    let kw = KwAes256::new_from_slice(kek).map_err(|_| Error::Crypto("AES key wrap setup"))?;
    let mut out = vec![0u8; 40];
    kw.wrap_key(cek, &mut out)
        .map_err(|_| Error::Crypto("AES key wrap"))?;
    Ok(out)
}

/// Decrypts a resource with the TEE's private key.
pub fn open(key: &TeeKeyPair, jwe: &JweResponse) -> Result<Zeroizing<Vec<u8>>, Error> {
    let header_bytes = b64("JWE protected header", &jwe.protected)?;
    let header: Value = serde_json::from_slice(&header_bytes).map_err(|source| Error::Json {
        what: "JWE protected header",
        source,
    })?;
    let field = |name: &'static str| {
        header
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| Error::invalid("JWE protected header", format!("no string {name:?}")))
    };
    let enc_name = field("enc")?;
    if enc_name != ENC_A256GCM {
        return Err(Error::Unsupported {
            what: "JWE content encryption",
            value: enc_name.to_string(),
        });
    }
    let alg = field("alg")?;
    let encrypted_key = b64("JWE encrypted_key", &jwe.encrypted_key)?;
    let cek: Zeroizing<Vec<u8>> = match (key, alg) {
        (TeeKeyPair::P256(_) | TeeKeyPair::P521(_), ALG_ECDH_ES_A256KW) => {
            let epk = header
                .get("epk")
                .ok_or_else(|| Error::invalid("JWE protected header", "no \"epk\""))?;
            let epk: TeePubKey = serde_json::from_value(json!({
                "kty": epk.get("kty").cloned().unwrap_or(Value::Null),
                "crv": epk.get("crv").cloned().unwrap_or(Value::Null),
                "alg": ALG_ECDH_ES_A256KW,
                "x": epk.get("x").cloned().unwrap_or(Value::Null),
                "y": epk.get("y").cloned().unwrap_or(Value::Null),
            }))
            .map_err(|source| Error::Json {
                what: "JWE epk",
                source,
            })?;
            let (curve, point) = epk.ec_point()?;
            let secret = match key {
                TeeKeyPair::P256(sk) => EcdhSecret::P256(sk),
                TeeKeyPair::P521(sk) => EcdhSecret::P521(sk),
                TeeKeyPair::Rsa(_) => return Err(Error::invalid("JWE epk", "not an EC TEE key")),
            };
            let n = curve.coordinate_len();
            let z = secret
                .agree(curve.name(), &point[1..1 + n], &point[1 + n..])
                .map_err(|refusal| match refusal {
                    EcdhRefusal::OtherCurve => {
                        Error::invalid("JWE epk", "curve differs from the TEE key's")
                    }
                    EcdhRefusal::NotOnCurve => {
                        Error::invalid("JWE epk", "not a point on its curve")
                    }
                })?;
            let kek = concat_kdf(&z, ALG_ECDH_ES_A256KW, b"", b"");
            if encrypted_key.len() != 40 {
                return Err(Error::Decrypt("wrapped key is not 40 bytes"));
            }
            a256kw_unwrap(&kek, &encrypted_key).ok_or(Error::Decrypt(
                "key unwrap failed (wrong key or altered JWE)",
            ))?
        }
        (TeeKeyPair::Rsa(sk), ALG_RSA_OAEP_256) => Zeroizing::new(
            sk.decrypt(Oaep::<Sha256>::new(), &encrypted_key)
                .map_err(|_| Error::Decrypt("RSA-OAEP failed (wrong key or altered JWE)"))?,
        ),
        (_, other) => {
            return Err(Error::Unsupported {
                what: "JWE key management for this TEE key",
                value: other.to_string(),
            });
        }
    };
    if cek.len() != 32 {
        return Err(Error::Decrypt("content key is not 256 bits"));
    }
    let iv = b64("JWE iv", &jwe.iv)?;
    let iv: [u8; 12] = iv
        .try_into()
        .map_err(|_| Error::invalid("JWE iv", "must be 12 bytes"))?;
    let data = b64("JWE ciphertext", &jwe.ciphertext)?;
    let tag = b64("JWE tag", &jwe.tag)?;
    if tag.len() != 16 {
        return Err(Error::invalid("JWE tag", "must be 16 bytes"));
    }
    let aad = aad_of(&jwe.protected, jwe.aad.as_deref());
    a256gcm_open(&cek, &iv, &data, &tag, &aad).ok_or(Error::Decrypt(
        "AES-GCM authentication failed (altered JWE)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_for_every_key_kind() {
        for key in [
            TeeKeyPair::generate(),
            TeeKeyPair::generate_p521(),
            TeeKeyPair::generate_rsa().expect("rsa"),
        ] {
            let jwe = seal(&key.public_key(), b"top secret").expect("seal");
            assert!(jwe.aad.is_none());
            let header: Value =
                serde_json::from_slice(&b64("h", &jwe.protected).expect("b64")).expect("json");
            assert_eq!(header["enc"], "A256GCM");
            assert_eq!(open(&key, &jwe).expect("open").as_slice(), b"top secret");
        }
    }

    #[test]
    fn ec_header_and_key_sizes() {
        let key = TeeKeyPair::generate();
        let jwe = seal(&key.public_key(), b"x").expect("seal");
        let header: Value =
            serde_json::from_slice(&b64("h", &jwe.protected).expect("b64")).expect("json");
        assert_eq!(header["alg"], "ECDH-ES+A256KW");
        assert_eq!(header["epk"]["crv"], "P-256");
        assert_eq!(b64("k", &jwe.encrypted_key).expect("b64").len(), 40);
        assert_eq!(b64("iv", &jwe.iv).expect("b64").len(), 12);
    }

    #[test]
    fn tampering_and_wrong_keys_fail() {
        let key = TeeKeyPair::generate();
        let jwe = seal(&key.public_key(), b"top secret").expect("seal");
        let other = TeeKeyPair::generate();
        assert!(matches!(open(&other, &jwe), Err(Error::Decrypt(_))));
        let mut altered = jwe.clone();
        let mut ct = b64("c", &altered.ciphertext).expect("b64");
        ct[0] ^= 1;
        altered.ciphertext = enc(&ct);
        assert!(matches!(open(&key, &altered), Err(Error::Decrypt(_))));
        // Changing the protected header changes the AAD.
        let mut altered = jwe.clone();
        let mut h: Value =
            serde_json::from_slice(&b64("h", &altered.protected).expect("b64")).expect("json");
        h["kid"] = json!("x");
        altered.protected = enc(&serde_json::to_vec(&h).expect("json"));
        assert!(matches!(open(&key, &altered), Err(Error::Decrypt(_))));
        let rsa = TeeKeyPair::generate_rsa().expect("rsa");
        assert!(matches!(open(&rsa, &jwe), Err(Error::Unsupported { .. })));
    }

    #[test]
    fn ecdh_agrees_both_ways_and_refuses_other_curves_and_points_off_the_curve() {
        let (a, b) = (TeeKeyPair::generate(), TeeKeyPair::generate());
        let (TeeKeyPair::P256(sa), TeeKeyPair::P256(sb)) = (&a, &b) else {
            panic!("P-256 keys expected");
        };
        let xy = |k: &TeeKeyPair| {
            let (_, point) = k.public_key().ec_point().expect("EC point");
            (point[1..33].to_vec(), point[33..].to_vec())
        };
        let ((ax, ay), (bx, by)) = (xy(&a), xy(&b));
        let ab = EcdhSecret::P256(sa)
            .agree("P-256", &bx, &by)
            .expect("agree");
        let ba = EcdhSecret::P256(sb)
            .agree("P-256", &ax, &ay)
            .expect("agree");
        assert_eq!(*ab, *ba);
        assert_eq!(ab.len(), 32);
        assert_eq!(
            EcdhSecret::P256(sa).agree("P-384", &bx, &by).map(|_| ()),
            Err(EcdhRefusal::OtherCurve)
        );
        assert_eq!(
            EcdhSecret::P256(sa)
                .agree("P-256", &bx[1..], &by)
                .map(|_| ()),
            Err(EcdhRefusal::OtherCurve)
        );
        assert_eq!(
            EcdhSecret::P256(sa)
                .agree("P-256", &[1u8; 32], &[1u8; 32])
                .map(|_| ()),
            Err(EcdhRefusal::NotOnCurve)
        );
    }

    #[test]
    fn concat_kdf_matches_rfc7518_appendix_c() {
        // RFC 7518, Appendix C: ECDH-ES with A128GCM, PartyUInfo "Alice", PartyVInfo "Bob".
        let z = [
            158, 86, 217, 29, 129, 113, 53, 211, 114, 131, 66, 131, 191, 132, 38, 156, 251, 49,
            110, 163, 218, 128, 106, 72, 246, 218, 167, 121, 140, 254, 144, 196,
        ];
        let key = concat_kdf_one_round(&z, "A128GCM", b"Alice", b"Bob", 128);
        assert_eq!(enc(&key), "VqqN6vgjbSBcIijNcacQGg");
        assert_eq!(concat_kdf(&z, ALG_ECDH_ES_A256KW, b"", b"").len(), 32);
        // apu/apv are length-prefixed into the hash: moving bytes between them changes the key.
        assert_ne!(
            *concat_kdf(&z, ALG_ECDH_ES_A256KW, b"ab", b""),
            *concat_kdf(&z, ALG_ECDH_ES_A256KW, b"a", b"b")
        );
    }
}
