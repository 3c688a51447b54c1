//! Fuzzer bytes as the choices of the policy generator: each generated policy and request
//! sequence is decided by the engine and by the reference interpreter, which must agree.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    peerpod_policy::fuzzing::policy_differential(data);
});
