//! Layers encrypted by a real tool: an image built with umoci, encrypted by
//! `skopeo copy --encryption-key jwe:…` (containers/ocicrypt: the Go implementation of the
//! layer cipher, the public options and the JWE key wrapping) to an EC P-256 and an RSA key.
//! Each key alone decrypts every layer to the exact blob skopeo was given, whose digest is the
//! one in the private options; a wrong key, an altered blob and a missing key are refused.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::{Kbs, block_on, bytes, read_all};
use peerpod_image_crypt::{
    CryptError, JWE_ANNOTATION, JwePrivateKey, decrypted_media_type, decrypting_reader,
    is_encrypted, layer_key, layer_key_with,
};
use peerpod_tests::scratch::ScratchDir;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// Whether every tool is there; `false` after a loud skip note (a failure under CI).
fn tools(names: &[&str]) -> bool {
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    let message = format!(
        "{} missing: apt-get install {} (scripts/install-test-deps.sh)",
        missing.join(", "),
        missing.join(" ")
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message} (CI=true: a missing tool fails)");
    }
    use std::io::Write as _;
    let _ = std::io::stderr().write_all(format!("\n*** SKIPPED: {message} ***\n").as_bytes());
    false
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run the tool");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    std::fs::read(layout.join("blobs/sha256").join(hex)).expect("blob")
}

/// The layer descriptors of the layout's one image.
fn layers(layout: &Path) -> Vec<Value> {
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index"))
            .expect("index JSON");
    let digest = index["manifests"][0]["digest"].as_str().expect("manifest");
    let manifest: Value = serde_json::from_slice(&blob(layout, digest)).expect("manifest JSON");
    manifest["layers"].as_array().expect("layers").clone()
}

fn annotations(desc: &Value) -> BTreeMap<String, String> {
    desc["annotations"]
        .as_object()
        .expect("annotations")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("string").to_string()))
        .collect()
}

fn key(dir: &Path, name: &str, algorithm: &[&str]) -> JwePrivateKey {
    let private = dir.join(format!("{name}.pem"));
    run(Command::new("openssl")
        .arg("genpkey")
        .args(algorithm)
        .arg("-out")
        .arg(&private));
    run(Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(dir.join(format!("{name}.pub"))));
    JwePrivateKey::from_pem(&std::fs::read_to_string(&private).expect("pem")).expect("a key")
}

#[test]
fn layers_encrypted_by_skopeo_with_jwe_decrypt() {
    if !tools(&["skopeo", "umoci", "openssl"]) {
        return;
    }
    let scratch = ScratchDir::new("crypt-skopeo").expect("scratch");
    let dir = scratch.path();
    // Two layers: incompressible data, and a small text file.
    std::fs::create_dir_all(dir.join("one")).expect("mkdir");
    std::fs::write(dir.join("one/data.bin"), bytes(700_000, 1)).expect("write");
    std::fs::create_dir_all(dir.join("two")).expect("mkdir");
    std::fs::write(
        dir.join("two/hello.txt"),
        b"hello from an encrypted layer\n",
    )
    .expect("write");
    let plain = dir.join("plain");
    let layout = |p: &Path| format!("{}:app", p.display());
    run(Command::new("umoci")
        .arg("init")
        .arg("--layout")
        .arg(&plain));
    run(Command::new("umoci").args(["new", "--image", &layout(&plain)]));
    run(Command::new("umoci")
        .args(["insert", "--image", &layout(&plain)])
        .arg(dir.join("one"))
        .arg("/data"));
    run(Command::new("umoci")
        .args(["insert", "--image", &layout(&plain)])
        .arg(dir.join("two"))
        .arg("/etc/motd.d"));

    let ec = key(
        dir,
        "ec",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let rsa = key(
        dir,
        "rsa",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    );
    let other = key(
        dir,
        "other",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let enc = dir.join("enc");
    run(Command::new("skopeo")
        .arg("copy")
        .arg("--encryption-key")
        .arg(format!("jwe:{}", dir.join("ec.pub").display()))
        .arg("--encryption-key")
        .arg(format!("jwe:{}", dir.join("rsa.pub").display()))
        .arg(format!("oci:{}", layout(&plain)))
        .arg(format!("oci:{}", layout(&enc))));

    let plain_layers = layers(&plain);
    let enc_layers = layers(&enc);
    assert_eq!(plain_layers.len(), 2);
    assert_eq!(enc_layers.len(), 2);
    let nobody = Kbs::default();
    for (p, e) in plain_layers.iter().zip(&enc_layers) {
        let enc_type = e["mediaType"].as_str().expect("type");
        assert!(is_encrypted(enc_type), "{enc_type}");
        assert_eq!(
            decrypted_media_type(enc_type).expect("known"),
            p["mediaType"].as_str().expect("type")
        );
        let ann = annotations(e);
        assert!(ann.contains_key(JWE_ANNOTATION), "{ann:?}");
        let cipher = blob(&enc, e["digest"].as_str().expect("digest"));
        let want = blob(&plain, p["digest"].as_str().expect("digest"));
        assert_ne!(cipher, want);
        for (label, k) in [("jwe:P-256", &ec), ("jwe:RSA", &rsa)] {
            let key = block_on(layer_key_with(&ann, &nobody, std::slice::from_ref(k)))
                .expect("skopeo's JWE opens");
            assert_eq!(key.kid(), label);
            assert_eq!(key.plain_digest(), p["digest"].as_str());
            let (out, end) = read_all(&mut decrypting_reader(cipher.as_slice(), &key), 32 << 10);
            end.expect("skopeo's HMAC is accepted");
            assert!(out == want, "decrypts to the blob skopeo encrypted");
            assert_eq!(
                format!("sha256:{}", hex::encode(Sha256::digest(&out))),
                p["digest"].as_str().expect("digest")
            );
        }
        // The wrong private key, no private key, an altered blob.
        let e = block_on(layer_key_with(&ann, &nobody, std::slice::from_ref(&other)))
            .expect_err("another key");
        assert!(matches!(e, CryptError::JweNoKey { .. }), "{e}");
        let e = block_on(layer_key(&ann, &nobody)).expect_err("no key");
        assert!(matches!(e, CryptError::UnsupportedProtocol { .. }), "{e}");
        let key = block_on(layer_key_with(&ann, &nobody, std::slice::from_ref(&ec))).expect("key");
        let mut bad = cipher.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x40;
        let (_, end) = read_all(&mut decrypting_reader(bad.as_slice(), &key), 32 << 10);
        assert_eq!(
            end.expect_err("altered").kind(),
            std::io::ErrorKind::InvalidData
        );
    }
}
