//! The crate's one error type: who has to act is in the variant.

/// Why an image was not accepted, or why a policy or configuration could not be read.
///
/// Every message names the place to fix: the policy rule (`transports.docker["scope"][index]` or
/// `default[index]`), the configuration key, or the image part that is malformed.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// `policy.json` is not a policy this crate enforces exactly; `at` is the JSON path of the
    /// offending part (`transports.docker["registry.example/app"][0].keyPath`).
    #[error("invalid image security policy at {at}: {reason}")]
    InvalidPolicy {
        /// Where in the policy.
        at: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The lookaside (`sigstore_config_uri`, registries.d format) configuration is malformed.
    #[error("invalid signature lookaside configuration at {at}: {reason}")]
    InvalidLookasideConfig {
        /// Where in the configuration.
        at: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The image identity handed in by the caller is malformed (a caller bug or a hostile
    /// reference that got this far).
    #[error("invalid image identity: {0}")]
    InvalidImage(String),
    /// The policy refused the image. `rule` names the scope and the requirement
    /// (`transports.docker["registry.example/app"][0] signedBy`), `reason` what was missing.
    #[error("image {image} refused by policy rule {rule}: {reason}")]
    Refused {
        /// The image as `registry/repository[:tag]@digest`.
        image: String,
        /// The scope and index of the requirement, and its type.
        rule: String,
        /// Why the requirement was not met, and what would meet it.
        reason: String,
    },
}
