//! Arbitrary bytes as a JWE to decrypt and as a TEE key to encrypt to.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    peerpod_kbs_protocol::fuzzing::jwe_bytes(data);
});
