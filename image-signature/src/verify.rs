//! Applying the chosen requirements to an image.

use crate::lookaside::LookasideConfig;
use crate::policy::{KeySource, Policy, Requirement};
use crate::reference::ImageIdentity;
use crate::{RegistryAccess, ResourceFetcher, SignatureError, cosign, simple};

/// The largest key file fetched through the resource fetcher.
const MAX_KEY_BYTES: usize = 1 << 20;

/// An accepted image: the scope whose requirements all accepted it, and how each did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// `transports.docker["<scope>"]` or `default`.
    pub scope: String,
    /// One entry per requirement of the scope, in order.
    pub by: Vec<AcceptedBy>,
}

/// How one requirement accepted the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcceptedBy {
    /// `insecureAcceptAnything`.
    InsecureAcceptAnything,
    /// `signedBy`: a simple-signing signature by the OpenPGP key with this fingerprint (hex).
    SignedBy {
        /// The fingerprint of the (sub)key that made the signature.
        fingerprint: String,
    },
    /// `sigstoreSigned`: a cosign signature verified by the policy key at this index.
    SigstoreSigned {
        /// Which of the rule's keys verified it (0-based).
        key_index: usize,
    },
}

/// Decides whether `policy` accepts `image`.
///
/// Every requirement of the most specific matching scope must accept; the first that does not
/// ends the decision with [`SignatureError::Refused`] naming it. Keys are fetched through
/// `resources`, cosign signatures through `registry`, simple-signing signatures from the
/// lookaside in `sigstore_config`.
///
/// # Errors
/// [`SignatureError::Refused`] when the policy refuses the image (including when a key or a
/// signature store cannot be read: the decision fails closed), [`SignatureError::InvalidImage`]
/// for a malformed `image`.
pub async fn verify(
    policy: &Policy,
    image: &ImageIdentity,
    registry: &dyn RegistryAccess,
    resources: &dyn ResourceFetcher,
    sigstore_config: Option<&LookasideConfig>,
) -> Result<Accepted, SignatureError> {
    image.check()?;
    let chosen = policy.requirements_for(image);
    let mut by = Vec::with_capacity(chosen.requirements.len());
    for (index, requirement) in chosen.requirements.iter().enumerate() {
        let rule = format!("{}[{index}] {}", chosen.scope, requirement.type_name());
        let refused = |reason: String| SignatureError::Refused {
            image: image.display(),
            rule: rule.clone(),
            reason,
        };
        let accepted = match requirement {
            Requirement::InsecureAcceptAnything => AcceptedBy::InsecureAcceptAnything,
            Requirement::Reject => {
                return Err(refused("the policy rejects every image here".into()));
            }
            Requirement::SignedBy { keys, identity } => {
                let keys = load_keys(keys, resources).await.map_err(&refused)?;
                let config = sigstore_config.ok_or_else(|| {
                    refused(
                        "no signature lookaside is configured: set [image] sigstore_config_uri in cdh.toml to a registries.d document naming where the signatures are"
                            .into(),
                    )
                })?;
                let signatures = config.signatures(image).await.map_err(&refused)?;
                simple::verify(&keys, &signatures, image, identity).map_err(&refused)?
            }
            Requirement::SigstoreSigned { keys, identity } => {
                let keys = load_keys(keys, resources).await.map_err(&refused)?;
                cosign::verify(&keys, registry, image, identity)
                    .await
                    .map_err(&refused)?
            }
        };
        tracing::debug!(image = %image.display(), rule, "requirement accepted the image");
        by.push(accepted);
    }
    Ok(Accepted {
        scope: chosen.scope,
        by,
    })
}

async fn load_keys(
    keys: &KeySource,
    resources: &dyn ResourceFetcher,
) -> Result<Vec<Vec<u8>>, String> {
    match keys {
        KeySource::Inline(keys) => Ok(keys.clone()),
        KeySource::Uris(uris) => {
            let mut out = Vec::with_capacity(uris.len());
            for uri in uris {
                let key = resources
                    .fetch(uri)
                    .await
                    .map_err(|e| format!("the key {uri} could not be fetched: {e}"))?;
                if key.len() > MAX_KEY_BYTES {
                    return Err(format!(
                        "the key {uri} is larger than {MAX_KEY_BYTES} bytes"
                    ));
                }
                out.push(key);
            }
            Ok(out)
        }
    }
}
