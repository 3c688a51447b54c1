//! The attestation agent against the local KBS and the simulated Azure CVM: tokens and
//! resources for every TEE, initdata binding, caching and single-flight attestation, and the
//! failure modes a pod VM meets (KBS down, slow, answering garbage, wrong CA).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use attestation_agent::attester::{Attester, Sample};
use attestation_agent::kbs::KeyAlgorithm;
use attestation_agent::{AaError, AttestationAgent};
use peerpod_policy::initdata::InitData;
use peerpod_tests::cvm::Flavour;
use peerpod_tests::kbs::{RunningKbs, TlsFiles};
use peerpod_tpm::{PcrBank, Tpm};
use serde_json::Value;

mod common;
use common::*;

#[tokio::test]
async fn sample_token_and_resource() {
    let kbs = RunningKbs::start(kbs_options(None), "127.0.0.1:0", None).expect("KBS");
    let aa = sample_aa(&aa_config(&kbs.url(), None));
    assert_eq!(aa.tee(), "sample");
    let reply = aa.get_token("kbs").await.expect("token");
    assert_eq!(use_token(&kbs, &reply).await, SECRET);
    let secret = aa
        .kbs()
        .expect("kbs")
        .resource("default/key/pod")
        .await
        .expect("resource");
    assert_eq!(secret.as_slice(), SECRET);
    assert_eq!(
        aa.kbs().expect("kbs").attestations(),
        1,
        "the resource reused the token"
    );
    let err = aa.get_token("vault").await.expect_err("unknown type");
    assert!(err.to_string().contains("unsupported token type"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_get_tokens_attest_once() {
    let options = kbs_options(None);
    let stats = Arc::clone(&options.stats);
    let kbs = RunningKbs::start(options, "127.0.0.1:0", None).expect("KBS");
    let aa = Arc::new(sample_aa(&aa_config(&kbs.url(), None)));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let aa = Arc::clone(&aa);
        tasks.push(tokio::spawn(async move { aa.get_token("kbs").await }));
    }
    let mut tokens = std::collections::BTreeSet::new();
    for t in tasks {
        let reply = t.await.expect("task").expect("token");
        let v: Value = serde_json::from_slice(&reply).expect("json");
        tokens.insert(v["token"].as_str().expect("token").to_string());
    }
    assert_eq!(tokens.len(), 1, "every caller got the same token");
    assert_eq!(
        stats.attestations.load(Ordering::Relaxed),
        1,
        "the KBS saw one attestation"
    );
    assert_eq!(aa.kbs().expect("kbs").attestations(), 1);
}

#[tokio::test]
async fn token_expiry_triggers_reattestation() {
    let mut options = kbs_options(None);
    options.token_lifetime = Duration::from_secs(3);
    let stats = Arc::clone(&options.stats);
    let kbs = RunningKbs::start(options, "127.0.0.1:0", None).expect("KBS");
    let mut config = aa_config(&kbs.url(), None);
    config.token_refresh_margin = Duration::from_secs(1);
    let aa = sample_aa(&config);
    let first = aa.get_token("kbs").await.expect("token");
    let again = aa.get_token("kbs").await.expect("cached");
    assert_eq!(first, again, "a fresh token is reused");
    assert_eq!(stats.attestations.load(Ordering::Relaxed), 1);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let renewed = aa.get_token("kbs").await.expect("renewed");
    assert_ne!(first, renewed, "a token about to expire is replaced");
    assert_eq!(stats.attestations.load(Ordering::Relaxed), 2);
    // A KBS that forgets the token (it expired there first) gets exactly one re-attestation.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let secret = aa
        .kbs()
        .expect("kbs")
        .resource("default/key/pod")
        .await
        .expect("resource");
    assert_eq!(secret.as_slice(), SECRET);
    assert_eq!(stats.attestations.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn refusals_reattest_only_when_a_fresh_token_may_pass() {
    let kbs = RunningKbs::start(kbs_options(None), "127.0.0.1:0", None).expect("KBS");
    let aa = sample_aa(&aa_config(&kbs.url(), None));
    let client = aa.kbs().expect("kbs");
    client.resource("default/key/pod").await.expect("resource");
    assert_eq!(client.attestations(), 1);
    // A missing resource (Trustee: 401 PluginInternalError) is no reason to attest again.
    let err = client
        .resource("default/key/absent")
        .await
        .expect_err("absent");
    let text = peerpod_kbs_client::error_chain(&err);
    assert!(text.contains("PluginInternalError"), "{text}");
    assert_eq!(
        client.attestations(),
        1,
        "no re-attestation for a missing resource"
    );
    // A rotated signing key (401 TokenVerifierError) is: exactly once, within the call.
    kbs.rotate_token_key().expect("rotate");
    let secret = client.resource("default/key/pod").await.expect("resource");
    assert_eq!(secret.as_slice(), SECRET);
    assert_eq!(client.attestations(), 2);
}

#[tokio::test]
async fn every_tee_key_algorithm_works() {
    let kbs = RunningKbs::start(kbs_options(None), "127.0.0.1:0", None).expect("KBS");
    for alg in [
        KeyAlgorithm::EcP256,
        KeyAlgorithm::EcP521,
        KeyAlgorithm::Rsa,
    ] {
        let mut config = aa_config(&kbs.url(), None);
        if let Some(k) = config.kbs.as_mut() {
            k.tee_key_algorithm = alg;
        }
        let aa = sample_aa(&config);
        let reply = aa.get_token("kbs").await.expect("token");
        assert_eq!(use_token(&kbs, &reply).await, SECRET, "{alg:?}");
    }
}

async fn azure_round(flavour: Flavour, alg: &str, name: &str) {
    let (_dir, cvm) = cvm(flavour, name);
    let kbs = RunningKbs::start(kbs_options(Some(&cvm)), "127.0.0.1:0", None).expect("KBS");
    let doc = initdata(alg);
    let config = aa_config(&kbs.url(), Some(&cvm));
    let aa = AttestationAgent::new(&config, Some(doc.clone())).expect("AA");
    assert_eq!(aa.tee(), flavour.tee());
    let digest = InitData::parse(doc.as_bytes()).expect("initdata").digest();
    aa.bind_init_data(digest.as_bytes()).await.expect("bind");
    let started = Instant::now();
    let reply = aa.get_token("kbs").await.expect("token");
    eprintln!("{name}: first GetToken {:?}", started.elapsed());
    assert_eq!(use_token(&kbs, &reply).await, SECRET);
    let mut tpm = Tpm::open(&cvm.tpm_spec()).expect("vTPM");
    let pcr8 = tpm
        .pcr_read(PcrBank::Sha256, &[8])
        .expect("PCR 8")
        .pop()
        .expect("value");
    assert_eq!(
        pcr8,
        digest.azure_vtpm_pcr8(),
        "{alg}: PCR 8 holds the first 32 bytes' extension"
    );

    // A restarted agent binds again: PCR 8 is not extended twice, attestation still passes.
    drop(aa);
    let aa = AttestationAgent::new(&config, Some(doc.clone())).expect("AA again");
    aa.bind_init_data(digest.as_bytes())
        .await
        .expect("bind again");
    let again = tpm
        .pcr_read(PcrBank::Sha256, &[8])
        .expect("PCR 8")
        .pop()
        .expect("value");
    assert_eq!(again, pcr8, "restart must not extend PCR 8 again");
    let reply = aa.get_token("kbs").await.expect("token after restart");
    assert_eq!(use_token(&kbs, &reply).await, SECRET);

    // Other initdata cannot be bound over it.
    let other = InitData::parse(
        initdata("sha256")
            .replace("http://kbs", "http://evil")
            .as_bytes(),
    )
    .expect("initdata")
    .digest();
    let err = aa
        .bind_init_data(other.as_bytes())
        .await
        .expect_err("other initdata");
    assert!(err.to_string().contains("initdata mismatch"), "{err}");
}

#[tokio::test]
async fn az_snp_vtpm_with_sha256_initdata() {
    azure_round(Flavour::Snp, "sha256", "aa-snp-256").await;
}

#[tokio::test]
async fn az_snp_vtpm_with_sha384_initdata() {
    azure_round(Flavour::Snp, "sha384", "aa-snp-384").await;
}

#[tokio::test]
async fn az_tdx_vtpm_with_sha512_initdata() {
    azure_round(Flavour::Tdx, "sha512", "aa-tdx-512").await;
}

fn assert_bounded(err: &AaError, started: Instant, limit: Duration, needle: &str) {
    assert!(
        started.elapsed() < limit,
        "took {:?}: {err}",
        started.elapsed()
    );
    let text = peerpod_kbs_client::error_chain(err);
    assert!(text.contains(needle), "expected {needle:?} in: {text}");
}

#[tokio::test]
async fn kbs_down_slow_or_garbage_fails_in_bounded_time() {
    // Down: nothing listens.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let mut config = aa_config(&format!("http://127.0.0.1:{port}"), None);
    config.kbs_request_timeout = Duration::from_secs(2);
    let started = Instant::now();
    let err = sample_aa(&config).get_token("kbs").await.expect_err("down");
    assert_bounded(&err, started, Duration::from_secs(10), "auth request to");

    // Slow: accepts connections and never answers.
    let slow = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let slow_port = slow.local_addr().expect("addr").port();
    let _hold = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in slow.incoming().flatten() {
            conns.push(c);
        }
    });
    let mut config = aa_config(&format!("http://127.0.0.1:{slow_port}"), None);
    config.kbs_request_timeout = Duration::from_secs(1);
    config.kbs_attempts = 2;
    let started = Instant::now();
    let err = sample_aa(&config).get_token("kbs").await.expect_err("slow");
    assert_bounded(&err, started, Duration::from_secs(8), "auth request to");

    // Garbage: answers 200 with something that is not a challenge, or errors without a body.
    let app = axum::Router::new()
        .route(
            "/kbs/v0/auth",
            axum::routing::post(|| async { "<html>not json</html>" }),
        )
        .fallback(|| async { (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "boom") });
    let garbage =
        peerpod_tests::http::ServerThread::spawn("garbage", "127.0.0.1:0", move |l, stop| {
            peerpod_tests::http::serve_axum(l, app, stop)
        })
        .expect("server");
    let config = aa_config(&format!("http://{}", garbage.addr()), None);
    let started = Instant::now();
    let err = sample_aa(&config)
        .get_token("kbs")
        .await
        .expect_err("garbage");
    assert_bounded(&err, started, Duration::from_secs(5), "not a challenge");
}

#[tokio::test]
async fn https_kbs_with_configured_ca_and_wrong_ca() {
    let ca = peerpod_tests::cvm::certs::TlsCa::generate(&["localhost"]).expect("CA");
    let tls = TlsFiles {
        cert_pem: ca.cert_pem.clone(),
        key_pem: ca.key_pem.clone(),
    };
    let kbs = RunningKbs::start(kbs_options(None), "127.0.0.1:0", Some(tls)).expect("KBS");
    let mut config = aa_config(&kbs.url(), None);
    if let Some(k) = config.kbs.as_mut() {
        k.cert = Some(ca.ca_pem.clone());
    }
    let reply = sample_aa(&config)
        .get_token("kbs")
        .await
        .expect("token over HTTPS");
    assert!(!reply.is_empty());
    let other = peerpod_tests::cvm::certs::TlsCa::generate(&["localhost"]).expect("CA");
    if let Some(k) = config.kbs.as_mut() {
        k.cert = Some(other.ca_pem);
    }
    let started = Instant::now();
    let err = sample_aa(&config)
        .get_token("kbs")
        .await
        .expect_err("wrong CA");
    assert_bounded(&err, started, Duration::from_secs(10), "auth request to");
}

#[tokio::test]
async fn evidence_and_tee_type_through_the_api() {
    let (_dir, cvm) = cvm(Flavour::Snp, "aa-evidence");
    let config = aa_config("http://unused", Some(&cvm));
    let aa = AttestationAgent::new(&config, None).expect("AA");
    let evidence = aa.get_evidence(&[0x11; 48]).await.expect("evidence");
    let v: Value = serde_json::from_slice(&evidence).expect("JSON");
    // Version 2: the HCL report was made after the report data was written, so its user-data
    // starts with it (Trustee checks this for version 2).
    assert_eq!(v["version"], 2);
    let parsed: peerpod_tee::evidence::AzSnpEvidence =
        serde_json::from_value(v.clone()).expect("az-snp-vtpm evidence");
    let user_data = peerpod_tee::hcl::HclReport::parse(&parsed.hcl_report)
        .expect("HCL report")
        .claims()
        .expect("claims")
        .user_data_bytes()
        .expect("user-data")
        .expect("user-data present");
    assert!(
        user_data.starts_with(&[0x11; 48]),
        "{}",
        hex::encode(&user_data)
    );
    let hw = peerpod_tee::hcl::HclReport::parse(&parsed.hcl_report).expect("HCL report");
    let report = peerpod_tee::snp::SnpReport::parse(&hw.hw_report).expect("SNP report");
    assert_eq!(report.version, 3);
    assert_eq!(
        report.generation().expect("generation"),
        peerpod_tee::snp::Generation::Milan
    );
    assert!(v["vcek"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(v["tpm_quote"]["pcrs"].as_array().map(Vec::len), Some(24));
    let err = aa.get_evidence(&[0; 65]).await.expect_err("too long");
    assert!(err.to_string().contains("at most 64"), "{err}");
    let sample = Sample::default();
    assert_eq!(sample.tee(), "sample");
}

#[tokio::test]
async fn coco_as_token_posts_evidence_and_returns_the_reply() {
    use base64::Engine;
    let seen = Arc::new(std::sync::Mutex::new(None::<Value>));
    let record = Arc::clone(&seen);
    let app = axum::Router::new().route(
        "/attestation",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let record = Arc::clone(&record);
            async move {
                *record.lock().expect("lock") = Some(body);
                "eyJhbGciOiJub25lIn0.e30."
            }
        }),
    );
    let service = peerpod_tests::http::ServerThread::spawn("as", "127.0.0.1:0", move |l, stop| {
        peerpod_tests::http::serve_axum(l, app, stop)
    })
    .expect("server");
    let mut config = aa_config("http://unused", None);
    config.coco_as_url = Some(format!("http://{}", service.addr()));
    let token = sample_aa(&config)
        .get_token("coco_as")
        .await
        .expect("token");
    assert_eq!(token, b"eyJhbGciOiJub25lIn0.e30.");
    let body = seen.lock().expect("lock").take().expect("a request");
    let request = &body["verification_requests"][0];
    assert_eq!(request["tee"], "sample");
    let evidence = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(request["evidence"].as_str().expect("evidence"))
        .expect("base64url");
    let evidence: Value = serde_json::from_slice(&evidence).expect("evidence JSON");
    assert!(evidence.is_object(), "{evidence}");
    assert_eq!(body["policy_ids"], serde_json::json!([]));

    // A failing service is an error naming its status, not a token.
    let mut config = aa_config("http://unused", None);
    config.coco_as_url = Some(format!("http://{}/nowhere", service.addr()));
    let err = sample_aa(&config)
        .get_token("coco_as")
        .await
        .expect_err("404");
    assert!(err.to_string().contains("404"), "{err}");
}

#[tokio::test]
async fn https_kbs_with_a_self_signed_certificate() {
    for ca in [false, true] {
        let tls = peerpod_tests::cvm::certs::TlsCa::self_signed(&["localhost"], ca).expect("cert");
        let files = TlsFiles {
            cert_pem: tls.cert_pem.clone(),
            key_pem: tls.key_pem.clone(),
        };
        let kbs = RunningKbs::start(kbs_options(None), "127.0.0.1:0", Some(files)).expect("KBS");
        let mut config = aa_config(&kbs.url(), None);
        if let Some(k) = config.kbs.as_mut() {
            k.cert = Some(tls.ca_pem.clone());
        }
        let aa = sample_aa(&config);
        let secret = aa
            .kbs()
            .expect("kbs")
            .resource("default/key/pod")
            .await
            .unwrap_or_else(|e| panic!("self-signed (CA:{ca}) KBS certificate: {e}"));
        assert_eq!(secret.as_slice(), SECRET);
    }
}

/// The attestation service is never followed through a redirect: a 307 (which would re-POST
/// the evidence) to another origin is an error naming it, and the other origin gets nothing.
#[tokio::test]
async fn a_coco_as_redirect_is_not_followed() {
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = Arc::clone(&hits);
    let other = axum::Router::new().fallback(move || {
        count.fetch_add(1, Ordering::SeqCst);
        async { "eyJhbGciOiJub25lIn0.e30." }
    });
    let other = peerpod_tests::http::ServerThread::spawn("other", "127.0.0.1:0", move |l, stop| {
        peerpod_tests::http::serve_axum(l, other, stop)
    })
    .expect("server");
    let target = format!("http://{}/attestation", other.addr());
    let app = axum::Router::new().fallback(move || {
        let target = target.clone();
        async move { axum::response::Redirect::temporary(&target) }
    });
    let service = peerpod_tests::http::ServerThread::spawn("as", "127.0.0.1:0", move |l, stop| {
        peerpod_tests::http::serve_axum(l, app, stop)
    })
    .expect("server");
    let mut config = aa_config("http://unused", None);
    config.coco_as_url = Some(format!("http://{}", service.addr()));
    let err = sample_aa(&config)
        .get_token("coco_as")
        .await
        .expect_err("a redirect is refused");
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "answered 307 with a redirect to http://{}, not followed",
            other.addr()
        )),
        "{text}"
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the evidence went elsewhere"
    );
}
