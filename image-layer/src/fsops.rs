//! Filesystem writes relative to directory file descriptors, never following a symbolic link:
//! every directory is reached with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)` from the layer's root (or, on kernels before 5.6, a
//! walk of `openat(O_NOFOLLOW)` one checked component at a time), and the last component is
//! handled with the `*at` calls on that directory.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// For openat2: RESOLVE_NO_SYMLINKS covers the last component too (and answers ELOOP, where
/// O_NOFOLLOW with O_DIRECTORY would answer ENOTDIR).
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::CLOEXEC);
/// For the walk without openat2.
const WALK_FLAGS: OFlags = DIR_FLAGS.union(OFlags::NOFOLLOW);

/// Opens the directory `path` (relative, components already checked) beneath `dir`.
/// An empty `path` is `dir` itself. A symbolic link anywhere on the way answers `ELOOP`.
pub(crate) fn open_dir_beneath(dir: BorrowedFd<'_>, path: &[u8]) -> Result<OwnedFd, Errno> {
    let path = if path.is_empty() { &b"."[..] } else { path };
    let resolve = ResolveFlags::BENEATH
        | ResolveFlags::NO_SYMLINKS
        | ResolveFlags::NO_MAGICLINKS
        | ResolveFlags::NO_XDEV;
    for _ in 0..8 {
        match rfs::openat2(dir, path, DIR_FLAGS, Mode::empty(), resolve) {
            // A rename elsewhere on the system during the lookup: the kernel asks to retry.
            Err(Errno::AGAIN) => continue,
            Err(Errno::NOSYS) => return open_dir_walk(dir, path),
            other => return other,
        }
    }
    Err(Errno::AGAIN)
}

/// The pre-openat2 path: one `openat(O_NOFOLLOW | O_DIRECTORY)` per component. Components never
/// contain `..` (checked when the name was split), so this cannot climb out of `dir`.
fn open_dir_walk(dir: BorrowedFd<'_>, path: &[u8]) -> Result<OwnedFd, Errno> {
    let mut current: Option<OwnedFd> = None;
    for part in path
        .split(|b| *b == b'/')
        .filter(|p| !p.is_empty() && *p != b".")
    {
        if part == b".." {
            return Err(Errno::XDEV);
        }
        let base = current.as_ref().map_or(dir, |fd| fd.as_fd());
        current = Some(match rfs::openat(base, part, WALK_FLAGS, Mode::empty()) {
            Err(Errno::NOTDIR) if file_type_at(base, part) == Ok(rfs::FileType::Symlink) => {
                return Err(Errno::LOOP);
            }
            other => other?,
        });
    }
    match current {
        Some(fd) => Ok(fd),
        None => rfs::openat(dir, ".", WALK_FLAGS, Mode::empty()),
    }
}

/// Creates a regular file `name` in `dir` (which must not exist) with the permission bits
/// `mode` (before the umask or the directory's default ACL).
pub(crate) fn create_file(dir: BorrowedFd<'_>, name: &[u8], mode: u32) -> Result<OwnedFd, Errno> {
    rfs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_bits_retain(mode & 0o777),
    )
}

/// What a file created in a directory gets without being told: its group, and whether a
/// default ACL (rather than the umask) decides its mode.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Inherit {
    pub(crate) gid: u32,
    pub(crate) default_acl: bool,
}

impl Inherit {
    /// For the directory open as `dir`, in a process whose effective group is `egid`.
    pub(crate) fn of(dir: BorrowedFd<'_>, egid: u32) -> Result<Self, Errno> {
        let st = rfs::fstat(dir)?;
        let gid = if st.st_mode & 0o2000 != 0 {
            st.st_gid
        } else {
            egid
        };
        let default_acl = match rfs::fgetxattr(dir, "system.posix_acl_default", &mut [0u8; 0][..]) {
            Ok(_) => true,
            Err(Errno::NODATA | Errno::OPNOTSUPP) => false,
            // Unknown: assume an ACL, so the mode is always set explicitly.
            Err(_) => true,
        };
        Ok(Self { gid, default_acl })
    }
}

/// The process umask, from `/proc/self/status` (reading it with umask(2) would change it for
/// every thread). `None` when unknown.
pub(crate) fn process_umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
}

/// What is at `name` in `dir`, without following a symbolic link.
pub(crate) fn file_type_at(dir: BorrowedFd<'_>, name: &[u8]) -> Result<rfs::FileType, Errno> {
    let st = rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(rfs::FileType::from_raw_mode(st.st_mode))
}

/// Removes whatever is at `name` (a directory only when empty). Answers whether it was a
/// directory.
pub(crate) fn remove(dir: BorrowedFd<'_>, name: &[u8]) -> Result<bool, Errno> {
    match rfs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) => Ok(false),
        Err(Errno::ISDIR) => rfs::unlinkat(dir, name, AtFlags::REMOVEDIR).map(|()| true),
        Err(e) => Err(e),
    }
}

/// The path of `name` in the directory open as `dir`, through `/proc/self/fd`, for the calls
/// that have no fd-relative form (`lsetxattr`). The directory part is the open descriptor
/// itself; `name` is a single checked component and is not followed.
pub(crate) fn proc_path(dir: BorrowedFd<'_>, name: &[u8]) -> Vec<u8> {
    use std::os::fd::AsRawFd;
    let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    path.extend_from_slice(name);
    path
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The walk used on kernels without openat2 refuses symbolic links like openat2 does.
    #[test]
    fn walk_without_openat2_refuses_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("a/b")).unwrap();
        std::os::unix::fs::symlink("/", tmp.path().join("a/up")).unwrap();
        std::fs::write(tmp.path().join("a/file"), b"").unwrap();
        let root = rfs::open(tmp.path(), DIR_FLAGS, Mode::empty()).unwrap();
        assert!(open_dir_walk(root.as_fd(), b"a/b").is_ok());
        assert!(open_dir_walk(root.as_fd(), b"").is_ok());
        assert_eq!(
            open_dir_walk(root.as_fd(), b"a/up").unwrap_err(),
            Errno::LOOP
        );
        assert_eq!(
            open_dir_walk(root.as_fd(), b"a/up/etc").unwrap_err(),
            Errno::LOOP
        );
        assert_eq!(
            open_dir_walk(root.as_fd(), b"a/file").unwrap_err(),
            Errno::NOTDIR
        );
        assert_eq!(
            open_dir_walk(root.as_fd(), b"a/../a").unwrap_err(),
            Errno::XDEV
        );
        // And openat2 answers the same.
        assert_eq!(
            open_dir_beneath(root.as_fd(), b"a/up").unwrap_err(),
            Errno::LOOP
        );
        assert_eq!(
            open_dir_beneath(root.as_fd(), b"a/up/etc").unwrap_err(),
            Errno::LOOP
        );
        assert_eq!(
            open_dir_beneath(root.as_fd(), b"a/file").unwrap_err(),
            Errno::NOTDIR
        );
        assert_eq!(
            open_dir_beneath(root.as_fd(), b"a/../..").unwrap_err(),
            Errno::XDEV
        );
    }
}
