//! Encrypted OCI layers (ocicrypt) inside the pod VM: which layers are encrypted, how their key
//! is unwrapped with a key-encryption key (KEK) from the KBS, and their decryption while they
//! stream.
//!
//! An encrypted layer (media type ending in `+encrypted`) carries two annotations in its
//! descriptor, both base64 of JSON, in the format of containers/ocicrypt (which skopeo and
//! buildah use) and ocicrypt-rs:
//!
//! - `org.opencontainers.image.enc.keys.provider.attestation-agent`: comma-separated entries,
//!   each the key-provider "annotation packet" that Confidential Containers' `coco-keyprovider`
//!   writes: `kid` (the `kbs:///…` resource URI of the KEK), `wrapped_data` (the layer's private
//!   options sealed with the KEK by AES-256-GCM, `wrap_type` `A256GCM`) and `iv`. The private
//!   options hold the layer key (`symkey`), the counter block (`cipheroptions.nonce`) and the
//!   digest of the plaintext (`digest`).
//! - `org.opencontainers.image.enc.pubopts`: the public options, the cipher
//!   (`AES_256_CTR_HMAC_SHA256`) and the HMAC-SHA256 of the ciphertext under the layer key.
//!
//! The parts:
//!
//! - [`is_encrypted`] and [`decrypted_media_type`] (module `media`): the media types.
//! - [`layer_key`] (modules `key`, `packet`, `options`): reads the annotations (sizes and counts
//!   bounded), asks a [`KeyResolver`] (the confidential data hub: a KBS resource fetched after
//!   attestation) for the KEK named by `kid`, unwraps and checks the options, and gives a
//!   [`LayerKey`], zeroized on drop.
//! - [`layer_key_with`] (module `jwe`): also the `jwe` protocol
//!   (`org.opencontainers.image.enc.keys.jwe`, what `skopeo copy --encryption-key jwe:pub.pem`
//!   writes: a JWE per entry, `ECDH-ES+A256KW` on P-256/P-384/P-521 or `RSA-OAEP`/`RSA-OAEP-256`,
//!   `A256GCM`), opened with [`JwePrivateKey`]s the caller holds. Where such a key would come
//!   from in the pod VM (a KBS resource named in the configuration, for instance) is the
//!   caller's choice; upstream's guest components do not read this protocol at all. The
//!   cryptography (ECDH, Concat KDF, AES key unwrap, `A256GCM`) is `peerpod_kbs_protocol::jwe`'s,
//!   the same code that opens KBS resources; this module reads ocicrypt's JSON forms.
//! - [`decrypting_reader`] and [`LayerDecryptor`] (module `reader`): AES-256-CTR decryption while
//!   the layer streams, with the HMAC checked at the end of the stream. The plaintext read before
//!   that end is not authenticated yet: a caller keeps nothing of a layer whose reader ended in
//!   an error (the layer store aborts the install).
//!
//! Errors ([`CryptError`]) name the layer's `kid` and what to fix; they never carry key
//! material, the KEK or the contents of a KBS resource, and neither does any `Debug` output.
//!
//! Not supported (refused with an error that says so): the `pkcs7`, `pgp` and `pkcs11`
//! key-wrapping protocols (and `jwe` without a private key) and key providers other than
//! `attestation-agent`; upstream's KMS
//! providers other than `kbs` in the annotation packet; the `A256CTR` wrap type.
//!
//! Where it differs from upstream (ocicrypt, ocicrypt-rs, image-rs and the CDH's key provider),
//! always by refusing more:
//!
//! - The counter block comes from the private (authenticated) options only; ocicrypt prefers a
//!   `nonce` in the public options, which the host can rewrite. A public `nonce`, or any public
//!   cipher option other than `hmac`, is refused.
//! - The HMAC is read from `hmac` (ocicrypt-rs, and ocicrypt today) or `cipheroptions.hmac`
//!   (older ocicrypt); when both are there they must agree, and a layer with neither is refused
//!   before any byte is fetched.
//! - The `A256CTR` wrap type (unauthenticated) that upstream's CDH also accepts is refused.
//! - Sizes and counts of everything read from the annotations are bounded (64 KiB per key
//!   annotation, 16 entries, 16 JWE recipients, 16 KiB per packet, 4 KiB of options).
//!
//! Features: `testing` adds `testing::encrypt_layer` (a coco-keyprovider-compatible
//! encrypter) and the `image-crypt-keyprovider` test binary; `fuzzing` adds the fuzz entry
//! points.

#![forbid(unsafe_code)]

mod error;
mod jwe;
mod key;
mod media;
mod options;
mod packet;
mod reader;

#[cfg(feature = "fuzzing")]
pub mod fuzzing;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::CryptError;
pub use jwe::JwePrivateKey;
pub use key::{KeyResolver, LayerKey, layer_key, layer_key_with};
pub use media::{decrypted_media_type, is_encrypted};
pub use reader::{DecryptingReader, LayerDecryptor, decrypting_reader};

/// The annotation that holds the wrapped layer keys for Confidential Containers' key provider.
pub const KEYPROVIDER_ANNOTATION: &str =
    "org.opencontainers.image.enc.keys.provider.attestation-agent";
/// The annotation of the `jwe` protocol (what `skopeo copy --encryption-key jwe:…` writes).
pub const JWE_ANNOTATION: &str = "org.opencontainers.image.enc.keys.jwe";
/// The annotation that holds the public layer options (cipher and HMAC).
pub const PUBOPTS_ANNOTATION: &str = "org.opencontainers.image.enc.pubopts";
/// The prefix of every key-wrapping annotation (`jwe`, `pkcs7`, `pgp`, `pkcs11`, `provider.<name>`).
pub const KEYS_ANNOTATION_PREFIX: &str = "org.opencontainers.image.enc.keys.";
/// The one layer cipher ocicrypt defines.
pub const LAYER_CIPHER: &str = "AES_256_CTR_HMAC_SHA256";
