//! Arbitrary bytes as an image layer's tar stream, unpacked in a sandbox: never a panic, never
//! a write beside the destination.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    peerpod_image_layer::fuzzing::unpack_sandboxed(data);
});
