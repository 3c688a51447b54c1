//! A cheap stand-in for the cargo-fuzz target `image_signature` (fuzz/), run by `cargo test`:
//! mutated policies, lookaside configurations, payloads, OpenPGP signatures and keys, and
//! cosign manifests and keys must be refused cleanly, never panic.

mod common;

use common::*;
use peerpod_tests::mutate::{Rng, mutate};

#[test]
fn mutated_inputs_never_panic() {
    let (_, digest) = manifest("fuzz");
    let mut seeds: Vec<Vec<u8>> = vec![
        br#"{"default":[{"type":"reject"}],"transports":{"docker":{"registry.example/app":[{"type":"signedBy","keyType":"GPGKeys","keyPath":"kbs:///a/b/c","signedIdentity":{"type":"remapIdentity","prefix":"registry.example","signedPrefix":"quay.io/x"}}],"*.example.com":[{"type":"sigstoreSigned","keyDatas":["a2V5"],"signedIdentity":{"type":"exactReference","dockerReference":"quay.io/x/y:v1"}}]}}}"#.to_vec(),
        b"default-docker:\n  lookaside: https://s.example/sigs\ndocker:\n  registry.example/app:\n    sigstore: file:///var/lib/sigs\n".to_vec(),
        simple_payload("registry.example/app:v1", &digest),
        cosign_payload("registry.example/app", &digest),
        cosign_manifest(&[(digest.clone(), 233, "MEUCIQDx".into())]),
    ];
    let key = CosignKey::generate();
    seeds.push(key.public_pem());
    // Real OpenPGP material when gpg is here (the mutations of it are the interesting ones).
    if let Some(gpg) = Gpg::new() {
        let fpr = gpg.generate("fuzz", "ed25519");
        seeds.push(gpg.export(&fpr, false));
        seeds.push(gpg.sign(
            &fpr,
            &simple_payload("registry.example/app:v1", &digest),
            &[],
        ));
        seeds.push(gpg.sign(&fpr, b"x", &["--compress-algo", "none"]));
        seeds.push(gpg.sign(&fpr, b"x", &["--armor"]));
    }
    let mut rng = Rng(0x5eed_0013);
    for seed in &seeds {
        peerpod_image_signature::fuzzing::inputs(seed);
        for _ in 0..1500 {
            peerpod_image_signature::fuzzing::inputs(&mutate(&mut rng, seed, &seeds));
        }
    }
}
