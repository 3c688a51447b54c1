//! Arbitrary bytes as an image layer's tar stream, unpacked in a sandbox beside sentinel
//! files: never a panic, nothing outside the destination changed, every refusal a typed
//! layer error (checked by `unpack_sandboxed`, which panics otherwise).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = peerpod_image_layer::fuzzing::unpack_sandboxed(data);
});
