//! The `provision_user_data` fuzz target's entry point over seeds and thousands of
//! deterministic mutations of them, on every `cargo test` (coverage-guided fuzzing: `make
//! fuzz`).

mod common;

use common::*;
use peerpod_provision::fuzzing::user_data;
use peerpod_tests::mutate::{Rng, mutate};

fn seeds() -> Vec<Vec<u8>> {
    let doc = initdata_doc("sha256");
    vec![
        cloud_config(&[
            ("/run/peerpod/apf.json", "{\"a\": 1}"),
            ("/run/peerpod/initdata", &encoded(&doc)),
            ("/run/peerpod/../etc/x", "y"),
        ])
        .into_bytes(),
        b"write_files:\n- path: /run/peerpod/auth.json\n  encoding: gz+b64\n  content: H4sIAAAAAAAAA6tWSiwtycgsVrJSUEpKLCqpVAIAJOoq4hUAAAA=\n"
            .to_vec(),
        b"write_files:\n- path: /a\n  encoding: b64\n  content: aGVsbG8=\n- &x {path: /b}\n- *x\n"
            .to_vec(),
        [&[0u8][..], encoded(&doc).as_bytes()].concat(),
        b"#cloud-config\n".to_vec(),
    ]
}

#[test]
fn user_data_survives_mutations() {
    let seeds = seeds();
    for seed in &seeds {
        user_data(seed);
    }
    let mut rng = Rng(0x5eed_0b0d);
    for _ in 0..20000 {
        let seed = &seeds[rng.below(seeds.len())];
        user_data(&mutate(&mut rng, seed, &seeds));
    }
}
