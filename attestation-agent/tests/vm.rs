//! The `attestation-agent` binary inside a QEMU guest with the simulated Azure vTPM as its
//! `/dev/tpmrm0`: it binds the initdata into PCR 8, reads the HCL report through the paravisor,
//! fetches the VCEK from IMDS and attests to the local KBS (both reached through QEMU guest
//! forwards), then fetches a resource — the path a peer-pod VM takes at start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use peerpod_policy::initdata::InitData;
use peerpod_tests::cvm::{CvmOptions, Flavour, SimulatedCvm};
use peerpod_tests::kbs::RunningKbs;
use peerpod_tests::scratch::ScratchDir;
use peerpod_tests::{TestVm, VmOptions};
use serde_json::json;

mod common;
use common::*;

fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"))
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

#[test]
fn the_agent_attests_from_inside_a_vm() {
    let dir = ScratchDir::new("aa-vm").expect("scratch");
    let cvm = SimulatedCvm::start_for_vm(CvmOptions::new(Flavour::Snp, dir.path())).expect("CVM");
    let doc = initdata("sha384");
    let digest = InitData::parse(doc.as_bytes()).expect("initdata").digest();
    let mut options = kbs_options(Some(&cvm));
    options.reference_values.insert(
        "init_data".into(),
        json!([hex::encode(digest.azure_vtpm_pcr8())]),
    );
    options
        .resources
        .insert("default/key/vm".into(), b"secret-for-the-guest".to_vec());
    let stats = Arc::clone(&options.stats);
    let kbs = RunningKbs::start(options, "127.0.0.1:0", None).expect("KBS");

    let aa_toml = write(
        dir.path(),
        "aa.toml",
        "[token_configs.kbs]\nurl = \"http://10.0.2.100:8080\"\n\n[peerpod]\n\
         imds_url = \"http://10.0.2.101\"\nallow_sample = false\ninsecure_http = true\n",
    );
    let initdata_toml = write(dir.path(), "initdata.toml", &doc);
    let mut vm_options = VmOptions::new(VmOptions::built_agent_binary());
    for (guest, host) in [
        (
            "/usr/bin/attestation-agent",
            PathBuf::from(env!("CARGO_BIN_EXE_attestation-agent")),
        ),
        ("/etc/aa.toml", aa_toml),
        ("/etc/initdata.toml", initdata_toml),
    ] {
        vm_options.extra_files.push((guest.into(), host));
    }
    vm_options.guest_forwards = vec![
        ("10.0.2.100:8080".into(), kbs.addr().port()),
        ("10.0.2.101:80".into(), port_of(&cvm.imds_url())),
    ];
    vm_options.boot_commands.push(
        "if /usr/bin/attestation-agent -c /etc/aa.toml -t /etc/initdata.toml resource \
         default/key/vm >/tmp/secret 2>/tmp/aa.log; then echo \"PEERPOD-AA-OK $(cat /tmp/secret)\"; \
         else echo PEERPOD-AA-FAILED; cat /tmp/aa.log; fi; \
         /usr/bin/attestation-agent -c /etc/aa.toml tee 2>/dev/null | sed 's/^/PEERPOD-AA-TEE /'"
            .into(),
    );
    vm_options.extra_args = cvm.qemu_args();
    let vm = TestVm::boot(&vm_options).expect("VM with a vTPM");
    let log = vm.serial_log();
    assert!(
        log.contains("PEERPOD-AA-OK secret-for-the-guest"),
        "the agent in the guest did not fetch the resource; serial log tail:\n{}",
        vm.serial_tail(60)
    );
    assert!(
        log.contains("PEERPOD-AA-TEE az-snp-vtpm"),
        "{}",
        vm.serial_tail(60)
    );
    drop(vm);
    assert_eq!(
        stats.attestations.load(Ordering::Relaxed),
        1,
        "one attestation, whose evidence (checked against PCR 8's initdata reference) passed"
    );
    assert!(
        cvm.paravisor().stats().reports >= 2,
        "the boot report, then one refreshed for the report data: {:?}",
        cvm.paravisor().stats()
    );
}
