//! The pod VM's systemd units and files in `podvm/`: `systemd-analyze verify` accepts them
//! (the only complaints allowed are our binaries missing from this machine's
//! `/usr/local/bin`), and the start order that keeps a failed provisioning from serving is
//! what the units say.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::require;

fn podvm() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../podvm")
}

fn units() -> Vec<PathBuf> {
    let dir = podvm().join("etc/systemd/system");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("podvm/etc/systemd/system")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "service" || e == "path"))
        .collect();
    v.sort();
    v
}

/// `key` → values (space-separated values of repeated keys merged) of one unit file.
fn unit(name: &str) -> BTreeMap<String, Vec<String>> {
    let text =
        std::fs::read_to_string(podvm().join("etc/systemd/system").join(name)).expect("unit file");
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once('=')
            && !line.starts_with('#')
            && !line.starts_with(' ')
        {
            out.entry(k.trim().to_owned())
                .or_default()
                .extend(v.split_whitespace().map(str::to_owned));
        }
    }
    out
}

fn has(u: &BTreeMap<String, Vec<String>>, key: &str, value: &str) -> bool {
    u.get(key).is_some_and(|v| v.iter().any(|x| x == value))
}

fn verify(files: &[PathBuf]) -> String {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
        .args(files)
        .current_dir(std::env::temp_dir())
        .output()
        .expect("systemd-analyze");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let ok = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !require(ok, "systemd-analyze (Debian's systemd)") {
        return;
    }
    let files = units();
    assert_eq!(files.len(), 16, "{files:?}");
    let report = verify(&files);
    let ours = [
        "process-user-data",
        "kata-agent",
        "agent-protocol-forwarder",
        "attestation-agent",
        "confidential-data-hub",
        "api-server-rest",
        "azure-ready",
    ];
    let complaints: Vec<&str> = report
        .lines()
        .filter(|l| {
            !ours
                .iter()
                .any(|b| l.contains(&format!("Command /usr/local/bin/{b} is not executable")))
        })
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(complaints.is_empty(), "{complaints:#?}");

    // The check can fail: a unit with a typo is reported.
    let dir = peerpod_tests::scratch::ScratchDir::new("podvm-verify").expect("scratch");
    let bad = dir.path().join("bad.service");
    std::fs::write(
        &bad,
        "[Unit]\nAfterr=x.service\n[Service]\nExecStart=/bin/true\n",
    )
    .expect("bad unit");
    assert!(verify(&[bad]).contains("Afterr"));
}

#[test]
fn provisioning_gates_every_service() {
    for name in [
        "attestation-agent.service",
        "confidential-data-hub.service",
        "kata-agent.service",
        "api-server-rest.service",
        "agent-protocol-forwarder.service",
        "scratch-storage.service",
    ] {
        let u = unit(name);
        assert!(has(&u, "Requires", "process-user-data.service"), "{name}");
        assert!(has(&u, "After", "process-user-data.service"), "{name}");
    }
    // The CDH's first pull sees the scratch space mounted (its layers go there).
    let cdh = unit("confidential-data-hub.service");
    assert!(has(&cdh, "After", "scratch-storage.service"));
    assert!(has(&cdh, "Wants", "scratch-storage.service"));
    let agent = unit("kata-agent.service");
    assert!(has(&agent, "Requires", "scratch-storage.service"));
    assert!(has(&agent, "After", "scratch-storage.service"));
    assert!(has(&agent, "BindsTo", "netns@podns.service"));
    let scratch = unit("scratch-storage.service");
    assert!(has(&scratch, "Before", "kata-agent.service"));
    assert!(has(
        &scratch,
        "ConditionPathExists",
        "/run/peerpod/scratch-space.marker"
    ));
    let pud = unit("process-user-data.service");
    assert!(has(&pud, "Type", "oneshot"));
    assert!(has(&pud, "RemainAfterExit", "yes"));
    // No journal in the image: every unit's errors go to the serial console, in plain text.
    for file in units() {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .expect("unit name");
        if !name.ends_with(".service") {
            continue;
        }
        let u = unit(name);
        assert!(
            has(&u, "StandardError", "tty"),
            "{name}: stderr not on the console"
        );
        for key in ["StandardOutput", "StandardError"] {
            assert!(
                !u.get(key)
                    .is_some_and(|v| v.iter().any(|x| x.contains("journal"))),
                "{name}: {key} goes to a journal the image does not have"
            );
        }
        // Our programs (the AA's and the CDH's command lines continue on indented lines).
        let text = std::fs::read_to_string(&file).expect("unit file");
        if text.contains("/usr/local/bin/") {
            assert!(
                has(&u, "Environment", "NO_COLOR=1"),
                "{name}: colour codes on the console"
            );
        }
    }
    // The front door is served by the agent itself; READY=1 once the socket and 15150 serve.
    assert!(has(&agent, "Type", "notify"));
    assert!(has(&agent, "ExecStart", "--front-door-config"));
    assert!(has(&agent, "ExecStart", "/run/peerpod/apf.json"));
    assert!(
        !has(&agent, "ExecStart", "--imds-nat"),
        "the IMDS (user data, apf.json's TLS key) stays out of the pod's reach by default"
    );
    // A refused initdata fails once and stays failed (the path unit does not restart it).
    assert!(has(&pud, "StartLimitBurst", "1"));
    assert!(has(&pud, "StartLimitIntervalSec", "infinity"));
    let apf = unit("agent-protocol-forwarder.service");
    for flag in [
        "-pod-namespace",
        "/run/netns/podns",
        "-kata-agent-socket",
        "/run/kata-containers/agent.sock",
    ] {
        assert!(has(&apf, "ExecStart", flag), "{flag}");
    }
}

#[test]
fn path_activation_is_upstreams() {
    for (path, watched, service) in [
        (
            "process-user-data.path",
            "/media/cidata/user-data",
            "process-user-data.service",
        ),
        (
            "attestation-agent.path",
            "/run/peerpod/aa.toml",
            "attestation-agent.service",
        ),
        (
            "confidential-data-hub.path",
            "/run/confidential-containers/attestation-agent/attestation-agent.sock",
            "confidential-data-hub.service",
        ),
        (
            "kata-agent.path",
            "/run/confidential-containers/cdh.sock",
            "kata-agent.service",
        ),
        (
            "api-server-rest.path",
            "/run/confidential-containers/cdh.sock",
            "api-server-rest.service",
        ),
        (
            "agent-protocol-forwarder.path",
            "/run/kata-containers/agent.sock",
            "agent-protocol-forwarder.service",
        ),
        (
            "scratch-storage.path",
            "/run/peerpod/scratch-space.marker",
            "scratch-storage.service",
        ),
    ] {
        let u = unit(path);
        assert!(has(&u, "PathExists", watched), "{path}");
        assert!(has(&u, "Unit", service), "{path}");
        assert!(has(&u, "WantedBy", "multi-user.target"), "{path}");
    }
}

#[test]
fn policy_fallback_and_seeds() {
    let etc = podvm().join("etc");
    assert_eq!(
        std::fs::read_link(etc.join("kata-opa/default-policy.rego")).expect("symlink"),
        Path::new("/run/peerpod/policy.rego")
    );
    let policy = std::fs::read_to_string(etc.join("tmpfiles.d/policy.conf")).expect("policy.conf");
    assert!(policy.contains("C       /run/peerpod/policy.rego"));
    assert!(policy.contains("/etc/kata-opa/allow-all.rego"));
    // The seeded allow-all policy is the repository's, and compiles as an agent policy.
    let allow = std::fs::read_to_string(etc.join("kata-opa/allow-all.rego")).expect("allow-all");
    let examples = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/examples/allow-all.rego"),
    )
    .expect("policy/examples/allow-all.rego");
    assert_eq!(allow, examples);
    peerpod_policy::AgentPolicy::validate(&allow).expect("allow-all.rego compiles");
    let auth = std::fs::read_to_string(etc.join("tmpfiles.d/auth.conf")).expect("auth.conf");
    assert!(auth.contains("/etc/kata-oci/empty-auth.json"));
    let empty = std::fs::read_to_string(etc.join("kata-oci/empty-auth.json")).expect("auth");
    assert_eq!(empty.trim(), "{\"auths\":{}}");
    let cfg = std::fs::read_to_string(etc.join("agent-config.toml")).expect("agent-config");
    let table: toml::Table = cfg.parse().expect("agent-config.toml is TOML");
    assert_eq!(
        table.get("server_addr").and_then(|v| v.as_str()),
        Some("unix:///run/kata-containers/agent.sock")
    );
    assert_eq!(
        table.get("guest_components_procs").and_then(|v| v.as_str()),
        Some("none")
    );
}

/// The cidata generator writes a mount ordered before provisioning that systemd accepts, and a
/// drop-in making provisioning want and wait for it, with a bounded (30 s) wait for the
/// device, so provisioning (which runs once per boot) never starts before the user data disk
/// is mounted or known to be missing.
#[test]
fn cidata_generator_mounts_the_disk_before_provisioning() {
    let ok = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !require(ok, "systemd-analyze (Debian's systemd)") {
        return;
    }
    let microsoft = Command::new("systemd-detect-virt")
        .arg("--vm")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "microsoft");
    let dir = peerpod_tests::scratch::ScratchDir::new("podvm-generator").expect("scratch");
    let status = Command::new(podvm().join("etc/systemd/system-generators/podvm-cidata-generator"))
        .arg(dir.path())
        .status()
        .expect("run the generator");
    assert!(status.success());
    let mount = dir.path().join("media-cidata.mount");
    if microsoft {
        // On Hyper-V (Azure) user data comes from the IMDS: no disk to wait for.
        assert!(!mount.exists());
        return;
    }
    let text = std::fs::read_to_string(&mount).expect("media-cidata.mount");
    assert!(text.contains("Before=process-user-data.service"), "{text}");
    assert!(text.contains("Where=/media/cidata"), "{text}");
    assert!(text.contains("Options=ro,nosuid,nodev,noexec"), "{text}");
    assert!(
        dir.path()
            .join("multi-user.target.wants/media-cidata.mount")
            .exists()
    );
    // Provisioning itself waits for the mount, however it is started (a drop-in next to it).
    let dropin =
        std::fs::read_to_string(dir.path().join("process-user-data.service.d/cidata.conf"))
            .expect("process-user-data.service.d/cidata.conf");
    assert!(dropin.contains("Wants=media-cidata.mount"), "{dropin}");
    assert!(dropin.contains("After=media-cidata.mount"), "{dropin}");
    let timeout = std::fs::read_to_string(
        dir.path()
            .join("dev-disk-by\\x2dlabel-cidata.device.d/timeout.conf"),
    )
    .expect("the device's bounded wait");
    assert!(timeout.contains("JobRunningTimeoutSec=30s"), "{timeout}");
    // The unit with the drop-in beside it and the mount pass verify together.
    let unit = dir.path().join("process-user-data.service");
    std::fs::copy(
        podvm().join("etc/systemd/system/process-user-data.service"),
        &unit,
    )
    .expect("copy the unit");
    let report = verify(&[mount, unit]);
    let complaints: Vec<&str> = report
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !l.contains("Command /usr/local/bin/process-user-data is not executable"))
        .collect();
    assert!(complaints.is_empty(), "{complaints:#?}");
}
