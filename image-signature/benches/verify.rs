//! Signature verification latency: what one `verify` of a signed image costs, against what a
//! user would otherwise run for the same signature.
//!
//! - simple signing: our `verify` (policy choice, key from the resource fetcher, signature
//!   read from a `file://` lookaside, OpenPGP verification, payload checks) against
//!   `gpg --verify` of the same signature file (process spawn included, as a script would run
//!   it; it checks the signature only, not the payload's identity and digest), for an Ed25519
//!   and an RSA-3072 key made by gpg;
//! - cosign: our `verify` against an in-memory registry (no baseline: Debian has no cosign).
//!
//! Run with `cargo bench -p peerpod-image-signature --bench verify`; `BENCH_ITERS` sets the
//! rounds of our verify (default 300; gpg runs a tenth as many, at least 20).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use peerpod_image_signature::{LookasideConfig, Policy, verify};
use peerpod_tests::bench::{ms, percentile};

const KEY_URI: &str = "kbs:///default/simple-signing-key/app";

fn main() {
    let rounds: usize = std::env::var("BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let gpg_rounds = (rounds / 10).max(20);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let Some(gpg) = Gpg::new() else { return };
    let (_, digest) = manifest("bench");
    let img = image("registry.example", "app", Some("v1"), &digest);
    let payload = simple_payload("registry.example/app:v1", &digest);
    let store = peerpod_tests::scratch::ScratchDir::new("sig-bench").expect("scratch");
    let sigdir = store
        .path()
        .join(format!("app@{}", digest.replacen(':', "=", 1)));
    std::fs::create_dir_all(&sigdir).expect("sig dir");
    let lookaside = LookasideConfig::parse(
        format!(
            "default-docker:\n  lookaside: file://{}\n",
            store.path().display()
        )
        .as_bytes(),
    )
    .expect("lookaside");
    let policy = Policy::parse(
        format!(
            r#"{{"default":[{{"type":"signedBy","keyType":"GPGKeys","keyPath":"{KEY_URI}"}}]}}"#
        )
        .as_bytes(),
    )
    .expect("policy");
    let registry = MemRegistry::default();

    println!("signature verification, {rounds} rounds (gpg: {gpg_rounds})");
    for algo in ["ed25519", "rsa3072"] {
        let fpr = gpg.generate(&format!("bench-{algo}"), algo);
        let sig = gpg.sign(&fpr, &payload, &[]);
        let sig_path = sigdir.join("signature-1");
        std::fs::write(&sig_path, &sig).expect("write signature");
        let resources = MemResources::with(KEY_URI, gpg.export(&fpr, false));

        let mut ours = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let start = Instant::now();
            rt.block_on(verify(
                &policy,
                &img,
                &registry,
                &resources,
                Some(&lookaside),
            ))
            .expect("accepted");
            ours.push(start.elapsed());
        }
        let mut theirs = Vec::with_capacity(gpg_rounds);
        for _ in 0..gpg_rounds {
            let start = Instant::now();
            let out = gpg
                .cmd()
                .args(["--verify"])
                .arg(&sig_path)
                .output()
                .expect("gpg --verify");
            theirs.push(start.elapsed());
            assert!(out.status.success(), "gpg --verify failed");
        }
        report(
            &format!("simple signing {algo}"),
            &mut ours,
            "gpg --verify",
            &mut theirs,
        );
    }

    let key = CosignKey::generate();
    let resources = MemResources::with(KEY_URI, key.public_pem());
    registry.cosign_sign(
        "registry.example/app",
        &digest,
        &key,
        &cosign_payload("registry.example/app", &digest),
    );
    let cosign_policy = Policy::parse(
        format!(r#"{{"default":[{{"type":"sigstoreSigned","keyPath":"{KEY_URI}"}}]}}"#).as_bytes(),
    )
    .expect("policy");
    let mut ours = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        rt.block_on(verify(&cosign_policy, &img, &registry, &resources, None))
            .expect("accepted");
        ours.push(start.elapsed());
    }
    println!(
        "cosign P-256 (in-memory registry): median {:.3} ms, p95 {:.3} ms (no baseline: no cosign binary in Debian)",
        ms(percentile(&mut ours, 0.5)),
        ms(percentile(&mut ours, 0.95)),
    );
}

fn report(what: &str, ours: &mut [Duration], baseline: &str, theirs: &mut [Duration]) {
    let (o50, o95) = (percentile(ours, 0.5), percentile(ours, 0.95));
    let (t50, t95) = (percentile(theirs, 0.5), percentile(theirs, 0.95));
    println!(
        "{what}: ours median {:.3} ms p95 {:.3} ms; {baseline} median {:.3} ms p95 {:.3} ms; {:.1}x faster at the median",
        ms(o50),
        ms(o95),
        ms(t50),
        ms(t95),
        t50.as_secs_f64() / o50.as_secs_f64().max(1e-9),
    );
}
