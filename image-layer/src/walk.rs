//! Depth-first walks over a directory tree holding at most two descriptors whatever its
//! depth (a recursive walk holds one per level: a tree 2,000 levels deep exhausts a
//! `LimitNOFILE` of 1024).
//!
//! Only the directory being listed is open. A subdirectory is entered with `openat(O_NOFOLLOW)`
//! (a symbolic link is never followed) and its parent closed; the walk climbs back with
//! `openat("..")`, checking that the directory reached is the one it came from (device and inode
//! recorded on the way down), so a tree moved during the walk stops it rather than sending it
//! elsewhere. The walk does not cross into another mount. Memory: per level of the current
//! path, the names of the subdirectories still to visit.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{self as rfs, AtFlags, Dir, FileType, Mode, OFlags, StatxFlags};
use rustix::io::Errno;

/// Opening a directory of the tree: never through a symbolic link.
pub(crate) const OPEN_DIR: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// What to do with an entry found while listing a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing more (the visitor handled it, or it is not a directory).
    Skip,
    /// Visit the subdirectory's entries, then [`Visitor::leave`] it.
    Descend,
}

/// What a walk does at each entry.
pub(crate) trait Visitor {
    /// An entry of the open directory `dir` (never `.` or `..`), of type `file_type` as the
    /// directory listing reports it (`Unknown` on filesystems that do not say).
    fn entry(&mut self, dir: BorrowedFd<'_>, name: &CStr, file_type: FileType) -> Step;

    /// The subdirectory `name` of `dir` could not be entered: `Errno::XDEV` when it is another
    /// mount. Answer `true` to try once more (after making it accessible, say).
    fn open_failed(&mut self, dir: BorrowedFd<'_>, name: &CStr, e: Errno) -> bool;

    /// Everything below the open directory `dir` (inode `ino`) has been visited. `parent` is
    /// the open directory holding it and its name there; `None` for the root of the walk.
    fn leave(&mut self, dir: BorrowedFd<'_>, ino: u64, parent: Option<(BorrowedFd<'_>, &CStr)>);

    /// Whether the walk may stop now.
    fn done(&self) -> bool {
        false
    }
}

/// Where a directory is: its device, inode and (when the kernel says) mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Place {
    dev: (u32, u32),
    ino: u64,
    mount: Option<u64>,
}

fn place(fd: BorrowedFd<'_>) -> Result<Place, Errno> {
    match rfs::statx(
        fd,
        c"",
        AtFlags::EMPTY_PATH,
        StatxFlags::INO | StatxFlags::MNT_ID,
    ) {
        Ok(st) => Ok(Place {
            dev: (st.stx_dev_major, st.stx_dev_minor),
            ino: st.stx_ino,
            mount: (st.stx_mask & StatxFlags::MNT_ID.bits() != 0).then_some(st.stx_mnt_id),
        }),
        // Before Linux 4.11: no mount IDs, the device tells mounts of different filesystems.
        Err(Errno::NOSYS) => {
            let st = rfs::fstat(fd)?;
            Ok(Place {
                dev: (rfs::major(st.st_dev), rfs::minor(st.st_dev)),
                ino: st.st_ino,
                mount: None,
            })
        }
        Err(e) => Err(e),
    }
}

impl Place {
    fn same_mount(&self, other: &Self) -> bool {
        self.dev == other.dev
            && match (self.mount, other.mount) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

/// One directory on the current path.
struct Frame {
    /// Its name in its parent (empty for the root).
    name: CString,
    place: Place,
    /// Subdirectories still to visit, each name followed by a NUL byte.
    pending: Vec<u8>,
}

impl Frame {
    fn pop(&mut self) -> Option<CString> {
        let body = self.pending.strip_suffix(&[0])?;
        let start = body.iter().rposition(|b| *b == 0).map_or(0, |i| i + 1);
        let name = CString::new(&body[start..]).ok();
        self.pending.truncate(start);
        name
    }
}

/// Walks the tree below the open directory `root`, depth first, calling `visitor` for every
/// entry and leaving every directory (the root last) after its entries. Fails when a directory
/// cannot be listed or the tree moved under the walk; what the visitor reports it keeps.
pub(crate) fn walk(root: OwnedFd, visitor: &mut impl Visitor) -> Result<(), Errno> {
    let root_place = place(root.as_fd())?;
    let mut stack = vec![Frame {
        name: CString::default(),
        place: root_place,
        pending: Vec::new(),
    }];
    // The directory being visited, listed through its own descriptor.
    let mut cur = Dir::new(root)?;
    if let Some(top) = stack.last_mut() {
        list(&mut cur, visitor, &mut top.pending)?;
    }
    while let Some(top) = stack.last_mut() {
        if visitor.done() {
            return Ok(());
        }
        if let Some(name) = top.pop() {
            let Some((child, child_place)) = enter(cur.fd()?, &name, &root_place, visitor)? else {
                continue;
            };
            let mut frame = Frame {
                name,
                place: child_place,
                pending: Vec::new(),
            };
            let mut child = Dir::new(child)?;
            list(&mut child, visitor, &mut frame.pending)?;
            stack.push(frame);
            cur = child;
            continue;
        }
        let Some(done) = stack.pop() else { break };
        let Some(up) = stack.last() else {
            visitor.leave(cur.fd()?, done.place.ino, None);
            return Ok(());
        };
        let parent = rfs::openat(cur.fd()?, c"..", OPEN_DIR, Mode::empty())?;
        let parent_place = place(parent.as_fd())?;
        if (parent_place.dev, parent_place.ino) != (up.place.dev, up.place.ino) {
            // Renamed elsewhere while we were below it.
            return Err(Errno::STALE);
        }
        visitor.leave(
            cur.fd()?,
            done.place.ino,
            Some((parent.as_fd(), &done.name)),
        );
        cur = Dir::new(parent)?;
    }
    Ok(())
}

/// Lists `dir`, handing every entry to the visitor and keeping the subdirectories it wants
/// visited.
fn list(dir: &mut Dir, visitor: &mut impl Visitor, pending: &mut Vec<u8>) -> Result<(), Errno> {
    while let Some(entry) = dir.read() {
        let entry = entry?;
        let name = entry.file_name();
        let bytes = name.to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        if visitor.entry(dir.fd()?, name, entry.file_type()) == Step::Descend {
            pending.extend_from_slice(name.to_bytes_with_nul());
        }
    }
    Ok(())
}

/// Opens the subdirectory `name` of `dir` when it is on the walk's mount.
fn enter(
    dir: BorrowedFd<'_>,
    name: &CStr,
    root: &Place,
    visitor: &mut impl Visitor,
) -> Result<Option<(OwnedFd, Place)>, Errno> {
    let mut retried = false;
    loop {
        match rfs::openat(dir, name, OPEN_DIR, Mode::empty()) {
            Ok(fd) => {
                let here = place(fd.as_fd())?;
                if !here.same_mount(root) {
                    visitor.open_failed(dir, name, Errno::XDEV);
                    return Ok(None);
                }
                return Ok(Some((fd, here)));
            }
            Err(e) => {
                if visitor.open_failed(dir, name, e) && !retried {
                    retried = true;
                    continue;
                }
                return Ok(None);
            }
        }
    }
}

/// Whether the entry `name` of `dir` is a directory, asking the filesystem when the listing
/// did not say. Never follows a symbolic link.
pub(crate) fn is_dir(dir: BorrowedFd<'_>, name: &CStr, file_type: FileType) -> bool {
    match file_type {
        FileType::Unknown => rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory),
        t => t == FileType::Directory,
    }
}

/// Adds owner read, write and search permission to the directory `name` of `dir` (which the
/// walk could not enter or empty), without following a symbolic link: the directory is pinned
/// with `O_PATH` and changed through its `/proc/self/fd` entry.
pub(crate) fn make_accessible(dir: BorrowedFd<'_>, name: &CStr) -> Result<(), Errno> {
    let fd = rfs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rfs::fstat(&fd)?;
    let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
    rfs::chmod(
        path.as_str(),
        Mode::from_bits_retain((st.st_mode & 0o7777) | 0o700),
    )
}

/// Adds owner write and search permission to the open directory `dir`.
pub(crate) fn make_writable(dir: BorrowedFd<'_>) -> Result<(), Errno> {
    let st = rfs::fstat(dir)?;
    rfs::fchmod(dir, Mode::from_bits_retain((st.st_mode & 0o7777) | 0o700))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// Records entries; moves `from` to `to` when it lists `trigger`.
    struct Mover {
        seen: Vec<Vec<u8>>,
        left: Vec<Vec<u8>>,
        trigger: &'static [u8],
        from: PathBuf,
        to: PathBuf,
    }

    impl Visitor for Mover {
        fn entry(&mut self, dir: BorrowedFd<'_>, name: &CStr, file_type: FileType) -> Step {
            self.seen.push(name.to_bytes().to_vec());
            if name.to_bytes() == self.trigger {
                std::fs::rename(&self.from, &self.to).unwrap();
            }
            if is_dir(dir, name, file_type) {
                Step::Descend
            } else {
                Step::Skip
            }
        }

        fn open_failed(&mut self, _: BorrowedFd<'_>, _: &CStr, e: Errno) -> bool {
            panic!("unexpected {e}");
        }

        fn leave(&mut self, _: BorrowedFd<'_>, _: u64, parent: Option<(BorrowedFd<'_>, &CStr)>) {
            self.left
                .push(parent.map_or(b"<root>".to_vec(), |(_, n)| n.to_bytes().to_vec()));
        }
    }

    /// A directory moved out of the tree while the walk is below it: climbing back through
    /// `..` would land outside, so the walk stops instead of listing what is there.
    #[test]
    fn a_tree_moved_under_the_walk_stops_it() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("tree");
        std::fs::create_dir_all(tree.join("x/y/z")).unwrap();
        std::fs::write(tree.join("x/y/z/file"), b"").unwrap();
        std::fs::create_dir(tmp.path().join("outside")).unwrap();
        std::fs::write(tmp.path().join("outside/sentinel"), b"").unwrap();
        let root = rfs::open(&tree, OPEN_DIR, Mode::empty()).unwrap();
        let mut mover = Mover {
            seen: Vec::new(),
            left: Vec::new(),
            trigger: b"z",
            from: tree.join("x"),
            to: tmp.path().join("outside/x"),
        };
        assert_eq!(walk(root, &mut mover).unwrap_err(), Errno::STALE);
        assert_eq!(mover.left, vec![b"z".to_vec(), b"y".to_vec()]);
        assert!(!mover.seen.iter().any(|n| n == b"sentinel"));

        // Undisturbed, every directory is left once, the root last.
        let root = rfs::open(tmp.path().join("outside"), OPEN_DIR, Mode::empty()).unwrap();
        let mut plain = Mover {
            trigger: b"",
            seen: Vec::new(),
            left: Vec::new(),
            from: PathBuf::new(),
            to: PathBuf::new(),
        };
        walk(root, &mut plain).unwrap();
        assert_eq!(plain.left, vec![&b"z"[..], b"y", b"x", b"<root>"]);
        assert!(plain.seen.iter().any(|n| n == b"sentinel"));
    }
}
