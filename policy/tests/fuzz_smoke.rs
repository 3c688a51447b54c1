//! A cheap stand-in for the cargo-fuzz targets in `fuzz/`, run by `cargo test`: the same entry
//! points over seed inputs and thousands of deterministic mutations of them. Coverage-guided
//! fuzzing (`make fuzz`) goes much further; this keeps the targets honest on every change.

use peerpod_policy::fuzzing;
use peerpod_policy::initdata::encode_annotation;

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Byte-level mutations of the kind fuzzers make: flips, inserts, deletes, splices.
fn mutate(rng: &mut Rng, seed: &[u8], seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(6) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(out.len() + 1);
                out.insert(i, rng.next() as u8);
            }
            2 if !out.is_empty() => {
                let i = rng.below(out.len());
                let n = rng.below(out.len() - i) + 1;
                out.drain(i..i + n.min(16));
            }
            3 => {
                let other = &seeds[rng.below(seeds.len())];
                if !other.is_empty() {
                    let i = rng.below(other.len());
                    let at = rng.below(out.len() + 1);
                    let piece: Vec<u8> = other[i..].iter().take(32).copied().collect();
                    out.splice(at..at, piece);
                }
            }
            4 if !out.is_empty() => {
                let i = rng.below(out.len());
                let specials = b"{}[]\",:'=\n\\0";
                out[i] = specials[rng.below(specials.len())];
            }
            _ => out.truncate(rng.below(out.len() + 1)),
        }
    }
    out
}

fn initdata_seeds() -> Vec<Vec<u8>> {
    let doc =
        b"version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"aa.toml\" = '''\nx = 1\n'''\n";
    vec![
        doc.to_vec(),
        encode_annotation(doc).into_bytes(),
        b"version = \"0.1.0\"\nalgorithm = \"sha-384\"\n".to_vec(),
        encode_annotation(&vec![b'a'; 100_000]).into_bytes(),
        b"H4sIAAAAAAAA/w==".to_vec(),
        Vec::new(),
    ]
}

fn policy_seeds() -> Vec<Vec<u8>> {
    [
        "\u{0}{\"container_id\": \"c1\", \"OCI\": {\"Process\": {\"Args\": [\"/bin/sh\"]}}}",
        "\u{1}{\"container_id\": \"c1\", \"process\": {\"Args\": [\"/bin/ls\"]}}",
        "\u{0}{\"container_id\": \"c2\", \"OCI\": {\"Process\": {\"Args\": [\"/bin/db\"]}}}",
        "\u{1}{\"container_id\": \"c2\", \"process\": {\"Args\": []}}",
        "\u{2}{\"routes\": null}",
        "\u{3}{}",
        "\u{1}[1, 2, {\"a\": null}]",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

#[test]
fn initdata_decoders_survive_mutations() {
    let seeds = initdata_seeds();
    let mut rng = Rng(0x5eed_0001);
    for seed in &seeds {
        fuzzing::initdata(seed);
    }
    for _ in 0..4000 {
        let seed = &seeds[rng.below(seeds.len())];
        fuzzing::initdata(&mutate(&mut rng, seed, &seeds));
    }
}

#[test]
fn policy_engine_survives_mutations_and_evaluators_agree() {
    let seeds = policy_seeds();
    let mut rng = Rng(0x5eed_0002);
    for seed in &seeds {
        fuzzing::policy_input(seed);
    }
    for _ in 0..1500 {
        let seed = &seeds[rng.below(seeds.len())];
        fuzzing::policy_input(&mutate(&mut rng, seed, &seeds));
    }
}
