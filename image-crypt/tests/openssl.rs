//! The layer cipher against an independent implementation, OpenSSL's command line: a layer
//! encrypted by `openssl enc -aes-256-ctr` with its HMAC from `openssl dgst -hmac` decrypts
//! through this crate, and this crate's test encrypter's layers decrypt with `openssl enc -d`.
//! (Debian's skopeo 1.9 cannot encrypt for a key provider — its ocicrypt predates
//! `--encryption-key provider:…` — so OpenSSL is the real tool for the cipher here.)

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::{Kbs, block_on, bytes, read_all};
use peerpod_image_crypt::{
    KEYPROVIDER_ANNOTATION, PUBOPTS_ANNOTATION, decrypting_reader, layer_key, testing,
};
use peerpod_tests::scratch::ScratchDir;

const KID: &str = "kbs:///default/image-kek/openssl";

/// `openssl`, or `None` after a loud skip note (a failure under CI).
fn openssl() -> Option<&'static str> {
    if Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Some("openssl");
    }
    let message = "openssl is missing: apt-get install openssl (scripts/install-test-deps.sh)";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message} (CI=true: a missing tool fails)");
    }
    use std::io::Write as _;
    let _ = std::io::stderr().write_all(format!("\n*** SKIPPED: {message} ***\n").as_bytes());
    None
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().expect("run openssl");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn ctr(openssl: &str, decrypt: bool, key: &[u8; 32], iv: &[u8; 16], input: &Path, output: &Path) {
    let mut c = Command::new(openssl);
    c.arg("enc")
        .arg(if decrypt { "-d" } else { "-e" })
        .arg("-aes-256-ctr");
    c.args(["-K", &hex::encode(key), "-iv", &hex::encode(iv), "-in"]);
    c.arg(input).arg("-out").arg(output);
    run(&mut c);
}

#[test]
fn a_layer_encrypted_by_openssl_decrypts() {
    let Some(openssl) = openssl() else { return };
    let dir = ScratchDir::new("crypt-openssl-enc").expect("scratch");
    let plain = bytes(1_000_003, 77);
    let (symkey, nonce) = ([0x3cu8; 32], [0xffu8; 16]); // the counter wraps at once
    let kek = [0x21u8; 32];
    std::fs::write(dir.path().join("plain"), &plain).expect("write");
    ctr(
        openssl,
        false,
        &symkey,
        &nonce,
        &dir.path().join("plain"),
        &dir.path().join("cipher"),
    );
    let cipher = std::fs::read(dir.path().join("cipher")).expect("read");
    let mac = run(Command::new(openssl)
        .args(["dgst", "-sha256", "-binary", "-mac", "HMAC", "-macopt"])
        .arg(format!("hexkey:{}", hex::encode(symkey)))
        .arg(dir.path().join("cipher")));
    let tag: [u8; 32] = mac.as_slice().try_into().expect("32-byte HMAC");
    let opts = testing::private_options(&symkey, &nonce, "");
    let mut ann = BTreeMap::new();
    ann.insert(
        KEYPROVIDER_ANNOTATION.to_string(),
        STANDARD.encode(testing::wrap(&opts, &kek, KID)),
    );
    ann.insert(
        PUBOPTS_ANNOTATION.to_string(),
        testing::public_options(&tag),
    );
    let key = block_on(layer_key(&ann, &Kbs::with(KID, &kek))).expect("key");
    assert_eq!(key.plain_digest(), None);
    let (out, end) = read_all(&mut decrypting_reader(cipher.as_slice(), &key), 65536);
    end.expect("OpenSSL's HMAC is accepted");
    assert!(
        out == plain,
        "OpenSSL's ciphertext decrypts to the plaintext"
    );
}

#[test]
fn a_layer_from_the_test_encrypter_decrypts_with_openssl() {
    let Some(openssl) = openssl() else { return };
    let dir = ScratchDir::new("crypt-openssl-dec").expect("scratch");
    let plain = bytes(300_001, 5);
    let (symkey, nonce) = ([0x9au8; 32], [0x01u8; 16]);
    let (cipher, tag) = testing::encrypt_with(&plain, &symkey, &nonce);
    std::fs::write(dir.path().join("cipher"), &cipher).expect("write");
    ctr(
        openssl,
        true,
        &symkey,
        &nonce,
        &dir.path().join("cipher"),
        &dir.path().join("plain"),
    );
    assert!(std::fs::read(dir.path().join("plain")).expect("read") == plain);
    let mac = run(Command::new(openssl)
        .args(["dgst", "-sha256", "-binary", "-mac", "HMAC", "-macopt"])
        .arg(format!("hexkey:{}", hex::encode(symkey)))
        .arg(dir.path().join("cipher")));
    assert_eq!(mac, tag);
}
