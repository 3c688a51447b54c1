//! CopyFile: files the runtime copies into the guest (resolv.conf, hosts, service-account
//! tokens, ...), in chunks, under the agent's shared directory only.
//!
//! A chunk is written at its offset to a temporary file next to the target; when the last chunk
//! arrives (offset + length reaches the file's size) the file gets its mode and owner and is
//! renamed into place, so a reader never sees a half-written file. Directories and symlinks come
//! in one request (a symlink's data is its target).

use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use nix::unistd::{Gid, Uid, chown};
use peerpod_protocols::kata::agent::CopyFileRequest;

use crate::error::AgentError;

const S_IFMT: u32 = 0o170_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFREG: u32 = 0o100_000;

/// Carries out one CopyFile request under `root`.
pub fn copy_file(root: &Path, request: &CopyFileRequest) -> Result<(), AgentError> {
    let path = checked_target(root, &request.path)?;
    let parent = path.parent().ok_or_else(|| {
        AgentError::InvalidArgument("CopyFile needs a file path, not the root".to_owned())
    })?;
    make_dirs(root, parent, request)?;

    match request.file_mode & S_IFMT {
        S_IFDIR => {
            make_dir(&path, request.dir_mode)?;
            set_owner(&path, request)
        }
        S_IFLNK => {
            let target = String::from_utf8(request.data.clone()).map_err(|_| {
                AgentError::InvalidArgument("a symlink target must be UTF-8".to_owned())
            })?;
            let _ = std::fs::remove_file(&path);
            std::os::unix::fs::symlink(&target, &path).map_err(|e| {
                AgentError::internal(format!("cannot create the symlink {}", path.display()), e)
            })
        }
        0 | S_IFREG => write_chunk(&path, request),
        other => Err(AgentError::InvalidArgument(format!(
            "CopyFile copies regular files, directories and symlinks, not file type {other:o}"
        ))),
    }
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

/// Creates the missing directories between `root` and `dir`, refusing any that resolves (through
/// a symlink) outside `root`.
fn make_dirs(root: &Path, dir: &Path, request: &CopyFileRequest) -> Result<(), AgentError> {
    std::fs::create_dir_all(root)
        .map_err(|e| AgentError::internal(format!("cannot create {}", root.display()), e))?;
    let real_root = root
        .canonicalize()
        .map_err(|e| AgentError::internal(format!("cannot resolve {}", root.display()), e))?;
    let mut current = root.to_owned();
    for component in dir.strip_prefix(root).unwrap_or(Path::new("")).components() {
        current.push(component);
        if !current.exists() {
            make_dir(&current, request.dir_mode)?;
            set_owner(&current, request)?;
        }
        let real = current.canonicalize().map_err(|e| {
            AgentError::internal(format!("cannot resolve {}", current.display()), e)
        })?;
        if !real.starts_with(&real_root) {
            return Err(AgentError::InvalidArgument(format!(
                "CopyFile path {} leads outside {} through a symlink",
                current.display(),
                root.display()
            )));
        }
    }
    Ok(())
}

fn make_dir(dir: &Path, mode: u32) -> Result<(), AgentError> {
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(AgentError::internal(
                format!("cannot create {}", dir.display()),
                e,
            ));
        }
    }
    let mode = if mode & 0o7777 == 0 {
        0o755
    } else {
        mode & 0o7777
    };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(|e| AgentError::internal(format!("cannot set the mode of {}", dir.display()), e))
}

fn set_owner(path: &Path, request: &CopyFileRequest) -> Result<(), AgentError> {
    let uid = u32::try_from(request.uid).ok().map(Uid::from_raw);
    let gid = u32::try_from(request.gid).ok().map(Gid::from_raw);
    chown(path, uid, gid)
        .map_err(|e| AgentError::internal(format!("cannot set the owner of {}", path.display()), e))
}

fn write_chunk(path: &Path, request: &CopyFileRequest) -> Result<(), AgentError> {
    let offset = u64::try_from(request.offset)
        .map_err(|_| AgentError::InvalidArgument(format!("negative offset {}", request.offset)))?;
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
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    let partial = path.with_file_name(name);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(offset == 0)
        .mode_for_owner_only()
        .open(&partial)
        .map_err(|e| AgentError::internal(format!("cannot open {}", partial.display()), e))?;
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.write_all(&request.data))
        .map_err(|e| AgentError::internal(format!("cannot write {}", partial.display()), e))?;
    if end < size {
        return Ok(());
    }
    file.sync_all()
        .map_err(|e| AgentError::internal(format!("cannot write {}", partial.display()), e))?;
    drop(file);
    std::fs::set_permissions(
        &partial,
        std::fs::Permissions::from_mode(request.file_mode & 0o7777),
    )
    .map_err(|e| AgentError::internal(format!("cannot set the mode of {}", path.display()), e))?;
    set_owner(&partial, request)?;
    std::fs::rename(&partial, path).map_err(|e| {
        AgentError::internal(format!("cannot move the file into {}", path.display()), e)
    })
}

/// Files being received are readable by the agent only until they are complete.
trait OwnerOnly {
    fn mode_for_owner_only(&mut self) -> &mut Self;
}

impl OwnerOnly for std::fs::OpenOptions {
    fn mode_for_owner_only(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("copy-file-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        dir.join("shared")
    }

    fn request(path: &Path, data: &[u8], offset: i64, size: i64, mode: u32) -> CopyFileRequest {
        let mut r = CopyFileRequest::new();
        r.path = path.display().to_string();
        r.data = data.to_vec();
        r.offset = offset;
        r.file_size = size;
        r.file_mode = mode;
        r.dir_mode = 0o40_750;
        r.uid = -1;
        r.gid = -1;
        r
    }

    #[test]
    fn chunks_land_in_place_only_when_complete() {
        let root = root("chunks_land_in_place_only_when_complete");
        let file = root.join("containers/c1-resolv.conf");
        copy_file(&root, &request(&file, b"nameserver ", 0, 22, 0o100_644)).expect("first chunk");
        assert!(!file.exists(), "incomplete files are not visible");
        copy_file(&root, &request(&file, b"10.96.0.10\n", 11, 22, 0o100_644)).expect("last chunk");
        assert_eq!(
            std::fs::read_to_string(&file).expect("file"),
            "nameserver 10.96.0.10\n"
        );
        let mode = std::fs::metadata(&file).expect("meta").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o644);
        let dir_mode = std::fs::metadata(file.parent().expect("parent"))
            .expect("meta")
            .permissions()
            .mode()
            & 0o7777;
        assert_eq!(dir_mode, 0o750);
    }

    #[test]
    fn directories_and_symlinks() {
        let root = root("directories_and_symlinks");
        copy_file(&root, &request(&root.join("d/sub"), b"", 0, 0, 0o40_700)).expect("dir");
        assert!(root.join("d/sub").is_dir());
        copy_file(
            &root,
            &request(&root.join("d/link"), b"..data/token", 0, 12, 0o120_777),
        )
        .expect("symlink");
        assert_eq!(
            std::fs::read_link(root.join("d/link")).expect("link"),
            Path::new("..data/token")
        );
    }

    #[test]
    fn paths_outside_the_root_are_refused() {
        let root = root("paths_outside_the_root_are_refused");
        for bad in [
            "/etc/passwd",
            "relative/x",
            &format!("{}/../x", root.display()),
            &root.display().to_string(),
        ] {
            let r = request(Path::new(bad), b"x", 0, 1, 0o100_644);
            assert!(
                matches!(copy_file(&root, &r), Err(AgentError::InvalidArgument(_))),
                "{bad}"
            );
        }
        // A symlinked directory leading out of the root.
        std::fs::create_dir_all(&root).expect("root");
        std::os::unix::fs::symlink("/tmp", root.join("escape")).expect("link");
        let r = request(&root.join("escape/x"), b"x", 0, 1, 0o100_644);
        let err = copy_file(&root, &r).expect_err("escape");
        assert!(err.to_string().contains("through a symlink"), "{err}");
    }

    #[test]
    fn chunks_past_the_size_are_refused() {
        let root = root("chunks_past_the_size_are_refused");
        let r = request(&root.join("f"), b"toolong", 0, 3, 0o100_644);
        assert!(matches!(
            copy_file(&root, &r),
            Err(AgentError::InvalidArgument(_))
        ));
        let r = request(&root.join("f"), b"x", -1, 3, 0o100_644);
        assert!(matches!(
            copy_file(&root, &r),
            Err(AgentError::InvalidArgument(_))
        ));
    }
}
