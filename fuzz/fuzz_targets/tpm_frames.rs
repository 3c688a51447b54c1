//! Arbitrary bytes as TPM responses, guest commands and TPM structures.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    peerpod_tpm::fuzzing::tpm_bytes(data);
});
