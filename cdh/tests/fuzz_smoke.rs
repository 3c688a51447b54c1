//! The `cdh_inputs` fuzz target's entry point over seeds and thousands of deterministic
//! mutations of them, on every `cargo test` (coverage-guided fuzzing: `make fuzz`).

use base64::Engine;
use confidential_data_hub::fuzzing::cdh_inputs;
use confidential_data_hub::sealed::make;
use peerpod_tests::mutate::{Rng, mutate};

fn seeds() -> Vec<Vec<u8>> {
    let with = |kind: u8, body: &[u8]| [&[kind][..], body].concat();
    let key = make::generate_key().expect("key");
    let vault = make::seal(
        &make::vault("kbs:///default/key/a"),
        &key,
        "kbs:///default/sign/k",
    );
    let envelope = make::seal(
        &make::envelope(&[1; 32], "kbs:///default/key/kek", b"x").expect("envelope"),
        &key,
        "local",
    );
    let packet = base64::engine::general_purpose::STANDARD
        .encode(r#"{"kid":"kbs:///default/key/kek","wrapped_data":"AAAA","iv":"AAAAAAAAAAAAAAAA","wrap_type":"A256GCM"}"#);
    vec![
        with(
            0,
            b"socket = \"unix:///run/cdh.sock\"\n[kbc]\nname = \"cc_kbc\"\nurl = \"http://kbs\"\n\
              [[credentials]]\nresource_uri = \"kbs:///a/b/c\"\npath = \"/run/x\"\n[image]\nx = 1\n",
        ),
        with(1, vault.as_bytes()),
        with(1, envelope.as_bytes()),
        with(2, b"kbs://host:8080/default/key/one?version=1"),
        with(
            3,
            format!(r#"{{"op":"keyunwrap","keyunwrapparams":{{"annotation":"{packet}"}}}}"#)
                .as_bytes(),
        ),
        with(
            4,
            br#"{"devicePath":"/dev/vdb","sourceType":"empty","key":"kbs:///a/b/c","dataIntegrity":"true"}"#,
        ),
        with(
            5,
            b"22 1 254:1 / / rw shared:1 - ext4 /dev/vda1 rw\n\
              120 25 253:3 / /run/kata-containers/image rw,relatime shared:60 - ext4 /dev/mapper/encrypted_scratch rw\n\
              121 25 0:45 / /run/kata-containers/image rw - tmpfs /dev/dm\\0400 rw\n",
        ),
    ]
}

#[test]
fn cdh_inputs_survive_mutations() {
    let seeds = seeds();
    for seed in &seeds {
        cdh_inputs(seed);
    }
    let mut rng = Rng(0x5eed_00cd);
    for _ in 0..6000 {
        let seed = &seeds[rng.below(seeds.len())];
        cdh_inputs(&mutate(&mut rng, seed, &seeds));
    }
}
