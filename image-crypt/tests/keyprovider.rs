//! The `image-crypt-keyprovider` test binary speaks ocicrypt's command key-provider protocol
//! (JSON on stdin and stdout, byte strings in base64, the encrypt config's `Parameters` as Go
//! marshals them): what it wraps, `layer_key` unwraps; what it unwraps is the options it wrapped.

mod common;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::{Kbs, block_on, bytes, read_all};
use peerpod_image_crypt::{
    KEYPROVIDER_ANNOTATION, PUBOPTS_ANNOTATION, decrypting_reader, layer_key, testing,
};
use peerpod_tests::scratch::ScratchDir;
use serde_json::{Value, json};

const KID: &str = "kbs:///default/image-kek/cmd";

fn provider(args: &[&str], request: &Value) -> Result<Value, String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_image-crypt-keyprovider"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the key provider");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(request.to_string().as_bytes())
        .expect("write the request");
    let out = child.wait_with_output().expect("wait");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

#[test]
fn wrap_and_unwrap_through_the_command_protocol() {
    let scratch = ScratchDir::new("crypt-keyprovider").expect("scratch");
    let kek_path = scratch.path().join("kek");
    let kek = [0x6bu8; 32];
    std::fs::write(&kek_path, kek).expect("write the KEK");
    let plain = bytes(50_000, 8);
    let (symkey, nonce) = ([0x31u8; 32], [0x02u8; 16]);
    let (cipher, tag) = testing::encrypt_with(&plain, &symkey, &nonce);
    let opts = testing::private_options(&symkey, &nonce, "");
    let param = format!("keyid={KID}::keypath={}", kek_path.display());
    let wrap = json!({
        "op": "keywrap",
        "keywrapparams": {
            "ec": {"Parameters": {"attestation-agent": [STANDARD.encode(&param)]}, "DecryptConfig": {"Parameters": {}}},
            "optsdata": STANDARD.encode(&*opts),
        },
    });
    let reply = provider(&[], &wrap).expect("keywrap");
    let packet = reply["keywrapresults"]["annotation"]
        .as_str()
        .expect("annotation");
    let mut ann = BTreeMap::new();
    ann.insert(KEYPROVIDER_ANNOTATION.to_string(), packet.to_string());
    ann.insert(
        PUBOPTS_ANNOTATION.to_string(),
        testing::public_options(&tag),
    );
    let key = block_on(layer_key(&ann, &Kbs::with(KID, &kek))).expect("layer_key unwraps it");
    let (out, end) = read_all(&mut decrypting_reader(cipher.as_slice(), &key), 8192);
    end.expect("authentic");
    assert!(out == plain);

    let unwrap = json!({"op": "keyunwrap", "keyunwrapparams": {"dc": {"Parameters": {}}, "annotation": packet}});
    let kek_arg = kek_path.to_str().expect("utf-8 path");
    let reply = provider(&[kek_arg], &unwrap).expect("keyunwrap");
    let back = STANDARD
        .decode(
            reply["keyunwrapresults"]["optsdata"]
                .as_str()
                .expect("optsdata"),
        )
        .expect("base64");
    assert_eq!(back, *opts);

    std::fs::write(&kek_path, [0u8; 32]).expect("another KEK");
    let e = provider(&[kek_arg], &unwrap).expect_err("another KEK does not unwrap");
    assert!(e.contains(KID), "{e}");
}
