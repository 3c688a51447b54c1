//! Arbitrary bytes as an image security policy, a lookaside configuration, signed payloads,
//! OpenPGP keys and signatures, and cosign signature manifests and keys.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    peerpod_image_signature::fuzzing::inputs(data);
});
