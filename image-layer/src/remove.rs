//! Removing a directory tree of the store (a layer, a staging directory, a bundle's upper and
//! work directories) with a bounded number of descriptors whatever its depth, never following a
//! symbolic link, never crossing into another mount, and going on past what it cannot remove.
//!
//! `std::fs::remove_dir_all` holds one descriptor per level: a layer or a container's upper
//! directory 2,000 levels deep makes it fail with `EMFILE` under the CDH's `LimitNOFILE` of
//! 1024, and the tree stays for ever. Directories without write or search permission for the
//! owner (a layer may ship `dr-x------` or `d---------`) are given it first.

use std::ffi::{CStr, CString};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode};
use rustix::io::Errno;

use crate::error::{LayerError, quote, show};
use crate::walk::{self, OPEN_DIR, Step, Visitor};

/// Removes `path` and everything below it; a `path` that does not exist is not an error.
///
/// On failure as much as possible is removed and the error names the tree, how many entries
/// are left over and the first of them with its cause.
pub(crate) fn remove_tree(path: &Path) -> Result<(), LayerError> {
    let cpath = CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        LayerError::InvalidArgument(format!("the path {} contains a NUL byte", show(path)))
    })?;
    let (parent, name) = (rfs::CWD, cpath.as_c_str());
    let mut remover = Remover::default();
    let root = match rfs::openat(parent, name, OPEN_DIR, Mode::empty()) {
        Ok(fd) => Some(fd),
        Err(Errno::NOENT) => return Ok(()),
        // Not a directory (or a symbolic link): the entry itself goes.
        Err(Errno::NOTDIR | Errno::LOOP) => {
            return match rfs::unlinkat(parent, name, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => Ok(()),
                Err(e) => Err(LayerError::io("remove", show(path), e)),
            };
        }
        Err(e) => {
            if remover.open_failed(parent, name, e) {
                Some(
                    rfs::openat(parent, name, OPEN_DIR, Mode::empty())
                        .map_err(|e| LayerError::io("remove", show(path), e))?,
                )
            } else {
                None
            }
        }
    };
    if let Some(root) = root {
        remover.remove(parent, name, root);
    }
    remover.outcome(path)
}

/// Removes everything below the open directory `root`, then `root` itself, which is the entry
/// `name` of the open directory `parent`: the same walk as the store's removals (a bounded
/// number of descriptors at any depth, no symbolic link followed, no other mount entered, going
/// on past what it cannot remove). How `root` was opened is the caller's: one that must refuse
/// a mount or a symbolic link at the top (the kata-agent's bundles) opens it so and hands it
/// over. `path` only names the tree in the error, which says how many entries are left over
/// and the first of them with its cause. Directories the walk cannot enter or empty are given
/// owner permission first; `parent` keeps its own.
pub fn remove_opened_tree(
    parent: BorrowedFd<'_>,
    name: &CStr,
    root: OwnedFd,
    path: &Path,
) -> Result<(), LayerError> {
    let mut remover = Remover::default();
    remover.remove(parent, name, root);
    remover.outcome(path)
}

/// Unlinks what the walk finds, descending into non-empty directories and removing each once
/// emptied; records what it cannot remove and goes on.
#[derive(Default)]
struct Remover {
    first: Option<(CString, Errno)>,
    left: u64,
}

impl Remover {
    /// Walks `root` (the entry `name` of `parent`), removing what it finds, then `name`.
    fn remove(&mut self, parent: BorrowedFd<'_>, name: &CStr, root: OwnedFd) {
        if let Err(e) = walk::walk(root, self) {
            self.failed(name, e);
        }
        // The directory holding the tree is not the tree's: its permissions stay as they are.
        match rfs::unlinkat(parent, name, AtFlags::REMOVEDIR) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(_) if self.first.is_some() => {}
            Err(e) => self.failed(name, e),
        }
    }

    /// `Ok` when everything went, else what is left over under `path`.
    fn outcome(self, path: &Path) -> Result<(), LayerError> {
        match self.first {
            None => Ok(()),
            Some((entry, e)) => Err(LayerError::io(
                "remove",
                format!(
                    "{} ({} entries could not be removed, the first {})",
                    show(path),
                    self.left,
                    quote(entry.as_bytes())
                ),
                e,
            )),
        }
    }

    fn failed(&mut self, name: &CStr, e: Errno) {
        self.left += 1;
        if self.first.is_none() {
            self.first = Some((name.to_owned(), e));
        }
    }

    /// Removes the empty directory `name` of `dir`, making `dir` writable if it has to.
    /// Answers `Err(NOTEMPTY)` when it is not empty; other failures are recorded.
    fn try_rmdir(&mut self, dir: BorrowedFd<'_>, name: &CStr) -> Result<(), Errno> {
        match retry_writable(dir, || rfs::unlinkat(dir, name, AtFlags::REMOVEDIR)) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(Errno::NOTEMPTY | Errno::EXIST) => Err(Errno::NOTEMPTY),
            Err(e) => {
                self.failed(name, e);
                Ok(())
            }
        }
    }

    fn rmdir(&mut self, dir: BorrowedFd<'_>, name: &CStr) {
        if let Err(e) = self.try_rmdir(dir, name) {
            // Left non-empty by an entry that could not be removed (recorded already), or
            // filled concurrently.
            if self.first.is_none() {
                self.failed(name, e);
            }
        }
    }
}

/// Runs `op`, and once more after adding owner write permission to `dir` when it is refused.
fn retry_writable(
    dir: BorrowedFd<'_>,
    mut op: impl FnMut() -> Result<(), Errno>,
) -> Result<(), Errno> {
    match op() {
        Err(Errno::ACCESS | Errno::PERM) if walk::make_writable(dir).is_ok() => op(),
        other => other,
    }
}

impl Visitor for Remover {
    fn entry(&mut self, dir: BorrowedFd<'_>, name: &CStr, file_type: FileType) -> Step {
        if walk::is_dir(dir, name, file_type) {
            // Empty ones go at once, without being opened.
            return match self.try_rmdir(dir, name) {
                Ok(()) => Step::Skip,
                Err(_) => Step::Descend,
            };
        }
        match retry_writable(dir, || rfs::unlinkat(dir, name, AtFlags::empty())) {
            Ok(()) | Err(Errno::NOENT) => Step::Skip,
            // Replaced by a directory since it was listed.
            Err(Errno::ISDIR) => Step::Descend,
            Err(e) => {
                self.failed(name, e);
                Step::Skip
            }
        }
    }

    fn open_failed(&mut self, dir: BorrowedFd<'_>, name: &CStr, e: Errno) -> bool {
        match e {
            Errno::ACCESS => {
                if walk::make_accessible(dir, name).is_ok() {
                    return true;
                }
                self.failed(name, e);
            }
            Errno::NOENT => {}
            // Replaced by something else since it was listed: that goes instead.
            Errno::NOTDIR | Errno::LOOP => {
                if let Err(e) = rfs::unlinkat(dir, name, AtFlags::empty())
                    && e != Errno::NOENT
                {
                    self.failed(name, e);
                }
            }
            // A mount point (XDEV) and anything else stay, with what is below them.
            e => self.failed(name, e),
        }
        false
    }

    fn leave(&mut self, _dir: BorrowedFd<'_>, _ino: u64, parent: Option<(BorrowedFd<'_>, &CStr)>) {
        if let Some((parent, name)) = parent {
            self.rmdir(parent, name);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn files_symlinks_and_locked_directories_go_but_a_link_target_stays() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("keep"), b"k").unwrap();
        let tree = tmp.path().join("tree");
        std::fs::create_dir_all(tree.join("a/b/c")).unwrap();
        std::fs::write(tree.join("a/b/c/f"), b"x").unwrap();
        std::os::unix::fs::symlink(&target, tree.join("a/link")).unwrap();
        std::fs::create_dir(tree.join("a/empty")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        for (dir, mode) in [("a/b/c", 0o500), ("a/b", 0o000), ("a/empty", 0)] {
            std::fs::set_permissions(tree.join(dir), std::fs::Permissions::from_mode(mode))
                .unwrap();
        }
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        assert_eq!(std::fs::read(target.join("keep")).unwrap(), b"k");
        remove_tree(&tree).unwrap();
        // A symbolic link as the root: the link goes, not its target's contents.
        std::os::unix::fs::symlink(&target, &tree).unwrap();
        remove_tree(&tree).unwrap();
        assert!(std::fs::symlink_metadata(&tree).is_err());
        assert!(target.join("keep").exists());
    }

    /// A tree its caller opened (as the kata-agent opens a bundle): removed with the same walk,
    /// the top unlinked from the parent it was opened in; a link's target stays; what is left
    /// over is named with the caller's path.
    #[test]
    fn a_tree_opened_by_the_caller_is_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("keep"), b"k").unwrap();
        let tree = tmp.path().join("bundle");
        std::fs::create_dir_all(tree.join("rootfs/a/b")).unwrap();
        std::fs::write(tree.join("config.json"), b"{}").unwrap();
        std::os::unix::fs::symlink(&target, tree.join("rootfs/a/link")).unwrap();
        let parent = rfs::open(tmp.path(), OPEN_DIR, Mode::empty()).unwrap();
        let root = rfs::openat(&parent, c"bundle", OPEN_DIR, Mode::empty()).unwrap();
        remove_opened_tree(parent.as_fd(), c"bundle", root, &tree).unwrap();
        assert!(!tree.exists());
        assert!(target.join("keep").exists());
    }

    /// Without root's permission override (an unprivileged owner), directories without write
    /// or search permission are opened up so their contents can go; as root, skipped loudly.
    #[test]
    fn an_unprivileged_owner_removes_locked_directories() {
        if !rustix::process::geteuid().is_root() {
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "needs root to switch one thread to nobody (CI=true: not skipped)"
            );
            eprintln!("\n*** SKIPPED: needs root to switch one thread to nobody ***");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("tree");
        std::fs::create_dir(&tree).unwrap();
        let nobody = 65534;
        for dir in [tmp.path(), &tree] {
            std::os::unix::fs::chown(dir, Some(nobody), Some(nobody)).unwrap();
        }
        let outcome = std::thread::spawn({
            let tree = tree.clone();
            move || {
                // This thread only (raw per-thread credentials), all of them: no capability left.
                rustix::thread::set_thread_groups(&[]).unwrap();
                let gid = rustix::process::Gid::from_raw(nobody);
                let uid = rustix::process::Uid::from_raw(nobody);
                rustix::thread::set_thread_res_gid(gid, gid, gid).unwrap();
                rustix::thread::set_thread_res_uid(uid, uid, uid).unwrap();
                use std::os::unix::fs::PermissionsExt;
                std::fs::create_dir_all(tree.join("a/b/c")).unwrap();
                std::fs::write(tree.join("a/b/c/f"), b"x").unwrap();
                std::fs::write(tree.join("a/g"), b"x").unwrap();
                for (dir, mode) in [("a/b/c", 0o500), ("a/b", 0o000), ("a", 0o100)] {
                    std::fs::set_permissions(tree.join(dir), PermissionsExt::from_mode(mode))
                        .unwrap();
                }
                // Locked as made: std gives up.
                assert!(std::fs::remove_dir_all(&tree).is_err());
                remove_tree(&tree).map_err(|e| e.to_string())
            }
        })
        .join()
        .unwrap();
        outcome.unwrap();
        assert!(!tree.exists());
    }
}
