//! Arbitrary bytes as agent request JSON, decided by a stateful policy.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    peerpod_policy::fuzzing::policy_input(data);
});
