//! Container image signature policy (containers policy.json): simple signing and cosign.
//!
//! Not built yet: this crate is being written.
