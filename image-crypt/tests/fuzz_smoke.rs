//! The `image_crypt` fuzz target's entry point over seeds and thousands of deterministic
//! mutations of them, on every `cargo test` (coverage-guided fuzzing: `make fuzz`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use peerpod_image_crypt::fuzzing::{FUZZ_KEK, annotations};
use peerpod_image_crypt::testing;
use peerpod_tests::mutate::{Rng, mutate};

/// The shape of the JWEs skopeo writes (two recipients, general serialization).
const JWE: &str = r#"{"protected":"eyJlbmMiOiJBMjU2R0NNIn0","recipients":[{"header":{"alg":"ECDH-ES+A256KW","epk":{"kty":"EC","crv":"P-256","x":"gEVxwbF634pJmLKVGqbDBjmv_LMcUFbRBOB74iwC0jg","y":"-eKSlFY68XG_xJtIh_JxS9k-pHVrZHEaBgHJfITi6Is"}},"encrypted_key":"B6HITte8rWO-QjQxQ4Lsev8mS0JR6WfXlJMX-VjTSwsSfoy8xf12-w"},{"header":{"alg":"RSA-OAEP"},"encrypted_key":"bQlJ_kPAO"}],"iv":"3N0GbCAff5-mvlRg","ciphertext":"uuUvpCFMcooGhFPT3Ph5etKkA65tQ4jZ","tag":"x7anZPeP_AK6J7gx5v8Mug"}"#;

fn seeds() -> Vec<Vec<u8>> {
    let with = |kind: u8, body: &[u8]| [&[kind][..], body].concat();
    let (cipher, ann) = testing::encrypt_layer(
        b"a small layer, about fifty bytes of it......",
        &FUZZ_KEK,
        "kbs:///default/key/k",
    );
    let mut layer = String::new();
    for (k, v) in &ann {
        layer.push_str(&format!("{k}={v}\n"));
    }
    layer.push('\n');
    // The ciphertext is arbitrary bytes; the line format is text, so it rides along lossily.
    let lossy = String::from_utf8_lossy(&cipher).into_owned();
    let packet = STANDARD
        .decode(&ann[peerpod_image_crypt::KEYPROVIDER_ANNOTATION])
        .expect("base64");
    let public = STANDARD
        .decode(&ann[peerpod_image_crypt::PUBOPTS_ANNOTATION])
        .expect("base64");
    let private = testing::private_options(&[9; 32], &[1; 16], "sha256:00");
    vec![
        with(0, &public),
        with(1, &private),
        with(2, &packet),
        with(3, JWE.as_bytes()),
        with(4, format!("{layer}{lossy}").as_bytes()),
        with(4, layer.as_bytes()),
        with(4, b"org.opencontainers.image.enc.keys.jwe=e30=\n"),
    ]
}

#[test]
fn image_crypt_inputs_survive_mutations() {
    let seeds = seeds();
    for seed in &seeds {
        annotations(seed);
    }
    let mut rng = Rng(0x5eed_c0c0);
    for _ in 0..8000 {
        let seed = &seeds[rng.below(seeds.len())];
        annotations(&mutate(&mut rng, seed, &seeds));
    }
}
