//! The `image_inputs` fuzz target's entry point over seeds and thousands of deterministic
//! mutations of them, on every `cargo test` (coverage-guided fuzzing: `make fuzz`).

use peerpod_image::fuzzing::image_inputs;
use peerpod_tests::mutate::{Rng, mutate};

fn seeds() -> Vec<Vec<u8>> {
    let with = |kind: u8, body: &[u8]| [&[kind][..], body].concat();
    let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
    vec![
        with(0, b"localhost:5000/a/b:v1"),
        with(0, format!("quay.io/x/y:t@{}", d('a')).as_bytes()),
        with(
            1,
            format!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":1,"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
                d('b')
            )
            .as_bytes(),
        ),
        with(
            2,
            format!(
                r#"{{"schemaVersion":2,"config":{{"mediaType":"x","digest":"{}","size":1}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":1}}],"rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
                d('c'),
                d('d'),
                d('e')
            )
            .as_bytes(),
        ),
        with(3, br#"Bearer realm="https://a/token",service="r",scope="repository:a/b:pull""#),
        with(4, br#"{"auths":{"quay.io/team":{"auth":"dTpw"},"https://index.docker.io/v1/":{"username":"a","password":"b"}}}"#),
        with(
            5,
            b"unqualified-search-registries = [\"docker.io\", \"q.io\"]\n[[registry]]\nprefix = \"quay.io/a\"\nlocation = \"m.io/b\"\n[[registry.mirror]]\nlocation = \"n.io:5000/c\"\ninsecure = true\n",
        ),
        with(6, b"work_dir = \"/run/x\"\nmax_concurrent_layer_downloads_per_image = 4\n[image_pull_proxy]\nhttps_proxy = \"http://p:1\"\n"),
    ]
}

#[test]
fn image_inputs_survive_mutations() {
    let seeds = seeds();
    for seed in &seeds {
        image_inputs(seed);
    }
    let mut rng = Rng(0x1a6e_5eed);
    for _ in 0..8000 {
        let seed = &seeds[rng.below(seeds.len())];
        image_inputs(&mutate(&mut rng, seed, &seeds));
    }
}
