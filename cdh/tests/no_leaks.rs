//! What the host sends cannot make the CDH hand it a KBS resource: a sealed secret whose `kid`
//! names a secret is refused before the fetch (the verification keys are a configured set), and
//! when a configured key is not a JWK, or a key-encryption key is not one, the error says so
//! without quoting it. The planted secret is searched for in every error and in the CDH's whole
//! log. Also: oversized KBS replies, an empty `[kbc] url`, and a plain-HTTP KBS without the
//! opt-in.

use std::process::Command;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use confidential_data_hub::sealed::make;
use peerpod_protocols::cdh::api_ttrpc::{GetResourceServiceClient, SealedSecretServiceClient};
use peerpod_tests::cvm::{CvmOptions, Flavour, SimulatedCvm};
use peerpod_tests::kbs::{KbsOptions, RunningKbs};
use peerpod_tests::scratch::ScratchDir;
use serde_json::json;

mod common;
use common::*;

/// A fresh planted secret, so a match can only come from this run (28 bytes, 30 as a JSON
/// string: not an AES-256 key).
fn planted() -> String {
    let mut b = [0u8; 10];
    getrandom::fill(&mut b).expect("randomness");
    format!(
        "sk-live-{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

fn message(e: &ttrpc::Error) -> String {
    match e {
        ttrpc::Error::RpcStatus(s) => s.message().to_string(),
        other => format!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_secret_cannot_make_the_cdh_leak_a_resource() {
    let secret = planted();
    let dir = ScratchDir::new("cdh-no-leaks").expect("scratch");
    let cvm = SimulatedCvm::start(CvmOptions::new(Flavour::Snp, dir.path())).expect("CVM");
    let signer = make::generate_key().expect("key");
    let mut options = KbsOptions::for_cvm(&cvm, None).expect("KBS options");
    // The secret as a JSON string (what made the old parser quote it: `invalid type: string
    // "sk-live-…"`), and a JWK-shaped document whose fields are the secret.
    let as_json = json!(secret).to_string();
    let jwk_shaped = json!({"kty": secret, "crv": secret, "x": secret, "y": secret}).to_string();
    for (path, value) in [
        ("default/key/api", as_json.clone().into_bytes()),
        ("default/key/jwk-shaped", jwk_shaped.into_bytes()),
        (
            "default/sign/jwk",
            make::public_jwk(&signer).to_string().into_bytes(),
        ),
        // Over the 4 MiB cap once sealed in a JWE.
        (
            "default/key/huge",
            vec![b'h'; peerpod_kbs_client::MAX_KBS_REPLY],
        ),
    ] {
        options.resources.insert(path.into(), value);
    }
    let kbs = RunningKbs::start(options, "127.0.0.1:0", None).expect("KBS");
    let aa = Aa::start(dir.path(), &kbs.url(), &cvm).await;
    // The test's cdh.toml allows kbs:///default/sign/ as verification keys; this CDH also
    // (wrongly) allows one secret, to show what happens when a configured key is not a key.
    let toml = cdh_toml(dir.path(), &kbs.url(), &aa.socket, "").replace(
        "[\"kbs:///default/sign/\"]",
        "[\"kbs:///default/sign/\", \"kbs:///default/key/jwk-shaped\"]",
    );
    let cdh = Cdh::start(dir.path(), &toml);
    let raw = cdh.connect().await;
    let sealed_client = SealedSecretServiceClient::new(raw.clone());
    let mut errors = Vec::new();

    // The reproduction: the secret's own header names a secret as its verification key. The
    // kid is refused before anything is fetched, with a generic reason.
    let attacker = make::generate_key().expect("key");
    let probe = make::seal(
        &make::vault("kbs:///default/key/api"),
        &attacker,
        "kbs:///default/key/api",
    );
    let err = unseal(&sealed_client, &probe)
        .await
        .expect_err("kid refused");
    assert_eq!(code(&err), ttrpc::Code::PERMISSION_DENIED, "{err:?}");
    assert!(
        message(&err).contains("sealed_secret_verification_keys"),
        "{err:?}"
    );
    errors.push(message(&err));

    // A configured key that is not a JWK: "not a JWK", nothing of its contents.
    let shaped = make::seal(
        &make::vault("kbs:///default/key/api"),
        &attacker,
        "kbs:///default/key/jwk-shaped",
    );
    let err = unseal(&sealed_client, &shaped)
        .await
        .expect_err("not a JWK");
    assert!(
        message(&err).contains("is not an EC P-256 public JWK"),
        "{err:?}"
    );
    errors.push(message(&err));

    // An envelope (signed by the real signer) whose key-encryption key is the secret: its
    // length and bytes stay out of the error.
    let envelope = make::seal(
        &make::envelope(&[1; 32], "kbs:///default/key/api", b"x").expect("envelope"),
        &signer,
        "kbs:///default/sign/jwk",
    );
    let err = unseal(&sealed_client, &envelope)
        .await
        .expect_err("not a KEK");
    assert!(message(&err).contains("not a 256-bit AES key"), "{err:?}");
    errors.push(message(&err));

    // UnWrapKey with the secret as the key-encryption key.
    let packet = json!({"kid": "kbs:///default/key/api", "wrapped_data": STANDARD.encode([0u8; 48]),
        "iv": STANDARD.encode([0u8; 12]), "wrap_type": "A256GCM"});
    let request = json!({"op": "keyunwrap",
        "keyunwrapparams": {"annotation": STANDARD.encode(packet.to_string())}});
    let err = unwrap_key(&raw, &request).await.expect_err("not a KEK");
    errors.push(message(&err));

    // An oversized reply is refused with a clear reason.
    let resources = GetResourceServiceClient::new(raw.clone());
    let err = get(&resources, "kbs:///default/key/huge")
        .await
        .expect_err("too large");
    assert!(message(&err).contains("larger than"), "{err:?}");
    // The secret itself is still served to whoever may ask for it (the pod).
    assert_eq!(
        get(&resources, "kbs:///default/key/api")
            .await
            .expect("resource"),
        as_json.as_bytes()
    );

    let log = cdh.log_text();
    assert!(log.contains("request failed"), "failures are logged: {log}");
    for (i, e) in errors.iter().enumerate() {
        assert!(!e.contains(&secret), "error {i} carries the secret: {e}");
    }
    assert!(!log.contains(&secret), "the secret reached the CDH's log");
    assert!(
        !log.contains(&STANDARD.encode(&secret)),
        "the secret reached the CDH's log in base64"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_kbs_url_fails_only_when_used() {
    let dir = ScratchDir::new("cdh-empty-url").expect("scratch");
    let toml = cdh_toml(dir.path(), "", &dir.path().join("no-aa.sock"), "");
    let cdh = Cdh::start(dir.path(), &toml);
    let resources = GetResourceServiceClient::new(cdh.connect().await);
    let err = get(&resources, "kbs:///default/key/pod")
        .await
        .expect_err("no KBS URL");
    assert_eq!(code(&err), ttrpc::Code::UNAVAILABLE, "{err:?}");
    assert!(message(&err).contains("[kbc] url"), "{err:?}");
}

#[test]
fn a_plain_http_kbs_needs_the_opt_in() {
    let dir = ScratchDir::new("cdh-plain-http").expect("scratch");
    let toml = cdh_toml(
        dir.path(),
        "http://127.0.0.1:1",
        &dir.path().join("aa.sock"),
        "",
    )
    .replace("insecure_http = true\n", "");
    std::fs::write(dir.path().join("cdh.toml"), toml).expect("cdh.toml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_confidential-data-hub"))
        .arg("-c")
        .arg(dir.path().join("cdh.toml"))
        .env_remove("AA_KBC_PARAMS")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("runs");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("the CDH started with a plain-HTTP KBS and no opt-in");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert!(!status.success());
    assert!(
        stderr.contains("http://127.0.0.1:1") && stderr.contains("insecure_http"),
        "{stderr}"
    );
}
