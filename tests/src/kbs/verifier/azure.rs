//! The Azure vTPM verifiers (`az-snp-vtpm`, `az-tdx-vtpm`), in Trustee's order:
//!
//! 0. the evidence is version 1 or 2; SNP: the report's CPUID fields name a processor
//!    generation whose AMD chain is configured (a version-2 report has none and is refused, as
//!    Trustee refuses it, before anything else is looked at);
//! 1. the TPM quote is signed by the attestation key the HCL report lists (`HCLAkPub`);
//! 2. the quote's `extraData` is the expected report data;
//! 3. the PCR values sent hash to the quote's PCR digest (and, stricter than Trustee, the quote
//!    covers all 24 SHA-256 PCRs);
//! 4. the hardware report binds the HCL runtime claims (`report_data[0..32] = SHA-256(var_data)`);
//! 5. the claims' `user-data` starts with the expected report data: always for evidence version 2
//!    (as Trustee), for version 1 only with the stricter-than-Trustee option;
//! 6. the hardware report is genuine — SNP: VCEK chain to the AMD root, VCEK TCB and hwID
//!    extensions equal the report's, report signature, VMPL 0; TDX: the TD quote's PCK chain to
//!    an Intel root, QE report and quote signatures, QE binding of the attestation key;
//! 7. initdata: PCR 8 = SHA-256(0³² ‖ digest[..32]).

use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use p256::ecdsa::signature::Verifier as _;
use peerpod_tee::evidence::{AzSnpEvidence, AzTdxEvidence, TpmQuote};
use peerpod_tee::hcl::{HclReport, ReportType, RuntimeClaims};
use peerpod_tee::snp::{Generation, SnpReport};
use peerpod_tee::tdx::{TdMeasurements, TdQuote, qe_report_data};
use peerpod_tpm::types::{Attest, PcrSelection, alg};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use x509_cert::Certificate;

use super::{AmdAnchors, Expected, Verifier, VerifyError, x509};

const AMD: &str = "1.3.6.1.4.1.3704.1";

fn malformed(tee: &'static str) -> impl Fn(String) -> VerifyError {
    move |detail| VerifyError::Malformed { tee, detail }
}

fn parse_hcl(tee: &'static str, hcl_bytes: &[u8]) -> Result<HclReport, VerifyError> {
    HclReport::parse(hcl_bytes).map_err(|e| malformed(tee)(format!("HCL report: {e}")))
}

fn check_version(tee: &'static str, version: u32) -> Result<u32, VerifyError> {
    peerpod_tee::evidence::check_version(version).map_err(|e| malformed(tee)(e.to_string()))
}

/// Steps 1–3 and 5: the TPM quote, the HCL report's claims. Returns the report's claims.
fn verify_vtpm(
    tee: &'static str,
    v: &Verifier,
    version: u32,
    quote: &TpmQuote,
    hcl: &HclReport,
    expected: &Expected<'_>,
) -> Result<RuntimeClaims, VerifyError> {
    let claims = hcl
        .claims()
        .map_err(|e| malformed(tee)(format!("HCL runtime claims: {e}")))?;
    let (n, e) = claims
        .ak_pub()
        .and_then(|k| k.components())
        .map_err(|e| malformed(tee)(format!("HCLAkPub: {e}")))?;
    let key = peerpod_kbs_protocol::keys::rsa_public_key(&n, &e)
        .map_err(|e| malformed(tee)(format!("HCLAkPub: {e}")))?;
    let sig = rsa::pkcs1v15::Signature::try_from(quote.signature.as_slice()).map_err(|_| {
        VerifyError::rejected("vTPM quote signature", "signature has the wrong size")
    })?;
    rsa::pkcs1v15::VerifyingKey::<Sha256>::new(key)
        .verify(&quote.message, &sig)
        .map_err(|_| {
            VerifyError::rejected("vTPM quote signature", "quote is not signed by HCLAkPub")
        })?;
    let attest = Attest::parse_quote(&quote.message)
        .map_err(|e| malformed(tee)(format!("TPM quote message: {e}")))?;
    if attest.extra_data != expected.report_data {
        return Err(VerifyError::rejected(
            "nonce",
            "TPM quote nonce does not match the runtime-data digest (stale nonce, replay, or another TEE key)",
        ));
    }
    let all = PcrSelection::all(alg::SHA256);
    if attest.pcr_select != all
        || quote.pcrs.len() != 24
        || quote.pcrs.iter().any(|p| p.len() != 32)
    {
        return Err(VerifyError::rejected(
            "PCR selection",
            format!(
                "the quote must cover SHA-256 PCRs 0-23 and 24 values must be sent; quote selects {:?}, {} values sent",
                attest.pcr_select.selected(alg::SHA256),
                quote.pcrs.len()
            ),
        ));
    }
    let mut h = Sha256::new();
    for p in &quote.pcrs {
        h.update(p);
    }
    if h.finalize()[..] != attest.pcr_digest[..] {
        return Err(VerifyError::rejected(
            "PCR digest",
            "the PCR values sent do not hash to the quote's PCR digest",
        ));
    }
    // Version 2 evidence promises the binding and Trustee checks it; for version 1 Trustee
    // does not, and the test world does only with its stricter option.
    if peerpod_tee::evidence::binds_user_data(version) || v.options.require_user_data_binding {
        let user = claims
            .user_data_bytes()
            .map_err(|e| malformed(tee)(format!("user-data: {e}")))?
            .unwrap_or_default();
        if !user.starts_with(expected.report_data) {
            return Err(VerifyError::rejected(
                "user-data binding",
                format!(
                    "User-data in HCL variable data doesn't match report_data (evidence version \
                     {version}): the report was made before the nonce was written to NV \
                     0x01400002 (re-read the report until user-data matches)"
                ),
            ));
        }
    }
    Ok(claims)
}

/// Step 0 for SNP: the processor generation from the report's CPUID fields, and its chain.
fn amd_chain<'v>(v: &'v Verifier, report: &SnpReport) -> Result<&'v AmdAnchors, VerifyError> {
    let generation: Generation = report
        .generation()
        .map_err(|e| VerifyError::rejected("processor generation", e.to_string()))?;
    v.anchors
        .amd_for(generation)
        .ok_or(VerifyError::NotConfigured(match generation {
            Generation::Milan => "the AMD Milan chain (ASK, ARK)",
            Generation::Genoa => "the AMD Genoa chain (ASK, ARK)",
            Generation::Turin => "the AMD Turin chain (ASK, ARK)",
        }))
}

fn check_var_data(
    hcl: &HclReport,
    report_data: &[u8; 64],
    what: &'static str,
) -> Result<(), VerifyError> {
    if report_data[..32] != hcl.var_data_sha256() {
        return Err(VerifyError::rejected(
            "var_data hash",
            format!("{what} report_data does not hold SHA-256 of the HCL runtime claims"),
        ));
    }
    Ok(())
}

fn check_initdata(pcrs: &[Vec<u8>], expected: &Expected<'_>) -> Result<(), VerifyError> {
    let Some(digest) = expected.init_data_digest else {
        return Ok(());
    };
    let mut d = [0u8; 32];
    let n = digest.len().min(32);
    d[..n].copy_from_slice(&digest[..n]);
    let mut h = Sha256::new();
    h.update([0u8; 32]);
    h.update(d);
    let want = h.finalize();
    if pcrs.get(8).map(Vec::as_slice) != Some(&want[..]) {
        return Err(VerifyError::rejected(
            "initdata",
            format!(
                "PCR 8 is {} but the initdata sent measures to {} (the pod VM booted with other initdata)",
                pcrs.get(8).map(hex::encode).unwrap_or_default(),
                hex::encode(want)
            ),
        ));
    }
    Ok(())
}

fn tpm_claims(quote: &TpmQuote) -> Value {
    let mut m = Map::new();
    for (i, p) in quote.pcrs.iter().enumerate() {
        m.insert(format!("pcr{i:02}"), Value::String(hex::encode(p)));
    }
    Value::Object(m)
}

fn check_dates(v: &Verifier, cert: &Certificate) -> Result<(), String> {
    if v.options.check_certificate_dates {
        x509::check_validity(cert, SystemTime::now())?;
    }
    Ok(())
}

pub(super) fn verify_snp(
    v: &Verifier,
    evidence: &Value,
    expected: &Expected<'_>,
) -> Result<Value, VerifyError> {
    const TEE: &str = "az-snp-vtpm";
    let e: AzSnpEvidence =
        serde_json::from_value(evidence.clone()).map_err(|e| malformed(TEE)(e.to_string()))?;
    let version = check_version(TEE, e.version)?;
    let hcl = parse_hcl(TEE, &e.hcl_report)?;
    if hcl.report_type != ReportType::Snp {
        return Err(malformed(TEE)("the HCL report carries a TDX report".into()));
    }
    let report =
        SnpReport::parse(&hcl.hw_report).map_err(|e| malformed(TEE)(format!("SNP report: {e}")))?;
    let amd = amd_chain(v, &report)?;
    verify_vtpm(TEE, v, version, &e.tpm_quote, &hcl, expected)?;
    check_var_data(&hcl, &report.report_data, "SNP")?;

    let vcek = x509::from_der("VCEK", &e.vcek).map_err(malformed(TEE))?;
    x509::verify_signed_by(&vcek, &amd.ask).map_err(|d| VerifyError::rejected("VCEK chain", d))?;
    for cert in [&amd.ark, &amd.ask, &vcek] {
        check_dates(v, cert).map_err(|d| VerifyError::rejected("certificate validity", d))?;
    }
    let tcb = report.reported_tcb;
    for (oid, name, value) in [
        ("3.1", "boot loader", tcb.bootloader),
        ("3.2", "TEE", tcb.tee),
        ("3.3", "SNP", tcb.snp),
        ("3.8", "microcode", tcb.microcode),
    ] {
        let cert_value = x509::extension_u8(&vcek, &format!("{AMD}.{oid}"))
            .map_err(|d| VerifyError::rejected("VCEK TCB", d))?;
        if cert_value != value {
            return Err(VerifyError::rejected(
                "VCEK TCB",
                format!("{name} SPL is {value} in the report but {cert_value} in the VCEK"),
            ));
        }
    }
    if x509::subject(&vcek).contains("CN=VCEK") {
        let raw = x509::extension(&vcek, &format!("{AMD}.4"))
            .ok_or_else(|| VerifyError::rejected("VCEK hwID", "the VCEK has no hwID extension"))?;
        let hw_id = if raw.len() == 64 {
            raw.to_vec()
        } else {
            <der::asn1::OctetString as der::Decode>::from_der(raw)
                .map(|o| o.as_bytes().to_vec())
                .unwrap_or_default()
        };
        if hw_id != report.chip_id {
            return Err(VerifyError::rejected(
                "VCEK hwID",
                "the VCEK was issued for another chip",
            ));
        }
    }
    let (r, s) = report
        .signature_p384()
        .map_err(|e| VerifyError::rejected("SNP report signature", e.to_string()))?;
    let sig = p384::ecdsa::Signature::from_scalars(r, s).map_err(|_| {
        VerifyError::rejected("SNP report signature", "not a valid P-384 signature")
    })?;
    let spki = x509::spki_der(&vcek).map_err(malformed(TEE))?;
    let key = <p384::ecdsa::VerifyingKey as spki::DecodePublicKey>::from_public_key_der(&spki)
        .map_err(|_| VerifyError::rejected("SNP report signature", "the VCEK key is not P-384"))?;
    key.verify(&report.signed_bytes(), &sig).map_err(|_| {
        VerifyError::rejected(
            "SNP report signature",
            "the report is not signed by the VCEK",
        )
    })?;
    if report.vmpl != 0 {
        return Err(VerifyError::rejected(
            "VMPL",
            format!(
                "the report was requested at VMPL {}, not by the paravisor at VMPL 0",
                report.vmpl
            ),
        ));
    }
    check_initdata(&e.tpm_quote.pcrs, expected)?;

    let p = report.policy;
    let bit = |n: u32| ((p >> n) & 1).to_string();
    let attest =
        Attest::parse_quote(&e.tpm_quote.message).map_err(|e| malformed(TEE)(e.to_string()))?;
    Ok(json!({
        "policy_abi_major": ((p >> 8) & 0xFF).to_string(),
        "policy_abi_minor": (p & 0xFF).to_string(),
        "policy_smt_allowed": bit(16),
        "policy_migrate_ma": bit(18),
        "policy_debug_allowed": bit(19),
        "policy_single_socket": bit(20),
        "reported_tcb_bootloader": tcb.bootloader.to_string(),
        "reported_tcb_tee": tcb.tee.to_string(),
        "reported_tcb_snp": tcb.snp.to_string(),
        "reported_tcb_microcode": tcb.microcode.to_string(),
        "platform_tsme_enabled": ((report.platform_info >> 1) & 1).to_string(),
        "platform_smt_enabled": (report.platform_info & 1).to_string(),
        "measurement": STANDARD.encode(report.measurement),
        "tpm": tpm_claims(&e.tpm_quote),
        "init_data": e.tpm_quote.pcrs.get(8).map(hex::encode).unwrap_or_default(),
        "report_data": hex::encode(&attest.extra_data),
    }))
}

fn td_claims(m: &TdMeasurements) -> Value {
    json!({
        "tcb_svn": hex::encode(m.tee_tcb_svn),
        "mr_seam": hex::encode(m.mr_seam),
        "mrsigner_seam": hex::encode(m.mrsigner_seam),
        "seam_attributes": hex::encode(m.seam_attributes),
        "td_attributes": hex::encode(m.td_attributes),
        "xfam": hex::encode(m.xfam),
        "mr_td": hex::encode(m.mr_td),
        "mr_config_id": hex::encode(m.mr_config_id),
        "mr_owner": hex::encode(m.mr_owner),
        "mr_owner_config": hex::encode(m.mr_owner_config),
        "rtmr_0": hex::encode(m.rtmr[0]),
        "rtmr_1": hex::encode(m.rtmr[1]),
        "rtmr_2": hex::encode(m.rtmr[2]),
        "rtmr_3": hex::encode(m.rtmr[3]),
        "report_data": hex::encode(m.report_data),
    })
}

fn verify_td_quote(v: &Verifier, quote: &TdQuote) -> Result<(), VerifyError> {
    let reject = |d: String| VerifyError::rejected("TD quote", d);
    if v.anchors.intel_roots.is_empty() {
        return Err(VerifyError::NotConfigured("an Intel root for TD quotes"));
    }
    let chain = x509::from_pem_chain("PCK chain", &quote.pck_chain_pem).map_err(reject)?;
    // Leaf first; each certificate is signed by the next; the last must be a trusted root.
    for pair in chain.windows(2) {
        x509::verify_signed_by(&pair[0], &pair[1]).map_err(reject)?;
    }
    let (leaf, top) = match (chain.first(), chain.last()) {
        (Some(l), Some(t)) => (l, t),
        _ => return Err(reject("empty PCK chain".into())),
    };
    if !v.anchors.intel_roots.iter().any(|r| x509::same(r, top)) {
        return Err(reject(format!(
            "the PCK chain ends at {}, not a trusted Intel root",
            x509::subject(top)
        )));
    }
    x509::verify_signed_by(top, top).map_err(reject)?;
    for cert in &chain {
        check_dates(v, cert).map_err(|d| VerifyError::rejected("certificate validity", d))?;
    }
    let pck_spki = x509::spki_der(leaf).map_err(reject)?;
    let pck = <p256::ecdsa::VerifyingKey as spki::DecodePublicKey>::from_public_key_der(&pck_spki)
        .map_err(|_| reject("the PCK key is not P-256".into()))?;
    let qe_sig = p256::ecdsa::Signature::from_slice(&quote.qe_report_signature)
        .map_err(|_| reject("malformed QE report signature".into()))?;
    pck.verify(&quote.qe_report, &qe_sig)
        .map_err(|_| reject("the QE report is not signed by the PCK key".into()))?;
    if quote.qe_report_data()[..32]
        != qe_report_data(&quote.attestation_key, &quote.qe_auth_data)[..32]
    {
        return Err(reject(
            "the QE report does not bind the attestation key".into(),
        ));
    }
    let mut point = vec![0x04];
    point.extend_from_slice(&quote.attestation_key);
    let ak = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point)
        .map_err(|_| reject("the attestation key is not a P-256 point".into()))?;
    let sig = p256::ecdsa::Signature::from_slice(&quote.signature)
        .map_err(|_| reject("malformed quote signature".into()))?;
    let signed = quote.signed_bytes().map_err(|e| reject(e.to_string()))?;
    ak.verify(&signed, &sig)
        .map_err(|_| reject("the quote is not signed by its attestation key".into()))?;
    Ok(())
}

pub(super) fn verify_tdx(
    v: &Verifier,
    evidence: &Value,
    expected: &Expected<'_>,
) -> Result<Value, VerifyError> {
    const TEE: &str = "az-tdx-vtpm";
    let e: AzTdxEvidence =
        serde_json::from_value(evidence.clone()).map_err(|e| malformed(TEE)(e.to_string()))?;
    let version = check_version(TEE, e.version)?;
    let hcl = parse_hcl(TEE, &e.hcl_report)?;
    verify_vtpm(TEE, v, version, &e.tpm_quote, &hcl, expected)?;
    if hcl.report_type != ReportType::Tdx {
        return Err(malformed(TEE)(
            "the HCL report carries an SNP report".into(),
        ));
    }
    let quote =
        TdQuote::parse(&e.td_quote).map_err(|e| malformed(TEE)(format!("TD quote: {e}")))?;
    verify_td_quote(v, &quote)?;
    check_var_data(&hcl, &quote.body.report_data, "TD quote")?;
    check_initdata(&e.tpm_quote.pcrs, expected)?;
    let attest =
        Attest::parse_quote(&e.tpm_quote.message).map_err(|e| malformed(TEE)(e.to_string()))?;
    Ok(json!({
        "quote": {
            "header": {
                "version": "0400",
                "att_key_type": "0200",
                "tee_type": "81000000",
                "vendor_id": hex::encode(quote.qe_vendor_id),
                "user_data": hex::encode(quote.user_data),
            },
            "body": td_claims(&quote.body),
        },
        "td_attributes": {"debug": quote.body.td_attributes[0] & 1 == 1},
        "tpm": tpm_claims(&e.tpm_quote),
        "init_data": e.tpm_quote.pcrs.get(8).map(hex::encode).unwrap_or_default(),
        "report_data": hex::encode(&attest.extra_data),
    }))
}
