//! Arbitrary bytes as a shim's ttrpc frame stream through the forwarder's framing and
//! CreateContainer/CreateSandbox rewriting, and as apf.json.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    peerpod_forwarder::fuzzing::frames(data);
});
