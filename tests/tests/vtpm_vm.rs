//! The simulated Azure vTPM inside a QEMU guest: the guest sees `/dev/tpmrm0` (TPM TIS behind
//! the simulated paravisor), reads the HCL report and quotes its PCRs like an Azure CVM, and the
//! evidence it makes there attests to the local KBS.

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use peerpod_policy::initdata::InitData;
use peerpod_tee::evidence::TpmQuote;
use peerpod_tests::cvm::platform::SnpConfig;
use peerpod_tests::cvm::{CvmOptions, Flavour, SimulatedCvm, attester};
use peerpod_tests::kbs::client::KbsClient;
use peerpod_tests::kbs::verifier::{AmdAnchors, TrustAnchors, Verifier};
use peerpod_tests::kbs::{KbsOptions, RunningKbs};
use peerpod_tests::scratch::ScratchDir;
use peerpod_tests::{TestVm, VmOptions};
use serde_json::{Value, json};

const INITDATA: &str = "version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n\"policy.rego\" = '''\npackage agent_policy\ndefault AllowRequestsFailingPolicy := true\n'''\n";

#[test]
fn guest_attests_through_the_simulated_vtpm() {
    let dir = ScratchDir::new("vtpm-vm").expect("scratch");
    let cvm = SimulatedCvm::start_for_vm(CvmOptions::new(Flavour::Snp, dir.path())).expect("CVM");
    let anchors = cvm.trust_anchors().expect("anchors");
    let mut options = KbsOptions::new(Verifier {
        anchors: TrustAnchors {
            amd: Some(
                AmdAnchors::from_pem(anchors.amd_chain_pem.expect("SNP").as_bytes())
                    .expect("chain"),
            ),
            ..TrustAnchors::default()
        },
        ..Verifier::default()
    });
    let digest = InitData::parse(INITDATA.as_bytes())
        .expect("initdata")
        .digest();
    options.reference_values = serde_json::from_value::<BTreeMap<String, Value>>(json!({
        "snp_launch_measurement": [STANDARD.encode(SnpConfig::default().measurement)],
        "init_data": [hex::encode(digest.azure_vtpm_pcr8())],
    }))
    .expect("refs");
    options
        .resources
        .insert("default/key/vm".into(), b"for the guest".to_vec());
    let kbs = RunningKbs::start(options, "127.0.0.1:0", None).expect("KBS");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = KbsClient::new(&kbs.url(), peerpod_tests::http::client());
    let challenge = rt.block_on(client.auth("az-snp-vtpm")).expect("auth");
    let report_data = client.report_data(&challenge.nonce);

    let mut vm_options = VmOptions::new(VmOptions::built_agent_binary());
    vm_options.extra_files.push((
        "/usr/bin/vtpm-probe".into(),
        PathBuf::from(env!("CARGO_BIN_EXE_vtpm-probe")),
    ));
    vm_options.boot_commands.push("/usr/bin/vtpm-probe".into());
    vm_options.extra_args = cvm.qemu_args();
    vm_options.extra_kernel_args = vec![
        format!("peerpod.report_data={}", hex::encode(&report_data)),
        format!("peerpod.initdata_digest={}", digest.to_hex()),
    ];
    let vm = TestVm::boot(&vm_options).expect("VM with a vTPM");
    let log = vm.serial_log();
    let line = log
        .lines()
        .find_map(|l| {
            l.split_once("PEERPOD-VTPM-PROBE ")
                .map(|(_, rest)| rest.to_string())
        })
        .unwrap_or_else(|| panic!("no probe output; serial log tail:\n{}", vm.serial_tail(40)));
    let probe: Value = serde_json::from_str(line.trim()).expect("probe JSON");
    let hcl = STANDARD
        .decode(probe["hcl_report"].as_str().expect("hcl_report"))
        .expect("base64");
    let quote: TpmQuote = serde_json::from_value(probe["tpm_quote"].clone()).expect("quote");
    assert_eq!(hcl.len(), 2600, "the guest reads Azure's 2600-byte report");
    assert!(
        cvm.paravisor().stats().reports >= 2,
        "{:?}",
        cvm.paravisor().stats()
    );
    drop(vm);

    let vcek = rt
        .block_on(attester::fetch_vcek(&cvm.imds_url()))
        .expect("VCEK");
    let evidence = serde_json::to_value(attester::snp_evidence(quote, hcl, vcek)).expect("json");
    rt.block_on(client.attest(&client.attestation(&challenge.nonce, evidence, Some(INITDATA))))
        .expect("evidence made in the guest attests");
    let secret = rt
        .block_on(client.resource("default/key/vm", None))
        .expect("resource");
    assert_eq!(secret, b"for the guest");
}
