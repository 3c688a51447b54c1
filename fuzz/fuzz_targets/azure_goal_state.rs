//! Arbitrary bytes as the Azure WireServer's goal state (`azure-ready`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    peerpod_provision::fuzzing::goal_state(data);
});
