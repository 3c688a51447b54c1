//! The directories of an unpack: the layer's root, the last parent directory opened beneath
//! it (members come grouped by directory), missing parents created, and what a new file
//! inherits from its directory.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{self as rfs, Mode};
use rustix::io::Errno;

use crate::error::{LayerError, quote};
use crate::fsops;

/// The layer's root and the last parent directory opened beneath it.
pub(crate) struct Tree {
    pub(crate) root: OwnedFd,
    /// The last parent directory opened, by its path below the root.
    pub(crate) cache: Option<(Vec<u8>, OwnedFd)>,
    /// Directories created for members whose parents the archive did not list.
    pub(crate) implicit: u64,
    /// What new files inherit in the cached parent directory, and in the root.
    pub(crate) inherit: Option<fsops::Inherit>,
    pub(crate) root_inherit: Option<fsops::Inherit>,
}

/// An error from creating `name`, mapped to a refusal when it means the layer tried to
/// go somewhere it may not.
pub(crate) fn path_error(op: &'static str, name: &[u8], e: Errno) -> LayerError {
    match e {
        Errno::LOOP => LayerError::refused(name, "a path component is a symbolic link"),
        Errno::NOTDIR => LayerError::refused(name, "a path component is not a directory"),
        Errno::XDEV => LayerError::refused(name, "the path leaves the layer directory"),
        Errno::NOTEMPTY => LayerError::refused(name, "replaces a non-empty directory"),
        _ => LayerError::io(op, quote(name), e),
    }
}

impl Tree {
    /// The directory holding a member, created (with its missing ancestors, mode 0755) when
    /// absent, never through a symbolic link.
    pub(crate) fn parent(
        &mut self,
        parents: &[&[u8]],
        name: &[u8],
    ) -> Result<BorrowedFd<'_>, LayerError> {
        if parents.is_empty() {
            return Ok(self.root.as_fd());
        }
        let key = parents.join(&b'/');
        let hit = matches!(&self.cache, Some((k, _)) if *k == key);
        if !hit {
            let fd = match fsops::open_dir_beneath(self.root.as_fd(), &key) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => self.make_parents(parents, name)?,
                Err(e) => return Err(path_error("open the directory of", name, e)),
            };
            self.cache = Some((key, fd));
            self.inherit = None;
        }
        match &self.cache {
            Some((_, fd)) => Ok(fd.as_fd()),
            None => Err(LayerError::io(
                "open the directory of",
                quote(name),
                Errno::NOENT,
            )),
        }
    }

    /// What a file created in the member's directory inherits (computed once per directory).
    pub(crate) fn inherit(
        &mut self,
        parents: &[&[u8]],
        name: &[u8],
        egid: u32,
    ) -> Result<fsops::Inherit, LayerError> {
        let cached = if parents.is_empty() {
            self.root_inherit
        } else {
            // Makes the cached directory this one (forgetting what was learnt of another).
            self.parent(parents, name)?;
            self.inherit
        };
        if let Some(inherit) = cached {
            return Ok(inherit);
        }
        let dir = self.parent(parents, name)?;
        let inherit = fsops::Inherit::of(dir, egid)
            .map_err(|e| LayerError::io("inspect the directory of", quote(name), e))?;
        if parents.is_empty() {
            self.root_inherit = Some(inherit);
        } else {
            self.inherit = Some(inherit);
        }
        Ok(inherit)
    }

    /// A directory's attributes may have changed: forget what was learnt about it.
    pub(crate) fn forget(&mut self) {
        self.cache = None;
        self.inherit = None;
        self.root_inherit = None;
    }

    fn make_parents(&mut self, parents: &[&[u8]], name: &[u8]) -> Result<OwnedFd, LayerError> {
        let mut current: Option<OwnedFd> = None;
        for part in parents {
            let base = current.as_ref().map_or(self.root.as_fd(), |fd| fd.as_fd());
            let next = match fsops::open_dir_beneath(base, part) {
                Err(Errno::NOENT) => {
                    let created = match rfs::mkdirat(base, *part, Mode::from_bits_retain(0o755)) {
                        Ok(()) => true,
                        Err(Errno::EXIST) => false,
                        Err(e) => return Err(path_error("create a directory for", name, e)),
                    };
                    let fd = fsops::open_dir_beneath(base, part)
                        .map_err(|e| path_error("open the directory of", name, e))?;
                    if created {
                        // 0755 whatever the process umask.
                        rfs::fchmod(&fd, Mode::from_bits_retain(0o755)).map_err(|e| {
                            LayerError::io("set the mode of a directory for", quote(name), e)
                        })?;
                        self.implicit += 1;
                    }
                    Ok(fd)
                }
                other => other,
            }
            .map_err(|e| path_error("open the directory of", name, e))?;
            current = Some(next);
        }
        current.ok_or_else(|| LayerError::io("open the directory of", quote(name), Errno::NOENT))
    }

    /// Removes what is at `last` so a member can take its place (tar semantics: a later
    /// member replaces an earlier one of the same name).
    pub(crate) fn clear(
        &mut self,
        parents: &[&[u8]],
        last: &[u8],
        name: &[u8],
    ) -> Result<(), LayerError> {
        let was_dir = {
            let dir = self.parent(parents, name)?;
            fsops::remove(dir, last).map_err(|e| path_error("replace", name, e))?
        };
        if was_dir {
            // A cached descriptor may be the directory just removed.
            self.cache = None;
        }
        Ok(())
    }
}
