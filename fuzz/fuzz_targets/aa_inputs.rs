//! Arbitrary bytes as the attestation agent's outside inputs: aa.toml, aa_kbc_params, the event log.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    attestation_agent::fuzzing::aa_inputs(data);
});
