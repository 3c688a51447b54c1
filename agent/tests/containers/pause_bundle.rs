//! The sandbox (pause) container from the guest's own `/pause_bundle`, as the pod VM image
//! builds it (podvm-image/build.sh): the statically linked `pause` of the peerpod-pause crate
//! and its config.json. The agent runs it as the sandbox's container; it must be running as
//! `/pause` with the bundle's uid, and SIGTERM ends it with status 0.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::ctx;
use crate::support::*;
use peerpod_protocols::kata::agent;

/// The guest's pause bundle path (upstream's, fixed in the agent).
const PAUSE_BUNDLE: &str = "/pause_bundle";

fn loud_skip(message: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message} (CI=true: an unrequested skip fails)");
    }
    eprintln!("\n*** SKIPPED: {message} ***\n");
}

/// The workspace's `pause`, linked statically as build.sh links it (built here if the one next
/// to this test binary is the plain, dynamically linked build).
fn static_pause() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("no profile directory above the test binary")?;
    let pause = profile_dir.join("pause");
    let is_static = |p: &Path| std::fs::read(p).is_ok_and(|elf| has_no_interpreter(&elf));
    if pause.exists() && is_static(&pause) {
        return Ok(pause);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_owned(),
        Some(other) => other.to_owned(),
        None => return Err("unnamed profile directory".into()),
    };
    let status = Command::new(cargo)
        .args([
            "rustc",
            "--profile",
            &profile,
            "-p",
            "peerpod-pause",
            "--bin",
        ])
        .args(["pause", "--", "-C", "target-feature=+crt-static"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .status()
        .map_err(|e| format!("cargo rustc: {e}"))?;
    if !status.success() || !is_static(&pause) {
        return Err(format!(
            "cargo rustc did not build a static {}",
            pause.display()
        ));
    }
    Ok(pause)
}

/// Whether an ELF64 little-endian file has no PT_INTERP program header (no dynamic loader).
fn has_no_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let field = |at: usize, len: usize| -> Option<u64> {
        let bytes = elf.get(at..at + len)?;
        Some(
            bytes
                .iter()
                .rev()
                .fold(0, |acc, b| acc << 8 | u64::from(*b)),
        )
    };
    let headers = || -> Option<bool> {
        if elf.get(..5)? != b"\x7fELF\x02" {
            return None;
        }
        let phoff = usize::try_from(field(0x20, 8)?).ok()?;
        let phentsize = usize::try_from(field(0x36, 2)?).ok()?;
        let phnum = usize::try_from(field(0x38, 2)?).ok()?;
        for i in 0..phnum {
            if field(phoff + i * phentsize, 4)? == u64::from(PT_INTERP) {
                return Some(false);
            }
        }
        Some(true)
    };
    headers().unwrap_or(false)
}

/// The uid of the live process whose command line is exactly `/pause`, if any.
fn pause_process_uid() -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline != b"/pause\0" {
            continue;
        }
        let status = std::fs::read_to_string(entry.path().join("status")).ok()?;
        let uid = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
        return uid.split_whitespace().next()?.parse().ok();
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn sandbox_container_runs_pause_from_the_guest_bundle() {
    if Path::new(PAUSE_BUNDLE).exists() {
        loud_skip("/pause_bundle already exists on this host: not overwriting it");
        return;
    }
    let pause = match static_pause() {
        Ok(pause) => pause,
        Err(e) => {
            loud_skip(&format!("no static pause binary: {e}"));
            return;
        }
    };
    let bundle = Path::new(PAUSE_BUNDLE);
    std::fs::create_dir_all(bundle.join("rootfs")).expect("create /pause_bundle");
    std::fs::copy(&pause, bundle.join("rootfs/pause")).expect("install pause");
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../podvm-image/pause_bundle/config.json"
        ),
        bundle.join("config.json"),
    )
    .expect("install config.json");

    let (agent, client, _rootfs) = pod("pause-bundle", "policy/examples/allow-all.rego").await;
    let id = format!("pause-{}", std::process::id());
    // The request's process and root are the host's; the pause bundle replaces both.
    let mut request = container_request(&id, Path::new("/nonexistent"), &["/bin/false"]);
    request.storages.push(agent::Storage {
        driver: "image_guest_pull".into(),
        driver_options: vec![
            r#"image_guest_pull={"metadata":{"io.kubernetes.cri.container-type":"sandbox"}}"#
                .into(),
        ],
        source: "registry.k8s.io/pause:3.10".into(),
        fstype: "overlay".into(),
        mount_point: format!("/run/kata-containers/{id}/rootfs"),
        ..Default::default()
    });
    create_and_start(&client, &request).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let uid = pause_process_uid();

    let mut signal = agent::SignalProcessRequest::new();
    signal.container_id = id.clone();
    signal.exec_id = id.clone();
    signal.signal = 15;
    let signalled = client.signal_process(ctx(), &signal).await;
    let status = if signalled.is_ok() {
        Some(wait(&client, &id, &id).await)
    } else {
        None
    };
    let _ = client.remove_container(ctx(), &remove(&id)).await;
    let _ = client
        .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
        .await;
    let _ = std::fs::remove_dir_all(bundle);
    let _ = std::fs::remove_dir_all(format!("/run/kata-containers/{id}"));

    assert_eq!(
        uid,
        Some(65535),
        "no /pause process with the bundle's uid: {}",
        agent.log()
    );
    signalled.expect("SIGTERM to the pause container");
    assert_eq!(status, Some(0), "pause's exit status: {}", agent.log());
}
