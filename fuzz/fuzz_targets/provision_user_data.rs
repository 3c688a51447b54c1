//! Arbitrary bytes as pod VM user data (a cloud-config document, its write_files and the
//! initdata it carries) and as the content of /run/peerpod/initdata.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    peerpod_provision::fuzzing::user_data(data);
});
