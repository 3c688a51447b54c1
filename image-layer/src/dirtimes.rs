//! Directory mtimes, applied once an unpack has written everything below them.
//!
//! Noted by inode (a layer is one filesystem: every lookup is `RESOLVE_NO_XDEV`), so a
//! directory the archive lists a million times costs one entry, the last listing winning as in
//! tar. Each directory's path is kept too while all of them fit in [`PATH_BUDGET`] bytes, and
//! the times are then set by opening each path beneath the layer (three syscalls a directory;
//! setting a directory's times does not change its parent's, so any order will do). Past the
//! budget the paths are dropped and one walk of the unpacked tree (a bounded number of
//! descriptors at any depth) sets the times of the directories noted.

use std::collections::HashMap;
use std::ffi::CStr;
use std::os::fd::BorrowedFd;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, Timestamps};
use rustix::io::Errno;

use crate::error::{LayerError, quote};
use crate::fsops;
use crate::walk::{self, Step, Visitor};

/// Most bytes of directory paths kept (with a per-path overhead counted): far above a real
/// layer's (thousands of directories, tens of bytes each), far below what a hostile one could
/// make them take.
pub(crate) const PATH_BUDGET: usize = 16 << 20;

/// What a kept path costs besides its bytes (allocation and map entry, roughly).
const PATH_OVERHEAD: usize = 48;

/// The times to give each directory, by inode, and while they fit, the directories' paths.
pub(crate) struct DirTimes {
    times: HashMap<u64, Timestamps>,
    /// `None` once over the budget.
    paths: Option<HashMap<u64, Box<[u8]>>>,
    path_bytes: usize,
    budget: usize,
}

impl Default for DirTimes {
    fn default() -> Self {
        Self::with_budget(PATH_BUDGET)
    }
}

impl DirTimes {
    pub(crate) fn with_budget(budget: usize) -> Self {
        Self {
            times: HashMap::new(),
            paths: Some(HashMap::new()),
            path_bytes: 0,
            budget,
        }
    }

    /// Notes `times` for the directory open as `dir`, at `path` beneath the layer root (empty
    /// for the root), replacing what was noted for its inode, path included: on a filesystem
    /// that reuses inode numbers (ext4, xfs) a new directory can have the number of one
    /// removed earlier.
    pub(crate) fn note(
        &mut self,
        dir: BorrowedFd<'_>,
        path: impl FnOnce() -> Vec<u8>,
        times: Timestamps,
    ) -> Result<(), Errno> {
        let ino = rfs::fstat(dir)?.st_ino;
        self.times.insert(ino, times);
        if let Some(paths) = &mut self.paths {
            let path = path();
            self.path_bytes += path.len() + PATH_OVERHEAD;
            if let Some(old) = paths.get(&ino) {
                self.path_bytes -= old.len() + PATH_OVERHEAD;
            }
            if self.path_bytes > self.budget {
                self.paths = None;
            } else {
                paths.insert(ino, path.into_boxed_slice());
            }
        }
        Ok(())
    }

    /// Forgets the times noted for `name` in `dir` if it is a directory (about to be removed:
    /// a directory made later may get its inode).
    pub(crate) fn forget(&mut self, dir: BorrowedFd<'_>, name: &[u8]) {
        if let Ok(st) = rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
            && FileType::from_raw_mode(st.st_mode) == FileType::Directory
        {
            self.times.remove(&st.st_ino);
            if let Some(paths) = &mut self.paths {
                paths.remove(&st.st_ino);
            }
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.times.is_empty()
    }

    /// Applies the noted times to the directories of the tree below `root` (included).
    pub(crate) fn apply(&mut self, root: BorrowedFd<'_>) -> Result<(), LayerError> {
        if self.times.is_empty() {
            return Ok(());
        }
        if let Some(paths) = &self.paths {
            for (ino, times) in &self.times {
                let Some(path) = paths.get(ino) else { continue };
                match fsops::open_dir_beneath(root, path) {
                    // Only the directory noted: the path may name another one by now.
                    Ok(fd) if rfs::fstat(&fd).is_ok_and(|st| st.st_ino == *ino) => {
                        rfs::futimens(&fd, times)
                            .map_err(|e| LayerError::io("set the mtime of", quote(path), e))?;
                    }
                    Ok(_) => {}
                    // Replaced by a later member (whose times stand) since it was noted.
                    Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => {}
                    Err(e) => return Err(LayerError::io("open", quote(path), e)),
                }
            }
            self.times.clear();
            return Ok(());
        }
        let root = rfs::openat(root, c".", walk::OPEN_DIR, Mode::empty())
            .map_err(|e| LayerError::io("open", "the layer root", e))?;
        let mut setter = Setter {
            times: &mut self.times,
            error: None,
        };
        walk::walk(root, &mut setter)
            .map_err(|e| LayerError::io("set directory mtimes in", "the layer", e))?;
        match setter.error {
            Some((name, e)) => Err(LayerError::io("set the mtime of", quote(&name), e)),
            None => Ok(()),
        }
    }
}

/// The walk of [`DirTimes::apply`]: every directory, times set on the way back up.
struct Setter<'a> {
    times: &'a mut HashMap<u64, Timestamps>,
    error: Option<(Vec<u8>, Errno)>,
}

impl Visitor for Setter<'_> {
    fn entry(&mut self, dir: BorrowedFd<'_>, name: &CStr, file_type: FileType) -> Step {
        if walk::is_dir(dir, name, file_type) {
            Step::Descend
        } else {
            Step::Skip
        }
    }

    fn open_failed(&mut self, _dir: BorrowedFd<'_>, name: &CStr, e: Errno) -> bool {
        // Another mount below the destination (the unpack never wrote there) or gone: nothing
        // of ours. Anything else keeps a directory from its times.
        if !matches!(e, Errno::XDEV | Errno::NOENT) {
            self.error
                .get_or_insert_with(|| (name.to_bytes().to_vec(), e));
        }
        false
    }

    fn leave(&mut self, dir: BorrowedFd<'_>, ino: u64, parent: Option<(BorrowedFd<'_>, &CStr)>) {
        let result = match self.times.remove(&ino) {
            Some(times) => rfs::futimens(dir, &times),
            None => Ok(()),
        };
        if let Err(e) = result {
            let name = parent.map_or(Vec::new(), |(_, name)| name.to_bytes().to_vec());
            self.error.get_or_insert((name, e));
        }
    }

    /// Every noted directory done: the rest of the tree need not be walked.
    fn done(&self) -> bool {
        self.times.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;

    use rustix::fs::Timespec;

    use super::*;

    fn at(sec: i64) -> Timestamps {
        let t = Timespec {
            tv_sec: sec,
            tv_nsec: 0,
        };
        Timestamps {
            last_access: t,
            last_modification: t,
        }
    }

    /// Both ways of applying (paths kept, and the walk once they are over the budget) give
    /// every noted directory its last noted times after files were written into it, and leave
    /// the others alone.
    #[test]
    fn times_land_with_paths_and_with_the_walk() {
        for budget in [PATH_BUDGET, 60] {
            let tmp = tempfile::tempdir().unwrap();
            let root = tmp.path();
            for dir in ["a/b/c", "d", "e"] {
                std::fs::create_dir_all(root.join(dir)).unwrap();
            }
            let root_fd = rfs::open(root, walk::OPEN_DIR, Mode::empty()).unwrap();
            let mut times = DirTimes::with_budget(budget);
            for (i, dir) in ["", "a", "a/b", "a/b/c", "d", "a"].iter().enumerate() {
                let fd = fsops::open_dir_beneath(root_fd.as_fd(), dir.as_bytes()).unwrap();
                let sec = 1_000_000 * (i as i64 + 1);
                times
                    .note(fd.as_fd(), || dir.as_bytes().to_vec(), at(sec))
                    .unwrap();
            }
            assert_eq!(times.paths.is_some(), budget == PATH_BUDGET);
            for dir in ["", "a", "a/b", "a/b/c", "d", "e"] {
                std::fs::write(root.join(dir).join("written-later"), b"").unwrap();
            }
            times.apply(root_fd.as_fd()).unwrap();
            let mtime = |dir: &str| std::fs::metadata(root.join(dir)).unwrap().mtime();
            assert_eq!(mtime(""), 1_000_000, "budget {budget}");
            assert_eq!(mtime("a"), 6_000_000, "the last noting wins");
            assert_eq!(mtime("a/b"), 3_000_000);
            assert_eq!(mtime("a/b/c"), 4_000_000);
            assert_eq!(mtime("d"), 5_000_000);
            assert!(mtime("e") > 6_000_000, "not noted: left alone");
        }
    }

    /// A directory noted at one path and noted again at another (renamed, or on ext4/xfs a
    /// new directory reusing a removed one's inode number) gets the times at its latest path;
    /// a path that names another directory by the time they are applied (a new inode) is
    /// left alone.
    #[test]
    fn the_latest_path_is_kept_and_a_path_naming_another_directory_is_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir(root.join("a")).unwrap();
        std::fs::create_dir(root.join("b")).unwrap();
        let root_fd = rfs::open(root, walk::OPEN_DIR, Mode::empty()).unwrap();
        let mut times = DirTimes::default();
        let note = |times: &mut DirTimes, path: &str, sec| {
            let fd = fsops::open_dir_beneath(root_fd.as_fd(), path.as_bytes()).unwrap();
            times
                .note(fd.as_fd(), || path.as_bytes().to_vec(), at(sec))
                .unwrap();
        };
        note(&mut times, "a", 1_000_000);
        std::fs::rename(root.join("a"), root.join("z")).unwrap();
        note(&mut times, "z", 2_000_000);
        note(&mut times, "b", 3_000_000);
        // `b` replaced by another directory behind the noting's back.
        std::fs::rename(root.join("b"), root.join("b-old")).unwrap();
        std::fs::create_dir(root.join("b")).unwrap();
        times.apply(root_fd.as_fd()).unwrap();
        let mtime = |dir: &str| std::fs::metadata(root.join(dir)).unwrap().mtime();
        assert_eq!(mtime("z"), 2_000_000, "noted again at its new path");
        assert!(mtime("b") > 3_000_000, "another directory now: left alone");
    }
}
