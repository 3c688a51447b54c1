//! Decryption throughput of a 200 MiB encrypted layer (AES-256-CTR with HMAC-SHA256, as
//! ocicrypt writes it), streamed from a file through `decrypting_reader`, against OpenSSL's
//! command line on the same bytes in the same run: `openssl enc -d -aes-256-ctr` alone (no
//! authentication: what the brief's baseline asks), and `openssl enc -d` plus
//! `openssl dgst -hmac` (the same work as ours, in two passes as a shell pipeline would do it).
//!
//! Run with `cargo bench -p peerpod-image-crypt --bench decrypt`. `BENCH_MIB` sets the size
//! (default 200), `BENCH_ROUNDS` the rounds (default 3; the best of each is printed).

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use peerpod_image_crypt::{
    KEYPROVIDER_ANNOTATION, KeyResolver, PUBOPTS_ANNOTATION, decrypting_reader, layer_key, testing,
};
use peerpod_tests::scratch::ScratchDir;
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

const KID: &str = "kbs:///default/image-kek/bench";
const KEK: [u8; 32] = [0x42; 32];
const SYMKEY: [u8; 32] = [0x17; 32];
const NONCE: [u8; 16] = [0x05; 16];

struct OneKey;

#[async_trait::async_trait]
impl KeyResolver for OneKey {
    async fn resource(&self, _uri: &str) -> Result<Zeroizing<Vec<u8>>, String> {
        Ok(Zeroizing::new(KEK.to_vec()))
    }
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn best(rounds: usize, mut f: impl FnMut() -> Duration) -> Duration {
    (0..rounds).map(|_| f()).min().unwrap_or_default()
}

/// Runs `openssl args… [-in] file`, timed.
fn openssl(args: &[&str], in_flag: bool, file: &Path) -> Duration {
    let start = Instant::now();
    let out = Command::new("openssl")
        .args(args)
        .args(in_flag.then_some("-in"))
        .arg(file)
        .output()
        .expect("run openssl");
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn main() {
    let mib = env("BENCH_MIB", 200);
    let rounds = env("BENCH_ROUNDS", 3).max(1);
    let dir = ScratchDir::new("crypt-bench").expect("scratch");
    let file = dir.path().join("layer.enc");

    // Incompressible plaintext: AES-CTR keystream of zeros under another key.
    let (plain, _) = testing::encrypt_with(&vec![0u8; mib << 20], &[0x99; 32], &[0; 16]);
    let expected = Sha256::digest(&plain);
    let (cipher, tag) = testing::encrypt_with(&plain, &SYMKEY, &NONCE);
    drop(plain);
    std::fs::write(&file, &cipher).expect("write the layer");
    drop(cipher);

    let mut ann = BTreeMap::new();
    let opts = testing::private_options(&SYMKEY, &NONCE, "");
    ann.insert(
        KEYPROVIDER_ANNOTATION.to_string(),
        STANDARD.encode(testing::wrap(&opts, &KEK, KID)),
    );
    ann.insert(
        PUBOPTS_ANNOTATION.to_string(),
        testing::public_options(&tag),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let key = rt.block_on(layer_key(&ann, &OneKey)).expect("layer key");

    // Correctness first, untimed: the plaintext's digest.
    let mut r = decrypting_reader(std::fs::File::open(&file).expect("open"), &key);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = r.read(&mut buf).expect("authentic");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    assert_eq!(h.finalize(), expected, "decrypted bytes differ");

    let ours = best(rounds, || {
        let start = Instant::now();
        let mut r = decrypting_reader(std::fs::File::open(&file).expect("open"), &key);
        while r.read(&mut buf).expect("authentic") > 0 {}
        start.elapsed()
    });
    let (k, iv) = (hex::encode(SYMKEY), hex::encode(NONCE));
    let enc = [
        "enc",
        "-d",
        "-aes-256-ctr",
        "-K",
        &k,
        "-iv",
        &iv,
        "-out",
        "/dev/null",
    ];
    let hmac_key = format!("hexkey:{k}");
    let dgst = ["dgst", "-sha256", "-mac", "HMAC", "-macopt", &hmac_key];
    let ossl_ctr = best(rounds, || openssl(&enc, true, &file));
    let ossl_both = best(rounds, || {
        openssl(&enc, true, &file) + openssl(&dgst, false, &file)
    });

    // Where our time goes: each half alone over the same bytes, in memory.
    let data = std::fs::read(&file).expect("read");
    let ctr_only = best(rounds, || {
        use ctr::cipher::{KeyIvInit as _, StreamCipher as _};
        let mut c = ctr::Ctr128BE::<aes::Aes256>::new((&SYMKEY).into(), (&NONCE).into());
        let mut chunk = vec![0u8; 256 << 10];
        let start = Instant::now();
        for part in data.chunks(chunk.len()) {
            chunk[..part.len()].copy_from_slice(part);
            c.apply_keystream(&mut chunk[..part.len()]);
        }
        start.elapsed()
    });
    let hmac_only = best(rounds, || {
        use hmac::{KeyInit as _, Mac as _};
        let mut m = <hmac::Hmac<Sha256>>::new_from_slice(&SYMKEY).expect("any key length");
        let start = Instant::now();
        m.update(&data);
        std::hint::black_box(m.finalize());
        start.elapsed()
    });
    drop(data);

    let rate = |d: Duration| mib as f64 / d.as_secs_f64();
    println!("decrypt {mib} MiB layer from a file (page cache), best of {rounds}:");
    println!(
        "  peerpod-image-crypt (CTR + HMAC, one pass): {:8.1} MiB/s",
        rate(ours)
    );
    println!(
        "  openssl enc -d -aes-256-ctr (no HMAC):      {:8.1} MiB/s",
        rate(ossl_ctr)
    );
    println!(
        "  openssl enc -d + openssl dgst -hmac:        {:8.1} MiB/s",
        rate(ossl_both)
    );
    println!(
        "  (ours, each half alone in memory: AES-256-CTR {:.1} MiB/s, HMAC-SHA256 {:.1} MiB/s)",
        rate(ctr_only),
        rate(hmac_only)
    );
    println!(
        "  ratio vs openssl CTR alone: {:.2}x; vs openssl CTR + HMAC: {:.2}x",
        ossl_ctr.as_secs_f64() / ours.as_secs_f64(),
        ossl_both.as_secs_f64() / ours.as_secs_f64()
    );
}
