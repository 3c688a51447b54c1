//! Storages: the mounts a request asks the agent to prepare before containers use them.
//!
//! Supported drivers: `ephemeral` (a tmpfs, such as the sandbox's `/dev/shm`), `local` (an empty
//! directory) and `bind` (a bind mount of a guest path). `image_guest_pull` is prepared before
//! the runtime sees the request ([`crate::guest_pull`]), its root filesystem released here with
//! the container ([`Mounted::pulled`]). Others — block devices, virtio-fs — answer a clear
//! error.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use peerpod_protocols::kata::agent::Storage;

use crate::error::AgentError;

/// A storage the agent mounted, undone by [`Mounted::release`].
#[derive(Debug)]
pub(crate) struct Mounted {
    mount_point: PathBuf,
    mounted: bool,
    /// A directory the storage made, removed (after the unmount) on release: a guest pull's
    /// bundle.
    made: Option<PathBuf>,
}

impl Mounted {
    /// A guest-pulled root filesystem in `bundle`: unmounted with the container when it is a
    /// mount, then the bundle removed.
    pub(crate) fn pulled(pulled: &crate::guest_pull::Pulled) -> Self {
        Self {
            mount_point: pulled.rootfs.clone(),
            mounted: pulled.mounted,
            made: Some(pulled.bundle.clone()),
        }
    }

    /// Unmounts, lazily, so that a busy mount still goes away, and never through a symlink at
    /// the mount point; then removes the directory the storage made, if any (never following a
    /// symlink, emptying a mount on it or entering a mount in it). Releasing twice is harmless.
    pub(crate) fn release(&self) {
        if self.mounted
            && let Err(e) = umount2(
                &self.mount_point,
                MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW,
            )
            // Not a mount (any more), or gone: nothing to undo.
            && e != nix::errno::Errno::EINVAL
            && e != nix::errno::Errno::ENOENT
        {
            tracing::warn!(mount_point = %self.mount_point.display(), error = %e, "cannot unmount storage");
        }
        if let Some(dir) = &self.made
            && let Err(e) = crate::tree::remove_tree(dir)
        {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the storage's directory");
        }
    }
}

/// Undoes what a guest pull left in `bundle` when the container is never made: the
/// `rootfs` mount, if there is one, then the bundle directory.
pub(crate) fn release_bundle(bundle: &Path) {
    Mounted {
        mount_point: bundle.join("rootfs"),
        mounted: true,
        made: Some(bundle.to_path_buf()),
    }
    .release();
}

/// Prepares every storage, or none: every one is checked ([`check`]: driver, paths, not in
/// `state_dir` nor in a layer store) before the first is mounted, and on a failure those
/// already mounted are released.
pub(crate) fn prepare_all(
    storages: &[Storage],
    state_dir: &Path,
) -> Result<Vec<Mounted>, AgentError> {
    for storage in storages {
        check(storage, state_dir)?;
    }
    let mut mounted = Vec::new();
    for storage in storages {
        match prepare(storage, state_dir) {
            Ok(m) => mounted.push(m),
            Err(e) => {
                mounted.iter().for_each(Mounted::release);
                return Err(e);
            }
        }
    }
    Ok(mounted)
}

/// Checks what can be checked of a container's storages without touching anything (their
/// drivers and mount points, with [`check`]), so a request that would fail on them fails before
/// its image is pulled. The `image_guest_pull` storage is the guest pull's and is skipped here.
pub(crate) fn check_all(storages: &[Storage], state_dir: &Path) -> Result<(), AgentError> {
    storages
        .iter()
        .filter(|s| s.driver != "image_guest_pull")
        .try_for_each(|s| check(s, state_dir).map(drop))
}

/// Where the CDH keeps guest-pulled layers: the pod VM's encrypted scratch mount (which the
/// CDH adopts as its store when it finds a mount there) and the CDH's default `work_dir`. A
/// host-sent storage mounted over either (a tmpfs before the first pull, say) would become or
/// shadow the layer store, so CreateSandbox and CreateContainer storages may not mount there.
const IMAGE_STORES: [&str; 2] = ["/run/kata-containers/image", "/run/image-rs"];

/// The storage's mount point, if its driver is supported and the paths acceptable (a bind
/// storage's source too), and not inside one of the [`IMAGE_STORES`] nor inside the agent's own
/// state directory (`state_dir`, where the runtime bundles live: a mount there would receive a
/// container's `config.json` and be cleaned up as agent state). The one check of CreateSandbox
/// and CreateContainer storages.
fn check(storage: &Storage, state_dir: &Path) -> Result<PathBuf, AgentError> {
    let mount_point = checked_path(&storage.mount_point, "mount_point")?;
    if mount_point.starts_with(state_dir) {
        return Err(AgentError::InvalidArgument(format!(
            "storage mount_point {} is inside the agent's state directory {}: mount \
             storages elsewhere (the kata shim uses /run/kata-containers/...)",
            mount_point.display(),
            state_dir.display()
        )));
    }
    if let Some(store) = IMAGE_STORES.iter().find(|d| mount_point.starts_with(d)) {
        return Err(AgentError::InvalidArgument(format!(
            "storage mount_point {} is inside {store}, where guest-pulled image layers are kept \
             (the encrypted scratch space): the host may not mount there",
            mount_point.display()
        )));
    }
    match storage.driver.as_str() {
        "local" | "ephemeral" => {}
        "bind" => {
            checked_path(&storage.source, "source")?;
        }
        "image_guest_pull" => {
            return Err(AgentError::InvalidArgument(
                "storage driver image_guest_pull is for CreateContainer (one per container)"
                    .to_owned(),
            ));
        }
        other => {
            return Err(AgentError::FailedPrecondition(format!(
                "storage driver {other:?} is not supported by this agent (supported: ephemeral, local, bind)"
            )));
        }
    }
    Ok(mount_point)
}

/// Prepares one storage.
fn prepare(storage: &Storage, state_dir: &Path) -> Result<Mounted, AgentError> {
    // Refused before its mount point is made: an unsupported storage leaves nothing behind.
    let mount_point = check(storage, state_dir)?;
    std::fs::create_dir_all(&mount_point).map_err(|e| {
        AgentError::internal(
            format!("cannot create {}", crate::error::quoted(&mount_point)),
            e,
        )
    })?;
    match storage.driver.as_str() {
        "local" => Ok(Mounted {
            mount_point,
            mounted: false,
            made: None,
        }),
        "ephemeral" => {
            let (flags, data) = mount_options(&storage.options);
            let fstype = if storage.fstype.is_empty() {
                "tmpfs"
            } else {
                storage.fstype.as_str()
            };
            if fstype != "tmpfs" {
                return Err(AgentError::InvalidArgument(format!(
                    "ephemeral storage must be tmpfs, not {fstype:?}"
                )));
            }
            mount(
                Some("tmpfs"),
                &mount_point,
                Some("tmpfs"),
                flags,
                data.as_deref(),
            )
            .map_err(|e| {
                AgentError::internal(
                    format!(
                        "cannot mount tmpfs on {}",
                        crate::error::quoted(&mount_point)
                    ),
                    e,
                )
            })?;
            Ok(Mounted {
                mount_point,
                mounted: true,
                made: None,
            })
        }
        "bind" => {
            let source = checked_path(&storage.source, "source")?;
            let (flags, _) = mount_options(&storage.options);
            mount(
                Some(&source),
                &mount_point,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| {
                AgentError::internal(
                    format!(
                        "cannot bind {} on {}",
                        crate::error::quoted(&source),
                        crate::error::quoted(&mount_point)
                    ),
                    e,
                )
            })?;
            let mounted = Mounted {
                mount_point,
                mounted: true,
                made: None,
            };
            // The kernel ignores `ro`, `nosuid`, `nodev` and `noexec` when it makes a bind
            // mount; they take effect only through a remount, one mount at a time: every mount
            // of the (recursive) bind gets them, so nothing under a read-only storage stays
            // writable.
            if !flags.is_empty()
                && let Err(e) = remount_tree(&mounted.mount_point, flags)
            {
                mounted.release();
                return Err(AgentError::internal(
                    format!(
                        "cannot apply {:?} to the bind mount on {}",
                        storage.options,
                        crate::error::quoted(&mounted.mount_point)
                    ),
                    e,
                ));
            }
            Ok(mounted)
        }
        other => Err(AgentError::FailedPrecondition(format!(
            "storage driver {other:?} is not supported by this agent (supported: ephemeral, local, bind)"
        ))),
    }
}

/// An absolute path without `..`.
fn checked_path(text: &str, field: &str) -> Result<PathBuf, AgentError> {
    let path = Path::new(text);
    if !path.is_absolute()
        || path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(AgentError::InvalidArgument(format!(
            "storage {field} {text:?} must be an absolute path without '..'"
        )));
    }
    Ok(path.to_owned())
}

/// Remounts `top` and every mount below it with `flags` added. A remount replaces a mount's
/// flags, so those each one already has (from its source) are kept: a storage never ends up
/// with fewer restrictions than what it binds.
/// A mount whose flags or whose sub-mounts cannot be read fails the storage rather than being
/// remounted with fewer restrictions, or only partly.
fn remount_tree(top: &Path, flags: MsFlags) -> nix::Result<()> {
    for target in mounts_at_or_below(top)? {
        let kept = mount_flags(nix::sys::statvfs::statvfs(&target)?.flags());
        mount(
            None::<&str>,
            &target,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | flags | kept,
            None::<&str>,
        )?;
    }
    Ok(())
}

/// The mount points at or below `top`, in mount order (parents first), from
/// `/proc/self/mountinfo`.
fn mounts_at_or_below(top: &Path) -> nix::Result<Vec<PathBuf>> {
    let errno =
        |e: std::io::Error| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(nix::libc::EIO));
    let top = std::fs::canonicalize(top).map_err(errno)?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(errno)?;
    let mut targets: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .filter(|target| target.starts_with(&top))
        .collect();
    targets.dedup();
    if targets.is_empty() {
        targets.push(top);
    }
    Ok(targets)
}

/// A mountinfo path field: the kernel writes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|_| bytes[i] == b'\\')
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| u8::from_str_radix(digits, 8).ok());
        match octal {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The per-mount flags of a mounted filesystem, as `mount(2)` takes them.
fn mount_flags(flags: nix::sys::statvfs::FsFlags) -> MsFlags {
    use nix::sys::statvfs::FsFlags;
    [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ]
    .into_iter()
    .filter(|(from, _)| flags.contains(*from))
    .fold(MsFlags::empty(), |all, (_, to)| all | to)
}

/// Splits mount options into flags and filesystem data (`size=...,mode=...`).
fn mount_options(options: &[String]) -> (MsFlags, Option<String>) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for option in options {
        match option.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "rw" | "rbind" | "bind" | "defaults" => {}
            other => data.push(other),
        }
    }
    (flags, (!data.is_empty()).then(|| data.join(",")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let (flags, data) = mount_options(&[
            "noexec".into(),
            "nosuid".into(),
            "nodev".into(),
            "mode=1777".into(),
            "size=67108864".into(),
        ]);
        assert_eq!(
            flags,
            MsFlags::MS_NOEXEC | MsFlags::MS_NOSUID | MsFlags::MS_NODEV
        );
        assert_eq!(data.as_deref(), Some("mode=1777,size=67108864"));
    }

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mountinfo("/run/a\\040b\\134c"), "/run/a b\\c");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/odd\\9"), "/odd\\9");
    }

    #[test]
    fn relative_and_escaping_paths_are_refused() {
        assert!(checked_path("run/x", "mount_point").is_err());
        assert!(checked_path("/run/../etc", "mount_point").is_err());
        assert!(checked_path("/run/kata-containers/sandbox/shm", "mount_point").is_ok());
    }

    fn bind(source: &str, mount_point: &str) -> Storage {
        let mut storage = Storage::new();
        storage.driver = "bind".into();
        storage.source = source.into();
        storage.mount_point = mount_point.into();
        storage
    }

    /// A bind storage's source is checked with its mount point, before any pull: relative or
    /// `..` sources are refused by name.
    #[test]
    fn a_bind_source_is_checked_before_anything_is_done() {
        for source in ["run/peerpod", "/run/../etc", ""] {
            let error = check_all(
                &[bind(source, "/run/kata-containers/b/x")],
                Path::new(STATE_DIR),
            )
            .expect_err("a bad source passed");
            assert!(
                error.to_string().contains("storage source"),
                "{source:?}: {error}"
            );
        }
        check_all(
            &[bind("/run/peerpod", "/run/kata-containers/b/x")],
            Path::new(STATE_DIR),
        )
        .expect("a good source");
    }

    const STATE_DIR: &str = "/run/kata-agent";

    /// A host-sent storage over the layer stores (the scratch mount the CDH adopts, or its
    /// default work_dir) is refused, by CreateContainer's check and by prepare (CreateSandbox).
    #[test]
    fn a_mount_point_over_the_image_layer_stores_is_refused() {
        for mount_point in [
            "/run/kata-containers/image",
            "/run/kata-containers/image/layers",
            "/run/image-rs",
            "/run/image-rs/x",
        ] {
            for storage in [bind("/run/peerpod", mount_point), {
                let mut s = bind("", mount_point);
                s.driver = "ephemeral".to_owned();
                s
            }] {
                let error = check_all(std::slice::from_ref(&storage), Path::new(STATE_DIR))
                    .expect_err("a mount point over a layer store passed");
                assert!(
                    error.to_string().contains("image layers"),
                    "{mount_point}: {error}"
                );
                let error = prepare(&storage, Path::new(STATE_DIR))
                    .expect_err("prepare mounted over a layer store");
                assert!(
                    error.to_string().contains("image layers"),
                    "{mount_point}: {error}"
                );
            }
        }
        check_all(
            &[bind("/run/peerpod", "/run/kata-containers/imagery")],
            Path::new(STATE_DIR),
        )
        .expect("a sibling of a layer store is not inside it");
    }

    /// A storage mounted over the agent's own bundle directory would receive the container's
    /// config.json and be emptied as agent state on a failed create: refused before anything.
    #[test]
    fn a_mount_point_in_the_agent_state_directory_is_refused() {
        for mount_point in [
            "/run/kata-agent",
            "/run/kata-agent/bundles/victim",
            "/run/kata-agent/bundles/victim/rootfs",
        ] {
            let error = check_all(&[bind("/run/peerpod", mount_point)], Path::new(STATE_DIR))
                .expect_err("a mount point in the state directory passed");
            assert!(
                error.to_string().contains("state directory"),
                "{mount_point}: {error}"
            );
        }
        check_all(
            &[bind("/run/peerpod", "/run/kata-agent-other/x")],
            Path::new(STATE_DIR),
        )
        .expect("a sibling of the state directory is not inside it");
    }

    /// CreateSandbox's storages (`prepare_all`) get CreateContainer's check, every one before
    /// the first is mounted: a storage in the state directory or over a layer store, listed
    /// after a good one, is refused and the good one was never mounted.
    #[test]
    fn sandbox_storages_are_all_checked_before_anything_is_mounted() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("\n*** SKIPPED: sandbox storage checks need root (mounts) ***\n");
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "CI=true needs root"
            );
            return;
        }
        let dir =
            std::env::temp_dir().join(format!("agent-storage-{}-sandbox", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let state_dir = dir.join("state");
        let good = dir.join("shm");
        let tmpfs = |mount_point: &Path| {
            let mut s = bind("", &mount_point.display().to_string());
            s.driver = "ephemeral".to_owned();
            s
        };
        let mut refusals = Vec::new();
        for bad in [
            tmpfs(&state_dir.join("bundles/victim")),
            tmpfs(Path::new("/run/kata-containers/image")),
            tmpfs(Path::new("/run/image-rs/layers")),
        ] {
            let result = prepare_all(&[tmpfs(&good), bad.clone()], &state_dir);
            // Checked first, the good storage's mount point was never even made.
            let made_good = good.exists();
            match result {
                Ok(mounted) => {
                    mounted.iter().for_each(Mounted::release);
                    refusals.push(format!("{} was mounted", bad.mount_point));
                }
                Err(e) => {
                    let text = e.to_string();
                    if !(text.contains("state directory") || text.contains("image layers")) {
                        refusals.push(format!("{}: {text}", bad.mount_point));
                    }
                }
            }
            if made_good {
                let _ = umount2(&good, MntFlags::MNT_DETACH);
                let _ = std::fs::remove_dir(&good);
                refusals.push(format!("{} was prepared first", good.display()));
            }
        }
        assert!(
            !state_dir.join("bundles/victim").exists(),
            "a mount point was made"
        );
        let _ = std::fs::remove_dir_all(&dir);
        assert!(refusals.is_empty(), "{refusals:?}");
    }

    /// A container's bundle with another storage bind-mounted on it (its source the agent's
    /// own configuration directory) and a symlink where the rootfs mount would be: releasing
    /// the bundle unmounts nothing through the link and removes none of the source's files.
    #[test]
    fn releasing_a_bundle_with_a_bind_on_it_keeps_the_bind_source() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!(
                "\n*** SKIPPED: releasing_a_bundle_with_a_bind_on_it_keeps_the_bind_source needs root ***\n"
            );
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "CI=true needs root"
            );
            return;
        }
        let dir =
            std::env::temp_dir().join(format!("agent-storage-{}-bind-top", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let source = dir.join("peerpod");
        let elsewhere = dir.join("elsewhere");
        std::fs::create_dir_all(&source).expect("source");
        std::fs::create_dir_all(&elsewhere).expect("elsewhere");
        std::fs::write(source.join("initdata.toml"), b"keep").expect("initdata");
        std::fs::write(source.join("aa.toml"), b"keep").expect("aa");
        // A tmpfs mounted elsewhere; `rootfs` in the source links to it.
        mount(
            Some("tmpfs"),
            &elsewhere,
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .expect("tmpfs");
        std::os::unix::fs::symlink(&elsewhere, source.join("rootfs")).expect("link");
        let bundle = dir.join("a");
        let storage = bind(&source.display().to_string(), &bundle.display().to_string());
        let mounted = prepare(&storage, Path::new(STATE_DIR))
            .expect("bind storage of container b on a's bundle");
        release_bundle(&bundle);
        let elsewhere_still_mounted = std::fs::read_to_string("/proc/self/mountinfo")
            .expect("mountinfo")
            .lines()
            .any(|line| line.split(' ').nth(4) == elsewhere.to_str());
        mounted.release();
        let _ = umount2(&elsewhere, MntFlags::MNT_DETACH);
        assert_eq!(
            std::fs::read(source.join("initdata.toml")).expect("kept"),
            b"keep"
        );
        assert_eq!(
            std::fs::read(source.join("aa.toml")).expect("kept"),
            b"keep"
        );
        assert!(
            elsewhere_still_mounted,
            "a mount was undone through a symlink"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
