//! The TEE's ephemeral key pair: the KBS encrypts resources to its public half.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::elliptic_curve::Generate;
use p256::elliptic_curve::sec1::ToSec1Point;
use rsa::traits::PublicKeyParts;
use rsa::{BoxedUint, PrivateKey, PublicKey};
use serde::{Deserialize, Serialize};

use crate::Error;

/// `alg` of EC TEE keys.
pub const ALG_ECDH_ES_A256KW: &str = "ECDH-ES+A256KW";
/// `alg` of RSA TEE keys.
pub const ALG_RSA_OAEP_256: &str = "RSA-OAEP-256";

/// The TEE public key as sent in the runtime data (a JWK).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kty")]
pub enum TeePubKey {
    /// An elliptic-curve key for ECDH-ES key agreement.
    #[serde(rename = "EC")]
    Ec {
        /// `P-256` or `P-521`.
        crv: String,
        /// `ECDH-ES+A256KW`.
        alg: String,
        /// X coordinate, base64url without padding.
        x: String,
        /// Y coordinate, base64url without padding.
        y: String,
    },
    /// An RSA key for RSA-OAEP key transport.
    #[serde(rename = "RSA")]
    Rsa {
        /// `RSA-OAEP-256`.
        alg: String,
        /// Modulus, base64url without padding.
        n: String,
        /// Exponent, base64url without padding.
        e: String,
    },
}

/// Decodes a base64url JWK member (padding tolerated).
pub(crate) fn b64(what: &'static str, text: &str) -> Result<Vec<u8>, Error> {
    peerpod_text::decode_b64url(text).map_err(|e| Error::invalid(what, e.to_string()))
}

pub(crate) fn enc(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl TeePubKey {
    /// The uncompressed SEC1 point of an EC key, checked against its curve's size.
    pub(crate) fn ec_point(&self) -> Result<(Curve, Vec<u8>), Error> {
        let TeePubKey::Ec { crv, x, y, .. } = self else {
            return Err(Error::invalid("TEE key", "not an EC key"));
        };
        let curve = Curve::from_name(crv)?;
        let (x, y) = (b64("JWK x", x)?, b64("JWK y", y)?);
        if x.len() != curve.coordinate_len() || y.len() != curve.coordinate_len() {
            return Err(Error::invalid(
                "TEE key",
                format!(
                    "{crv} coordinates must be {} bytes, got {} and {}",
                    curve.coordinate_len(),
                    x.len(),
                    y.len()
                ),
            ));
        }
        let mut point = vec![0x04];
        point.extend_from_slice(&x);
        point.extend_from_slice(&y);
        Ok((curve, point))
    }

    /// The RSA public key of an RSA JWK.
    pub(crate) fn rsa_key(&self) -> Result<PublicKey, Error> {
        let TeePubKey::Rsa { n, e, .. } = self else {
            return Err(Error::invalid("TEE key", "not an RSA key"));
        };
        rsa_public_key(&b64("JWK n", n)?, &b64("JWK e", e)?)
    }
}

/// Builds an RSA public key from big-endian modulus and exponent (2048 to 8192 bits).
pub fn rsa_public_key(n: &[u8], e: &[u8]) -> Result<PublicKey, Error> {
    let bits = u32::try_from(n.len() * 8).map_err(|_| Error::invalid("RSA key", "too large"))?;
    if !(2048..=8192).contains(&bits) {
        return Err(Error::invalid(
            "RSA key",
            format!("{bits}-bit modulus is outside 2048..=8192"),
        ));
    }
    let n =
        BoxedUint::from_be_slice(n, bits).map_err(|_| Error::invalid("RSA key", "bad modulus"))?;
    let e =
        BoxedUint::from_be_slice(e, 64).map_err(|_| Error::invalid("RSA key", "bad exponent"))?;
    PublicKey::new(n, e).map_err(|e| Error::invalid("RSA key", e.to_string()))
}

/// An elliptic curve the protocol allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    /// NIST P-256.
    P256,
    /// NIST P-521.
    P521,
}

impl Curve {
    /// The JWK `crv` name.
    pub fn name(self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::P521 => "P-521",
        }
    }

    fn from_name(name: &str) -> Result<Self, Error> {
        match name {
            "P-256" => Ok(Curve::P256),
            "P-521" => Ok(Curve::P521),
            other => Err(Error::Unsupported {
                what: "curve",
                value: other.to_string(),
            }),
        }
    }

    pub(crate) fn coordinate_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P521 => 66,
        }
    }
}

/// The TEE's private key. Its `Debug` output names the kind only.
pub enum TeeKeyPair {
    /// EC P-256 (the default).
    P256(p256::SecretKey),
    /// EC P-521.
    P521(p521::SecretKey),
    /// RSA (2048 bits).
    Rsa(Box<PrivateKey>),
}

impl fmt::Debug for TeeKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            TeeKeyPair::P256(_) => "P-256",
            TeeKeyPair::P521(_) => "P-521",
            TeeKeyPair::Rsa(_) => "RSA",
        };
        write!(f, "TeeKeyPair({kind}, private)")
    }
}

impl TeeKeyPair {
    /// A fresh P-256 key: what clients use unless told otherwise.
    pub fn generate() -> Self {
        TeeKeyPair::P256(p256::SecretKey::generate())
    }

    /// A fresh P-521 key.
    pub fn generate_p521() -> Self {
        TeeKeyPair::P521(p521::SecretKey::generate())
    }

    /// A fresh RSA-2048 key.
    pub fn generate_rsa() -> Result<Self, Error> {
        let mut rng = getrandom::SysRng;
        let key =
            PrivateKey::new(&mut rng, 2048).map_err(|_| Error::Crypto("RSA key generation"))?;
        Ok(TeeKeyPair::Rsa(Box::new(key)))
    }

    /// The private key as PEM, the way upstream's agent hands it to callers of `GetToken`: RSA
    /// as PKCS#1, EC as PKCS#8.
    pub fn to_pem(&self) -> Result<zeroize::Zeroizing<String>, Error> {
        use p256::pkcs8::{EncodePrivateKey, LineEnding};
        use rsa::pkcs1::EncodeRsaPrivateKey;
        match self {
            TeeKeyPair::P256(k) => k
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|_| Error::Crypto("PKCS#8 encoding")),
            TeeKeyPair::P521(k) => k
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|_| Error::Crypto("PKCS#8 encoding")),
            TeeKeyPair::Rsa(k) => k
                .to_pkcs1_pem(LineEnding::LF)
                .map_err(|_| Error::Crypto("PKCS#1 encoding")),
        }
    }

    /// Reads a key written by [`TeeKeyPair::to_pem`] (RSA PKCS#1, or EC P-256/P-521 PKCS#8).
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        use p256::pkcs8::DecodePrivateKey;
        use rsa::pkcs1::DecodeRsaPrivateKey;
        if let Ok(k) = PrivateKey::from_pkcs1_pem(pem) {
            return Ok(TeeKeyPair::Rsa(Box::new(k)));
        }
        if let Ok(k) = p256::SecretKey::from_pkcs8_pem(pem) {
            return Ok(TeeKeyPair::P256(k));
        }
        if let Ok(k) = p521::SecretKey::from_pkcs8_pem(pem) {
            return Ok(TeeKeyPair::P521(k));
        }
        Err(Error::invalid(
            "TEE key",
            "not an RSA (PKCS#1) nor an EC P-256/P-521 (PKCS#8) private key",
        ))
    }

    /// The public JWK to send in the runtime data.
    pub fn public_key(&self) -> TeePubKey {
        fn ec(crv: &str, point: &[u8], len: usize) -> TeePubKey {
            // An uncompressed point: 0x04 ‖ x ‖ y.
            TeePubKey::Ec {
                crv: crv.to_string(),
                alg: ALG_ECDH_ES_A256KW.to_string(),
                x: enc(&point[1..1 + len]),
                y: enc(&point[1 + len..1 + 2 * len]),
            }
        }
        match self {
            TeeKeyPair::P256(k) => ec("P-256", k.public_key().to_sec1_point(false).as_bytes(), 32),
            TeeKeyPair::P521(k) => ec("P-521", k.public_key().to_sec1_point(false).as_bytes(), 66),
            TeeKeyPair::Rsa(k) => TeePubKey::Rsa {
                alg: ALG_RSA_OAEP_256.to_string(),
                n: enc(&k.n_bytes()),
                e: enc(&k.e_bytes()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec_jwk_shape() {
        let k = TeeKeyPair::generate();
        let jwk = serde_json::to_value(k.public_key()).expect("json");
        assert_eq!(jwk["kty"], "EC");
        assert_eq!(jwk["crv"], "P-256");
        assert_eq!(jwk["alg"], "ECDH-ES+A256KW");
        assert_eq!(jwk["x"].as_str().map(str::len), Some(43));
        let (curve, point) = k.public_key().ec_point().expect("point");
        assert_eq!((curve, point.len()), (Curve::P256, 65));
        assert_eq!(format!("{k:?}"), "TeeKeyPair(P-256, private)");
    }

    #[test]
    fn pem_round_trips() {
        for k in [
            TeeKeyPair::generate(),
            TeeKeyPair::generate_p521(),
            TeeKeyPair::generate_rsa().expect("rsa"),
        ] {
            let pem = k.to_pem().expect("pem");
            let back = TeeKeyPair::from_pem(&pem).expect("parse");
            assert_eq!(back.public_key(), k.public_key());
        }
        assert!(TeeKeyPair::from_pem("-----BEGIN NONSENSE-----").is_err());
        let rsa = TeeKeyPair::generate_rsa()
            .expect("rsa")
            .to_pem()
            .expect("pem");
        assert!(rsa.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        let ec = TeeKeyPair::generate().to_pem().expect("pem");
        assert!(ec.starts_with("-----BEGIN PRIVATE KEY-----"));
    }

    #[test]
    fn bad_keys_are_refused() {
        let short = TeePubKey::Ec {
            crv: "P-256".into(),
            alg: ALG_ECDH_ES_A256KW.into(),
            x: enc(&[1; 31]),
            y: enc(&[1; 32]),
        };
        assert!(short.ec_point().is_err());
        let odd_curve = TeePubKey::Ec {
            crv: "secp256k1".into(),
            alg: ALG_ECDH_ES_A256KW.into(),
            x: enc(&[1; 32]),
            y: enc(&[1; 32]),
        };
        assert!(matches!(
            odd_curve.ec_point(),
            Err(Error::Unsupported { .. })
        ));
        let tiny_rsa = TeePubKey::Rsa {
            alg: ALG_RSA_OAEP_256.into(),
            n: enc(&[0xFF; 64]),
            e: enc(&[1, 0, 1]),
        };
        assert!(tiny_rsa.rsa_key().is_err());
        let parsed: Result<TeePubKey, _> = serde_json::from_str(r#"{"kty":"oct","k":"abc"}"#);
        assert!(parsed.is_err());
    }
}
