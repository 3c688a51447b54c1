//! Directory mtimes, applied once an unpack has written everything below them.
//!
//! Noted by inode (a layer is one filesystem: every lookup is `RESOLVE_NO_XDEV`), so a
//! directory the archive lists a million times costs one entry, the last listing winning as in
//! tar; no path is kept. They are applied by one post-order walk of the unpacked tree, each
//! directory after its subtree, holding a bounded number of descriptors at any depth.

use std::collections::HashMap;
use std::ffi::CStr;
use std::os::fd::BorrowedFd;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, Timestamps};
use rustix::io::Errno;

use crate::error::{LayerError, quote};
use crate::walk::{self, Step, Visitor};

/// The times to give each directory, by inode.
#[derive(Default)]
pub(crate) struct DirTimes(HashMap<u64, Timestamps>);

impl DirTimes {
    /// Notes `times` for the directory open as `dir` (replacing what was noted for it).
    pub(crate) fn note(&mut self, dir: BorrowedFd<'_>, times: Timestamps) -> Result<(), Errno> {
        let st = rfs::fstat(dir)?;
        self.0.insert(st.st_ino, times);
        Ok(())
    }

    /// Forgets the times noted for `name` in `dir` if it is a directory (about to be removed:
    /// a directory made later may get its inode).
    pub(crate) fn forget(&mut self, dir: BorrowedFd<'_>, name: &[u8]) {
        if let Ok(st) = rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
            && FileType::from_raw_mode(st.st_mode) == FileType::Directory
        {
            self.0.remove(&st.st_ino);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Applies the noted times to the directories of the tree below `root` (included).
    pub(crate) fn apply(&mut self, root: BorrowedFd<'_>) -> Result<(), LayerError> {
        if self.0.is_empty() {
            return Ok(());
        }
        let root = rfs::openat(root, c".", walk::OPEN_DIR, Mode::empty())
            .map_err(|e| LayerError::io("open", "the layer root", e))?;
        let mut setter = Setter {
            times: &mut self.0,
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
