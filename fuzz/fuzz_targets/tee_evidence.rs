//! Arbitrary bytes as HCL reports, SNP reports, TD reports and quotes, and evidence JSON.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    peerpod_tee::fuzzing::evidence_bytes(data);
});
