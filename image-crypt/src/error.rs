//! The one error type of the crate. No variant holds key material, a KEK, the plaintext of
//! wrapped options or the contents of a KBS resource: only names, sizes, the `kid` and, for
//! text that came from outside, a quoted and clipped copy.

/// Why an encrypted layer cannot be decrypted, grouped by who has to act: the image
/// (annotations, media type), the KBS (resolver, KEK) or the layer's bytes (authentication).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CryptError {
    /// The media type does not end in `+encrypted`.
    #[error("media type {media_type} is not an encrypted layer type (no +encrypted suffix)")]
    NotEncrypted {
        /// The media type, quoted.
        media_type: String,
    },
    /// Something this crate does not implement.
    #[error("{what} {value} is not supported (supported: {supported})")]
    Unsupported {
        /// What was looked at.
        what: &'static str,
        /// The value found, quoted.
        value: String,
        /// What is supported.
        supported: &'static str,
    },
    /// The layer has no key annotation at all.
    #[error(
        "the encrypted layer has no {annotation} annotation: it was not encrypted for \
         Confidential Containers' key provider (encrypt it with coco-keyprovider, \
         `--encryption-key provider:attestation-agent:keyid=kbs:///…`)"
    )]
    NoKeyAnnotation {
        /// The annotation looked for.
        annotation: &'static str,
    },
    /// The layer's keys are wrapped only for protocols this crate does not implement.
    #[error(
        "the encrypted layer's key is wrapped only for {protocols}, which the pod VM cannot \
         unwrap: re-encrypt the image with coco-keyprovider \
         (`--encryption-key provider:attestation-agent:keyid=kbs:///…`) so that the KEK comes \
         from the KBS after attestation (or, for jwe, configure its private key)"
    )]
    UnsupportedProtocol {
        /// The protocols found (`jwe`, `pgp`, `provider.<name>`, …), quoted.
        protocols: String,
    },
    /// No configured JWE private key opens any recipient of the layer's JWE.
    #[error(
        "none of the layer's JWE recipients ({recipients}) opens with the configured private \
         keys ({keys}): configure the private key the image was encrypted to"
    )]
    JweNoKey {
        /// The recipients' `alg`s, quoted.
        recipients: String,
        /// The kinds of the keys tried.
        keys: String,
    },
    /// The public options annotation is missing.
    #[error("the encrypted layer has no {annotation} annotation (the cipher and the HMAC)")]
    NoPublicOptions {
        /// The annotation looked for.
        annotation: &'static str,
    },
    /// An annotation, packet or options document is malformed.
    #[error("{what}: {reason}")]
    Malformed {
        /// Which document or field.
        what: &'static str,
        /// Why, without quoting its contents.
        reason: String,
    },
    /// Something from outside is larger than this crate accepts.
    #[error("{what} is {len} bytes, more than the {max} accepted")]
    TooLarge {
        /// What.
        what: &'static str,
        /// Its length (or count).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The resolver (the CDH) could not give the KEK.
    #[error("the KEK {kid} could not be fetched from the KBS: {reason}")]
    Resolver {
        /// The KEK's resource URI.
        kid: String,
        /// The resolver's reason, quoted and clipped.
        reason: String,
    },
    /// The KEK is not an AES-256 key. Its length is not said: the `kid` is the image's to
    /// choose, and may name any KBS resource the pod can read.
    #[error("the KEK {kid} is not a 32-byte AES-256 key: fix the KBS resource, or the image's kid")]
    KekSize {
        /// The KEK's resource URI.
        kid: String,
    },
    /// AES-256-GCM refused the wrapped options: another KEK, or a tampered packet.
    #[error(
        "the layer key wrapped with {kid} does not open with the KBS resource of that name: \
         the image was encrypted with another KEK, or its annotation was altered"
    )]
    Unwrap {
        /// The KEK's resource URI.
        kid: String,
    },
    /// None of several wrapped keys could be used; the first failure is the source.
    #[error("none of the {count} wrapped layer keys could be unwrapped")]
    NoUsableKey {
        /// How many entries were tried.
        count: usize,
        /// The first entry's failure.
        #[source]
        first: Box<CryptError>,
    },
    /// The ciphertext's HMAC does not match: the layer's bytes or its HMAC were altered.
    #[error(
        "the encrypted layer (key {kid}) failed authentication: its bytes or the HMAC in its \
         annotation were altered, or they belong to another layer; discard everything read from it"
    )]
    Authentication {
        /// The KEK's resource URI.
        kid: String,
    },
    /// The operating system's random generator failed (test encrypter only).
    #[error("the random generator failed")]
    Random,
}

/// `text` debug-quoted (no control characters or newlines reach a log) and cut to 200 bytes.
pub(crate) fn quote(text: &str) -> String {
    const MAX: usize = 200;
    let mut out = String::new();
    for c in text.chars() {
        if out.len() >= MAX {
            out.push('…');
            break;
        }
        out.extend(c.escape_debug());
    }
    format!("\"{out}\"")
}

/// Where serde_json stopped and in which class of error, never quoting the input (which may be
/// decrypted key material).
pub(crate) fn json_reason(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let kind = match e.classify() {
        Category::Io => "read error",
        Category::Syntax => "not JSON",
        Category::Data => "wrong fields or types",
        Category::Eof => "truncated JSON",
    };
    format!("{kind} at line {} column {}", e.line(), e.column())
}

impl From<CryptError> for std::io::Error {
    fn from(e: CryptError) -> Self {
        let kind = match e {
            CryptError::Authentication { .. } => std::io::ErrorKind::InvalidData,
            _ => std::io::ErrorKind::Other,
        };
        std::io::Error::new(kind, e)
    }
}
