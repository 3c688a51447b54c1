//! The signed payload shared by simple signing and cosign ("atomic container signature" /
//! "cosign container image signature") and the `signedIdentity` rules applied to it.

use serde_json::Value;

use crate::policy::SignedIdentity;
use crate::reference::{self, DockerReference, ImageIdentity};

/// The largest payload read (containers/image's own limit for a signature payload is 4 MiB;
/// real ones are a few hundred bytes).
pub(crate) const MAX_PAYLOAD_BYTES: usize = 256 << 10;

/// `critical.type` of a simple-signing payload.
pub(crate) const SIMPLE_SIGNING_TYPE: &str = "atomic container signature";
/// `critical.type` of a cosign payload.
pub(crate) const COSIGN_TYPE: &str = "cosign container image signature";

/// What a verified payload claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Claims {
    pub(crate) docker_reference: String,
    pub(crate) manifest_digest: String,
}

/// Parses a payload whose `critical.type` must be `expected_type`. Strict like containers/image:
/// `critical` holds exactly `type`, `image` and `identity`, each with exactly its one field.
pub(crate) fn parse(bytes: &[u8], expected_type: &str) -> Result<Claims, String> {
    if bytes.len() > MAX_PAYLOAD_BYTES {
        return Err(format!("payload larger than {MAX_PAYLOAD_BYTES} bytes"));
    }
    let value: Value =
        crate::json::parse(bytes).map_err(|e| format!("payload is not JSON: {e}"))?;
    let top = value.as_object().ok_or("payload is not a JSON object")?;
    if let Some(k) = top.keys().find(|k| *k != "critical" && *k != "optional") {
        return Err(format!(
            "payload has an unknown field {}",
            crate::policy::quote(k)
        ));
    }
    match top.get("optional") {
        None | Some(Value::Null | Value::Object(_)) => {}
        Some(_) => return Err("payload's optional is not an object".into()),
    }
    let critical = top
        .get("critical")
        .and_then(Value::as_object)
        .ok_or("payload has no critical object")?;
    exactly(critical, "critical", &["type", "image", "identity"])?;
    let kind = critical
        .get("type")
        .and_then(Value::as_str)
        .ok_or("critical.type is not a string")?;
    if kind != expected_type {
        return Err(format!(
            "critical.type is {}, expected {expected_type:?}",
            crate::policy::quote(kind)
        ));
    }
    let image = critical
        .get("image")
        .and_then(Value::as_object)
        .ok_or("critical.image is not an object")?;
    exactly(image, "critical.image", &["docker-manifest-digest"])?;
    let digest = image
        .get("docker-manifest-digest")
        .and_then(Value::as_str)
        .ok_or("critical.image.docker-manifest-digest is not a string")?;
    reference::check_digest(digest)?;
    let identity = critical
        .get("identity")
        .and_then(Value::as_object)
        .ok_or("critical.identity is not an object")?;
    exactly(identity, "critical.identity", &["docker-reference"])?;
    let docker_reference = identity
        .get("docker-reference")
        .and_then(Value::as_str)
        .ok_or("critical.identity.docker-reference is not a string")?;
    Ok(Claims {
        docker_reference: docker_reference.to_string(),
        manifest_digest: digest.to_string(),
    })
}

fn exactly(obj: &serde_json::Map<String, Value>, at: &str, keys: &[&str]) -> Result<(), String> {
    if obj.len() == keys.len() && keys.iter().all(|k| obj.contains_key(*k)) {
        Ok(())
    } else {
        Err(format!("{at} must hold exactly {}", keys.join(", ")))
    }
}

/// Checks `claims` against the image: the digest must be the pulled manifest's, the identity
/// must satisfy `rule`.
pub(crate) fn check(
    claims: &Claims,
    image: &ImageIdentity,
    rule: &SignedIdentity,
) -> Result<(), String> {
    if claims.manifest_digest != image.manifest_digest {
        return Err(format!(
            "the signature is for manifest {}, the image's manifest is {}",
            claims.manifest_digest, image.manifest_digest
        ));
    }
    let signed = DockerReference::parse(&claims.docker_reference).map_err(|e| {
        format!(
            "the signed identity {} is not a docker reference: {e}",
            crate::policy::quote(&claims.docker_reference)
        )
    })?;
    if identity_matches(&signed, image, rule) {
        return Ok(());
    }
    let mut reason = format!(
        "the signature claims identity {}, which {} does not accept for {}",
        crate::policy::quote(&signed.text()),
        rule_name(rule),
        image.reference()
    );
    // The common case: a cosign signature (repository only) on an image pulled by tag.
    if *rule == SignedIdentity::MatchRepoDigestOrExact
        && signed.tag.is_none()
        && signed.digest.is_none()
        && image.tag.is_some()
        && signed.name() == image.name()
    {
        reason.push_str(
            "; the signature names the repository without a tag: pull the image by digest, or \
             set \"signedIdentity\": {\"type\": \"matchRepository\"} on the rule to accept \
             any signed image of the repository under this tag",
        );
    }
    Err(reason)
}

fn rule_name(rule: &SignedIdentity) -> String {
    match rule {
        SignedIdentity::MatchExact => "signedIdentity matchExact".into(),
        SignedIdentity::MatchRepoDigestOrExact => "signedIdentity matchRepoDigestOrExact".into(),
        SignedIdentity::MatchRepository => "signedIdentity matchRepository".into(),
        SignedIdentity::ExactReference(r) => {
            format!("signedIdentity exactReference {:?}", r.text())
        }
        SignedIdentity::ExactRepository(r) => {
            format!("signedIdentity exactRepository {:?}", r.name())
        }
        SignedIdentity::RemapIdentity {
            prefix,
            signed_prefix,
        } => format!("signedIdentity remapIdentity {prefix:?} -> {signed_prefix:?}"),
    }
}

/// The intended reference: the image as pulled (name plus tag, or name plus digest).
struct Intended {
    name: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl Intended {
    fn of(image: &ImageIdentity) -> Self {
        match &image.tag {
            Some(tag) => Self {
                name: image.name(),
                tag: Some(tag.clone()),
                digest: None,
            },
            None => Self {
                name: image.name(),
                tag: None,
                digest: Some(image.manifest_digest.clone()),
            },
        }
    }

    fn exact(&self, signed: &DockerReference) -> bool {
        self.name == signed.name() && self.tag == signed.tag && self.digest == signed.digest
    }

    fn repo_digest_or_exact(&self, signed: &DockerReference) -> bool {
        if self.digest.is_some() {
            self.name == signed.name()
        } else {
            self.exact(signed)
        }
    }
}

fn identity_matches(
    signed: &DockerReference,
    image: &ImageIdentity,
    rule: &SignedIdentity,
) -> bool {
    let intended = Intended::of(image);
    match rule {
        SignedIdentity::MatchExact => intended.exact(signed),
        SignedIdentity::MatchRepoDigestOrExact => intended.repo_digest_or_exact(signed),
        SignedIdentity::MatchRepository => intended.name == signed.name(),
        SignedIdentity::ExactReference(r) => r == signed,
        SignedIdentity::ExactRepository(r) => r.name() == signed.name(),
        SignedIdentity::RemapIdentity {
            prefix,
            signed_prefix,
        } => {
            let name = match remap(&intended.name, prefix, signed_prefix) {
                Some(name) => name,
                None => intended.name.clone(),
            };
            Intended { name, ..intended }.repo_digest_or_exact(signed)
        }
    }
}

/// `name` with `prefix` replaced by `signed_prefix` when `prefix` matches at a path boundary.
fn remap(name: &str, prefix: &str, signed_prefix: &str) -> Option<String> {
    let rest = name.strip_prefix(prefix)?;
    if rest.is_empty() || rest.starts_with('/') {
        Some(format!("{signed_prefix}{rest}"))
    } else {
        None
    }
}
