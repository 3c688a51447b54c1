//! Entry points for the fuzz targets in `fuzz/` and the in-tree mutation tests: arbitrary bytes
//! as KBS messages, resource paths, TEE keys and JWEs. None may panic.

use std::sync::OnceLock;

use crate::jwe::{self, JweResponse};
use crate::keys::{TeeKeyPair, TeePubKey};
use crate::messages::{
    self, Attestation, Challenge, ErrorInformation, Request, ResourcePath, TokenResponse,
};

/// Feeds bytes to the message parsers.
pub fn messages(data: &[u8]) {
    let _ = messages::parse::<Request>("fuzz", data);
    if let Ok(c) = messages::parse::<Challenge>("fuzz", data) {
        let _ = c.selected_hash_algorithm();
    }
    if let Ok(a) = messages::parse::<Attestation>("fuzz", data) {
        let _ = crate::runtime_data::digest(
            Default::default(),
            &a.runtime_data.tee_pubkey,
            &a.runtime_data.nonce,
            &a.tee_evidence.additional_evidence,
        );
    }
    let _ = messages::parse::<TokenResponse>("fuzz", data);
    if let Ok(e) = messages::parse::<ErrorInformation>("fuzz", data) {
        let _ = e.to_string();
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(p) = ResourcePath::parse(text)
    {
        assert_eq!(p.to_string(), text, "resource path round trip changed it");
    }
}

fn key() -> &'static TeeKeyPair {
    static KEY: OnceLock<TeeKeyPair> = OnceLock::new();
    KEY.get_or_init(TeeKeyPair::generate)
}

/// Feeds bytes as a JWE to decrypt (with a fixed key) and as a TEE key to encrypt to.
pub fn jwe_bytes(data: &[u8]) {
    if let Ok(j) = serde_json::from_slice::<JweResponse>(data) {
        let _ = jwe::open(key(), &j);
    }
    if let Ok(k) = serde_json::from_slice::<TeePubKey>(data) {
        // RSA keys are bounded to 8192 bits, so this stays cheap.
        let _ = jwe::seal(&k, b"fuzz");
    }
}
