//! Arbitrary bytes as an encrypted layer's annotations (key-provider packets, public options),
//! as the unwrapped private options, and as ciphertext to decrypt.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    peerpod_image_crypt::fuzzing::annotations(data);
});
