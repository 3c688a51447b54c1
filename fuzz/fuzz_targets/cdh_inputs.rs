//! Arbitrary bytes as the CDH's outside inputs: cdh.toml, sealed secrets, resource URIs,
//! key-provider requests, secure-mount options, mountinfo (the scratch space check).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    confidential_data_hub::fuzzing::cdh_inputs(data);
});
