//! A token the KBS refuses is replaced within the same call: the `confidential-data-hub` binary,
//! the attestation agent on its socket (a simulated Azure SNP CVM) and the local KBS answering
//! with the statuses of the pinned Trustee (401 for every refusal, the kind in the `type`).
//!
//! Three ways a held token goes bad — the KBS rotates its token-signing key, an admin registers
//! a missing reference value, an admin fixes the attestation policy — and in each the next
//! `GetResource` succeeds with exactly one more attestation. A denial that a fresh token does
//! not cure is `PERMISSION_DENIED` naming the resource and the resource policy, after exactly
//! one re-attestation; a missing resource is `NOT_FOUND` with none.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use peerpod_protocols::cdh::api_ttrpc::GetResourceServiceClient;
use peerpod_tests::cvm::{CvmOptions, Flavour, SimulatedCvm};
use peerpod_tests::kbs::client::KbsAdmin;
use peerpod_tests::kbs::{AdminAuth, KbsOptions, RunningKbs};
use peerpod_tests::scratch::ScratchDir;
use serde_json::json;

mod common;
use common::*;

const SECRET: &[u8] = b"rotated, fixed and still delivered";
const URI: &str = "kbs:///default/key/pod";

fn message(e: &ttrpc::Error) -> String {
    match e {
        ttrpc::Error::RpcStatus(s) => s.message().to_string(),
        other => format!("{other:?}"),
    }
}

/// Fetches, expecting success, and returns how many attestations the KBS saw by then.
async fn fetch_ok(client: &GetResourceServiceClient, attestations: &AtomicU64) -> u64 {
    let got = get(client, URI).await.expect("resource");
    assert_eq!(got, SECRET);
    attestations.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tokens_are_replaced_within_the_call() {
    let dir = ScratchDir::new("cdh-fresh").expect("scratch");
    let cvm = SimulatedCvm::start(CvmOptions::new(Flavour::Snp, dir.path())).expect("CVM");
    let mut options = KbsOptions::for_cvm(&cvm, None).expect("KBS options");
    options.admin = AdminAuth::InsecureAllowAll;
    options
        .resources
        .insert("default/key/pod".into(), SECRET.to_vec());
    // The admin has not registered the launch measurement yet.
    let measurement = options
        .reference_values
        .remove("snp_launch_measurement")
        .expect("reference value");
    let attestations = Arc::clone(&options.stats);
    let kbs = RunningKbs::start(options, "127.0.0.1:0", None).expect("KBS");
    let admin = KbsAdmin::new(&kbs.url(), None).expect("admin");
    let aa = Aa::start(dir.path(), &kbs.url(), &cvm).await;
    let cdh = Cdh::start(
        dir.path(),
        &cdh_toml(dir.path(), &kbs.url(), &aa.socket, ""),
    );
    let client = GetResourceServiceClient::new(cdh.connect().await);
    let count = || attestations.attestations.load(Ordering::Relaxed);

    // Not affirming: denied, after the one attestation the call needed (a fresh token is not
    // retried). The message names the resource and the policy; nothing calls it a token issue.
    let err = get(&client, URI).await.expect_err("denied");
    assert_eq!(code(&err), ttrpc::Code::PERMISSION_DENIED, "{err:?}");
    let text = message(&err);
    assert!(
        text.contains(URI) && text.contains("resource policy") && text.contains("PolicyDeny"),
        "{text}"
    );
    assert_eq!(count(), 1);

    admin
        .set_reference_values(&json!({"snp_launch_measurement": measurement}))
        .await
        .expect("reference value");
    // 1. The reference value is registered: the held token still carries the old appraisal,
    //    is denied, and is replaced within this call.
    assert_eq!(fetch_ok(&client, &attestations.attestations).await, 2);
    // The new token is kept: no attestation for the next fetches.
    assert_eq!(fetch_ok(&client, &attestations.attestations).await, 2);
    // A missing resource is NOT_FOUND (Trustee's PluginInternalError under 401) and costs no
    // attestation.
    let err = get(&client, "kbs:///default/key/absent")
        .await
        .expect_err("absent");
    assert_eq!(code(&err), ttrpc::Code::NOT_FOUND, "{err:?}");
    assert_eq!(count(), 2);

    // 2. The KBS rotates its token-signing key: the held token no longer verifies
    //    (TokenVerifierError) and is replaced within the call.
    kbs.rotate_token_key().expect("rotate");
    assert_eq!(fetch_ok(&client, &attestations.attestations).await, 3);

    // 3. A broken attestation policy lands, and the key rotates again: the re-attestation
    //    yields a denied token, reported after exactly one re-attestation (bounded).
    admin
        .set_attestation_policy(
            "package policy\nimport rego.v1\ndefault hardware := 97\n\
             default executables := 33\ndefault configuration := 36\n",
        )
        .await
        .expect("broken policy");
    kbs.rotate_token_key().expect("rotate");
    let err = get(&client, URI).await.expect_err("denied");
    assert_eq!(code(&err), ttrpc::Code::PERMISSION_DENIED, "{err:?}");
    assert_eq!(count(), 4);
    //    The admin fixes the policy: the next call replaces the denied token within the call.
    admin
        .set_attestation_policy(peerpod_tests::kbs::appraisal::DEFAULT_ATTESTATION_POLICY)
        .await
        .expect("fixed policy");
    assert_eq!(fetch_ok(&client, &attestations.attestations).await, 5);
    assert_eq!(fetch_ok(&client, &attestations.attestations).await, 5);

    // No token or key in the CDH's log.
    let log = cdh.log_text();
    assert!(log.contains("attesting again"), "{log}");
    assert!(!log.contains("eyJ"), "a JWT in the log:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_kbs_is_bounded_by_kbs_timeout_secs() {
    let dir = ScratchDir::new("cdh-hung").expect("scratch");
    let cvm = SimulatedCvm::start(CvmOptions::new(Flavour::Snp, dir.path())).expect("CVM");
    // A "KBS" that accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            held.push(conn);
        }
    });
    let aa = Aa::start(dir.path(), &url, &cvm).await;
    // Each request may take 5 s (request_timeout_secs); the whole fetch only 2.
    let toml = cdh_toml(dir.path(), &url, &aa.socket, "").replace(
        "request_timeout_secs = 5\n",
        "request_timeout_secs = 5\nkbs_timeout_secs = 2\n",
    );
    let cdh = Cdh::start(dir.path(), &toml);
    let client = GetResourceServiceClient::new(cdh.connect().await);
    let started = std::time::Instant::now();
    let err = get(&client, URI).await.expect_err("hung KBS");
    let took = started.elapsed();
    assert_eq!(code(&err), ttrpc::Code::UNAVAILABLE, "{err:?}");
    assert!(message(&err).contains("kbs_timeout_secs"), "{err:?}");
    assert!(
        took >= std::time::Duration::from_secs(2) && took < std::time::Duration::from_secs(5),
        "{took:?}"
    );
}

const INITDATA: &str =
    "version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n\"note\" = \"cdh\"\n";

/// The attestation agent on `dir/aa.sock`, having bound `initdata` into PCR 8.
async fn aa_bound_to(dir: &std::path::Path, kbs_url: &str, cvm: &SimulatedCvm) -> Aa {
    use sha2::Digest;
    let aa = Aa::start(dir, kbs_url, cvm).await;
    let channel = ttrpc::r#async::Client::connect(&format!("unix://{}", aa.socket.display()))
        .await
        .expect("AA");
    let client =
        peerpod_protocols::aa::attestation_agent_ttrpc::AttestationAgentServiceClient::new(channel);
    client
        .bind_init_data(
            ctx(),
            &peerpod_protocols::aa::attestation_agent::BindInitDataRequest {
                Digest: sha2::Sha256::digest(INITDATA.as_bytes()).to_vec(),
                ..Default::default()
            },
        )
        .await
        .expect("BindInitData");
    aa
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_initdata_goes_into_the_cdhs_attestation() {
    let dir = ScratchDir::new("cdh-initdata").expect("scratch");
    let cvm = SimulatedCvm::start(CvmOptions::new(Flavour::Snp, dir.path())).expect("CVM");
    let mut options = KbsOptions::for_cvm(&cvm, Some(INITDATA.as_bytes())).expect("KBS options");
    options
        .resources
        .insert("default/key/pod".into(), SECRET.to_vec());
    let kbs = RunningKbs::start(options, "127.0.0.1:0", None).expect("KBS");
    let aa = aa_bound_to(dir.path(), &kbs.url(), &cvm).await;

    // The document the TEE was bound to: the KBS recomputes its digest, checks PCR 8, passes.
    std::fs::write(dir.path().join("initdata.toml"), INITDATA).expect("initdata");
    let extra = format!("initdata = \"{}/initdata.toml\"\n", dir.path().display());
    let toml = cdh_toml(dir.path(), &kbs.url(), &aa.socket, "").replace(
        "insecure_http = true\n",
        &format!("insecure_http = true\n{extra}"),
    );
    {
        let cdh = Cdh::start(dir.path(), &toml);
        let client = GetResourceServiceClient::new(cdh.connect().await);
        assert_eq!(get(&client, URI).await.expect("resource"), SECRET);
    }

    // Another document: the KBS's initdata check refuses the attestation, so it was sent.
    std::fs::write(
        dir.path().join("initdata.toml"),
        INITDATA.replace("cdh", "not what was measured"),
    )
    .expect("initdata");
    // The stopped CDH left its socket file behind.
    let _ = std::fs::remove_file(dir.path().join("cdh.sock"));
    let cdh = Cdh::start(dir.path(), &toml);
    let client = GetResourceServiceClient::new(cdh.connect().await);
    let err = get(&client, URI).await.expect_err("other initdata");
    assert_eq!(code(&err), ttrpc::Code::PERMISSION_DENIED, "{err:?}");
    assert!(message(&err).contains("initdata check failed"), "{err:?}");
}
