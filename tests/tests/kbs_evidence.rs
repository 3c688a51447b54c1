//! The local KBS against evidence as current Azure hardware and guest-components make it: SNP
//! report version 3 with CPUID fields (Milan and Genoa, each checked against its own AMD chain),
//! a version-2 report refused before anything else as Trustee refuses it, and az-*-vtpm
//! evidence version 2, whose HCL user-data binding is checked as Trustee checks it.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use peerpod_tee::evidence::AzSnpEvidence;
use peerpod_tee::snp::Generation;
use peerpod_tests::cvm::attester;
use peerpod_tests::cvm::platform::SnpConfig;
use peerpod_tests::cvm::{CvmOptions, Flavour, SimulatedCvm};
use peerpod_tests::kbs::client::{ClientError, KbsClient};
use peerpod_tests::kbs::verifier::{AmdAnchors, TrustAnchors, Verifier, VerifierOptions};
use peerpod_tests::kbs::{AdminAuth, KbsOptions, RunningKbs};
use peerpod_tests::scratch::ScratchDir;
use peerpod_tpm::Tpm;
use serde_json::{Value, json};

const SECRET_PATH: &str = "default/key/pod-secret";
const SECRET: &[u8] = b"the pod's secret";

fn amd(cvm: &SimulatedCvm) -> AmdAnchors {
    let pem = cvm
        .trust_anchors()
        .expect("anchors")
        .amd_chain_pem
        .expect("SNP");
    AmdAnchors::from_pem(pem.as_bytes()).expect("AMD chain")
}

fn kbs(anchors: TrustAnchors, options: VerifierOptions) -> RunningKbs {
    let mut o = KbsOptions::new(Verifier { anchors, options });
    o.admin = AdminAuth::InsecureAllowAll;
    o.reference_values = serde_json::from_value::<BTreeMap<String, Value>>(json!({
        "snp_launch_measurement": [STANDARD.encode(SnpConfig::default().measurement)],
        "snp_min_tcb_microcode": 200,
    }))
    .expect("refs");
    o.resources.insert(SECRET_PATH.to_string(), SECRET.to_vec());
    RunningKbs::start(o, "127.0.0.1:0", None).expect("KBS")
}

fn cvm(name: &str, tune: impl FnOnce(&mut SnpConfig)) -> (ScratchDir, SimulatedCvm) {
    let dir = ScratchDir::new(name).expect("scratch");
    let mut options = CvmOptions::new(Flavour::Snp, dir.path());
    tune(&mut options.snp);
    let cvm = SimulatedCvm::start(options).expect("simulated CVM");
    (dir, cvm)
}

/// Evidence as a guest makes it; with `fresh = false`, as an attester that reads the report at
/// once after writing its report data, so the report predates the nonce.
async fn evidence(cvm: &SimulatedCvm, report_data: &[u8], fresh: bool) -> AzSnpEvidence {
    let (hcl, quote) = {
        let mut tpm = Tpm::open(&cvm.tpm_spec()).expect("vTPM");
        if !fresh {
            attester::read_hcl_report(&mut tpm).expect("first read");
        }
        attester::write_report_data(&mut tpm, report_data).expect("report data");
        let hcl = if fresh {
            attester::read_fresh_hcl_report(&mut tpm, report_data, Duration::from_secs(10))
                .expect("report")
        } else {
            attester::read_hcl_report(&mut tpm).expect("read at once")
        };
        (hcl, attester::quote(&mut tpm, report_data).expect("quote"))
    };
    let vcek = attester::fetch_vcek(&cvm.imds_url()).await.expect("VCEK");
    attester::snp_evidence(quote, hcl, vcek)
}

/// One handshake with `make`'s evidence: the token, or the refusal.
async fn attest(
    kbs: &RunningKbs,
    cvm: &SimulatedCvm,
    fresh: bool,
    tamper: impl FnOnce(&mut AzSnpEvidence),
) -> Result<(KbsClient, String), ClientError> {
    let c = KbsClient::new(&kbs.url(), peerpod_tests::http::client());
    let ch = c.auth("az-snp-vtpm").await.expect("auth");
    let mut e = evidence(cvm, &c.report_data(&ch.nonce), fresh).await;
    tamper(&mut e);
    let value = serde_json::to_value(e).expect("json");
    let token = c.attest(&c.attestation(&ch.nonce, value, None)).await?;
    // The next evidence needs a report past the paravisor's rate limit.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    Ok((c, token))
}

fn refused(result: Result<(KbsClient, String), ClientError>, why: &str) -> ClientError {
    match result {
        Ok(_) => panic!("attested, but should be refused: {why}"),
        Err(e) => e,
    }
}

fn assert_refused(err: ClientError, needle: &str) {
    assert_eq!(err.status(), Some(401), "{err}");
    assert!(
        err.detail().contains(needle),
        "expected {needle:?} in: {}",
        err.detail()
    );
}

#[tokio::test]
async fn milan_and_genoa_reports_are_checked_against_their_own_chain() {
    let (_d1, milan) = cvm("kbs-gen-milan", |_| {});
    let (_d2, genoa) = cvm("kbs-gen-genoa", |c| c.generation = Generation::Genoa);
    let (milan_chain, genoa_chain) = (amd(&milan), amd(&genoa));
    assert_eq!(milan_chain.generation, Generation::Milan);
    assert_eq!(genoa_chain.generation, Generation::Genoa);

    // A KBS holding both chains, as Trustee bundles them, takes both parts.
    let mut both = TrustAnchors::default();
    both.add_amd(milan_chain.clone());
    both.add_amd(genoa_chain);
    let k = kbs(both, VerifierOptions::default());
    for cvm in [&milan, &genoa] {
        let (c, _token) = match attest(&k, cvm, true, |_| {}).await {
            Ok(ok) => ok,
            Err(e) => panic!("attest: {e}"),
        };
        assert_eq!(
            c.resource(SECRET_PATH, None).await.expect("resource"),
            SECRET
        );
    }

    // One that knows only Milan's chain cannot check a Genoa part: the lookup picks the
    // Genoa chain by the report's CPUID, it does not try the Milan one.
    let mut only_milan = TrustAnchors::default();
    only_milan.add_amd(milan_chain);
    let k = kbs(only_milan, VerifierOptions::default());
    let err = refused(attest(&k, &genoa, true, |_| {}).await, "no Genoa chain");
    assert_refused(err, "the AMD Genoa chain (ASK, ARK) is not configured");
}

#[tokio::test]
async fn version_2_reports_are_refused_before_anything_else() {
    let (_dir, old) = cvm("kbs-gen-v2", |c| c.report_version = 2);
    let mut anchors = TrustAnchors::default();
    anchors.add_amd(amd(&old));
    let k = kbs(anchors, VerifierOptions::default());
    // A broken quote signature too: the generation lookup still answers first, as Trustee's.
    let err = refused(
        attest(&k, &old, true, |e| e.tpm_quote.message[40] ^= 1).await,
        "version 2",
    );
    assert_refused(
        err,
        "processor generation check failed: SNP report CPUID: Attestation report version 3+ is \
         missing CPU family ID",
    );
}

#[tokio::test]
async fn evidence_version_2_binds_user_data_as_trustee_checks_it() {
    let (_dir, cvm) = cvm("kbs-ev-v2", |_| {});
    let mut anchors = TrustAnchors::default();
    anchors.add_amd(amd(&cvm));
    // Only Trustee's own checks: the stricter user-data option is off.
    let k = kbs(
        anchors,
        VerifierOptions {
            require_user_data_binding: false,
            ..VerifierOptions::default()
        },
    );

    // Fresh version 2 evidence, as our attester makes it, passes.
    if let Err(e) = attest(&k, &cvm, true, |e| assert_eq!(e.version, 2)).await {
        panic!("fresh v2: {e}");
    }

    // A stale report labelled version 2 breaks its promise and is refused.
    let err = refused(
        attest(&k, &cvm, false, |e| assert_eq!(e.version, 2)).await,
        "stale v2",
    );
    assert_refused(
        err,
        "User-data in HCL variable data doesn't match report_data (evidence version 2)",
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;

    // The same staleness as version 1 passes: Trustee does not check user-data there.
    if let Err(e) = attest(&k, &cvm, false, |e| e.version = 1).await {
        panic!("stale v1 passes Trustee's checks: {e}");
    }

    // Versions Trustee does not know are refused.
    let err = refused(attest(&k, &cvm, true, |e| e.version = 3).await, "v3");
    assert_refused(err, "evidence version: 3 is not 1 or 2");
}
