//! The glue to `peerpod-image-signature` and `peerpod-image-crypt`: the signature policy checked
//! on the resolved manifest digest before any layer is fetched, and layer keys unwrapped with
//! KEKs from the KBS for encrypted layers.

use std::sync::Arc;

use peerpod_image_signature::{
    ImageIdentity, LookasideConfig, Policy, RegistryAccess, ResourceFetcher,
};
use zeroize::Zeroizing;

use crate::client::Session;
use crate::digest::Digest;
use crate::error::ImageError;
use crate::reference::Reference;
use crate::resources::{self, Resources};

/// The largest key, certificate or lookaside file fetched for verification.
const MAX_VERIFY_RESOURCE: usize = 4 << 20;

/// The policy and lookaside configuration in force.
pub(crate) struct Verifier {
    pub(crate) policy: Policy,
    pub(crate) lookaside: Option<LookasideConfig>,
}

/// Resources for the signature crate.
pub(crate) struct Fetcher(pub(crate) Arc<dyn Resources>);

#[async_trait::async_trait]
impl ResourceFetcher for Fetcher {
    async fn fetch(&self, uri: &str) -> Result<Vec<u8>, String> {
        resources::fetch(
            self.0.as_ref(),
            "a signature verification key",
            uri,
            MAX_VERIFY_RESOURCE,
        )
        .await
        .map(|b| b.to_vec())
        .map_err(|e| e.to_string())
    }
}

/// KEKs for the crypt crate.
pub(crate) struct Keys(pub(crate) Arc<dyn Resources>);

#[async_trait::async_trait]
impl peerpod_image_crypt::KeyResolver for Keys {
    async fn resource(&self, uri: &str) -> Result<Zeroizing<Vec<u8>>, String> {
        if !uri.starts_with("kbs://") {
            return Err("a layer key-encryption key must be a kbs:/// resource".into());
        }
        self.0.resource(uri).await
    }
}

/// The registry, for cosign signatures: the session the image is pulled through.
pub(crate) struct Access<'a> {
    pub(crate) session: &'a Session,
    pub(crate) source: &'a Reference,
    pub(crate) original: &'a Reference,
}

impl Access<'_> {
    fn check(&self, registry: &str, repository: &str) -> Result<(), String> {
        let same = |r: &Reference| r.registry == registry && r.repository == repository;
        if same(self.original) || same(self.source) {
            Ok(())
        } else {
            Err(format!(
                "signatures are read only from the image's own repository, not {registry}/{repository}"
            ))
        }
    }
}

#[async_trait::async_trait]
impl RegistryAccess for Access<'_> {
    async fn manifest(
        &self,
        registry: &str,
        repository: &str,
        reference: &str,
    ) -> Result<Option<(String, Vec<u8>)>, String> {
        self.check(registry, repository)?;
        let valid = Digest::parse(reference).is_ok()
            || (!reference.is_empty()
                && reference.len() <= 128
                && reference
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')));
        if !valid {
            return Err("not a tag or digest".into());
        }
        match self
            .session
            .small(
                &format!("manifests/{reference}"),
                Some(crate::manifest::ACCEPT),
                crate::manifest::MAX_MANIFEST,
                "signature manifest",
                Digest::parse(reference).ok().as_ref(),
            )
            .await
        {
            Ok((body, ct, _)) => Ok(Some((ct.unwrap_or_default(), body))),
            Err(ImageError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn blob(
        &self,
        registry: &str,
        repository: &str,
        digest: &str,
        max_bytes: usize,
    ) -> Result<Vec<u8>, String> {
        self.check(registry, repository)?;
        let d = Digest::parse(digest).map_err(|e| e.to_string())?;
        self.session
            .small(
                &format!("blobs/{d}"),
                None,
                max_bytes,
                "signature blob",
                Some(&d),
            )
            .await
            .map(|(b, _, _)| b)
            .map_err(|e| e.to_string())
    }
}

/// Checks the policy for `original` resolved to `digest`, reading signatures through `session`.
pub(crate) async fn check(
    verifier: &Verifier,
    resources: Arc<dyn Resources>,
    original: &Reference,
    source: &Reference,
    session: &Session,
    digest: &Digest,
) -> Result<(), ImageError> {
    let identity = ImageIdentity {
        registry: original.registry.clone(),
        repository: original.repository.clone(),
        tag: original.tag.clone(),
        manifest_digest: digest.to_string(),
    };
    let access = Access {
        session,
        source,
        original,
    };
    let accepted = peerpod_image_signature::verify(
        &verifier.policy,
        &identity,
        &access,
        &Fetcher(resources),
        verifier.lookaside.as_ref(),
    )
    .await
    .map_err(|e| ImageError::Signature {
        reference: original.to_string(),
        reason: e.to_string(),
    })?;
    tracing::info!(image = %original, digest = %digest, scope = %accepted.scope, by = ?accepted.by, "image accepted by the signature policy");
    Ok(())
}
