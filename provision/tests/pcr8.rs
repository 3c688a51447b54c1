//! Who binds PCR 8: provisioning writes the files and never touches the TPM; the attestation
//! agent, given the provisioned `aa.toml` and `initdata.toml` (as `attestation-agent.service`
//! passes them), extends PCR 8 once on a simulated Azure SNP CVM (swtpm vTPM behind a
//! simulated paravisor). PCR 8 then equals `initdata digest --platform azure-vtpm` of the
//! document (the policy crate's value) computed from `initdata.digest`, for sha256 and sha384;
//! a restarted agent does not extend it again.

mod common;

use attestation_agent::AttestationAgent;
use attestation_agent::config::AaConfig;
use common::*;
use peerpod_policy::initdata::Digest;
use peerpod_tests::cvm::{CvmOptions, Flavour, SimulatedCvm};
use peerpod_tests::scratch::ScratchDir;
use peerpod_tpm::{PcrBank, Tpm};

fn pcr8(tpm: &mut Tpm) -> Vec<u8> {
    tpm.pcr_read(PcrBank::Sha256, &[8])
        .expect("PCR 8")
        .pop()
        .expect("value")
        .to_vec()
}

async fn bound_once(algorithm: &str) {
    let dir = ScratchDir::new(&format!("prov-pcr8-{algorithm}")).expect("scratch");
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).expect("root");
    let doc = initdata_doc(algorithm);
    let ud = dir.path().join("user-data");
    std::fs::write(
        &ud,
        cloud_config(&[("/run/peerpod/initdata", &encoded(&doc))]),
    )
    .expect("user data");
    let out = provision(&root, &["--user-data-file", &ud.display().to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));

    let cvm = SimulatedCvm::start(CvmOptions::new(Flavour::Snp, dir.path().join("cvm")))
        .expect("simulated CVM (swtpm)");
    let mut tpm = Tpm::open(&cvm.tpm_spec()).expect("vTPM");
    assert_eq!(
        pcr8(&mut tpm),
        vec![0u8; 32],
        "provisioning left PCR 8 alone"
    );

    let read = |n: &str| std::fs::read_to_string(peerpod(&root, n)).expect(n);
    let mut config = AaConfig::parse(&read("aa.toml")).expect("the provisioned aa.toml");
    config.tpm = cvm.tpm_spec();
    config.imds_url = cvm.imds_url();
    config.tsm_root = "/nonexistent-tsm".into();
    config.eventlog_path = dir.path().join("eventlog");
    let digest_hex = read("initdata.digest");
    let digest = Digest::from_bytes(
        (0..digest_hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&digest_hex[i..i + 2], 16).expect("hex"))
            .collect(),
    )
    .expect("a digest length");
    let expected = peerpod_policy::initdata::InitData::parse(doc.as_bytes())
        .expect("initdata")
        .digest()
        .azure_vtpm_pcr8();

    for start in ["first start", "restart"] {
        let aa = AttestationAgent::new(&config, Some(read("initdata.toml"))).expect("AA");
        aa.bind_init_data(digest.as_bytes()).await.expect(start);
        assert_eq!(pcr8(&mut tpm), expected.to_vec(), "{algorithm}, {start}");
        assert_eq!(digest.azure_vtpm_pcr8(), expected);
    }
}

#[tokio::test]
async fn sha256_initdata_is_bound_to_pcr8_once_by_the_attestation_agent() {
    bound_once("sha256").await;
}

#[tokio::test]
async fn sha384_initdata_is_bound_to_pcr8_once_by_the_attestation_agent() {
    bound_once("sha384").await;
}
