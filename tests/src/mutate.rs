//! Deterministic byte mutations for the in-tree fuzz smoke tests (`tests/tests/fuzz_smoke.rs`):
//! a cheap stand-in for the cargo-fuzz targets in `fuzz/`, run on every `cargo test`.

/// A small deterministic generator (xorshift64*), so failures reproduce.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// Byte-level mutations of the kind fuzzers make: flips, inserts, deletes, splices.
pub fn mutate(rng: &mut Rng, seed: &[u8], seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(6) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(out.len() + 1);
                out.insert(i, rng.next_u64() as u8);
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
