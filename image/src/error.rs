//! The one error type of a pull. Messages name the cause and, where there is one, the fix; they
//! never carry credentials, tokens or fetched bytes beyond a clipped printable excerpt.

use std::path::PathBuf;

use crate::digest::Digest;

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference is malformed.
    #[error(transparent)]
    Reference(#[from] crate::reference::ReferenceError),
    /// `[image]` or a file it names is unusable.
    #[error("{0}")]
    Config(String),
    /// A configured resource (`kbs:///…`, `file://…`) could not be fetched.
    #[error("cannot fetch {what} from {uri}: {reason}")]
    Resource {
        /// What it is (`authenticated_registry_credentials_uri`, …).
        what: &'static str,
        /// Where from.
        uri: String,
        /// Why.
        reason: String,
    },
    /// The registry could not be reached or stopped answering, after every attempt.
    #[error("{url}: {reason} (after {attempts} attempt(s))")]
    Transport {
        /// The request.
        url: String,
        /// The last failure.
        reason: String,
        /// How many attempts were made.
        attempts: u32,
    },
    /// The registry refused our credentials, or we have none for it.
    #[error("{registry} refused access to {repository} ({status}): {hint}")]
    Unauthorized {
        /// The registry.
        registry: String,
        /// The repository.
        repository: String,
        /// The HTTP status.
        status: u16,
        /// What to check.
        hint: &'static str,
    },
    /// The registry answered a request with an error status.
    #[error("{url}: the registry answered {status}{detail}")]
    Status {
        /// The request.
        url: String,
        /// The status.
        status: u16,
        /// The registry's error code, clipped, with a leading separator.
        detail: String,
    },
    /// A reply is larger than allowed.
    #[error("{what} is larger than {limit} bytes")]
    TooLarge {
        /// Which reply.
        what: String,
        /// The limit.
        limit: u64,
    },
    /// A manifest, index or configuration is unusable.
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
    /// Content does not match its digest: refused.
    #[error("{what}: content digest {actual} does not match the expected {expected}; refused")]
    DigestMismatch {
        /// Which content.
        what: String,
        /// The digest the manifest or reference named.
        expected: Digest,
        /// The digest of what arrived.
        actual: Digest,
    },
    /// A blob has another size than its descriptor says.
    #[error("{what}: {actual} bytes where the manifest says {expected}; refused")]
    SizeMismatch {
        /// Which blob.
        what: String,
        /// The descriptor's size.
        expected: u64,
        /// What arrived (at least).
        actual: u64,
    },
    /// The signature policy applies and cannot be checked here: refused, never pulled unverified.
    #[error("{reference}: refused: {reason}")]
    Signature {
        /// The image.
        reference: String,
        /// Why.
        reason: String,
    },
    /// An encrypted layer that cannot be decrypted here: refused.
    #[error("{reference}: layer {digest} is encrypted ({media_type}): {reason}")]
    Encrypted {
        /// The image.
        reference: String,
        /// The layer.
        digest: Digest,
        /// Its media type.
        media_type: String,
        /// Why it cannot be decrypted.
        reason: String,
    },
    /// Unpacking or storing a layer failed.
    #[error("layer {diff_id}: {reason}")]
    Layer {
        /// The layer's diff_id.
        diff_id: Digest,
        /// Why.
        reason: String,
    },
    /// One of the pull's totals (`[image]` `max_image_unpacked_bytes`,
    /// `max_image_unpacked_inodes`, `max_layer_store_bytes`) refused a layer: not kept. The
    /// reason names the total, where its value came from and the fix.
    #[error("layer {diff_id}: {reason}")]
    Limit {
        /// The key of the total that refused it ([`crate::budget::IMAGE_KEY`], …).
        key: &'static str,
        /// The layer's diff_id.
        diff_id: Digest,
        /// Why.
        reason: String,
    },
    /// The bundle path is unusable.
    #[error("bundle path {path:?}: {reason}")]
    Bundle {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The layer store could not be maintained (forgetting unmounted bundles, removing unused
    /// layers).
    #[error("layer store: {0}")]
    Store(String),
    /// Every source (mirrors, the registry) failed: each one's error, in order.
    #[error("{reference}: no source could serve the image: {}", .errors.join("; "))]
    AllSources {
        /// The image.
        reference: String,
        /// `source: error` for each source tried.
        errors: Vec<String>,
    },
}

impl ImageError {
    /// Whether the error is the caller's or the configuration's (not worth another source).
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Self::Reference(_)
                | Self::Config(_)
                | Self::Resource { .. }
                | Self::Signature { .. }
                | Self::Bundle { .. }
                | Self::Layer { .. }
                | Self::Limit { .. }
                | Self::Store(_)
        )
    }

    /// The `[image]` key of the total that refused the pull, when one did (the pull needs
    /// more room than allowed, not a fix of the image).
    pub fn limit_key(&self) -> Option<&'static str> {
        match self {
            Self::Limit { key, .. } => Some(key),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_limit_names_a_limit_key_and_it_reads_as_a_layer_failure() {
        let diff_id = Digest::of(b"layer");
        let limit = ImageError::Limit {
            key: crate::budget::INODES_KEY,
            diff_id: diff_id.clone(),
            reason: "too many files; raise max_image_unpacked_inodes in [image]".into(),
        };
        assert_eq!(limit.limit_key(), Some(crate::budget::INODES_KEY));
        assert!(limit.is_final(), "another source would hit the same total");
        assert_eq!(
            limit.to_string(),
            format!("layer {diff_id}: too many files; raise max_image_unpacked_inodes in [image]")
        );
        // A layer failure that quotes the key is still not a limit: only the variant counts.
        let layer = ImageError::Layer {
            diff_id,
            reason: "raise max_image_unpacked_bytes in [image]".into(),
        };
        assert_eq!(layer.limit_key(), None);
        assert_eq!(ImageError::Store("full".into()).limit_key(), None);
    }
}
