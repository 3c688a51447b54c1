//! One error type for every operation, with the ttrpc status each maps to.
//!
//! The message goes back to the caller (the kata agent, so the host) and into the log, so no
//! variant can carry a resource, a key, a token or text derived from one: every field is a fixed
//! reason, a URI or path the caller or the configuration named, a status code, or a source
//! error of the transport. Parsers of fetched data (JWKs, the agent's token reply, offline files)
//! report only that the data is unusable, never the parser's complaint, which quotes its input.

use std::path::PathBuf;

use peerpod_kbs_client::{ClientError, ResourceError};

use crate::uri::UriError;

/// Why an operation failed. Variants are grouped by who has to act.
#[derive(Debug, thiserror::Error)]
pub enum CdhError {
    // The caller sent something unusable.
    /// A resource URI does not parse.
    #[error(transparent)]
    Uri(#[from] UriError),
    /// A sealed secret is malformed.
    #[error("sealed secret: {reason}")]
    Sealed {
        /// What is wrong.
        reason: &'static str,
    },
    /// A sealed secret's `kid` is neither a `kbs://` URI nor a plain file name.
    #[error(
        "sealed secret: kid {kid:?} is neither a kbs:// URI nor a file name in {}",
        dir.display()
    )]
    BadKid {
        /// The kid, as the secret names it.
        kid: String,
        /// The key directory.
        dir: PathBuf,
    },
    /// An `UnWrapKey` request is malformed.
    #[error("UnWrapKey: {reason}")]
    Unwrap {
        /// What is wrong.
        reason: &'static str,
    },
    /// A secure-mount request is malformed.
    #[error("secure mount: {reason}")]
    Mount {
        /// What is wrong.
        reason: &'static str,
    },
    /// A secure-mount option is not one of upstream's keys.
    #[error("secure mount: unknown option {option:?} (known: {known})")]
    UnknownMountOption {
        /// The option, as given.
        option: String,
        /// The known options.
        known: &'static str,
    },
    /// A path in a request does not exist or is not usable.
    #[error("{what} {} {reason}", path.display())]
    BadPath {
        /// What the path is.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// A REST query or body is malformed.
    #[error("{reason}")]
    Query {
        /// What is wrong and what is expected.
        reason: &'static str,
    },
    /// An image pull failed (its message names the cause; it carries no credentials).
    #[error("cannot pull the image")]
    Image {
        /// Why.
        #[source]
        source: Box<peerpod_image::ImageError>,
    },
    /// `[peerpod] require_pull_measurement` is set and the pulled image could not be recorded
    /// in the attestation agent's event log: the pull is refused (its root filesystem undone).
    #[error(
        "the pulled image is not used: it cannot be recorded in the attestation agent's event \
         log ({reason}), and [peerpod] require_pull_measurement in cdh.toml requires that"
    )]
    Unmeasured {
        /// Why (fixed text, and the configured socket).
        reason: String,
    },
    /// A provider, volume type, algorithm or operation this CDH does not support.
    #[error("{what} {value:?} is not supported here ({supported})")]
    Unsupported {
        /// What kind of thing.
        what: &'static str,
        /// The value, as the caller gave it.
        value: String,
        /// What is supported.
        supported: &'static str,
    },

    // A key or signature does not check out.
    /// The `kid` names a KBS resource outside the configured verification keys.
    #[error(
        "sealed secret: the verification key {kid} is not one of [peerpod] \
         sealed_secret_verification_keys in cdh.toml"
    )]
    KeyNotAllowed {
        /// The kid.
        kid: String,
    },
    /// The verification key file cannot be read.
    #[error("sealed secret: no verification key {}", path.display())]
    NoKeyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The verification key is not a P-256 public JWK.
    #[error("sealed secret: the verification key {kid} is not an EC P-256 public JWK")]
    BadKey {
        /// The kid.
        kid: String,
    },
    /// The signature does not verify.
    #[error("sealed secret: the signature does not verify with key {kid}")]
    Signature {
        /// The kid.
        kid: String,
    },
    /// A key from the KBS (or a file) is not a 256-bit AES key.
    #[error("the key for {what} is not a 256-bit AES key")]
    KeySize {
        /// What it should decrypt.
        what: &'static str,
    },
    /// Ciphertext does not open with its key.
    #[error("{what} does not decrypt with its key (wrong key or altered data)")]
    Decrypt {
        /// What was decrypted.
        what: &'static str,
    },

    // The key broker (KBS, attestation agent, offline files) failed or refused.
    /// No key broker client is configured.
    #[error(
        "no key broker configured: set [kbc] name and url in cdh.toml, or \
         agent.aa_kbc_params=cc_kbc::<url>"
    )]
    NoKbc,
    /// `cc_kbc` is configured without a URL.
    #[error("[kbc] url in cdh.toml is empty: set the KBS's https:// URL")]
    NoKbsUrl,
    /// The resource does not exist.
    #[error("the key broker has no resource {uri}")]
    NotFound {
        /// The resource.
        uri: String,
        /// The KBS's answer, when there was one.
        #[source]
        source: Option<ResourceError>,
    },
    /// The KBS's resource policy denies the resource to this TEE's (freshly attested) claims.
    #[error(
        "the KBS's resource policy denies {uri} to this TEE, also after a fresh attestation \
         (check the resource policy and the reference values the attestation policy uses)"
    )]
    Refused {
        /// The resource.
        uri: String,
        /// The KBS's answer.
        #[source]
        source: ResourceError,
    },
    /// The KBS refused our token, and one from a fresh attestation.
    #[error(
        "the KBS refused the token for {uri}, also one from a fresh attestation (is the KBS's \
         token verifier configured to trust its own token signer?)"
    )]
    TokenRefused {
        /// The resource.
        uri: String,
        /// The last answer.
        #[source]
        source: ResourceError,
    },
    /// The CDH's attestation to the KBS failed.
    #[error("attesting to the KBS at {url} failed")]
    Attestation {
        /// The KBS.
        url: String,
        /// Why.
        #[source]
        source: Box<crate::kbc::AttestError>,
    },
    /// A fetch, with its attestation, took longer than allowed.
    #[error(
        "fetching {uri} from the KBS took longer than {seconds} s (the KBS or the attestation \
         agent hangs; [peerpod] kbs_timeout_secs in cdh.toml)"
    )]
    KbsTimeout {
        /// The resource.
        uri: String,
        /// The limit.
        seconds: u64,
    },
    /// Fetching a resource failed otherwise.
    #[error("fetching {uri} from the KBS failed")]
    Kbs {
        /// The resource.
        uri: String,
        /// Why.
        #[source]
        source: ResourceError,
    },
    /// The KBS client cannot be set up from the configuration.
    #[error("the KBS client cannot be set up ([kbc] in cdh.toml)")]
    Client(#[from] ClientError),
    /// A peer (the attestation agent, or the CDH for the REST endpoint) answered an error.
    #[error("{peer}'s {method} failed: {message}")]
    Peer {
        /// The peer.
        peer: &'static str,
        /// The method.
        method: &'static str,
        /// Our status for the peer's answer (see [`crate::conn::call`]).
        code: ttrpc::Code,
        /// The peer's message (its own errors, built under the same rule as these).
        message: String,
    },
    /// A peer cannot be reached.
    #[error("{method} failed")]
    Unreachable {
        /// The method.
        method: &'static str,
        /// Why.
        #[source]
        source: peerpod_protocols::client::CallError,
    },
    /// The attestation agent's answer is unusable (what is wrong is not quoted).
    #[error("the attestation agent's {method} reply {reason}")]
    AgentReply {
        /// The method.
        method: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// An `offline_fs_kbc` file is not a JSON object of base64 strings (where is given, not
    /// what: the file holds secrets).
    #[error(
        "{} is not a JSON object of \"<repo>/<type>/<tag>\": \"<base64>\" (line {line}, column \
         {column})",
        path.display()
    )]
    OfflineFile {
        /// The file.
        path: PathBuf,
        /// Where the parser stopped.
        line: usize,
        /// Where the parser stopped.
        column: usize,
    },
    /// A value in an `offline_fs_kbc` file is not base64.
    #[error("{}: the value of {resource:?} is not standard base64", path.display())]
    OfflineValue {
        /// The file.
        path: PathBuf,
        /// The resource.
        resource: String,
    },

    // Start-up and local failures.
    /// Writing a configured credential failed.
    #[error("credential {uri} for {}", path.display())]
    Credential {
        /// The resource.
        uri: String,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<CdhError>,
    },
    /// A credential path is outside the credentials root.
    #[error(
        "credential path {} must be an absolute path inside {} without . or .. ([peerpod] \
         credentials_root)",
        path.display(),
        root.display()
    )]
    CredentialPath {
        /// The path.
        path: PathBuf,
        /// The root.
        root: PathBuf,
    },
    /// A file operation failed.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What we were doing.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A local tool (`cryptsetup`, `mkfs.ext4`, `mount`) could not run or failed.
    #[error("secure mount: {program} {step} failed: {detail}")]
    Tool {
        /// The program.
        program: &'static str,
        /// Its first argument.
        step: String,
        /// Its exit status and standard error (it never sees a key on its command line).
        detail: String,
    },
    /// The system's random number generator failed.
    #[error("no randomness available")]
    Random,
}

impl CdhError {
    /// The ttrpc status code.
    pub fn code(&self) -> ttrpc::Code {
        use ttrpc::Code;
        match self {
            CdhError::Uri(_)
            | CdhError::Sealed { .. }
            | CdhError::BadKid { .. }
            | CdhError::Unwrap { .. }
            | CdhError::Mount { .. }
            | CdhError::UnknownMountOption { .. }
            | CdhError::BadPath { .. }
            | CdhError::Query { .. }
            | CdhError::KeySize { .. }
            | CdhError::CredentialPath { .. }
            | CdhError::Client(_)
            | CdhError::OfflineFile { .. }
            | CdhError::OfflineValue { .. } => Code::INVALID_ARGUMENT,
            CdhError::Unsupported { .. } => Code::UNIMPLEMENTED,
            CdhError::Unmeasured { .. } => Code::FAILED_PRECONDITION,
            CdhError::KeyNotAllowed { .. }
            | CdhError::NoKeyFile { .. }
            | CdhError::BadKey { .. }
            | CdhError::Signature { .. }
            | CdhError::Decrypt { .. }
            | CdhError::Refused { .. }
            | CdhError::TokenRefused { .. } => Code::PERMISSION_DENIED,
            CdhError::NotFound { .. } => Code::NOT_FOUND,
            CdhError::NoKbc | CdhError::NoKbsUrl | CdhError::Unreachable { .. } => {
                Code::UNAVAILABLE
            }
            CdhError::Kbs { source, .. } if source.is_transient() => Code::UNAVAILABLE,
            CdhError::KbsTimeout { .. } => Code::UNAVAILABLE,
            CdhError::Attestation { source, .. } => match source.as_ref() {
                e if e.is_transient() => Code::UNAVAILABLE,
                peerpod_kbs_client::rcar::RcarError::Evidence(e) => e.code(),
                peerpod_kbs_client::rcar::RcarError::Status { source, .. }
                    if source.refusal() == peerpod_kbs_client::Refusal::Attestation =>
                {
                    Code::PERMISSION_DENIED
                }
                _ => Code::INTERNAL,
            },
            CdhError::Peer { code, .. } => *code,
            CdhError::Image { source } => image_code(source),
            CdhError::Credential { source, .. } => source.code(),
            CdhError::Kbs { .. }
            | CdhError::AgentReply { .. }
            | CdhError::Io { .. }
            | CdhError::Tool { .. }
            | CdhError::Random => Code::INTERNAL,
        }
    }
}

fn image_code(e: &peerpod_image::ImageError) -> ttrpc::Code {
    use peerpod_image::ImageError as E;
    use ttrpc::Code;
    match e {
        E::Reference(_) | E::Bundle { .. } => Code::INVALID_ARGUMENT,
        E::Config(_) => Code::FAILED_PRECONDITION,
        E::Unauthorized { .. } | E::Signature { .. } | E::Encrypted { .. } => {
            Code::PERMISSION_DENIED
        }
        E::Status { status: 404, .. } => Code::NOT_FOUND,
        E::Transport { .. } | E::AllSources { .. } | E::Resource { .. } => Code::UNAVAILABLE,
        E::DigestMismatch { .. }
        | E::SizeMismatch { .. }
        | E::TooLarge { .. }
        | E::Manifest(_)
        | E::Status { .. } => Code::FAILED_PRECONDITION,
        // A pull total of [image] (max_image_unpacked_bytes, …) refused a layer.
        E::Limit { .. } => Code::RESOURCE_EXHAUSTED,
        E::Layer { .. } | E::Store(_) => Code::INTERNAL,
    }
}
