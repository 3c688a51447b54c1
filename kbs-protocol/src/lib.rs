//! The KBS attestation protocol (RCAR, version 0.4.0) as Trustee speaks it on the wire.
//!
//! Both ends live in this project: the attestation agent is the client, and the test world's
//! local KBS the server. They share this crate so that one definition of each message exists,
//! and each piece is tested against the values Trustee produces:
//!
//! - [`messages`]: the JSON bodies of `/auth`, `/attest`, the token, and errors
//!   (`{"type", "detail"}`), plus resource paths (`<repo>/<type>/<tag>`).
//! - [`runtime_data`]: the binding of the KBS nonce and the TEE public key into evidence — the
//!   SHA-384 (by default) of the RFC 8785 canonical JSON of
//!   `{"tee-pubkey", "nonce", "additional-evidence"}`.
//! - [`keys`]: the TEE's ephemeral key pair ([`keys::TeeKeyPair`], EC P-256 by default) and its
//!   public JWK ([`keys::TeePubKey`]) as sent in `/attest`.
//! - [`jwe`]: resources travel as a flattened JWE: `ECDH-ES+A256KW` (P-256, P-521) or
//!   `RSA-OAEP-256` key management, `A256GCM` content encryption with the `protected` header's
//!   ASCII as AAD. [`jwe::seal`] is the KBS side, [`jwe::open`] the agent side.
//!
//! Every parser here rejects malformed input with an [`Error`] that says which field is wrong.

mod error;
pub mod jwe;
pub mod keys;
pub mod messages;
pub mod runtime_data;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;

pub use error::Error;

/// The protocol version this crate speaks; Trustee accepts exactly this.
pub const PROTOCOL_VERSION: &str = "0.4.0";
/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "kbs-session-id";

fn random_bytes<const N: usize>() -> Result<[u8; N], Error> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(|e| Error::Random(e.to_string()))?;
    Ok(out)
}
