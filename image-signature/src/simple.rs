//! Simple signing: OpenPGP messages (`gpg --sign` of the JSON payload, as skopeo and podman
//! write them) verified with the policy's keys.
//!
//! A signature is accepted when its message parses, one of the policy's keys — a primary key or
//! a signing-capable subkey whose binding verifies — verifies it with a hash no weaker than
//! SHA-256, and the payload it carries names the image's manifest digest and an identity the
//! rule's `signedIdentity` accepts.

use std::io::{Cursor, Read};

use pgp::composed::{Deserializable, Message, SignedPublicKey};
use pgp::crypto::hash::HashAlgorithm;
use pgp::packet::SignatureType;
use pgp::types::{KeyDetails, VerifyingKey};

use crate::payload::{self, MAX_PAYLOAD_BYTES, SIMPLE_SIGNING_TYPE};
use crate::policy::SignedIdentity;
use crate::reference::ImageIdentity;
use crate::verify::AcceptedBy;

/// The most keys read from one keyring.
const MAX_KEYS_PER_RING: usize = 64;

/// A key able to verify signatures, with its fingerprint.
struct Verifier {
    fingerprint: String,
    key: Box<dyn VerifyingKey + Send>,
}

/// Accepts when one of `signatures` is an OpenPGP signature by one of `keyrings`' keys over a
/// payload naming the image.
pub(crate) fn verify(
    keyrings: &[Vec<u8>],
    signatures: &[Vec<u8>],
    image: &ImageIdentity,
    identity: &SignedIdentity,
) -> Result<AcceptedBy, String> {
    let verifiers = verifiers(keyrings)?;
    if signatures.is_empty() {
        return Err(format!(
            "no signature: the lookaside has no signature-1 for {}@{} (sign the image with skopeo/podman --sign-by and publish the signature there)",
            image.name(),
            image.manifest_digest
        ));
    }
    let mut reasons = Vec::new();
    for (n, signature) in signatures.iter().enumerate() {
        match verify_one(&verifiers, signature) {
            Ok((fingerprint, body)) => {
                let checked = payload::parse(&body, SIMPLE_SIGNING_TYPE)
                    .and_then(|claims| payload::check(&claims, image, identity));
                match checked {
                    Ok(()) => return Ok(AcceptedBy::SignedBy { fingerprint }),
                    Err(e) => reasons.push(format!("signature-{}: {e}", n + 1)),
                }
            }
            Err(e) => reasons.push(format!("signature-{}: {e}", n + 1)),
        }
    }
    Err(format!("no signature verified: {}", reasons.join("; ")))
}

/// The policy keys that may verify a signature.
fn verifiers(keyrings: &[Vec<u8>]) -> Result<Vec<Verifier>, String> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    let now = unix_now();
    for ring in keyrings {
        let (keys, _) = SignedPublicKey::from_reader_many(Cursor::new(ring.as_slice()))
            .map_err(|e| format!("the policy key is not an OpenPGP public key: {e}"))?;
        for key in keys.take(MAX_KEYS_PER_RING) {
            let key = match key {
                Ok(k) => k,
                Err(e) => {
                    problems.push(format!("unreadable key: {e}"));
                    continue;
                }
            };
            if let Err(e) = key.details.verify_bindings(&key.primary_key) {
                problems.push(format!(
                    "key {}: its self-signature does not verify: {e}",
                    hex::encode_upper(key.fingerprint().as_bytes())
                ));
                continue;
            }
            let fingerprint = hex::encode_upper(key.fingerprint().as_bytes());
            // The bindings verified, so a revocation signature here is the key owner's.
            if !key.details.revocation_signatures.is_empty() {
                problems.push(format!("key {fingerprint} is revoked"));
                continue;
            }
            let self_signatures = key
                .details
                .users
                .iter()
                .flat_map(|u| u.signatures.iter())
                .chain(key.details.direct_signatures.iter());
            if let Some(expired) = expired(key.primary_key.created_at(), self_signatures, now) {
                problems.push(format!(
                    "key {fingerprint} expired at {expired} (Unix time)"
                ));
                continue;
            }
            for subkey in &key.public_subkeys {
                let sub_fingerprint = hex::encode_upper(subkey.fingerprint().as_bytes());
                let signing = subkey.signatures.iter().any(|s| s.key_flags().sign());
                if !signing || subkey.verify_bindings(&key.primary_key).is_err() {
                    continue;
                }
                if subkey
                    .signatures
                    .iter()
                    .any(|s| s.typ() == Some(SignatureType::SubkeyRevocation))
                {
                    problems.push(format!("subkey {sub_fingerprint} is revoked"));
                    continue;
                }
                let bindings = subkey
                    .signatures
                    .iter()
                    .filter(|s| s.typ() == Some(SignatureType::SubkeyBinding));
                if let Some(expired) = expired(subkey.created_at(), bindings, now) {
                    problems.push(format!(
                        "subkey {sub_fingerprint} expired at {expired} (Unix time)"
                    ));
                    continue;
                }
                out.push(Verifier {
                    fingerprint: sub_fingerprint,
                    key: Box::new(subkey.clone()),
                });
            }
            out.push(Verifier {
                fingerprint,
                key: Box::new(key.primary_key.clone()),
            });
        }
    }
    if out.is_empty() {
        let detail = if problems.is_empty() {
            String::new()
        } else {
            format!(" ({})", problems.join("; "))
        };
        return Err(format!(
            "the policy names no usable OpenPGP public key{detail}: export it with gpg --export"
        ));
    }
    Ok(out)
}

/// When the newest of `signatures` (self-signatures or bindings) gives the key an expiry time
/// that has passed at `now`, that time.
fn expired<'s>(
    created: pgp::types::Timestamp,
    signatures: impl Iterator<Item = &'s pgp::packet::Signature>,
    now: u64,
) -> Option<u64> {
    let newest = signatures.max_by_key(|s| s.created().map_or(0, |t| t.as_secs()))?;
    let lifetime = newest.key_expiration_time()?.as_secs();
    if lifetime == 0 {
        return None;
    }
    let expiry = u64::from(created.as_secs()) + u64::from(lifetime);
    (expiry <= now).then_some(expiry)
}

/// When a signature stops being valid (its creation time plus its expiration time subpacket),
/// if it says; an expiration time of zero means never.
fn signature_expiry(signature: &pgp::packet::Signature) -> Option<u64> {
    let lifetime = u64::from(signature.signature_expiration_time()?.as_secs());
    if lifetime == 0 {
        return None;
    }
    let created = signature.created().map_or(0, |t| u64::from(t.as_secs()));
    Some(created + lifetime)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Verifies one signature; the signing key's fingerprint and the signed payload.
fn verify_one(verifiers: &[Verifier], signature: &[u8]) -> Result<(String, Vec<u8>), String> {
    // skopeo and podman write binary messages; gpgme (containers/image) also reads
    // `gpg --armor --sign` output, and so do we.
    let armored = signature
        .trim_ascii_start()
        .starts_with(b"-----BEGIN PGP MESSAGE-----");
    let message = if armored {
        Message::from_armor(Cursor::new(signature)).map(|(m, _headers)| m)
    } else {
        Message::from_bytes(Cursor::new(signature))
    }
    .map_err(|e| format!("not an OpenPGP message: {e}"))?;
    let mut message = if message.is_compressed() {
        message
            .decompress()
            .map_err(|e| format!("cannot decompress: {e}"))?
    } else {
        message
    };
    if !message.is_signed() {
        return Err("the OpenPGP message is not signed".into());
    }
    let mut body = Vec::new();
    (&mut message)
        .take(MAX_PAYLOAD_BYTES as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| format!("unreadable signed data: {e}"))?;
    if body.len() > MAX_PAYLOAD_BYTES {
        return Err(format!("signed data larger than {MAX_PAYLOAD_BYTES} bytes"));
    }
    let mut issuers = Vec::new();
    for verifier in verifiers {
        if let Ok(signature) = message.verify(verifier.key.as_ref()) {
            match signature.hash_alg() {
                Some(
                    HashAlgorithm::Sha256
                    | HashAlgorithm::Sha384
                    | HashAlgorithm::Sha512
                    | HashAlgorithm::Sha3_256
                    | HashAlgorithm::Sha3_512,
                ) => {}
                other => return Err(format!("signed with a weak hash {other:?}")),
            }
            if !matches!(
                signature.typ(),
                Some(SignatureType::Binary | SignatureType::Text)
            ) {
                return Err("not a signature over data".into());
            }
            // gpg --default-sig-expire / --ask-sig-expire: past it, gpgme (and so
            // containers/image) no longer accepts the signature.
            if let Some(expiry) = signature_expiry(signature)
                && expiry <= unix_now()
            {
                return Err(format!(
                    "the signature by {} expired at {expiry} (Unix time): sign the image again",
                    verifier.fingerprint
                ));
            }
            return Ok((verifier.fingerprint.clone(), body));
        }
        issuers.push(verifier.fingerprint.as_str());
    }
    Err(format!(
        "not signed by any of the policy's keys ({})",
        issuers.join(", ")
    ))
}

/// Fuzzing: arbitrary bytes as a keyring and as a signature.
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz(data: &[u8]) {
    let _ = verifiers(&[data.to_vec()]);
    let _ = verify_one(&[], data);
}
