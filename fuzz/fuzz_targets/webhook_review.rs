//! Arbitrary bytes as an AdmissionReview body (what the API server, or anyone reaching the
//! webhook's port, posts) and as Kubernetes quantity text.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = peerpod_webhook::fuzzing::review(data);
    peerpod_webhook::fuzzing::quantity(data);
});
