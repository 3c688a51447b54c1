//! The fuzz target's entry points (`fuzz/fuzz_targets/webhook_review.rs`) over seed reviews
//! and thousands of deterministic mutations of them, on every test run.

mod common;

use common::rng::Rng;
use common::{container, pod, reference, review_of};
use peerpod_webhook::fuzzing;
use peerpod_webhook::mutate::{Mutation, MutationConfig};
use peerpod_webhook::review::parse_review;

fn seeds() -> Vec<Vec<u8>> {
    let pods = [
        pod(
            Some("kata-remote"),
            vec![],
            vec![container(
                "c",
                &[("cpu", "2"), ("memory", "4Gi")],
                &[("cpu", "3")],
            )],
        ),
        pod(
            Some("kata-remote"),
            vec![container("i", &[("cpu", "200m")], &[("cpu", "0.7")])],
            vec![
                container("a", &[("nvidia.com/gpu", "1")], &[]),
                container("b", &[], &[]),
            ],
        ),
        pod(
            Some("other"),
            vec![],
            vec![container("c", &[("memory", "1G")], &[])],
        ),
        pod(Some("kata-remote"), vec![], vec![]),
    ];
    let mut seeds: Vec<Vec<u8>> = pods
        .into_iter()
        .map(|p| serde_json::to_vec(&review_of(p)).expect("JSON"))
        .collect();
    seeds.push(
        std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/review-replicaset-pod.json"
        ))
        .expect("the recorded review"),
    );
    seeds
}

const INTERESTING: &[&[u8]] = &[
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b"null",
    b"-",
    b"1e30",
    b"Ei",
    b"0.1n",
    b"\"kata-remote\"",
    b"\"containers\"",
    b"\"resources\"",
    b"\\u0000",
    b"99999999999999999999999",
];

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut d = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(d.len());
        match rng.below(4) {
            0 => {
                let i = at.min(d.len().saturating_sub(1));
                d[i] = rng.next() as u8;
            }
            1 => {
                let end = (at + rng.below(16)).min(d.len());
                d.drain(at..end);
            }
            2 => {
                let piece = INTERESTING[rng.below(INTERESTING.len())];
                d.splice(at..at, piece.iter().copied());
            }
            _ => {
                // Replace a quantity-looking string's contents.
                let piece = INTERESTING[rng.below(INTERESTING.len())];
                let end = (at + piece.len()).min(d.len());
                d.splice(at..end, piece.iter().copied());
            }
        }
        if d.is_empty() {
            break;
        }
    }
    d
}

#[test]
fn reviews_and_mutations_of_them_never_panic_and_patches_apply() {
    let seeds = seeds();
    let mut rng = Rng(0x5eed_cafe_f00d_beef);
    for seed in &seeds {
        assert!(fuzzing::review(seed).is_some(), "a seed was refused");
    }
    let (mut refused, mut patched) = (0, 0);
    for _ in 0..4000 {
        let seed = &seeds[rng.below(seeds.len())];
        match fuzzing::review(&mutate(&mut rng, seed)) {
            None => refused += 1,
            Some(true) => patched += 1,
            Some(false) => {}
        }
    }
    // The mutations reach both the refusals and the mutation itself.
    assert!(
        refused > 100 && patched > 100,
        "refused {refused}, patched {patched}"
    );
}

/// The same mutated reviews' pods through the partial decoder and through the full decode
/// (`common/reference.rs`): wherever k8s-openapi's `Pod` decodes the pod, both admit, deny or
/// patch alike. (Where it does not, the view may still admit: it does not check the fields
/// the mutation does not read; the test above checks such patches apply.)
#[test]
fn mutated_pods_agree_with_the_full_pod_decode() {
    let seeds = seeds();
    let config = MutationConfig::default();
    let mut rng = Rng(0x0dd5_eed5_1234_5678);
    let mut compared = 0;
    for _ in 0..20_000 {
        let seed = &seeds[rng.below(seeds.len())];
        let body = mutate(&mut rng, seed);
        let Ok(review) = parse_review(&body) else {
            continue;
        };
        let Some(object) = review.object else {
            continue;
        };
        let theirs = reference::mutate(&config, object.get());
        if theirs.as_ref().is_err_and(|e| e.starts_with("not a Pod")) {
            continue;
        }
        let ours = peerpod_webhook::mutate::mutate(&config, object.get());
        let agree = match (&ours, &theirs) {
            (Ok(Mutation::Patch(a)), Ok(Some(b))) => a == b,
            (Ok(Mutation::Untouched), Ok(None)) | (Err(_), Err(_)) => true,
            _ => false,
        };
        assert!(
            agree,
            "{}\nview: {ours:?}\nfull decode: {theirs:?}",
            object.get()
        );
        compared += 1;
    }
    assert!(compared > 2000, "only {compared} pods compared");
}

#[test]
fn quantities_round_trip_through_their_canonical_text() {
    let mut rng = Rng(42);
    let alphabet = b"0123456789.+-eEkMGTPEimunKi ";
    for text in [
        "1", "500m", "4Gi", "1.5Ki", "2e3", "0.1n", "-7", "1e-40", "1000000k",
    ] {
        fuzzing::quantity(text.as_bytes());
    }
    for _ in 0..20000 {
        let len = 1 + rng.below(12);
        let text: Vec<u8> = (0..len)
            .map(|_| alphabet[rng.below(alphabet.len())])
            .collect();
        fuzzing::quantity(&text);
    }
}
