//! Arbitrary bytes as a policy text: loaded by the engine and by the reference interpreter,
//! which must agree on loading it and on a decision.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    peerpod_policy::fuzzing::policy_text(data);
});
