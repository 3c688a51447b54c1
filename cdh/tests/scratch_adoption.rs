//! The layer store is not put on a tmpfs mounted at the scratch space's real place,
//! `/run/kata-containers/image`, even one whose source names a device-mapper device: with no
//! `[image] work_dir` in cdh.toml, the first pull makes the store in the default
//! `/run/image-rs`. The test runs itself again in a private mount namespace (`unshare
//! --mount --propagation private`) over a tmpfs on `/run`, so the host's `/run` is untouched
//! and every mount goes away with the child.

use std::path::Path;
use std::process::Command;

use confidential_data_hub::scratch::{ScratchProbe, Verdict};
use confidential_data_hub::{CdhConfig, Hub};

const IN_NAMESPACE: &str = "CDH_SCRATCH_ADOPTION_IN_NAMESPACE";
const TEST: &str = "a_tmpfs_at_the_scratch_place_is_not_adopted_in_a_private_mount_namespace";

fn skip_or_fail(why: &str) {
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "{why} (CI=true: a missing tool fails)"
    );
    eprintln!("SKIPPED {TEST}: {why}");
}

fn sh(script: &str) {
    let ok = Command::new("sh")
        .args(["-ec", script])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "failed: {script}");
}

#[test]
fn a_tmpfs_at_the_scratch_place_is_not_adopted_in_a_private_mount_namespace() {
    if std::env::var_os(IN_NAMESPACE).is_some() {
        in_namespace();
        return;
    }
    let exe = std::env::current_exe().expect("the test binary");
    let Ok(out) = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--"])
        .arg(&exe)
        .args([TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(IN_NAMESPACE, "1")
        .output()
    else {
        return skip_or_fail("unshare (util-linux) is missing");
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() && stderr.contains("unshare failed") {
        return skip_or_fail(&format!("cannot make a mount namespace: {stderr}"));
    }
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the test in the namespace failed:\n{stdout}\n{stderr}"
    );
}

/// In the private mount namespace: a tmpfs over `/run`, then tmpfs mounts at the scratch
/// space's place, each refused.
fn in_namespace() {
    sh("mount -t tmpfs -o size=16m run-test /run && mkdir -p /run/kata-containers/image");
    let scratch = Path::new(confidential_data_hub::config::SCRATCH_WORK_DIR);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    for (n, source) in ["tmpfs", "/dev/mapper/encrypted_scratch", "/dev/dm-0"]
        .into_iter()
        .enumerate()
    {
        sh(&format!(
            "mount -t tmpfs -o size=4m {source} {}",
            scratch.display()
        ));
        match ScratchProbe::default().judge() {
            Verdict::Refused { found, why } => {
                assert!(found.contains("tmpfs"), "{source}: found {found:?}");
                assert!(
                    why.contains("not /dev/mapper") || why.contains("is no block device"),
                    "{source}: why {why:?}"
                );
            }
            other => panic!("{source}: {other:?}"),
        }
        let hub = Hub::new(CdhConfig::parse("").expect("empty cdh.toml")).expect("a hub");
        let bundle = format!("/run/kata-containers/scratch-test/{n}");
        runtime.block_on(async {
            let pull = hub.pull_image("127.0.0.1:1/x/y:v1", &bundle);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(3), pull).await;
        });
        assert!(
            !scratch.join("overlay").exists() && !scratch.join("layers").exists(),
            "{source}: the layer store went onto the tmpfs"
        );
        assert!(
            Path::new("/run/image-rs/overlay").is_dir(),
            "{source}: the store is not in the default work_dir"
        );
        sh(&format!(
            "umount {} && rm -rf /run/image-rs",
            scratch.display()
        ));
    }
}
