//! Entry points for cargo-fuzz: everything here parses bytes an attacker may control.

/// Arbitrary bytes as a policy, a lookaside configuration, a simple-signing payload, an
/// OpenPGP signature and a cosign signature manifest.
pub fn inputs(data: &[u8]) {
    let _ = crate::Policy::parse(data);
    let _ = crate::LookasideConfig::parse(data);
    let _ = crate::payload::parse(data, crate::payload::SIMPLE_SIGNING_TYPE);
    let _ = crate::payload::parse(data, crate::payload::COSIGN_TYPE);
    crate::simple::fuzz(data);
    crate::cosign::fuzz(data);
}
