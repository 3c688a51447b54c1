//! Removing a directory tree the host or a container may have shaped (a container's bundle):
//! never following a symlink, never crossing into a mount (a bind mount of the same file system
//! included), and with a bounded number of open descriptors however deep the tree is.
//!
//! The top is the agent's to open: from its parent, with `openat2` and `RESOLVE_NO_XDEV |
//! RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH`, and refused when its mount id differs from its
//! parent's, so a mount on the top (another container's bind storage, say) is never emptied.
//! Below the top, the walk is the layer store's ([`peerpod_image_layer::remove_opened_tree`],
//! one implementation for both): one directory open at a time, entered without following a
//! symlink and never on another mount, climbed back by `..` with the parent's identity
//! checked, so a directory moved during the walk stops it instead of sending it elsewhere.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{Mode, SFlag, fstatat};
use nix::unistd::{UnlinkatFlags, unlinkat};

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

fn err(errno: Errno, what: &str) -> io::Error {
    io::Error::new(io::Error::from(errno).kind(), format!("{what}: {errno}"))
}

/// Removes `path` and everything under it. A missing `path` is not an error; a symlink or a
/// file at `path` is unlinked (not followed). `path` itself is opened from its parent
/// directory without following a symlink or crossing a mount: a mount on `path` (a bind mount
/// of another directory, say) is refused, never emptied. A mount anywhere under it is not
/// entered (it and the directories holding it stay, and the removal answers an error naming
/// what is left); a directory moved during the walk stops the walk, with an error.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let name = match path.file_name() {
        Some(name) => CString::new(name.as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the path"))?,
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} does not end in a name", path.display()),
            ));
        }
    };
    let parent_path = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let parent: OwnedFd = match nix::fcntl::open(parent_path, dir_flags(), Mode::empty()) {
        Ok(parent) => parent,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(err(e, "cannot open the parent directory")),
    };
    let stat = match fstatat(
        parent.as_fd(),
        name.as_c_str(),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Ok(stat) => stat,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(err(e, "cannot stat the directory")),
    };
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFDIR {
        return match unlinkat(parent.as_fd(), name.as_c_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(err(e, "cannot remove the file")),
        };
    }
    let root = openat2(parent.as_fd(), name.as_c_str(), beneath())
        .map_err(|e| err(e, "cannot open the directory (a mount or a symlink?)"))?;
    // RESOLVE_NO_XDEV already refuses a mount on the top; the mount ids say so once more, as
    // this is the one step where a mount would send the walk into someone else's files.
    if mount_id(&root)? != mount_id(&parent)? {
        return Err(io::Error::other("the directory is a mount point"));
    }
    peerpod_image_layer::remove_opened_tree(parent.as_fd(), name.as_c_str(), root, path)
        .map_err(io::Error::other)
}

/// How the top directory is opened: one name, no symlink, no mount crossed.
fn beneath() -> OpenHow {
    OpenHow::new().flags(dir_flags()).resolve(
        ResolveFlag::RESOLVE_NO_XDEV
            | ResolveFlag::RESOLVE_NO_SYMLINKS
            | ResolveFlag::RESOLVE_BENEATH,
    )
}

/// The id of the mount an open descriptor is on, from `/proc/self/fdinfo` (what `statx`'s
/// `STATX_MNT_ID` answers, without unsafe code).
fn mount_id(fd: &OwnedFd) -> io::Result<u64> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
    info.lines()
        .find_map(|line| line.strip_prefix("mnt_id:"))
        .and_then(|value| value.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no mnt_id in /proc/self/fdinfo"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::openat;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("agent-tree-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch");
        dir
    }

    fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
    }

    /// Files, links to outside, a FIFO, nested directories: all gone; what the links point at
    /// is untouched.
    #[test]
    fn removes_a_tree_without_following_links() {
        let dir = scratch("links");
        let outside = dir.join("outside");
        std::fs::create_dir_all(outside.join("keep")).expect("outside");
        std::fs::write(outside.join("keep/file"), b"keep").expect("file");
        let tree = dir.join("tree");
        std::fs::create_dir_all(tree.join("a/b/c")).expect("tree");
        std::fs::write(tree.join("a/b/c/f"), b"x").expect("f");
        std::fs::write(tree.join("top"), b"x").expect("top");
        std::os::unix::fs::symlink(&outside, tree.join("a/to-outside")).expect("link");
        std::os::unix::fs::symlink(outside.join("keep/file"), tree.join("a/b/file-link"))
            .expect("link");
        nix::unistd::mkfifo(&tree.join("a/fifo"), Mode::from_bits_truncate(0o600)).expect("fifo");
        remove_tree(&tree).expect("removed");
        assert!(!tree.exists());
        assert_eq!(
            std::fs::read(outside.join("keep/file")).expect("kept"),
            b"keep"
        );
        // Missing: fine. A symlink at the top: unlinked, not followed.
        remove_tree(&tree).expect("missing is fine");
        std::os::unix::fs::symlink(&outside, &tree).expect("link");
        remove_tree(&tree).expect("link removed");
        assert!(outside.join("keep/file").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// 5,000 levels deep (deeper than the descriptor limit of 1,024 a recursive walk holding one
    /// descriptor per level would need): removed with no more descriptors open than before.
    #[test]
    fn a_deep_tree_is_removed_with_constant_descriptors() {
        let dir = scratch("deep");
        let tree = dir.join("tree");
        std::fs::create_dir(&tree).expect("tree");
        let mut level: OwnedFd = nix::fcntl::open(&tree, dir_flags(), Mode::empty()).expect("open");
        for i in 0..5000 {
            nix::sys::stat::mkdirat(&level, c"d", Mode::from_bits_truncate(0o755)).expect("mkdir");
            if i % 100 == 0 {
                let _ = openat(
                    &level,
                    c"f",
                    OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .expect("file");
            }
            level = openat(&level, c"d", dir_flags(), Mode::empty()).expect("down");
        }
        drop(level);
        let before = open_fds();
        remove_tree(&tree).expect("removed");
        assert!(!tree.exists());
        assert!(open_fds() <= before, "descriptors leaked");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A bind mount under the tree (of a directory on the same file system): the walk stops at
    /// it and nothing in the mounted directory is removed.
    #[test]
    fn a_mount_inside_is_not_entered() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("\n*** SKIPPED: a_mount_inside_is_not_entered needs root for mounts ***\n");
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "CI=true needs root"
            );
            return;
        }
        let dir = scratch("mount");
        let source = dir.join("source");
        std::fs::create_dir_all(source.join("deep")).expect("source");
        std::fs::write(source.join("deep/precious"), b"keep").expect("precious");
        let tree = dir.join("tree");
        std::fs::create_dir_all(tree.join("x/mnt")).expect("tree");
        nix::mount::mount(
            Some(&source),
            &tree.join("x/mnt"),
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .expect("bind");
        let result = remove_tree(&tree);
        let _ = nix::mount::umount2(&tree.join("x/mnt"), nix::mount::MntFlags::MNT_DETACH);
        assert!(result.is_err(), "a mount was walked into");
        assert_eq!(
            std::fs::read(source.join("deep/precious")).expect("kept"),
            b"keep"
        );
        // Unmounted, the rest goes.
        remove_tree(&tree).expect("removed");
        assert!(!tree.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A bind mount on the top directory itself (another container's storage mounted where
    /// this one's bundle is): refused, and nothing in the bind source is removed.
    #[test]
    fn a_mount_on_the_top_is_not_emptied() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!(
                "\n*** SKIPPED: a_mount_on_the_top_is_not_emptied needs root for mounts ***\n"
            );
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "CI=true needs root"
            );
            return;
        }
        let dir = scratch("top-mount");
        let source = dir.join("peerpod");
        std::fs::create_dir_all(source.join("sub")).expect("source");
        std::fs::write(source.join("initdata.toml"), b"keep").expect("initdata");
        std::fs::write(source.join("sub/cdh.toml"), b"keep").expect("cdh");
        let top = dir.join("bundle");
        std::fs::create_dir(&top).expect("top");
        nix::mount::mount(
            Some(&source),
            &top,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .expect("bind");
        let result = remove_tree(&top);
        let _ = nix::mount::umount2(&top, nix::mount::MntFlags::MNT_DETACH);
        let error = result.expect_err("a mount on the top was emptied");
        assert!(error.to_string().contains("a mount"), "{error}");
        assert_eq!(
            std::fs::read(source.join("initdata.toml")).expect("kept"),
            b"keep"
        );
        assert_eq!(
            std::fs::read(source.join("sub/cdh.toml")).expect("kept"),
            b"keep"
        );
        // Unmounted, the directory goes (and the source stays).
        remove_tree(&top).expect("removed");
        assert!(!top.exists());
        assert!(source.join("initdata.toml").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A path with no name at its end is refused, not resolved to something else.
    #[test]
    fn a_path_without_a_name_is_refused() {
        assert!(remove_tree(Path::new("/")).is_err());
        assert!(remove_tree(Path::new("/tmp/..")).is_err());
    }
}
