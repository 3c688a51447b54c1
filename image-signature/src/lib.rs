//! Container image signature policy for the guest image pull: containers' `policy.json`
//! enforced on an image before any layer is fetched.
//!
//! The image crate resolves a reference to a manifest digest, then calls [`verify`] with the
//! [`Policy`] (from the CDH's `image_security_policy_uri`), the [`ImageIdentity`], a
//! [`RegistryAccess`] (its own registry client: auth, TLS, mirrors), a [`ResourceFetcher`] (the
//! CDH: `kbs:///` through the KBS, `file://` locally) and, for simple signing, the
//! [`LookasideConfig`] (from `sigstore_config_uri`, registries.d format). [`verify`] picks the
//! most specific scope of `transports.docker` (then `transports.docker[""]`, then `default`)
//! and requires every requirement in it to accept:
//!
//! - `insecureAcceptAnything` accepts, `reject` refuses;
//! - `signedBy` (`GPGKeys`): simple-signing signatures from the lookaside
//!   (`<lookaside>/<repository>@sha256=<hex>/signature-<n>`), OpenPGP-verified against the
//!   policy's keys (`simple.rs`), whose payload must name the image's manifest digest and an
//!   identity that `signedIdentity` accepts;
//! - `sigstoreSigned` (public keys): cosign signatures stored in the registry under the tag
//!   `sha256-<hex>.sig`, ECDSA P-256 verified (`cosign.rs`), same payload checks.
//!
//! A refusal is [`SignatureError::Refused`] naming the rule (`transports.docker["registry.example/app"][0]
//! signedBy`) and why. Everything read from outside is bounded: policy, keys, signature count
//! and sizes, manifests, payloads.
//!
//! Not supported, and refused when a policy asks for them (never ignored): `signedBy` with
//! X.509 keys, `signedBaseLayer`, and `sigstoreSigned` with Fulcio, Rekor or PKI. Simple-signing
//! signatures stored in the registry (the "X-Registry-Supports-Signatures" API) are not read.
//! See docs/image-signature.md for the bounds and the differences from image-rs.

mod cosign;
mod error;
mod json;
mod lookaside;
mod payload;
mod policy;
mod reference;
mod simple;
mod verify;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;

pub use error::SignatureError;
pub use lookaside::LookasideConfig;
pub use policy::{MAX_POLICY_BYTES, Policy};
pub use reference::{DockerReferenceText, ImageIdentity};
pub use verify::{Accepted, AcceptedBy, verify};

/// The registry, as the image crate reaches it (authentication, TLS trust, mirrors and proxy are
/// its business). Used to read cosign signatures.
#[async_trait::async_trait]
pub trait RegistryAccess: Send + Sync {
    /// The manifest at `reference` (a tag or a digest) in `registry/repository`: its media type
    /// (the `Content-Type`) and body, or `None` when the registry answers 404 (no such tag).
    /// The implementation bounds the body (a cosign signature manifest is a few KiB).
    async fn manifest(
        &self,
        registry: &str,
        repository: &str,
        reference: &str,
    ) -> Result<Option<(String, Vec<u8>)>, String>;

    /// The blob `digest` in `registry/repository`, refused past `max_bytes`. This crate checks
    /// the digest again.
    async fn blob(
        &self,
        registry: &str,
        repository: &str,
        digest: &str,
        max_bytes: usize,
    ) -> Result<Vec<u8>, String>;
}

/// Key material and configuration named by URI (`kbs:///<repository>/<type>/<tag>` through the
/// KBS, `file:///<path>` locally), as the CDH's GetResource serves it.
#[async_trait::async_trait]
pub trait ResourceFetcher: Send + Sync {
    /// The resource's bytes. Errors must not contain secret material.
    async fn fetch(&self, uri: &str) -> Result<Vec<u8>, String>;
}
