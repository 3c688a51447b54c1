//! Small text helpers that several guest crates need, kept here once so that each has one
//! definition and one set of tests. The crate sits below every other crate of the workspace and
//! depends on nothing of ours (only `base64`), so any crate can use it without a cycle:
//!
//! - [`error_chain`] and [`push_causes`]: an error and its sources on one line, `: `-separated.
//! - [`decode_b64url`]: base64url with or without padding, as JWS, JWK and evidence use it.
//! - [`clip`]: a message cut to a byte length on a character boundary, marked with `...`.
//! - [`is_safe_name`]: the alphabet of names that become file names or path segments.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod base64url;
mod chain;
mod clip;
mod name;

pub use base64url::decode_b64url;
pub use chain::{error_chain, push_causes};
pub use clip::clip;
pub use name::is_safe_name;
