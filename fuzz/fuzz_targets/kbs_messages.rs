//! Arbitrary bytes as KBS protocol messages and resource paths.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    peerpod_kbs_protocol::fuzzing::messages(data);
});
