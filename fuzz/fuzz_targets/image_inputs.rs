//! Arbitrary bytes as the image puller's outside inputs: references, manifests and indexes,
//! image configurations, WWW-Authenticate, auth.json, registries.conf and [image].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    peerpod_image::fuzzing::image_inputs(data);
});
