//! The container's `/` gets mode 0755 whatever the CDH's umask: under umask 077 the overlay's
//! upper root was made 0700 and a container running as a non-root user could not reach any
//! path. Alone in its test binary: the umask is process-wide.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;
use std::sync::Arc;

use anyhow::Result;
use common::*;
use peerpod_image::resources::NoResources;
use peerpod_image::{LayerDirStore, Puller};

#[tokio::test(flavor = "multi_thread")]
async fn the_container_root_is_0755_under_a_strict_umask() -> Result<()> {
    if !ready() {
        return Ok(());
    }
    let (scratch, registry, _) = registry_with_image(
        "umask",
        "umask/img",
        &[vec![Step::Busybox, Step::Write("/etc/hello", b"hello")]],
    )?;
    let config = insecure_config(&scratch, &registry.addr, "work");
    let work = config.work_dir.clone();
    // Scratch directories stay reachable for the non-root check below.
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755))?;
    let bundle = scratch.path().join("bundle");
    std::fs::create_dir_all(&bundle)?;
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let store = Arc::new(LayerDirStore::open(&work, Default::default())?);
    let p = Puller::new(config, Arc::new(NoResources), store)?;
    let pulled = p
        .pull(&format!("{}/umask/img:v1", registry.addr), &bundle)
        .await;
    rustix::process::umask(old);
    pulled?;
    let rootfs = bundle.join("rootfs");
    let mode = std::fs::metadata(&rootfs)?.permissions().mode() & 0o7777;
    let as_nobody = run(Command::new("chroot")
        .arg("--userspec=65534:65534")
        .arg(&rootfs)
        .args(["/bin/busybox", "cat", "/etc/hello"]));
    p.release(&bundle)?;
    assert_eq!(mode, 0o755, "the container's / is {mode:o}");
    assert_eq!(
        as_nobody?, "hello",
        "a non-root container user reaches its files"
    );
    Ok(())
}
