//! The local KBS against hand-made clients: auth → attest → resource for `sample`,
//! `az-snp-vtpm` and `az-tdx-vtpm` (evidence from the simulated Azure CVM), and every refusal
//! the KBS must make, each for its own reason.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use peerpod_policy::initdata::InitData;
use peerpod_tee::evidence::{AzSnpEvidence, AzTdxEvidence};
use peerpod_tee::hcl::HclReport;
use peerpod_tests::cvm::attester;
use peerpod_tests::cvm::platform::SnpConfig;
use peerpod_tests::cvm::{CvmOptions, Flavour, SimulatedCvm};
use peerpod_tests::kbs::client::{ClientError, KbsAdmin, KbsClient, admin_keypair};
use peerpod_tests::kbs::verifier::{AmdAnchors, TrustAnchors, Verifier, x509};
use peerpod_tests::kbs::{AdminAuth, KbsOptions, RunningKbs};
use peerpod_tests::scratch::ScratchDir;
use peerpod_tpm::Tpm;
use serde_json::{Value, json};

const SECRET_PATH: &str = "default/key/pod-secret";
const SECRET: &[u8] = b"the pod's secret";

const INITDATA: &str = r#"version = "0.1.0"
algorithm = "sha256"

[data]
"aa.toml" = '''
[token_configs.kbs]
url = "http://kbs.example"
'''
"#;

fn verifier_for(cvm: Option<&SimulatedCvm>) -> Verifier {
    let mut anchors = TrustAnchors::default();
    if let Some(cvm) = cvm {
        let a = cvm.trust_anchors().expect("anchors");
        if let Some(pem) = a.amd_chain_pem {
            anchors.amd = Some(AmdAnchors::from_pem(pem.as_bytes()).expect("AMD chain"));
        }
        if let Some(pem) = a.intel_root_pem {
            anchors.intel_roots = vec![x509::from_pem("Intel root", pem.as_bytes()).expect("root")];
        }
    }
    Verifier {
        anchors,
        ..Verifier::default()
    }
}

fn kbs(verifier: Verifier, refs: Value) -> RunningKbs {
    let mut options = KbsOptions::new(verifier);
    options.admin = AdminAuth::InsecureAllowAll;
    options.reference_values =
        serde_json::from_value::<BTreeMap<String, Value>>(refs).expect("refs");
    options
        .resources
        .insert(SECRET_PATH.to_string(), SECRET.to_vec());
    RunningKbs::start(options, "127.0.0.1:0", None).expect("KBS")
}

fn snp_refs() -> Value {
    json!({
        "snp_launch_measurement": [STANDARD.encode(SnpConfig::default().measurement)],
        "snp_min_tcb_microcode": 200,
    })
}

fn tdx_refs() -> Value {
    let m = peerpod_tests::cvm::platform::TdxConfig::default().measurements;
    json!({"mr_td": [hex::encode(m.mr_td)]})
}

fn client(kbs: &RunningKbs) -> KbsClient {
    KbsClient::new(&kbs.url(), peerpod_tests::http::client())
}

fn sample_evidence(report_data: &[u8]) -> Value {
    json!({"svn": "1", "report_data": STANDARD.encode(report_data)})
}

/// The claims of a token (its payload, unverified: the KBS verified it).
fn token_claims(token: &str) -> Value {
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.split('.').nth(1).expect("payload"))
        .expect("base64");
    serde_json::from_slice(&payload).expect("json")
}

/// A whole sample-TEE handshake; returns the token.
async fn attest_sample(c: &KbsClient) -> String {
    let ch = c.auth("sample").await.expect("auth");
    c.attest(&c.attestation(&ch.nonce, sample_evidence(&c.report_data(&ch.nonce)), None))
        .await
        .expect("attest")
}

/// What the guest does for Azure evidence: report data to NV, a fresh report, a quote.
async fn azure_evidence(cvm: &SimulatedCvm, report_data: &[u8], initdata: Option<&str>) -> Value {
    let (hcl, quote) = {
        let mut tpm = Tpm::open(&cvm.tpm_spec()).expect("vTPM");
        if let Some(doc) = initdata {
            let digest = InitData::parse(doc.as_bytes()).expect("initdata").digest();
            attester::extend_initdata(&mut tpm, digest.as_bytes()).expect("PCR 8");
        }
        attester::write_report_data(&mut tpm, report_data).expect("report data");
        let hcl = attester::read_fresh_hcl_report(&mut tpm, report_data, Duration::from_secs(10))
            .expect("report");
        let quote = attester::quote(&mut tpm, report_data).expect("quote");
        (hcl, quote)
    };
    match cvm.flavour() {
        Flavour::Snp => {
            let vcek = attester::fetch_vcek(&cvm.imds_url()).await.expect("VCEK");
            serde_json::to_value(attester::snp_evidence(quote, hcl, vcek)).expect("json")
        }
        Flavour::Tdx => {
            let td_report = HclReport::parse(&hcl).expect("HCL").hw_report;
            let td_quote = attester::fetch_td_quote(&cvm.imds_url(), &td_report)
                .await
                .expect("TD quote");
            serde_json::to_value(attester::tdx_evidence(quote, hcl, td_quote)).expect("json")
        }
    }
}

fn cvm(
    flavour: Flavour,
    name: &str,
    tune: impl FnOnce(&mut CvmOptions),
) -> (ScratchDir, SimulatedCvm) {
    let dir = ScratchDir::new(name).expect("scratch");
    let mut options = CvmOptions::new(flavour, dir.path());
    tune(&mut options);
    let cvm = SimulatedCvm::start(options).expect("simulated CVM");
    (dir, cvm)
}

/// The status and Trustee error type (the statuses of Trustee 33e1bc57, the KBS's default).
fn assert_kind(err: &ClientError, status: u16, kind: &str) {
    assert_eq!(
        (err.status(), err.kind()),
        (Some(status), Some(kind)),
        "{err}"
    );
}

fn assert_refused(err: ClientError, status: u16, needle: &str) {
    assert_eq!(err.status(), Some(status), "{err}");
    assert!(
        err.detail().contains(needle),
        "expected {needle:?} in: {}",
        err.detail()
    );
}

#[tokio::test]
async fn sample_tee_gets_its_resource() {
    let kbs = kbs(
        Verifier::default(),
        json!({"launch_digest": ["abcde"], "svn": ["1"]}),
    );
    let c = client(&kbs);
    let challenge = c.auth("sample").await.expect("auth");
    assert_eq!(STANDARD.decode(&challenge.nonce).expect("base64").len(), 32);
    assert_eq!(challenge.extra_params, json!(""));
    let evidence = sample_evidence(&c.report_data(&challenge.nonce));
    let token = c
        .attest(&c.attestation(&challenge.nonce, evidence, None))
        .await
        .expect("attest");
    assert_eq!(
        c.resource(SECRET_PATH, None).await.expect("resource"),
        SECRET
    );

    // The token alone works too, from a client with no session (Bearer), and its claims are an
    // EAR as Trustee's.
    let other = KbsClient::with_key(&kbs.url(), peerpod_tests::http::client(), c.key);
    assert_eq!(
        other
            .resource(SECRET_PATH, Some(&token))
            .await
            .expect("bearer"),
        SECRET
    );
    let payload = token_claims(&token);
    let cpu = &payload["submods"]["cpu0"];
    assert_eq!(cpu["ear.status"], "affirming");
    assert_eq!(cpu["ear.veraison.annotated-evidence"]["sample"]["svn"], "1");
    assert_eq!(
        cpu["ear.veraison.annotated-evidence"]["runtime_data_claims"]["tee-pubkey"]["kty"],
        "EC"
    );
}

#[tokio::test]
async fn az_snp_vtpm_attests_and_gets_its_resource() {
    let (_dir, cvm) = cvm(Flavour::Snp, "kbs-snp", |_| {});
    let kbs = kbs(verifier_for(Some(&cvm)), snp_refs());
    let c = client(&kbs);
    let challenge = c.auth("az-snp-vtpm").await.expect("auth");
    let evidence = azure_evidence(&cvm, &c.report_data(&challenge.nonce), Some(INITDATA)).await;
    let token = c
        .attest(&c.attestation(&challenge.nonce, evidence, Some(INITDATA)))
        .await
        .expect("attest");
    assert_eq!(
        c.resource(SECRET_PATH, None).await.expect("resource"),
        SECRET
    );
    let payload = token_claims(&token);
    let annotated = &payload["submods"]["cpu0"]["ear.veraison.annotated-evidence"];
    let digest = InitData::parse(INITDATA.as_bytes())
        .expect("initdata")
        .digest();
    assert_eq!(
        annotated["init_data"],
        hex::encode(digest.azure_vtpm_pcr8())
    );
    assert_eq!(
        annotated["init_data_claims"]["aa.toml"]
            .as_str()
            .map(|s| s.contains("kbs.example")),
        Some(true)
    );
    assert_eq!(annotated["az-snp-vtpm"]["reported_tcb_microcode"], "213");
    assert_eq!(payload["submods"]["cpu0"]["ear.status"], "affirming");

    // Once the owner registers the initdata they expect, a guest that booted with other
    // initdata still attests (its PCR 8 matches what it sends) but is not affirmed.
    KbsAdmin::new(&kbs.url(), None)
        .expect("admin")
        .set_reference_values(&json!({"init_data": [hex::encode([0u8; 32])]}))
        .await
        .expect("reference values");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let c = client(&kbs);
    let challenge = c.auth("az-snp-vtpm").await.expect("auth");
    // PCR 8 was extended at "boot" above; the guest does not extend it again.
    let evidence = azure_evidence(&cvm, &c.report_data(&challenge.nonce), None).await;
    let token = c
        .attest(&c.attestation(&challenge.nonce, evidence, Some(INITDATA)))
        .await
        .expect("attest");
    let cpu = &token_claims(&token)["submods"]["cpu0"];
    assert_eq!(cpu["ear.trustworthiness-vector"]["configuration"], 36);
    let err = c
        .resource(SECRET_PATH, None)
        .await
        .expect_err("unexpected initdata");
    assert_kind(&err, 401, "PolicyDeny");
    assert_refused(err, 401, "\"configuration\":36");
}

#[tokio::test]
async fn az_tdx_vtpm_attests_and_gets_its_resource() {
    let (_dir, cvm) = cvm(Flavour::Tdx, "kbs-tdx", |_| {});
    let kbs = kbs(verifier_for(Some(&cvm)), tdx_refs());
    let c = client(&kbs);
    let challenge = c.auth("az-tdx-vtpm").await.expect("auth");
    let evidence = azure_evidence(&cvm, &c.report_data(&challenge.nonce), None).await;
    c.attest(&c.attestation(&challenge.nonce, evidence, None))
        .await
        .expect("attest");
    assert_eq!(
        c.resource(SECRET_PATH, None).await.expect("resource"),
        SECRET
    );
}

#[tokio::test]
async fn protocol_refusals() {
    let kbs = kbs(
        Verifier::default(),
        json!({"launch_digest": ["abcde"], "svn": ["1"]}),
    );
    let c = client(&kbs);

    // Bad protocol version.
    let err = c
        .auth_with_version("sample", "0.3.0")
        .await
        .expect_err("version");
    assert_refused(
        err,
        401,
        "Version Mismatch: expect =0.4.0 while the request is 0.3.0",
    );

    // Attest without a session.
    let err = c
        .attest(&c.attestation("bm9uY2U=", sample_evidence(&[0; 48]), None))
        .await
        .expect_err("no cookie");
    assert_refused(err, 401, "no kbs-session-id cookie");

    // Wrong nonce in the runtime data.
    let challenge = c.auth("sample").await.expect("auth");
    let err = c
        .attest(&c.attestation("AAAA", sample_evidence(&c.report_data("AAAA")), None))
        .await
        .expect_err("wrong nonce");
    assert_refused(err, 401, "nonce does not match");

    // Evidence bound to another TEE key than the one sent.
    let stranger = KbsClient::new(&kbs.url(), peerpod_tests::http::client());
    let evidence = sample_evidence(&stranger.report_data(&challenge.nonce));
    let err = c
        .attest(&c.attestation(&challenge.nonce, evidence, None))
        .await
        .expect_err("other key");
    assert_refused(err, 401, "report data check failed");

    // Evidence replayed from an earlier session.
    let old_nonce = challenge.nonce.clone();
    let old_evidence = sample_evidence(&c.report_data(&old_nonce));
    let fresh = c.auth("sample").await.expect("auth");
    let err = c
        .attest(&c.attestation(&fresh.nonce, old_evidence, None))
        .await
        .expect_err("replay");
    assert_refused(err, 401, "report data check failed");

    // No token at all, an unknown resource, an unknown plugin, a bad path.
    let err = client(&kbs)
        .resource(SECRET_PATH, None)
        .await
        .expect_err("no token");
    assert_eq!(err.status(), Some(401));
    assert!(err.to_string().contains("TokenNotFound"), "{err}");
    c.attest(&c.attestation(
        &fresh.nonce,
        sample_evidence(&c.report_data(&fresh.nonce)),
        None,
    ))
    .await
    .expect("attest");
    let err = c
        .resource("default/key/nothing-here", None)
        .await
        .expect_err("unknown");
    assert_kind(&err, 401, "PluginInternalError");
    assert_refused(err, 401, "resource not found: default/key/nothing-here");
    let resp = peerpod_tests::http::client()
        .get(format!("{}/kbs/v0/vault/x", kbs.url()))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(
        body["type"],
        "https://github.com/confidential-containers/kbs/errors/PluginNotFound"
    );
    let err = c
        .resource("default/../etc", None)
        .await
        .expect_err("bad path");
    assert_eq!(err.status(), Some(404));

    // A forged token.
    let err = client(&kbs)
        .resource(SECRET_PATH, Some("eyJhbGciOiJFUzI1NiJ9.e30.AAAA"))
        .await
        .expect_err("forged");
    assert_refused(err, 401, "Token Verifier error");
}

#[tokio::test]
async fn expired_sessions_are_refused() {
    let mut options = KbsOptions::new(Verifier::default());
    options.session_timeout = Duration::from_secs(1);
    let kbs = RunningKbs::start(options, "127.0.0.1:0", None).expect("KBS");
    let c = client(&kbs);
    let challenge = c.auth("sample").await.expect("auth");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let err = c
        .attest(&c.attestation(
            &challenge.nonce,
            sample_evidence(&c.report_data(&challenge.nonce)),
            None,
        ))
        .await
        .expect_err("expired");
    // The cookie expired with the session, so the client no longer sends it.
    assert_eq!(err.status(), Some(401), "{err}");
    assert!(
        err.detail().contains("session expired")
            || err.detail().contains("no kbs-session-id cookie"),
        "{}",
        err.detail()
    );
}

#[tokio::test]
async fn policy_refusals() {
    // Without reference values the TEE is not affirming: the default resource policy denies.
    let kbs_plain = kbs(Verifier::default(), json!({}));
    let c = client(&kbs_plain);
    attest_sample(&c).await;
    let err = c
        .resource(SECRET_PATH, None)
        .await
        .expect_err("missing reference values");
    assert_kind(&err, 401, "PolicyDeny");
    assert_refused(err, 401, "\"executables\":33");

    // An explicit deny policy, uploaded by an authenticated admin.
    let (private, public) = admin_keypair().expect("admin key");
    let mut options = KbsOptions::new(Verifier::default());
    options.admin = AdminAuth::Ed25519PublicKey(public);
    options.reference_values =
        serde_json::from_value(json!({"launch_digest": ["abcde"], "svn": ["1"]})).expect("refs");
    let kbs = RunningKbs::start(options, "127.0.0.1:0", None).expect("KBS");
    let admin = KbsAdmin::new(&kbs.url(), Some(&private)).expect("admin");
    admin
        .set_resource(SECRET_PATH, SECRET)
        .await
        .expect("upload");
    let c = client(&kbs);
    attest_sample(&c).await;
    assert_eq!(
        c.resource(SECRET_PATH, None).await.expect("allowed"),
        SECRET
    );
    admin
        .set_resource_policy("package policy\nimport rego.v1\ndefault allow := false\n")
        .await
        .expect("deny-all policy");
    let err = c.resource(SECRET_PATH, None).await.expect_err("denied");
    assert_kind(&err, 401, "PolicyDeny");
    assert_refused(err, 401, "Access denied by policy");

    // Admin endpoints refuse anyone without the key, and broken policies.
    let (other_private, _) = admin_keypair().expect("key");
    let intruder = KbsAdmin::new(&kbs.url(), Some(&other_private)).expect("admin");
    let err = intruder
        .set_resource(SECRET_PATH, b"evil")
        .await
        .expect_err("intruder");
    assert_refused(err, 401, "Admin Token could not be verified");
    let anonymous = KbsAdmin::new(&kbs.url(), None).expect("admin");
    let err = anonymous
        .set_resource_policy("package policy")
        .await
        .expect_err("anonymous");
    assert_refused(err, 401, "no Authorization: Bearer token");
    let err = admin
        .set_resource_policy("this is not rego")
        .await
        .expect_err("broken");
    assert_eq!(err.status(), Some(401));

    // Reference values and the attestation policy can be managed too.
    admin
        .set_reference_values(&json!({"svn": ["2"]}))
        .await
        .expect("reference values");
    let token = attest_sample(&c).await;
    assert!(token.len() > 100);
    admin
        .set_attestation_policy(
            "package policy\nimport rego.v1\ntrust_claims := {\"hardware\": 2}\n",
        )
        .await
        .expect("attestation policy");
    let err = admin
        .set_attestation_policy("package policy\nthis is not rego")
        .await
        .expect_err("broken");
    assert_eq!(err.status(), Some(401));
}

async fn snp_refusal(tune: impl FnOnce(&mut CvmOptions), name: &str, needle: &str) {
    let (_dir, cvm) = cvm(Flavour::Snp, name, tune);
    let kbs = kbs(verifier_for(Some(&cvm)), snp_refs());
    let c = client(&kbs);
    let ch = c.auth("az-snp-vtpm").await.expect("auth");
    let evidence = azure_evidence(&cvm, &c.report_data(&ch.nonce), None).await;
    let err = c
        .attest(&c.attestation(&ch.nonce, evidence, None))
        .await
        .expect_err(needle);
    assert_refused(err, 401, needle);
}

#[tokio::test]
async fn snp_hardware_refusals() {
    snp_refusal(
        |o| o.snp.foreign_vcek = true,
        "kbs-foreign",
        "VCEK chain check failed",
    )
    .await;
    snp_refusal(
        |o| {
            let past = std::time::SystemTime::now() - Duration::from_secs(400 * 86400);
            o.snp.vcek_validity = Some(
                peerpod_tests::cvm::certs::validity(past, Duration::from_secs(365 * 86400))
                    .expect("validity"),
            );
        },
        "kbs-expired",
        "certificate validity check failed",
    )
    .await;
    snp_refusal(
        |o| {
            let mut tcb = o.snp.tcb;
            tcb.microcode -= 1;
            o.snp.vcek_tcb = Some(tcb);
        },
        "kbs-tcb",
        "microcode SPL is 213 in the report but 212 in the VCEK",
    )
    .await;
    snp_refusal(|o| o.snp.vmpl = 1, "kbs-vmpl", "VMPL check failed").await;
}

/// Builds genuine SNP evidence, lets `tamper` change it, and expects a refusal naming `needle`.
async fn tampered_snp(
    cvm: &SimulatedCvm,
    kbs: &RunningKbs,
    tamper: impl FnOnce(&mut AzSnpEvidence),
    needle: &str,
) {
    let c = client(kbs);
    let ch = c.auth("az-snp-vtpm").await.expect("auth");
    let evidence = azure_evidence(cvm, &c.report_data(&ch.nonce), None).await;
    let mut e: AzSnpEvidence = serde_json::from_value(evidence).expect("evidence");
    tamper(&mut e);
    let err = c
        .attest(&c.attestation(&ch.nonce, serde_json::to_value(e).expect("json"), None))
        .await
        .expect_err(needle);
    assert_refused(err, 401, needle);
    // Let the paravisor's rate limit pass so the next evidence gets a fresh report at once.
    tokio::time::sleep(Duration::from_millis(2100)).await;
}

#[tokio::test]
async fn tampered_azure_evidence_is_refused() {
    let (_dir, cvm) = cvm(Flavour::Snp, "kbs-tamper", |_| {});
    let kbs = kbs(verifier_for(Some(&cvm)), snp_refs());
    tampered_snp(
        &cvm,
        &kbs,
        |e| e.tpm_quote.message[40] ^= 1,
        "vTPM quote signature check failed",
    )
    .await;
    tampered_snp(
        &cvm,
        &kbs,
        |e| e.tpm_quote.pcrs[5][0] ^= 1,
        "PCR digest check failed",
    )
    .await;
    tampered_snp(
        &cvm,
        &kbs,
        |e| {
            e.tpm_quote.pcrs.pop();
        },
        "PCR selection check failed",
    )
    .await;
    tampered_snp(
        &cvm,
        &kbs,
        |e| {
            // Change the VM's ID inside the runtime claims: the SNP report no longer binds them.
            let at = e
                .hcl_report
                .windows(8)
                .position(|w| w == b"4b2c8d3e")
                .expect("vmUniqueId in var_data");
            e.hcl_report[at] = b'5';
        },
        "var_data hash check failed",
    )
    .await;
    tampered_snp(
        &cvm,
        &kbs,
        |e| {
            // A report from another chip: replace the VCEK by one from a different chain.
            let other =
                peerpod_tests::cvm::platform::SnpChip::new(SnpConfig::default()).expect("chip");
            e.vcek = other.vcek_der().expect("der");
        },
        "VCEK chain check failed",
    )
    .await;
}

#[tokio::test]
async fn stale_report_and_initdata_refusals() {
    let (_dir, cvm) = cvm(Flavour::Snp, "kbs-stale", |_| {});
    let kbs = kbs(verifier_for(Some(&cvm)), snp_refs());

    // An attester that does not wait for the paravisor's refresh sends a report whose user-data
    // predates its nonce.
    let c = client(&kbs);
    let ch = c.auth("az-snp-vtpm").await.expect("auth");
    let report_data = c.report_data(&ch.nonce);
    let (hcl, quote) = {
        let mut tpm = Tpm::open(&cvm.tpm_spec()).expect("vTPM");
        attester::read_hcl_report(&mut tpm).expect("detect");
        attester::write_report_data(&mut tpm, &report_data).expect("write");
        let hcl = attester::read_hcl_report(&mut tpm).expect("read at once");
        (hcl, attester::quote(&mut tpm, &report_data).expect("quote"))
    };
    let vcek = attester::fetch_vcek(&cvm.imds_url()).await.expect("VCEK");
    let evidence = serde_json::to_value(attester::snp_evidence(quote, hcl, vcek)).expect("json");
    let err = c
        .attest(&c.attestation(&ch.nonce, evidence, None))
        .await
        .expect_err("stale");
    assert_refused(err, 401, "user-data binding check failed");
    tokio::time::sleep(Duration::from_millis(2100)).await;

    // PCR 8 measured one initdata, the client sends another.
    let c = client(&kbs);
    let ch = c.auth("az-snp-vtpm").await.expect("auth");
    let evidence = azure_evidence(&cvm, &c.report_data(&ch.nonce), Some(INITDATA)).await;
    let other = INITDATA.replace("kbs.example", "evil.example");
    let err = c
        .attest(&c.attestation(&ch.nonce, evidence, Some(&other)))
        .await
        .expect_err("initdata");
    assert_refused(err, 401, "initdata check failed");
}

#[tokio::test]
async fn tdx_quote_from_an_untrusted_root_is_refused() {
    let (_dir, cvm) = cvm(Flavour::Tdx, "kbs-tdx-root", |_| {});
    // The KBS trusts a different Intel root than the one the platform's PCK chains to.
    let other =
        peerpod_tests::cvm::platform::TdxPlatform::new(Default::default()).expect("platform");
    let verifier = Verifier {
        anchors: TrustAnchors {
            intel_roots: vec![
                x509::from_pem("root", other.root_pem().expect("pem").as_bytes()).expect("root"),
            ],
            ..TrustAnchors::default()
        },
        ..Verifier::default()
    };
    let kbs = kbs(verifier, tdx_refs());
    let c = client(&kbs);
    let ch = c.auth("az-tdx-vtpm").await.expect("auth");
    let evidence = azure_evidence(&cvm, &c.report_data(&ch.nonce), None).await;
    let mut e: AzTdxEvidence = serde_json::from_value(evidence).expect("evidence");
    let err = c
        .attest(&c.attestation(&ch.nonce, serde_json::to_value(&e).expect("json"), None))
        .await
        .expect_err("untrusted root");
    assert_refused(err, 401, "not a trusted Intel root");

    // And with the right root, a TD quote whose body was altered fails its signature.
    let kbs = self::kbs(verifier_for(Some(&cvm)), tdx_refs());
    let c = client(&kbs);
    let ch = c.auth("az-tdx-vtpm").await.expect("auth");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let evidence = azure_evidence(&cvm, &c.report_data(&ch.nonce), None).await;
    e = serde_json::from_value(evidence).expect("evidence");
    e.td_quote[200] ^= 1; // inside mr_td
    let err = c
        .attest(&c.attestation(&ch.nonce, serde_json::to_value(&e).expect("json"), None))
        .await
        .expect_err("altered quote");
    assert_refused(err, 401, "the quote is not signed by its attestation key");
}

#[tokio::test]
async fn https_with_a_test_ca() {
    let ca = peerpod_tests::cvm::certs::TlsCa::generate(&["localhost"]).expect("CA");
    let mut options = KbsOptions::new(Verifier::default());
    options.reference_values =
        serde_json::from_value(json!({"launch_digest": ["abcde"], "svn": ["1"]})).expect("refs");
    options
        .resources
        .insert(SECRET_PATH.into(), SECRET.to_vec());
    let tls = peerpod_tests::kbs::TlsFiles {
        cert_pem: ca.cert_pem.clone(),
        key_pem: ca.key_pem.clone(),
    };
    let kbs = RunningKbs::start(options, "127.0.0.1:0", Some(tls)).expect("KBS");
    assert!(kbs.url().starts_with("https://"));
    let http = peerpod_tests::http::client_trusting(&ca.ca_pem).expect("client");
    let c = KbsClient::new(&kbs.url(), http);
    attest_sample(&c).await;
    assert_eq!(
        c.resource(SECRET_PATH, None).await.expect("resource"),
        SECRET
    );

    // A client that does not trust the test CA refuses the server.
    let other = peerpod_tests::cvm::certs::TlsCa::generate(&["localhost"]).expect("CA");
    let untrusting = KbsClient::new(
        &kbs.url(),
        peerpod_tests::http::client_trusting(&other.ca_pem).expect("client"),
    );
    let err = untrusting
        .auth("sample")
        .await
        .expect_err("untrusted server");
    assert!(matches!(err, ClientError::Http(_)), "{err}");
}

#[tokio::test]
async fn newer_trustee_statuses_are_an_option() {
    // The default answers as Trustee 33e1bc57; `Newer` as 079fcf84: only PolicyDeny moves (403).
    for (errors, deny_status) in [
        (peerpod_tests::kbs::TrusteeErrors::Pinned, 401),
        (peerpod_tests::kbs::TrusteeErrors::Newer, 403),
    ] {
        for affirming in [false, true] {
            let mut options = KbsOptions::new(Verifier::default());
            options.trustee_errors = errors;
            if affirming {
                options.reference_values =
                    serde_json::from_value(json!({"launch_digest": ["abcde"], "svn": ["1"]}))
                        .expect("refs");
            }
            let kbs = RunningKbs::start(options, "127.0.0.1:0", None).expect("KBS");
            let c = client(&kbs);
            attest_sample(&c).await;
            let err = c
                .resource("default/key/absent", None)
                .await
                .expect_err("refused");
            if affirming {
                // Released by the policy, then missing: the resource plugin fails.
                assert_kind(&err, 401, "PluginInternalError");
            } else {
                // No reference values: not affirming, denied before the plugin runs.
                assert_kind(&err, deny_status, "PolicyDeny");
            }
        }
    }
}
