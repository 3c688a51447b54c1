//! CopyFile: files the runtime copies into the guest (resolv.conf, hosts, service-account tokens,
//! ...), in chunks, under the agent's shared directory only.
//!
//! The host chooses both the bytes and the path, and may have planted anything in the shared
//! directory before (a symlink at the target or at a parent, a hard link to a file elsewhere on the
//! same file system). So nothing here resolves a path through the file system's names more than one
//! component at a time: every directory is opened relative to its parent's descriptor with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)`, modes and owners are set on
//! opened descriptors (`fchmod`, `fchown`), and the final name is only ever replaced by `renameat`
//! within the opened parent, which swaps the directory entry and never writes through it (a symlink
//! or hard link planted there is replaced, its target untouched).
//!
//! A file's chunks go to a temporary file with a random name, created with `O_EXCL`, held open
//! between chunks; when the last chunk arrives (offset + length reaches the file's size) the file
//! gets its mode and owner and is renamed into place, so a reader never sees a half-written file.
//! Directories and symlinks come in one request (a symlink's data is its target).
//!
//! A symlink whose target is absolute or has a `..` component could send a later reader of the
//! shared directory elsewhere; such targets are refused unless the policy allows them explicitly
//! (see [`crate::gate::PolicyGate::check_copy_file`]).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::hash::{BuildHasher, Hasher};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2, renameat};
use nix::sys::stat::{Mode, fchmod, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, fsync, symlinkat, unlinkat};
use peerpod_protocols::kata::agent::CopyFileRequest;

use crate::error::AgentError;

const S_IFMT: u32 = 0o170_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFREG: u32 = 0o100_000;

/// How many chunked uploads may be in progress at once; the oldest is dropped past this.
const MAX_UPLOADS: usize = 64;

/// Carries out CopyFile requests under one root directory, remembering uploads in progress.
#[derive(Debug)]
pub struct CopyFiles {
    root: PathBuf,
    uploads: Mutex<Uploads>,
}

#[derive(Debug, Default)]
struct Uploads {
    by_path: HashMap<PathBuf, Upload>,
    started: u64,
}

/// A file being received: its open temporary file and the directory it will be renamed in.
#[derive(Debug)]
struct Upload {
    dir: OwnedFd,
    temp: OsString,
    file: std::fs::File,
    size: u64,
    started: u64,
}

impl Upload {
    /// Removes the temporary file (best effort: it is only a leftover in the shared directory).
    fn discard(self) {
        let _ = unlinkat(&self.dir, self.temp.as_os_str(), UnlinkatFlags::NoRemoveDir);
    }
}

impl CopyFiles {
    /// CopyFile under `root` (created if missing).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            uploads: Mutex::new(Uploads::default()),
        }
    }

    /// Carries out one CopyFile request.
    pub fn copy(&self, request: &CopyFileRequest) -> Result<(), AgentError> {
        let path = checked_target(&self.root, &request.path)?;
        let relative = path.strip_prefix(&self.root).map_err(|_| {
            AgentError::InvalidArgument(format!("CopyFile path {:?} is outside the root", path))
        })?;
        let (Some(parent), Some(name)) = (relative.parent(), relative.file_name()) else {
            return Err(AgentError::InvalidArgument(
                "CopyFile needs a file path, not the root".to_owned(),
            ));
        };
        match request.file_mode & S_IFMT {
            S_IFDIR => {
                let dir = self.open_parent(parent, request)?;
                make_dir(&dir, name, &path, request)
            }
            S_IFLNK => {
                let target = std::str::from_utf8(&request.data).map_err(|_| {
                    AgentError::InvalidArgument("a symlink target must be UTF-8".to_owned())
                })?;
                let dir = self.open_parent(parent, request)?;
                make_symlink(&dir, name, target, &path, request)
            }
            0 | S_IFREG => self.write_chunk(&path, parent, name, request),
            other => Err(AgentError::InvalidArgument(format!(
                "CopyFile copies regular files, directories and symlinks, not file type {other:o}"
            ))),
        }
    }

    /// Opens (creating the missing ones) the directories from the root down to `parent`, one
    /// component at a time and never through a symlink.
    fn open_parent(&self, parent: &Path, request: &CopyFileRequest) -> Result<OwnedFd, AgentError> {
        std::fs::create_dir_all(&self.root).map_err(|e| {
            AgentError::internal(format!("cannot create {}", self.root.display()), e)
        })?;
        let mut dir = nix::fcntl::open(
            &self.root,
            OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_RDONLY,
            Mode::empty(),
        )
        .map_err(|e| AgentError::internal(format!("cannot open {}", self.root.display()), e))?;
        let mut current = self.root.clone();
        for component in parent.components() {
            let Component::Normal(name) = component else {
                return Err(AgentError::InvalidArgument(format!(
                    "CopyFile path {} has a component that is not a plain name",
                    crate::error::quoted(&current)
                )));
            };
            current.push(name);
            dir = match open_dir(&dir, name) {
                Ok(next) => next,
                Err(Errno::ENOENT) => {
                    match mkdirat(&dir, name, Mode::from_bits_truncate(0o700)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => {
                            let what = format!("cannot create {}", crate::error::quoted(&current));
                            return Err(AgentError::internal(what, e));
                        }
                    }
                    let next = open_dir(&dir, name).map_err(|e| beneath_error(&current, e))?;
                    set_mode_and_owner(&next, dir_mode(request.dir_mode), request, &current)?;
                    next
                }
                Err(e) => return Err(beneath_error(&current, e)),
            };
        }
        Ok(dir)
    }

    fn write_chunk(
        &self,
        path: &Path,
        parent: &Path,
        name: &OsStr,
        request: &CopyFileRequest,
    ) -> Result<(), AgentError> {
        let offset = u64::try_from(request.offset).map_err(|_| {
            AgentError::InvalidArgument(format!("negative offset {}", request.offset))
        })?;
        let size = u64::try_from(request.file_size).map_err(|_| {
            AgentError::InvalidArgument(format!("negative file size {}", request.file_size))
        })?;
        let end = offset
            .checked_add(request.data.len() as u64)
            .filter(|end| *end <= size)
            .ok_or_else(|| {
                AgentError::InvalidArgument(format!(
                    "the chunk at offset {offset} of {} bytes goes past the file size {size}",
                    request.data.len()
                ))
            })?;

        let upload = if offset == 0 {
            // A new file (or the runtime starting over): forget any earlier attempt.
            if let Some(old) = self.take_upload(path) {
                old.discard();
            }
            let dir = self.open_parent(parent, request)?;
            let (temp, file) = create_temp(&dir, name, path)?;
            Upload {
                dir,
                temp,
                file,
                size,
                started: 0,
            }
        } else {
            let upload = self.take_upload(path).ok_or_else(|| {
                AgentError::FailedPrecondition(format!(
                    "no upload of {} is in progress for the chunk at offset {offset}",
                    crate::error::quoted(path)
                ))
            })?;
            if upload.size != size {
                upload.discard();
                return Err(AgentError::InvalidArgument(format!(
                    "the file size changed during the upload of {}",
                    crate::error::quoted(path)
                )));
            }
            upload
        };

        if let Err(e) = upload.file.write_all_at(&request.data, offset) {
            upload.discard();
            let what = format!("cannot write {}", crate::error::quoted(path));
            return Err(AgentError::internal(what, e));
        }
        if end < size {
            self.keep_upload(path, upload);
            return Ok(());
        }
        let result = finish(&upload, name, path, request);
        if result.is_err() {
            upload.discard();
        }
        result
    }

    fn take_upload(&self, path: &Path) -> Option<Upload> {
        let mut uploads = self.uploads.lock().unwrap_or_else(PoisonError::into_inner);
        uploads.by_path.remove(path)
    }

    fn keep_upload(&self, path: &Path, mut upload: Upload) {
        let mut uploads = self.uploads.lock().unwrap_or_else(PoisonError::into_inner);
        uploads.started += 1;
        if upload.started == 0 {
            upload.started = uploads.started;
        }
        if !uploads.by_path.contains_key(path) && uploads.by_path.len() >= MAX_UPLOADS {
            let oldest = uploads
                .by_path
                .iter()
                .min_by_key(|(_, u)| u.started)
                .map(|(p, _)| p.clone());
            if let Some(dropped) = oldest.and_then(|p| uploads.by_path.remove(&p)) {
                tracing::warn!("too many CopyFile uploads in progress; the oldest is dropped");
                dropped.discard();
            }
        }
        // Two first chunks for one path raced: the one replaced is discarded, not left behind.
        if let Some(replaced) = uploads.by_path.insert(path.to_owned(), upload) {
            replaced.discard();
        }
    }
}

/// Whether a symlink target stays inside the directory tree it is created in: relative and
/// without a `..` component (`..data`, as in Kubernetes volumes, is a plain name).
pub fn is_contained_symlink_target(target: &str) -> bool {
    let path = Path::new(target);
    !target.is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// The target path: absolute, no `..`, under `root`.
fn checked_target(root: &Path, text: &str) -> Result<PathBuf, AgentError> {
    let path = Path::new(text);
    let clean = path.is_absolute() && !path.components().any(|c| matches!(c, Component::ParentDir));
    if !clean || !path.starts_with(root) || path == root {
        return Err(AgentError::InvalidArgument(format!(
            "CopyFile path {text:?} must be an absolute path under {} without '..'",
            root.display()
        )));
    }
    Ok(path.to_owned())
}

/// Opens the directory `name` in `dir`, refusing symlinks and anything outside `dir`.
fn open_dir(dir: &OwnedFd, name: &OsStr) -> Result<OwnedFd, Errno> {
    open_beneath(
        dir,
        name,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )
}

/// `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)`: no symlink, and no
/// mount below the root (a container's root filesystem or a storage) is entered. On kernels
/// without openat2 (before 5.6), `openat` with `O_NOFOLLOW`, as strict about symlinks because
/// `name` is one plain component.
fn open_beneath(dir: &OwnedFd, name: &OsStr, flags: OFlag, mode: Mode) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new().flags(flags).mode(mode).resolve(
        ResolveFlag::RESOLVE_BENEATH
            | ResolveFlag::RESOLVE_NO_SYMLINKS
            | ResolveFlag::RESOLVE_NO_MAGICLINKS
            | ResolveFlag::RESOLVE_NO_XDEV,
    );
    match openat2(dir, name, how) {
        Err(Errno::ENOSYS) => openat(dir, name, flags | OFlag::O_NOFOLLOW, mode),
        other => other,
    }
}

fn beneath_error(path: &Path, errno: Errno) -> AgentError {
    match errno {
        Errno::ELOOP | Errno::EXDEV | Errno::ENOTDIR => AgentError::InvalidArgument(format!(
            "CopyFile path {} is a symlink, a mount point or not a directory; CopyFile does not \
             follow symlinks or enter mounts",
            crate::error::quoted(path)
        )),
        e => AgentError::internal(format!("cannot open {}", crate::error::quoted(path)), e),
    }
}

fn make_dir(
    parent: &OwnedFd,
    name: &OsStr,
    path: &Path,
    request: &CopyFileRequest,
) -> Result<(), AgentError> {
    // Whatever else is at the name (a file, a symlink, a hard link) is replaced by the
    // directory, as upstream does; an existing directory stays.
    match unlinkat(parent, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT | Errno::EISDIR) => {}
        Err(e) => {
            return Err(AgentError::internal(
                format!("cannot replace {}", crate::error::quoted(path)),
                e,
            ));
        }
    }
    match mkdirat(parent, name, Mode::from_bits_truncate(0o700)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => {
            let what = format!("cannot create {}", crate::error::quoted(path));
            return Err(AgentError::internal(what, e));
        }
    }
    let dir = open_dir(parent, name).map_err(|e| beneath_error(path, e))?;
    let mode = match request.file_mode & 0o7777 {
        0 => dir_mode(request.dir_mode),
        mode => mode,
    };
    set_mode_and_owner(&dir, mode, request, path)
}

fn make_symlink(
    parent: &OwnedFd,
    name: &OsStr,
    target: &str,
    path: &Path,
    request: &CopyFileRequest,
) -> Result<(), AgentError> {
    // Made under a temporary name and renamed over the final one: the entry at the name (even
    // a symlink or a directory's hard link) is replaced, never written through.
    let mut last = Errno::EEXIST;
    for _ in 0..8 {
        let temp = temp_name(name);
        match symlinkat(target, parent, temp.as_os_str()) {
            Ok(()) => {
                let owned = fchownat(
                    parent,
                    temp.as_os_str(),
                    uid(request),
                    gid(request),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .and_then(|()| renameat(parent, temp.as_os_str(), parent, name));
                return owned.map_err(|e| {
                    let _ = unlinkat(parent, temp.as_os_str(), UnlinkatFlags::NoRemoveDir);
                    AgentError::internal(
                        format!("cannot create the symlink {}", crate::error::quoted(path)),
                        e,
                    )
                });
            }
            Err(Errno::EEXIST) => last = Errno::EEXIST,
            Err(e) => {
                let what = format!("cannot create the symlink {}", crate::error::quoted(path));
                return Err(AgentError::internal(what, e));
            }
        }
    }
    Err(AgentError::internal(
        format!("cannot create the symlink {}", crate::error::quoted(path)),
        last,
    ))
}

/// Creates the temporary file for `name` in `dir`: a fresh random name, `O_EXCL`, mode 0600.
fn create_temp(
    dir: &OwnedFd,
    name: &OsStr,
    path: &Path,
) -> Result<(OsString, std::fs::File), AgentError> {
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC;
    let mut last = Errno::EEXIST;
    for _ in 0..8 {
        let temp = temp_name(name);
        match open_beneath(dir, &temp, flags, Mode::from_bits_truncate(0o600)) {
            Ok(fd) => return Ok((temp, std::fs::File::from(fd))),
            Err(Errno::EEXIST) => last = Errno::EEXIST,
            Err(e) => {
                let what = format!(
                    "cannot create a temporary file for {}",
                    crate::error::quoted(path)
                );
                return Err(AgentError::internal(what, e));
            }
        }
    }
    Err(AgentError::internal(
        format!(
            "cannot create a temporary file for {}",
            crate::error::quoted(path)
        ),
        last,
    ))
}

/// `.NAME.<random>.part`: hidden, and not guessable ahead of time.
fn temp_name(name: &OsStr) -> OsString {
    // RandomState is seeded from the OS's randomness; each hasher differs.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write(name.as_bytes());
    let mut temp = OsString::from(".");
    // Long names are cut so that the temporary name stays within NAME_MAX.
    temp.push(OsStr::from_bytes(&name.as_bytes()[..name.len().min(200)]));
    temp.push(format!(".{:016x}.part", hasher.finish()));
    temp
}

/// Gives the complete file its mode and owner and renames it into place.
fn finish(
    upload: &Upload,
    name: &OsStr,
    path: &Path,
    request: &CopyFileRequest,
) -> Result<(), AgentError> {
    set_mode_and_owner(&upload.file, request.file_mode & 0o7777, request, path)?;
    fsync(upload.file.as_fd()).map_err(|e| {
        AgentError::internal(format!("cannot write {}", crate::error::quoted(path)), e)
    })?;
    renameat(&upload.dir, upload.temp.as_os_str(), &upload.dir, name).map_err(|e| {
        AgentError::internal(
            format!("cannot move the file into {}", crate::error::quoted(path)),
            e,
        )
    })
}

fn set_mode_and_owner(
    fd: impl AsFd,
    mode: u32,
    request: &CopyFileRequest,
    path: &Path,
) -> Result<(), AgentError> {
    fchmod(fd.as_fd(), Mode::from_bits_truncate(mode)).map_err(|e| {
        AgentError::internal(
            format!("cannot set the mode of {}", crate::error::quoted(path)),
            e,
        )
    })?;
    fchown(fd.as_fd(), uid(request), gid(request)).map_err(|e| {
        AgentError::internal(
            format!("cannot set the owner of {}", crate::error::quoted(path)),
            e,
        )
    })
}

fn dir_mode(mode: u32) -> u32 {
    match mode & 0o7777 {
        0 => 0o755,
        mode => mode,
    }
}

/// The owner to set; a negative id (the runtime's -1) leaves it unchanged.
fn uid(request: &CopyFileRequest) -> Option<Uid> {
    u32::try_from(request.uid).ok().map(Uid::from_raw)
}

fn gid(request: &CopyFileRequest) -> Option<Gid> {
    u32::try_from(request.gid).ok().map(Gid::from_raw)
}

#[cfg(test)]
mod tests;
