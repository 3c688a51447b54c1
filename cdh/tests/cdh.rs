//! The `confidential-data-hub` binary on its real socket, called over ttrpc as the kata agent
//! calls it, with the attestation agent serving its own socket on a simulated Azure SNP CVM and
//! the local KBS: credentials at start, resources (one attestation for a hundred fetches), sealed
//! vault and envelope secrets, key unwrapping for image layers, every refusal with its status,
//! the REST endpoint for containers (`api-server-rest`), and no secret in any log.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use aes_gcm::aead::{Aead, KeyInit};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use confidential_data_hub::sealed::make;
use peerpod_protocols::cdh::api::{ImagePullRequest, SecureMountRequest};
use peerpod_protocols::cdh::api_ttrpc::{
    GetResourceServiceClient, ImagePullServiceClient, SealedSecretServiceClient,
    SecureMountServiceClient,
};
use peerpod_tests::cvm::{CvmOptions, Flavour, SimulatedCvm};
use peerpod_tests::kbs::{KbsOptions, RunningKbs};
use peerpod_tests::scratch::ScratchDir;
use serde_json::{Value, json};

const SECRET: &[u8] = b"db-password: correct horse battery staple";
const ENVELOPE_SECRET: &[u8] = b"envelope-sealed api token 7f3a";
const CREDENTIAL: &[u8] = b"{\"auths\": {\"registry.example\": {\"auth\": \"c2VjcmV0\"}}}";
const KEK: [u8; 32] = [0x4b; 32];

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_sealed_secrets_and_credentials_end_to_end() {
    let dir = ScratchDir::new("cdh-e2e").expect("scratch");
    let cvm = SimulatedCvm::start(CvmOptions::new(Flavour::Snp, dir.path())).expect("CVM");
    let signer = make::generate_key().expect("key");
    let mut options = KbsOptions::for_cvm(&cvm, None).expect("KBS options");
    for (path, value) in [
        ("default/key/pod", SECRET.to_vec()),
        ("default/key/kek", KEK.to_vec()),
        ("default/cred/registry", CREDENTIAL.to_vec()),
        (
            "default/sign/jwk",
            make::public_jwk(&signer).to_string().into_bytes(),
        ),
    ] {
        options.resources.insert(path.into(), value);
    }
    let stats = Arc::clone(&options.stats);
    let kbs = RunningKbs::start(options, "127.0.0.1:0", None).expect("KBS");
    let aa = Aa::start(dir.path(), &kbs.url(), &cvm).await;
    let credential_path = dir.path().join("cdh-root/kbs/registry-auth.json");
    let toml = cdh_toml(
        dir.path(),
        &kbs.url(),
        &aa.socket,
        &format!(
            "[[credentials]]\nresource_uri = \"kbs:///default/cred/registry\"\npath = \"{}\"\n",
            credential_path.display()
        ),
    );
    let cdh = Cdh::start(dir.path(), &toml);

    // Credentials were written at start, readable by root only.
    assert_eq!(
        std::fs::read(&credential_path).expect("credential"),
        CREDENTIAL
    );
    let mode = std::fs::metadata(&credential_path)
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "credential mode {mode:o}");

    let raw = cdh.connect().await;
    let resources = GetResourceServiceClient::new(raw.clone());
    assert_eq!(
        get(&resources, "kbs:///default/key/pod")
            .await
            .expect("resource"),
        SECRET
    );
    for _ in 0..100 {
        assert_eq!(
            get(&resources, "kbs://any-host:8080/default/key/pod")
                .await
                .expect("resource"),
            SECRET
        );
    }
    assert_eq!(
        stats.attestations.load(Ordering::Relaxed),
        1,
        "one attestation served the credential and 101 fetches"
    );
    assert!(stats.resources.load(Ordering::Relaxed) >= 102);

    // Refusals, each with its status.
    let err = get(&resources, "kbs:///default/key/missing")
        .await
        .expect_err("missing");
    assert_eq!(code(&err), ttrpc::Code::NOT_FOUND, "{err:?}");
    let err = get(&resources, "kbs:///default/../etc")
        .await
        .expect_err("bad URI");
    assert_eq!(code(&err), ttrpc::Code::INVALID_ARGUMENT, "{err:?}");

    // Sealed secrets: vault and envelope, verified with a key from the KBS or from a file.
    let sealed_client = SealedSecretServiceClient::new(raw.clone());
    let vault = make::seal(
        &make::vault("kbs:///default/key/pod"),
        &signer,
        "kbs:///default/sign/jwk",
    );
    assert_eq!(unseal(&sealed_client, &vault).await.expect("vault"), SECRET);
    let envelope = make::seal(
        &make::envelope(&KEK, "kbs:///default/key/kek", ENVELOPE_SECRET).expect("envelope"),
        &signer,
        "kbs:///default/sign/jwk",
    );
    assert_eq!(
        unseal(&sealed_client, &envelope).await.expect("envelope"),
        ENVELOPE_SECRET
    );
    std::fs::create_dir_all(dir.path().join("keys")).expect("keys dir");
    std::fs::write(
        dir.path().join("keys/local-key"),
        make::public_jwk(&signer).to_string(),
    )
    .expect("local key");
    let local = make::seal(&make::vault("kbs:///default/key/pod"), &signer, "local-key");
    assert_eq!(
        unseal(&sealed_client, &local).await.expect("file kid"),
        SECRET
    );

    let intruder = make::generate_key().expect("key");
    let forged = make::seal(
        &make::vault("kbs:///default/key/pod"),
        &intruder,
        "kbs:///default/sign/jwk",
    );
    let err = unseal(&sealed_client, &forged).await.expect_err("forged");
    assert_eq!(code(&err), ttrpc::Code::PERMISSION_DENIED, "{err:?}");
    for (bad, needle) in [
        ("sealed.not-a-jws", "3 parts"),
        ("plaintext", "does not start"),
        (
            &make::seal(
                &make::vault("kbs:///default/key/pod"),
                &signer,
                "../etc/key",
            )[..],
            "neither a kbs:// URI nor a file name",
        ),
    ] {
        let err = unseal(&sealed_client, bad).await.expect_err(needle);
        assert_eq!(code(&err), ttrpc::Code::INVALID_ARGUMENT, "{err:?}");
        assert!(format!("{err:?}").contains(needle), "{needle}: {err:?}");
    }

    // UnWrapKey: a layer key wrapped with the KBS's key-encryption key.
    let layer_key = [0x11u8; 32];
    let iv = [0x22u8; 12];
    let wrapped = aes_gcm::Aes256Gcm::new_from_slice(&KEK)
        .expect("key")
        .encrypt(&aes_gcm::Nonce::from(iv), &layer_key[..])
        .expect("wrap");
    let packet = json!({"kid": "kbs:///default/key/kek", "wrapped_data": STANDARD.encode(&wrapped),
        "iv": STANDARD.encode(iv), "wrap_type": "A256GCM"});
    let request = json!({"op": "keyunwrap", "keywrapparams": {},
        "keyunwrapparams": {"dc": null, "annotation": STANDARD.encode(packet.to_string())}});
    let reply = unwrap_key(&raw, &request).await.expect("UnWrapKey");
    let reply: Value = serde_json::from_slice(&reply).expect("JSON");
    let key: Vec<u8> =
        serde_json::from_value(reply["keyunwrapresults"]["optsdata"].clone()).expect("bytes");
    assert_eq!(key, layer_key);

    // PullImage is served (tests/image_pull.rs); a request without a bundle path is refused
    // before anything is fetched.
    let err = ImagePullServiceClient::new(raw.clone())
        .pull_image(
            ctx(),
            &ImagePullRequest {
                image_url: "docker.io/library/busybox".into(),
                ..Default::default()
            },
        )
        .await
        .expect_err("image pull");
    assert_eq!(code(&err), ttrpc::Code::INVALID_ARGUMENT, "{err:?}");
    assert!(format!("{err:?}").contains("bundle path"), "{err:?}");
    // What is not served says so.
    let err = SecureMountServiceClient::new(raw)
        .secure_mount(
            ctx(),
            &SecureMountRequest {
                volume_type: "alibaba-cloud-oss".into(),
                options: HashMap::new(),
                mount_point: "/mnt/x".into(),
                ..Default::default()
            },
        )
        .await
        .expect_err("oss");
    assert_eq!(code(&err), ttrpc::Code::UNIMPLEMENTED, "{err:?}");

    // No secret, credential, key or token reached the log.
    let log = cdh.log_text();
    assert!(log.contains("confidential data hub serving"), "{log}");
    assert!(
        log.contains("INSECURE") && log.contains("plain HTTP"),
        "the plain-HTTP opt-in must warn: {log}"
    );
    for (what, needle) in [
        ("resource", String::from_utf8_lossy(SECRET).to_string()),
        (
            "envelope secret",
            String::from_utf8_lossy(ENVELOPE_SECRET).to_string(),
        ),
        ("credential", "c2VjcmV0".to_string()),
        ("KEK", STANDARD.encode(KEK)),
    ] {
        assert!(!log.contains(&needle), "the {what} leaked into the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kbs_or_agent_down_is_a_clear_bounded_error() {
    let dir = ScratchDir::new("cdh-down").expect("scratch");
    let cvm = SimulatedCvm::start(CvmOptions::new(Flavour::Snp, dir.path())).expect("CVM");
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let dead_url = format!("http://127.0.0.1:{dead}");
    let aa = Aa::start(dir.path(), &dead_url, &cvm).await;
    let cdh = Cdh::start(dir.path(), &cdh_toml(dir.path(), &dead_url, &aa.socket, ""));
    let resources = GetResourceServiceClient::new(cdh.connect().await);
    let started = Instant::now();
    let err = get(&resources, "kbs:///default/key/pod")
        .await
        .expect_err("KBS down");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(code(&err), ttrpc::Code::UNAVAILABLE, "{err:?}");
    assert!(format!("{err:?}").contains("auth request to"), "{err:?}");
    drop(cdh);

    // No attestation agent at all.
    let sub = dir.path().join("no-aa");
    std::fs::create_dir_all(&sub).expect("dir");
    let cdh = Cdh::start(
        &sub,
        &cdh_toml(&sub, &dead_url, &sub.join("missing.sock"), ""),
    );
    let resources = GetResourceServiceClient::new(cdh.connect().await);
    let err = get(&resources, "kbs:///default/key/pod")
        .await
        .expect_err("AA down");
    assert_eq!(code(&err), ttrpc::Code::UNAVAILABLE, "{err:?}");
    assert!(
        format!("{err:?}").contains("cannot reach the attestation agent"),
        "{err:?}"
    );
}

/// `api-server-rest` on a free loopback port; its log in `dir/rest.log`.
struct RestServer {
    child: Child,
    url: String,
    log: PathBuf,
}

impl RestServer {
    fn start(dir: &Path, features: &str, aa_socket: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let log = dir.join(format!("rest-{features}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_api-server-rest"))
            .args(["-b", &format!("127.0.0.1:{port}"), "-f", features])
            .arg("-c")
            .arg(format!("unix://{}/cdh.sock", dir.display()))
            .arg("-a")
            .arg(format!("unix://{}", aa_socket.display()))
            .args(["--timeout-secs", "10", "--log-format", "json"])
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("api-server-rest starts");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "REST server not listening"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        }
    }
}

impl Drop for RestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_endpoint_for_containers() {
    let dir = ScratchDir::new("cdh-rest").expect("scratch");
    let cvm = SimulatedCvm::start(CvmOptions::new(Flavour::Snp, dir.path())).expect("CVM");
    let mut options = KbsOptions::for_cvm(&cvm, None).expect("KBS options");
    options
        .resources
        .insert("default/key/pod".into(), SECRET.to_vec());
    let stats = Arc::clone(&options.stats);
    let kbs = RunningKbs::start(options, "127.0.0.1:0", None).expect("KBS");
    let aa = Aa::start(dir.path(), &kbs.url(), &cvm).await;
    let _cdh = Cdh::start(
        dir.path(),
        &cdh_toml(dir.path(), &kbs.url(), &aa.socket, ""),
    );
    let rest = RestServer::start(dir.path(), "all", &aa.socket);
    let http = peerpod_tests::http::client();
    let fetch = |path: &str| {
        let req = http.get(format!("{}{path}", rest.url));
        async move {
            let resp = req.send().await.expect("HTTP");
            let status = resp.status().as_u16();
            let kind = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            (status, kind, resp.bytes().await.expect("body").to_vec())
        }
    };

    let (status, kind, body) = fetch("/cdh/resource/default/key/pod").await;
    assert_eq!((status, kind.as_str()), (200, "application/octet-stream"));
    assert_eq!(body, SECRET);
    for _ in 0..20 {
        assert_eq!(fetch("/cdh/resource/default/key/pod").await.2, SECRET);
    }
    assert_eq!(stats.attestations.load(Ordering::Relaxed), 1);
    let (status, _, body) = fetch("/cdh/resource/default/key/missing").await;
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    assert_eq!(fetch("/cdh/resource/default/key").await.0, 404);
    assert_eq!(fetch("/cdh/resource/default/key/bad%20tag").await.0, 400);

    let (status, _, body) = fetch("/aa/token?token_type=kbs").await;
    assert_eq!(status, 200);
    let token: Value = serde_json::from_slice(&body).expect("token JSON");
    assert!(
        token["token"]
            .as_str()
            .is_some_and(|t| t.split('.').count() == 3)
    );
    assert_eq!(fetch("/aa/token").await.0, 400);
    let (status, _, body) = fetch("/aa/evidence?runtime_data=nonce-123").await;
    assert_eq!(status, 200);
    let evidence: Value = serde_json::from_slice(&body).expect("evidence JSON");
    assert_eq!(
        evidence["tpm_quote"]["pcrs"].as_array().map(Vec::len),
        Some(24)
    );
    assert_eq!(
        fetch("/aa/evidence?runtime_data=***&encoding=base64")
            .await
            .0,
        400
    );
    let (status, _, body) = fetch("/info").await;
    assert_eq!(status, 200);
    let info: Value = serde_json::from_slice(&body).expect("info");
    assert_eq!(info["tee"], "az-snp-vtpm");
    assert_eq!(info["feature"], "all");
    assert_eq!(fetch("/nowhere").await.0, 404);

    let aael = http
        .post(format!("{}/aa/aael", rest.url))
        .body(r#"{"domain": "example.org", "operation": "start", "content": "container a"}"#)
        .send()
        .await
        .expect("AAEL");
    assert_eq!(aael.status().as_u16(), 200);
    let reply: Value = aael.json().await.expect("JSON");
    assert_eq!(reply["success"], "true", "{reply}");
    let bad = http
        .post(format!("{}/aa/aael", rest.url))
        .body("not json")
        .send()
        .await
        .expect("AAEL");
    assert_eq!(bad.status().as_u16(), 400);
    assert_eq!(
        http.post(format!("{}/cdh/resource/default/key/pod", rest.url))
            .send()
            .await
            .expect("POST")
            .status()
            .as_u16(),
        405
    );

    // A resource-only endpoint does not serve the agent.
    let limited = RestServer::start(dir.path(), "resource", &aa.socket);
    let resp = http
        .get(format!("{}/aa/token?token_type=kbs", limited.url))
        .send()
        .await
        .expect("HTTP");
    assert_eq!(resp.status().as_u16(), 404);
    assert!(
        resp.text()
            .await
            .expect("body")
            .contains("Attestation Feature Not Enabled")
    );

    let logs = std::fs::read_to_string(&rest.log).expect("log");
    assert!(logs.contains("api-server-rest serving"), "{logs}");
    let secret = String::from_utf8_lossy(SECRET).to_string();
    assert!(
        !logs.contains(&secret),
        "the resource leaked into the REST log"
    );
    assert!(
        !logs.contains("nonce-123"),
        "a query string leaked into the REST log"
    );
}
