//! Certificate checks for the verifiers: signature by issuer (ECDSA P-256/P-384, RSA PKCS#1 v1.5
//! and RSA-PSS, so real AMD and Intel roots work as well as our test ones) and validity dates.

use std::time::SystemTime;

use const_oid::ObjectIdentifier;
use const_oid::db::rfc5912;
use der::{Decode, DecodePem, Encode};
use rsa::signature::Verifier;
use spki::DecodePublicKey;
use x509_cert::Certificate;

/// Parses a DER certificate.
pub fn from_der(what: &str, der: &[u8]) -> Result<Certificate, String> {
    Certificate::from_der(der).map_err(|e| format!("{what} is not a DER certificate: {e}"))
}

/// Parses every certificate of a PEM bundle, in order.
pub fn from_pem_chain(what: &str, pem: &[u8]) -> Result<Vec<Certificate>, String> {
    let certs = Certificate::load_pem_chain(pem).map_err(|e| format!("{what}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what} holds no certificate"));
    }
    Ok(certs)
}

/// Parses one PEM certificate.
pub fn from_pem(what: &str, pem: &[u8]) -> Result<Certificate, String> {
    Certificate::from_pem(pem).map_err(|e| format!("{what}: {e}"))
}

/// The subject, as text.
pub fn subject(cert: &Certificate) -> String {
    cert.tbs_certificate().subject().to_string()
}

/// Checks `cert`'s signature with `issuer`'s public key.
pub fn verify_signed_by(cert: &Certificate, issuer: &Certificate) -> Result<(), String> {
    let tbs = cert
        .tbs_certificate()
        .to_der()
        .map_err(|e| format!("cannot encode {}: {e}", subject(cert)))?;
    let sig = cert
        .signature()
        .as_bytes()
        .ok_or_else(|| format!("{} has a malformed signature", subject(cert)))?;
    let spki = issuer
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|e| format!("cannot encode the key of {}: {e}", subject(issuer)))?;
    let oid = cert.signature_algorithm().oid;
    let fail = |why: &str| {
        format!(
            "{} is not signed by {} ({why})",
            subject(cert),
            subject(issuer)
        )
    };
    verify_raw(oid, &spki, &tbs, sig).map_err(|why| fail(&why))
}

/// Checks a signature of `message` under the algorithm `oid` with a key given as SPKI DER.
pub fn verify_raw(
    oid: ObjectIdentifier,
    spki: &[u8],
    message: &[u8],
    sig: &[u8],
) -> Result<(), String> {
    match oid {
        rfc5912::ECDSA_WITH_SHA_384 => {
            let key = p384::ecdsa::VerifyingKey::from_public_key_der(spki)
                .map_err(|_| "issuer key is not P-384".to_string())?;
            let sig = p384::ecdsa::DerSignature::from_bytes(sig)
                .map_err(|_| "bad ECDSA signature encoding".to_string())?;
            key.verify(message, &sig)
                .map_err(|_| "ECDSA P-384 signature does not verify".to_string())
        }
        rfc5912::ECDSA_WITH_SHA_256 => {
            let key = p256::ecdsa::VerifyingKey::from_public_key_der(spki)
                .map_err(|_| "issuer key is not P-256".to_string())?;
            let sig = p256::ecdsa::DerSignature::from_bytes(sig)
                .map_err(|_| "bad ECDSA signature encoding".to_string())?;
            key.verify(message, &sig)
                .map_err(|_| "ECDSA P-256 signature does not verify".to_string())
        }
        rfc5912::ID_RSASSA_PSS => {
            let key = rsa::PublicKey::from_public_key_der(spki)
                .map_err(|_| "issuer key is not RSA".to_string())?;
            let sig = rsa::pss::Signature::try_from(sig)
                .map_err(|_| "bad RSA-PSS signature".to_string())?;
            // AMD's ARK and ASK sign with RSA-PSS over SHA-384.
            rsa::pss::VerifyingKey::<sha2::Sha384>::new(key.clone())
                .verify(message, &sig)
                .or_else(|_| rsa::pss::VerifyingKey::<sha2::Sha256>::new(key).verify(message, &sig))
                .map_err(|_| "RSA-PSS signature does not verify".to_string())
        }
        rfc5912::SHA_256_WITH_RSA_ENCRYPTION | rfc5912::SHA_384_WITH_RSA_ENCRYPTION => {
            let key = rsa::PublicKey::from_public_key_der(spki)
                .map_err(|_| "issuer key is not RSA".to_string())?;
            let sig = rsa::pkcs1v15::Signature::try_from(sig)
                .map_err(|_| "bad RSA signature".to_string())?;
            let ok = if oid == rfc5912::SHA_256_WITH_RSA_ENCRYPTION {
                rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(key).verify(message, &sig)
            } else {
                rsa::pkcs1v15::VerifyingKey::<sha2::Sha384>::new(key).verify(message, &sig)
            };
            ok.map_err(|_| "RSA signature does not verify".to_string())
        }
        other => Err(format!("signature algorithm {other} is not supported")),
    }
}

/// Checks that `now` is inside the certificate's validity window.
pub fn check_validity(cert: &Certificate, now: SystemTime) -> Result<(), String> {
    let v = cert.tbs_certificate().validity();
    let (from, to) = (v.not_before.to_system_time(), v.not_after.to_system_time());
    if now < from {
        return Err(format!(
            "{} is not valid before {}",
            subject(cert),
            v.not_before
        ));
    }
    if now > to {
        return Err(format!("{} expired on {}", subject(cert), v.not_after));
    }
    Ok(())
}

/// The raw value of an extension, if present.
pub fn extension<'a>(cert: &'a Certificate, oid: &str) -> Option<&'a [u8]> {
    let oid = ObjectIdentifier::new(oid).ok()?;
    cert.tbs_certificate()
        .extensions()?
        .iter()
        .find(|e| e.extn_id == oid)
        .map(|e| e.extn_value.as_bytes())
}

/// An extension holding a DER INTEGER that fits a byte.
pub fn extension_u8(cert: &Certificate, oid: &str) -> Result<u8, String> {
    let raw =
        extension(cert, oid).ok_or_else(|| format!("{} lacks extension {oid}", subject(cert)))?;
    let v = u32::from_der(raw).map_err(|e| format!("extension {oid} is not an INTEGER: {e}"))?;
    u8::try_from(v).map_err(|_| format!("extension {oid} value {v} is out of range"))
}

/// The public key of a certificate as SPKI DER.
pub fn spki_der(cert: &Certificate) -> Result<Vec<u8>, String> {
    cert.tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|e| format!("cannot encode the key of {}: {e}", subject(cert)))
}

/// Whether two certificates are the same (by DER).
pub fn same(a: &Certificate, b: &Certificate) -> bool {
    matches!((a.to_der(), b.to_der()), (Ok(x), Ok(y)) if x == y)
}
