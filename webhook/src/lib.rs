//! Peer-pods admission webhook and per-node VM limit advertiser (cluster side).
//!
//! Not built yet: this crate is being written.
