//! Cosign: signatures stored in the image's repository under the tag `sha256-<hex>.sig`, as
//! `cosign sign --key` writes them — an OCI manifest whose layers are the signed payloads
//! (`application/vnd.dev.cosign.simplesigning.v1+json`), each with its ECDSA P-256 / SHA-256
//! signature, base64 DER, in the annotation `dev.cosignproject.cosign/signature`.

use base64::Engine;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::RegistryAccess;
use crate::payload::{self, COSIGN_TYPE, MAX_PAYLOAD_BYTES};
use crate::policy::SignedIdentity;
use crate::reference::{self, ImageIdentity};
use crate::verify::AcceptedBy;

/// The media type of a cosign payload layer.
pub(crate) const PAYLOAD_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The annotation holding the signature.
pub(crate) const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The largest signature manifest parsed (the registry client bounds the download too).
const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// The most signature layers examined.
const MAX_LAYERS: usize = 64;
/// The time reading one image's signature manifest and payloads may take (a registry that
/// answers slowly, payload after payload, must not hold the pull for [`MAX_LAYERS`] fetches).
const VERIFY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// The largest base64 signature (a DER P-256 signature is at most 72 bytes).
const MAX_SIGNATURE_B64: usize = 512;

/// One signature layer of the signature manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SignatureLayer {
    pub(crate) digest: String,
    pub(crate) size: u64,
    pub(crate) signature: Vec<u8>,
}

/// Accepts when a cosign signature of the image verifies with one of `keys`, within
/// [`VERIFY_TIMEOUT`].
pub(crate) async fn verify(
    keys: &[Vec<u8>],
    registry: &dyn RegistryAccess,
    image: &ImageIdentity,
    identity: &SignedIdentity,
) -> Result<AcceptedBy, String> {
    tokio::time::timeout(
        VERIFY_TIMEOUT,
        verify_unbounded(keys, registry, image, identity),
    )
    .await
    .map_err(|_| {
        format!(
            "reading the cosign signatures of {} from the registry took more than {} s",
            image.name(),
            VERIFY_TIMEOUT.as_secs()
        )
    })?
}

async fn verify_unbounded(
    keys: &[Vec<u8>],
    registry: &dyn RegistryAccess,
    image: &ImageIdentity,
    identity: &SignedIdentity,
) -> Result<AcceptedBy, String> {
    let keys = keys
        .iter()
        .enumerate()
        .map(|(i, pem)| parse_key(pem).map_err(|e| format!("the policy's key {i}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let tag = signature_tag(&image.manifest_digest)?;
    let Some((media_type, manifest)) = registry
        .manifest(&image.registry, &image.repository, &tag)
        .await
        .map_err(|e| format!("reading the signature manifest {tag}: {e}"))?
    else {
        return Err(format!(
            "no signature: {}:{tag} does not exist (sign the image with cosign sign --key)",
            image.name()
        ));
    };
    let layers = parse_manifest(&media_type, &manifest)?;
    let mut reasons = Vec::new();
    for (n, layer) in layers.iter().enumerate() {
        match verify_layer(&keys, registry, image, identity, layer).await {
            Ok(key_index) => return Ok(AcceptedBy::SigstoreSigned { key_index }),
            Err(e) => reasons.push(format!("layer {n}: {e}")),
        }
    }
    Err(format!(
        "no signature in {}:{tag} verified: {}",
        image.name(),
        reasons.join("; ")
    ))
}

async fn verify_layer(
    keys: &[VerifyingKey],
    registry: &dyn RegistryAccess,
    image: &ImageIdentity,
    identity: &SignedIdentity,
    layer: &SignatureLayer,
) -> Result<usize, String> {
    if layer.size > MAX_PAYLOAD_BYTES as u64 {
        return Err(format!("payload larger than {MAX_PAYLOAD_BYTES} bytes"));
    }
    let blob = registry
        .blob(
            &image.registry,
            &image.repository,
            &layer.digest,
            MAX_PAYLOAD_BYTES,
        )
        .await
        .map_err(|e| format!("reading the payload {}: {e}", layer.digest))?;
    let actual = format!("sha256:{}", hex::encode(Sha256::digest(&blob)));
    if actual != layer.digest {
        return Err(format!(
            "the payload's digest is {actual}, the manifest says {}",
            layer.digest
        ));
    }
    let key_index = verify_signature(keys, &blob, &layer.signature)?;
    let claims = payload::parse(&blob, COSIGN_TYPE)?;
    payload::check(&claims, image, identity)?;
    Ok(key_index)
}

/// The index of the key that verifies `signature` over `payload`.
fn verify_signature(
    keys: &[VerifyingKey],
    payload: &[u8],
    signature: &[u8],
) -> Result<usize, String> {
    // cosign writes, and sigstore verifies, ASN.1 DER only; the fixed-size r || s form of
    // the same signature is another encoding that containers/image refuses.
    let signature = Signature::from_der(signature).map_err(|_| {
        "the signature is not an ECDSA P-256 signature in ASN.1 DER (as cosign writes it)"
            .to_string()
    })?;
    // Go's ECDSA does not normalise s; verify the normalised form too.
    let normalized = signature.normalize_s();
    keys.iter()
        .position(|key| {
            key.verify(payload, &signature).is_ok() || key.verify(payload, &normalized).is_ok()
        })
        .ok_or_else(|| "not signed by any of the policy's keys".to_string())
}

/// A PEM `PUBLIC KEY` (SubjectPublicKeyInfo) for ECDSA P-256, as `cosign generate-key-pair`
/// writes `cosign.pub`.
pub(crate) fn parse_key(pem: &[u8]) -> Result<VerifyingKey, String> {
    let text = std::str::from_utf8(pem).map_err(|_| "the key is not PEM text".to_string())?;
    VerifyingKey::from_public_key_pem(text.trim()).map_err(|_| {
        "not a PEM ECDSA P-256 public key (cosign.pub); other key types are not supported".into()
    })
}

/// `sha256:<hex>` → `sha256-<hex>.sig`.
pub(crate) fn signature_tag(digest: &str) -> Result<String, String> {
    reference::check_digest(digest)?;
    Ok(format!("{}.sig", digest.replacen(':', "-", 1)))
}

/// The signature layers of a cosign signature manifest.
pub(crate) fn parse_manifest(media_type: &str, body: &[u8]) -> Result<Vec<SignatureLayer>, String> {
    if body.len() > MAX_MANIFEST_BYTES {
        return Err(format!(
            "the signature manifest is larger than {MAX_MANIFEST_BYTES} bytes"
        ));
    }
    let mime = media_type.split(';').next().unwrap_or_default().trim();
    if !matches!(
        mime,
        "application/vnd.oci.image.manifest.v1+json"
            | "application/vnd.docker.distribution.manifest.v2+json"
            | ""
    ) {
        return Err(format!(
            "the signature manifest has media type {}, not an image manifest",
            crate::policy::quote(mime)
        ));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| format!("the signature manifest is not JSON: {e}"))?;
    let layers = value
        .get("layers")
        .and_then(Value::as_array)
        .ok_or("the signature manifest has no layers")?;
    let mut out = Vec::new();
    for layer in layers.iter().take(MAX_LAYERS) {
        if layer.get("mediaType").and_then(Value::as_str) != Some(PAYLOAD_MEDIA_TYPE) {
            continue;
        }
        let Some(digest) = layer.get("digest").and_then(Value::as_str) else {
            continue;
        };
        if reference::check_digest(digest).is_err() || !digest.starts_with("sha256:") {
            continue;
        }
        let Some(size) = layer.get("size").and_then(Value::as_u64) else {
            continue;
        };
        let Some(b64) = layer
            .get("annotations")
            .and_then(|a| a.get(SIGNATURE_ANNOTATION))
            .and_then(Value::as_str)
        else {
            continue;
        };
        if b64.len() > MAX_SIGNATURE_B64 {
            continue;
        }
        let Ok(signature) = base64::engine::general_purpose::STANDARD.decode(b64) else {
            continue;
        };
        out.push(SignatureLayer {
            digest: digest.to_string(),
            size,
            signature,
        });
    }
    if out.is_empty() {
        return Err(format!(
            "the signature manifest holds no {PAYLOAD_MEDIA_TYPE} layer with a {SIGNATURE_ANNOTATION} annotation"
        ));
    }
    Ok(out)
}

/// Fuzzing: arbitrary bytes as a signature manifest, a key and a signature.
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz(data: &[u8]) {
    let _ = parse_manifest("application/vnd.oci.image.manifest.v1+json", data);
    if let Ok(key) = parse_key(data) {
        let _ = verify_signature(&[key], data, data);
    }
    let _ = Signature::from_der(data);
}
