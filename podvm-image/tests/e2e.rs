//! End to end: the image `make podvm` built, booted under QEMU (TCG) with the simulated Azure
//! SNP vTPM and a cidata ISO, driven over 15150 with mTLS as the kata shim would.
//!
//! Gated, root needed. `PEERPOD_PODVM_E2E=1` uses the image in `target/podvm-image/out` (building
//! it, cargo build in the `podvm` profile included, if there is none). `PEERPOD_PODVM_E2E=test`
//! (CI, `.ci/run`) builds the image once per run from the binaries the test profile already
//! built (`target/debug`, stripped), so no optimised build is needed. Without either the tests print a loud SKIPPED
//! line; under `CI=true` they fail unless `PEERPOD_PODVM_E2E=0` says the skip is meant.

use std::io::Write as _;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use peerpod_podvm::client::{self, ctx};
use peerpod_podvm::{PodPki, PodVm, PodVmOptions, PodvmImage, Timeline, UserData};

#[path = "../../image/tests/common/mod.rs"]
mod image_fixtures;
#[path = "e2e/secure_boot.rs"]
mod secure_boot;
#[path = "e2e/workload.rs"]
mod workload;

/// One TCG guest at a time: two would starve each other on a small machine.
static ONE_VM: Mutex<()> = Mutex::new(());

const BOOT_TIMEOUT: Duration = Duration::from_secs(480);
const ALLOW_ALL: &str = include_str!("../../policy/examples/allow-all.rego");

fn loud(message: &str) {
    let _ = std::io::stderr().write_all(format!("\n*** {message} ***\n").as_bytes());
}

/// The image built from the test profile's binaries, once per test run.
static TEST_IMAGE: OnceLock<Result<PodvmImage, String>> = OnceLock::new();

fn test_profile_image() -> PodvmImage {
    let built = TEST_IMAGE.get_or_init(|| {
        // This test runs from <target>/<profile>/deps; the workspace's binaries are in <profile>.
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let bin_dir = exe
            .parent()
            .and_then(std::path::Path::parent)
            .ok_or_else(|| format!("no profile directory above {}", exe.display()))?;
        loud(&format!(
            "building the pod VM image from {} (PEERPOD_PODVM_E2E=test); the binaries come \
             from `cargo test --workspace` (or `cargo build --bins -p kata-agent -p \
             attestation-agent -p confidential-data-hub -p peerpod-provision -p \
             peerpod-forwarder`)",
            bin_dir.display()
        ));
        let started = Instant::now();
        // Signed with Debian's snakeoil test key, which the Secure Boot test's firmware trusts.
        let keys = peerpod_podvm::secure_boot::snakeoil_signing_key(
            &PodvmImage::default_dir().join("../snakeoil"),
        )
        .map_err(|e| e.to_string())?;
        let image =
            PodvmImage::build_from(bin_dir, Some((&keys.0, &keys.1))).map_err(|e| e.to_string())?;
        loud(&format!(
            "image built in {:.1} s",
            started.elapsed().as_secs_f64()
        ));
        Ok(image)
    });
    built
        .clone()
        .unwrap_or_else(|e| panic!("pod VM image: {e}"))
}

fn image() -> Option<PodvmImage> {
    match std::env::var("PEERPOD_PODVM_E2E").as_deref() {
        Ok("1") => {}
        Ok("test") => return Some(test_profile_image()),
        Ok("0") => {
            loud("SKIPPED: pod VM e2e turned off (PEERPOD_PODVM_E2E=0)");
            return None;
        }
        _ => {
            let message = "the pod VM e2e test did NOT run: it needs `make podvm` and minutes \
                           of TCG boot; set PEERPOD_PODVM_E2E=1 to run it (=test to build \
                           the image from this test build first, as CI does; =0 to skip it on \
                           purpose)";
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{message} (CI=true: an unrequested skip fails)");
            }
            loud(&format!("SKIPPED: {message}"));
            return None;
        }
    }
    let dir = PodvmImage::default_dir();
    Some(match PodvmImage::open(&dir) {
        Ok(image) => image,
        Err(e) => {
            loud(&format!("{e}; building it now"));
            PodvmImage::build(false).expect("make podvm")
        }
    })
}

fn run_dir(name: &str) -> std::path::PathBuf {
    let dir = PodvmImage::default_dir()
        .join("../runs")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Initdata as a pod carries it: the attestation agent's and the CDH's KBS (with the KBS's
/// certificate, as cloud-api-adaptor passes it) and the agent policy.
fn initdata(kbs: &str, kbs_cert: &str) -> String {
    format!(
        "version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n\
         \"aa.toml\" = '''\n[token_configs.kbs]\nurl = \"{kbs}\"\n\
         cert = \"\"\"\n{kbs_cert}\"\"\"\n'''\n\
         \"cdh.toml\" = '''\nsocket = \"unix:///run/confidential-containers/cdh.sock\"\n\
         [kbc]\nname = \"cc_kbc\"\nurl = \"{kbs}\"\nkbs_cert = \"\"\"\n{kbs_cert}\"\"\"\n'''\n\
         \"policy.rego\" = '''\n{ALLOW_ALL}'''\n"
    )
}

/// A KBS certificate (no KBS answers in these tests: nothing in the guest contacts it before
/// a secret is asked for).
fn kbs_cert() -> String {
    peerpod_tests::cvm::certs::TlsCa::generate(&["kbs"])
        .expect("KBS certificate")
        .ca_pem
}

/// Waits until the VM's 15150 answers Check over mTLS with `pki`'s client certificate; returns
/// the client and when it answered. Panics with the console's tail if it never does.
fn wait_serving(
    vm: &mut PodVm,
    pki: &PodPki,
    rt: &tokio::runtime::Runtime,
) -> (client::ShimClient, Instant) {
    let addr = vm.forwarder_addr();
    let served = rt.block_on(client::wait_serving(addr, pki, BOOT_TIMEOUT, || {
        vm.check_running("15150")
    }));
    served.unwrap_or_else(|e| panic!("{e}\nconsole tail:\n{}", vm.console().tail(60)))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

#[test]
fn pod_vm_serves_check_and_a_sandbox_over_mtls_and_refuses_a_client_without_a_certificate() {
    let Some(image) = image() else { return };
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let pki = PodPki::generate().expect("certificates");
    let user_data = UserData::new()
        .file("/run/peerpod/apf.json", pki.apf_json())
        .initdata(&initdata("https://10.0.2.2:8443", &kbs_cert()))
        .to_cloud_config();
    let dir = run_dir("serves");
    let mut vm = PodVm::boot(&PodVmOptions::new(image, user_data, &dir)).expect("boot");
    let addr = vm.forwarder_addr();
    let started = vm.started();
    let rt = runtime();
    let (shim, answered) = wait_serving(&mut vm, &pki, &rt);
    let timeline = Timeline::from_console(vm.console(), Some(answered - started));
    eprintln!("pod VM boot timeline (TCG):\n{}", timeline.render());

    // The console says the root was verified against the command line's hash.
    assert!(
        vm.console().find("podvm-initramfs: root").is_some(),
        "{}",
        vm.console().tail(60)
    );

    // A client without a certificate gets nothing.
    let refused = rt.block_on(client::connect(addr, &pki, false));
    match refused {
        Err(e) => eprintln!("client without a certificate refused: {e}"),
        Ok(c) => {
            let r = rt.block_on(
                c.health
                    .check(ctx(Duration::from_secs(10)), &Default::default()),
            );
            assert!(
                r.is_err(),
                "a client without a certificate was answered: {r:?}"
            );
        }
    }

    // CreateSandbox and DestroySandbox as the shim sends them.
    let t = Instant::now();
    let sandbox =
        peerpod_tests::requests::sandbox("podvm-e2e", "podvm-e2e", peerpod_podvm::memory::SHM)
            .expect("CreateSandbox request");
    rt.block_on(
        shim.agent
            .create_sandbox(ctx(Duration::from_secs(120)), &sandbox),
    )
    .unwrap_or_else(|e| panic!("CreateSandbox: {e}\n{}", vm.console().tail(60)));
    eprintln!("CreateSandbox answered in {:?}", t.elapsed());

    // Inside the guest: every userspace process, read by a container on the guest's root.
    let memory = rt
        .block_on(peerpod_podvm::memory::guest_memory(&shim))
        .unwrap_or_else(|e| panic!("memory probe: {e}\n{}", vm.console().tail(60)));
    eprintln!(
        "guest memory after the run\n{}{}",
        memory.summary(),
        memory.table()
    );
    for service in ["kata-agent", "attestation-age", "confidential-da"] {
        assert!(
            memory.processes.iter().any(|p| p.name.starts_with(service)),
            "{service} is not running in the guest: {:?}",
            memory.processes
        );
    }
    // 15150 is the agent's own front door: no separate forwarder process.
    assert!(
        !memory
            .processes
            .iter()
            .any(|p| p.name.starts_with("agent-protocol-")),
        "a separate agent-protocol-forwarder runs next to the agent's front door: {:?}",
        memory.processes
    );
    assert!(
        vm.console().find("front door serving").is_some(),
        "the agent did not log its front door:\n{}",
        vm.console().tail(60)
    );
    guest_dns_resolves(&rt, &shim, &vm);
    let destroy = peerpod_protocols::kata::agent::DestroySandboxRequest::new();
    rt.block_on(
        shim.agent
            .destroy_sandbox(ctx(Duration::from_secs(120)), &destroy),
    )
    .unwrap_or_else(|e| panic!("DestroySandbox: {e}\n{}", vm.console().tail(60)));
    vm.stop();
    eprintln!("console: {}", vm.console().path().display());
    if std::env::var_os("PEERPOD_PODVM_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A name the host resolves, for the guest's lookup through QEMU's DNS (which asks the host's
/// resolver).
const DNS_NAME: &str = "deb.debian.org";

/// The guest's own DNS (issue 15): `/etc/resolv.conf` names the resolver the DHCP server gave
/// (QEMU user networking: 10.0.2.3; Azure: 168.63.129.16) and a name resolves in the guest's
/// network namespace to what the host's resolver answers. Read by a probe container with the
/// guest's `/etc` and `/run/systemd/resolve` bound in; the lookup runs in PID 1's network
/// namespace (`nsenter`), where the CDH and the attestation agent run (the container's own is
/// the pod's).
fn guest_dns_resolves(rt: &tokio::runtime::Runtime, shim: &client::ShimClient, vm: &PodVm) {
    use peerpod_podvm::memory::{guest_probe_with, read_only_bind};
    let script = format!(
        "echo \"LINK $(readlink /etc/resolv.conf)\"; cat /etc/resolv.conf; \
         echo '--- getent'; nsenter --net=/guestproc/1/ns/net getent ahostsv4 {DNS_NAME}; \
         echo \"GETENT $?\"; echo '--- network'; \
         nsenter --net=/guestproc/1/ns/net ip -brief address"
    );
    let mounts = [
        read_only_bind("/etc", "/etc"),
        read_only_bind("/run/systemd/resolve", "/run/systemd/resolve"),
    ];
    let (out, err, status) = rt
        .block_on(guest_probe_with(
            shim,
            "podvm-dns-probe",
            &script,
            &mounts,
            &["CAP_SYS_ADMIN"],
        ))
        .unwrap_or_else(|e| panic!("DNS probe: {e}\n{}", vm.console().tail(60)));
    eprintln!("guest DNS probe (exit {status:?}):\n{out}{err}");
    assert!(
        out.contains("LINK ../run/systemd/resolve/resolv.conf"),
        "/etc/resolv.conf is not the link to the DHCP-written file: {out:?} {err:?}"
    );
    let (resolv, lookup) = out.split_once("--- getent").unwrap_or((&out, ""));
    let lookup = lookup.split("--- network").next().unwrap_or("");
    assert!(
        resolv.lines().any(|l| l.trim() == "nameserver 10.0.2.3"),
        "the guest's resolv.conf does not name QEMU's DHCP DNS 10.0.2.3: {resolv:?}"
    );
    // The host's answer for the same name (QEMU's DNS forwards to the host's resolver).
    let host: Vec<std::net::IpAddr> =
        match std::net::ToSocketAddrs::to_socket_addrs(&(DNS_NAME, 80)) {
            Ok(addrs) => addrs.map(|a| a.ip()).filter(|ip| ip.is_ipv4()).collect(),
            Err(e) => {
                let message = format!(
                    "SKIPPED: the guest's name lookup: the host itself cannot resolve {DNS_NAME} \
                 ({e}); only the guest's resolv.conf was checked"
                );
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("{message} (CI=true: a skip fails)");
                }
                loud(&message);
                return;
            }
        };
    assert!(
        lookup.contains("GETENT 0"),
        "{DNS_NAME} did not resolve in the guest (the host resolves it to {host:?}): {lookup:?} {err:?}"
    );
    let guest: Vec<std::net::IpAddr> = lookup
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(
        guest.iter().any(|ip| host.contains(ip)),
        "the guest resolved {DNS_NAME} to {guest:?}, the host to {host:?}"
    );
}

#[test]
fn corrupt_initdata_never_serves_15150_and_the_console_says_why() {
    let Some(image) = image() else { return };
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let pki = PodPki::generate().expect("certificates");
    let user_data = UserData::new()
        .file("/run/peerpod/apf.json", pki.apf_json())
        .file("/run/peerpod/initdata", "H4sI-this-is-not-gzip-nor-base64!")
        .to_cloud_config();
    let dir = run_dir("corrupt");
    let mut vm = PodVm::boot(&PodVmOptions::new(image, user_data, &dir)).expect("boot");
    vm.wait_console("provisioning failed", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let line = vm
        .console()
        .find("provisioning failed")
        .map(|l| l.text)
        .unwrap_or_default();
    assert!(
        line.contains("initdata"),
        "the console does not name the initdata: {line}"
    );
    // Nothing may start after a refusal: 15150 stays closed for a good while.
    let addr = vm.forwarder_addr();
    let rt = runtime();
    let probe = rt.block_on(client::wait_serving(
        addr,
        &pki,
        Duration::from_secs(30),
        || vm.check_running("15150 to stay closed"),
    ));
    assert!(
        probe.is_err(),
        "15150 served after a corrupt initdata:\n{}",
        vm.console().tail(60)
    );
    // The refusal happens once and stays: the path unit does not start provisioning again.
    let refusals = vm
        .console()
        .lines()
        .iter()
        .filter(|l| l.text.contains("provisioning failed"))
        .count();
    assert_eq!(
        refusals,
        1,
        "provisioning was retried after a refusal:\n{}",
        vm.console().tail(60)
    );
    for unit in [
        "Started attestation-agent.service",
        "Started kata-agent.service",
        "Started agent-protocol-forwarder.service",
    ] {
        assert!(
            vm.console().find(unit).is_none(),
            "{unit} after a refused initdata"
        );
    }
    vm.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Where the root partition starts on the disk (after 1 MiB of GPT and the ESP).
fn root_offset(image: &PodvmImage) -> u64 {
    (1 + image.number("ESP_MIB").expect("ESP_MIB in image.env")) * 1024 * 1024
}

#[test]
fn an_altered_root_partition_never_boots_and_the_console_says_why() {
    let Some(image) = image() else { return };
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let offset = root_offset(&image);
    let dir = run_dir("tampered");
    let mut options = PodVmOptions::new(image, UserData::new().to_cloud_config(), &dir);
    // The host rewrites the root file system's first block (its superblock) on the disk.
    options.tamper = vec![(offset, vec![0x41; 4096])];
    let mut vm = PodVm::boot(&options).expect("boot");
    vm.wait_console("podvm-initramfs: error", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        vm.console().find("Welcome to").is_none(),
        "systemd started from an altered root:\n{}",
        vm.console().tail(40)
    );
    assert!(
        vm.console().find("podvm-initramfs: root").is_none(),
        "the altered root was reported verified"
    );
    vm.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_uki_boots_through_uefi_with_its_own_root_hash() {
    let Some(image) = image() else { return };
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let roothash = image.roothash().expect("root hash").to_string();
    let dir = run_dir("uefi");
    let mut options = PodVmOptions::new(image, UserData::new().to_cloud_config(), &dir);
    options.uefi = true;
    let mut vm = PodVm::boot(&options).expect("boot");
    let firmware = vm
        .wait_console("podvm-initramfs: started", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    vm.wait_console("Welcome to", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        vm.console().find("BdsDxe: starting").is_some(),
        "not booted by the firmware:\n{}",
        vm.console().tail(40)
    );
    assert!(vm.console().find("podvm-initramfs: root").is_some());
    eprintln!(
        "UKI via OVMF: initramfs at {:.1} s after QEMU start (root hash {roothash} from the UKI's command line)",
        firmware.as_secs_f64()
    );
    vm.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
