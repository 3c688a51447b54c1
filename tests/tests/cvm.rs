//! The simulated Azure CVM from the host: the vTPM behind the paravisor, the HCL report and its
//! refresh semantics, and the hardware reports' bindings.

use std::time::Duration;

use peerpod_tee::hcl::{HclReport, ReportType};
use peerpod_tee::snp::SnpReport;
use peerpod_tee::tdx::{TdQuote, TdReport};
use peerpod_tests::cvm::attester;
use peerpod_tests::cvm::{CvmOptions, Flavour, SimulatedCvm};
use peerpod_tests::scratch::ScratchDir;
use peerpod_tpm::frame::{CommandBuilder, Response, cc};
use peerpod_tpm::types::{Attest, handle};
use peerpod_tpm::{AZURE_HCL_REPORT_INDEX, ResponseCode, Tpm};
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::signature::Verifier;
use sha2::{Digest, Sha256};

fn start(flavour: Flavour, name: &str) -> (ScratchDir, SimulatedCvm) {
    let dir = ScratchDir::new(name).expect("scratch dir");
    let cvm = SimulatedCvm::start(CvmOptions::new(flavour, dir.path())).expect("simulated CVM");
    (dir, cvm)
}

#[test]
fn snp_report_refresh_follows_openhcl() {
    let (dir, cvm) = start(Flavour::Snp, "cvm-snp");
    let mut tpm = Tpm::open(&cvm.tpm_spec()).expect("vTPM");

    // Platform detection reads the report: the first report is made now.
    let first =
        HclReport::parse(&attester::read_hcl_report(&mut tpm).expect("read")).expect("parse");
    assert_eq!(first.report_type, ReportType::Snp);
    assert_eq!(
        first
            .claims()
            .expect("claims")
            .user_data_bytes()
            .expect("hex"),
        Some(vec![0; 64])
    );

    // Writing report data and reading at once gives the stale report (rate limit).
    let data = [0xA5u8; 64];
    attester::write_report_data(&mut tpm, &data).expect("write report data");
    let stale =
        HclReport::parse(&attester::read_hcl_report(&mut tpm).expect("read")).expect("parse");
    assert_eq!(
        stale, first,
        "a read within 2 s must return the previous report"
    );
    assert_eq!(cvm.paravisor().stats().rate_limited, 1);

    // Re-reading until user-data matches gets a fresh report after the rate limit.
    let started = std::time::Instant::now();
    let fresh =
        attester::read_fresh_hcl_report(&mut tpm, &data, Duration::from_secs(10)).expect("fresh");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "fresh too early: {:?}",
        started.elapsed()
    );
    let fresh = HclReport::parse(&fresh).expect("parse");
    let claims = fresh.claims().expect("claims");
    assert_eq!(claims.user_data_bytes().expect("hex"), Some(data.to_vec()));
    assert_eq!(cvm.paravisor().stats().reports, 2);

    // The hardware report binds the runtime claims, and the claims carry the vTPM's AK.
    let report = SnpReport::parse(&fresh.hw_report).expect("SNP report");
    assert_eq!(
        report.report_data[..32],
        Sha256::digest(&fresh.var_data)[..]
    );
    assert_eq!(report.report_data[32..], [0u8; 32]);
    assert_eq!(report.vmpl, 0);
    let (ak_public, _) = tpm.read_public(peerpod_tpm::AZURE_AK_HANDLE).expect("AK");
    let (n, e) = claims
        .ak_pub()
        .expect("HCLAkPub")
        .components()
        .expect("rsa");
    assert_eq!(n, ak_public.modulus);
    assert_eq!(e, vec![1, 0, 1]);

    // A quote by that AK verifies with the key from the report (RSASSA-PKCS1-v1_5, SHA-256),
    // carries our nonce, and its PCR digest covers the 24 PCRs we read.
    let nonce = [0x42u8; 48];
    let quote = attester::quote(&mut tpm, &nonce).expect("quote");
    let key = peerpod_kbs_protocol::keys::rsa_public_key(&n, &e).expect("rsa key");
    let verifier = VerifyingKey::<Sha256>::new(key);
    let sig = Signature::try_from(quote.signature.as_slice()).expect("signature");
    verifier
        .verify(&quote.message, &sig)
        .expect("quote signed by HCLAkPub");
    let attest = Attest::parse_quote(&quote.message).expect("TPMS_ATTEST");
    assert_eq!(attest.extra_data, nonce);
    let mut h = Sha256::new();
    for pcr in &quote.pcrs {
        h.update(pcr);
    }
    assert_eq!(attest.pcr_digest, h.finalize().to_vec());
    assert_eq!(quote.pcrs.len(), 24);

    // The reference tools agree: tpm2_checkquote verifies the signature and the nonce.
    checkquote(&dir, &n, &e, &quote.message, &quote.signature, &nonce);
}

/// Runs `tpm2_checkquote` (tpm2-tools) on a quote, failing the test if it disagrees.
fn checkquote(
    dir: &ScratchDir,
    n: &[u8],
    e: &[u8],
    message: &[u8],
    signature: &[u8],
    nonce: &[u8],
) {
    use rsa::pkcs8::EncodePublicKey;
    let key = peerpod_kbs_protocol::keys::rsa_public_key(n, e).expect("rsa key");
    let pem = key
        .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
        .expect("pem");
    let ak = dir.path().join("ak.pem");
    let msg = dir.path().join("quote.msg");
    let sig = dir.path().join("quote.sig");
    std::fs::write(&ak, pem).expect("write");
    std::fs::write(&msg, message).expect("write");
    // TPMT_SIGNATURE: RSASSA, SHA-256, TPM2B signature.
    let mut tpmt = vec![0x00, 0x14, 0x00, 0x0B];
    tpmt.extend_from_slice(&u16::try_from(signature.len()).expect("size").to_be_bytes());
    tpmt.extend_from_slice(signature);
    std::fs::write(&sig, tpmt).expect("write");
    let out = std::process::Command::new("tpm2_checkquote")
        .args(["-g", "sha256", "-q", &hex::encode(nonce)])
        .arg("-u")
        .arg(&ak)
        .arg("-m")
        .arg(&msg)
        .arg("-s")
        .arg(&sig)
        .output()
        .expect("tpm2_checkquote is missing: install tpm2-tools (make deps)");
    assert!(
        out.status.success(),
        "tpm2_checkquote refused our quote: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn report_index_is_guarded_like_azure() {
    let (_dir, cvm) = start(Flavour::Snp, "cvm-guard");
    let mut tpm = Tpm::open(&cvm.tpm_spec()).expect("vTPM");
    let (public, _) = tpm
        .nv_read_public(AZURE_HCL_REPORT_INDEX)
        .expect("read public");
    assert_eq!(public.data_size, 2600, "Azure's report index is 2600 bytes");
    assert_eq!(
        tpm.nv_read_all(AZURE_HCL_REPORT_INDEX).expect("read").len(),
        2600
    );

    // The index's own authorization is a paravisor secret: reading with it fails.
    let mut c = CommandBuilder::new(cc::NV_READ)
        .handle(AZURE_HCL_REPORT_INDEX)
        .handle(AZURE_HCL_REPORT_INDEX)
        .password(b"");
    c.params().u16(16).u16(0);
    let resp = tpm
        .transact_raw(&c.build().expect("build"))
        .expect("transact");
    let err = Response::parse("NV_Read", &resp, 0).expect_err("index auth refused");
    assert!(
        err.response_code().expect("rc").is(ResponseCode::AUTH_FAIL),
        "{err}"
    );

    // Reads past the end and oversized reads fail as on a TPM.
    let err = tpm
        .nv_read(AZURE_HCL_REPORT_INDEX, 100, 2550)
        .expect_err("range");
    assert!(
        err.response_code().expect("rc").is(ResponseCode::NV_RANGE),
        "{err}"
    );
    let err = tpm
        .nv_read(AZURE_HCL_REPORT_INDEX, 2048, 0)
        .expect_err("too big");
    assert!(
        err.response_code().expect("rc").is(ResponseCode::VALUE),
        "{err}"
    );

    // The guest cannot write or remove the report.
    let err = tpm
        .nv_write(AZURE_HCL_REPORT_INDEX, b"forged", 0)
        .expect_err("write refused");
    assert!(err.to_string().contains("TPM_RC_NV_AUTHORIZATION"), "{err}");
    let err = tpm
        .nv_undefine_space(handle::OWNER, AZURE_HCL_REPORT_INDEX)
        .expect_err("undefine refused");
    assert!(err.to_string().contains("TPM_RC_NV_AUTHORIZATION"), "{err}");

    // PCR 17 is a DRTM PCR: locality 0 cannot extend it, as on Azure.
    let err = tpm
        .pcr_extend(17, peerpod_tpm::PcrBank::Sha256, &[1; 32])
        .expect_err("PCR 17");
    assert!(
        err.response_code().expect("rc").is(ResponseCode::LOCALITY),
        "{err}"
    );
}

#[tokio::test]
async fn tdx_report_is_quoted_by_imds() {
    let (_dir, cvm) = start(Flavour::Tdx, "cvm-tdx");
    let report_data = [0x17u8; 64];
    let hcl = {
        let mut tpm = Tpm::open(&cvm.tpm_spec()).expect("vTPM");
        attester::write_report_data(&mut tpm, &report_data).expect("write");
        attester::read_fresh_hcl_report(&mut tpm, &report_data, Duration::from_secs(10))
            .expect("fresh")
    };
    let hcl = HclReport::parse(&hcl).expect("parse");
    assert_eq!(hcl.report_type, ReportType::Tdx);
    let td_report = TdReport::parse(&hcl.hw_report).expect("TD report");
    assert_eq!(
        td_report.measurements.report_data[..32],
        Sha256::digest(&hcl.var_data)[..]
    );

    let quote = attester::fetch_td_quote(&cvm.imds_url(), &hcl.hw_report)
        .await
        .expect("quote");
    let quote = TdQuote::parse(&quote).expect("TD quote");
    assert_eq!(quote.body.report_data, td_report.measurements.report_data);
    assert_eq!(quote.body.mr_td, td_report.measurements.mr_td);

    // A report altered after the TDX module MAC'd it is refused by the quoting service.
    let mut forged = hcl.hw_report.clone();
    forged[128] ^= 0xFF;
    let err = attester::fetch_td_quote(&cvm.imds_url(), &forged)
        .await
        .expect_err("forged");
    assert!(err.to_string().contains("400"), "{err}");
    // An SNP-only endpoint is absent on TDX.
    assert!(attester::fetch_vcek(&cvm.imds_url()).await.is_err());
}

#[tokio::test]
async fn snp_vcek_is_served_like_thim() {
    let (_dir, cvm) = start(Flavour::Snp, "cvm-thim");
    let vcek = attester::fetch_vcek(&cvm.imds_url()).await.expect("VCEK");
    let cert = <x509_cert::Certificate as der::Decode>::from_der(&vcek).expect("DER");
    assert!(
        cert.tbs_certificate()
            .subject()
            .to_string()
            .contains("CN=VCEK")
    );
    // Without the Metadata header, IMDS refuses.
    let status = peerpod_tests::http::client()
        .get(format!(
            "{}/metadata/THIM/amd/certification",
            cvm.imds_url()
        ))
        .send()
        .await
        .expect("request")
        .status();
    assert_eq!(status, 400);
}
