//! Arbitrary bytes as an initdata annotation and as an initdata TOML document.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    peerpod_policy::fuzzing::initdata(data);
});
