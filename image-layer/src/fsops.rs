//! Filesystem writes relative to directory file descriptors, never following a symbolic link:
//! every directory is reached with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)` from the layer's root (or, on kernels before 5.6, a
//! walk of `openat(O_NOFOLLOW)` one checked component at a time), and the last component is
//! handled with the `*at` calls on that directory.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Opens the directory `path` (relative, components already checked) beneath `dir`.
pub(crate) fn open_dir_beneath(dir: BorrowedFd<'_>, path: &[u8]) -> Result<OwnedFd, Errno> {
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
        current = Some(rfs::openat(base, part, DIR_FLAGS, Mode::empty())?);
    }
    match current {
        Some(fd) => Ok(fd),
        None => rfs::openat(dir, ".", DIR_FLAGS, Mode::empty()),
    }
}

/// Creates a regular file `name` in `dir` (which must not exist).
pub(crate) fn create_file(dir: BorrowedFd<'_>, name: &[u8]) -> Result<OwnedFd, Errno> {
    rfs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_bits_retain(0o600),
    )
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
