//! The `aa_inputs` fuzz target's entry point over seeds and thousands of deterministic
//! mutations of them, on every `cargo test` (coverage-guided fuzzing: `make fuzz`).

use attestation_agent::eventlog::Entry;
use attestation_agent::fuzzing::aa_inputs;
use peerpod_tests::mutate::{Rng, mutate};

fn seeds() -> Vec<Vec<u8>> {
    let with = |kind: u8, body: &[u8]| [&[kind][..], body].concat();
    let entry = |text: &str| {
        Entry {
            register: 23,
            text: text.into(),
        }
        .to_bytes()
    };
    vec![
        with(
            0,
            b"[token_configs.kbs]\nurl = \"https://kbs:8080\"\ntee_key_algorithm = \"RSA-OAEP-256\"\n\
              [eventlog_config]\ninit_pcr = 23\nenable_eventlog = true\n[log]\nlevel = \"debug\"\n\
              [peerpod]\nkbs_attempts = 3\nfuture = 1\n",
        ),
        with(0, b"[token_configs.coco_as]\nurl = \"http://as\"\n[eventlog_config]\ninit_pcr = 99\n"),
        with(1, b"cc_kbc::http://[::1]:8080"),
        with(1, b"console=ttyS0 agent.aa_kbc_params=cc_kbc::https://kbs quiet"),
        with(2, &[entry("d op c"), entry("github.com pull image with spaces")].concat()),
        with(2, &entry("x y z")[..30]),
    ]
}

#[test]
fn aa_inputs_survive_mutations() {
    let seeds = seeds();
    for seed in &seeds {
        aa_inputs(seed);
    }
    let mut rng = Rng(0x5eed_00aa);
    for _ in 0..6000 {
        let seed = &seeds[rng.below(seeds.len())];
        aa_inputs(&mutate(&mut rng, seed, &seeds));
    }
}
