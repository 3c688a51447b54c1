//! Where provisioning writes: `/run/peerpod` (under a root prefix in tests), only the
//! allow-listed names, each file replaced atomically and readable by root only.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

/// The directory every output goes to.
pub const PEERPOD_DIR: &str = "/run/peerpod";

/// The names `write_files` may write in [`PEERPOD_DIR`] (upstream's list): the attestation
/// agent's and the CDH's configuration, the forwarder's `apf.json`, registry credentials, the
/// encoded initdata and the scratch-space marker.
pub const WRITE_FILES: [&str; 6] = [
    "aa.toml",
    "cdh.toml",
    "apf.json",
    "auth.json",
    "initdata",
    "scratch-space.marker",
];

/// The name a `write_files` path is allowed under, if it is exactly `/run/peerpod/<name>` for
/// an allow-listed name (upstream compares the whole string too: no `..`, `.`, `//`, relative
/// or other spellings).
pub fn allowed(path: &str) -> Option<&'static str> {
    let name = path.strip_prefix(PEERPOD_DIR)?.strip_prefix('/')?;
    WRITE_FILES.iter().copied().find(|n| *n == name)
}

/// Why an output could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A file system call failed.
    #[error("cannot {action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Something other than a regular file (a symlink, a directory) is where an output goes,
    /// or the output directory resolves somewhere else: refused, never followed.
    #[error("refusing to write {path}: {reason}")]
    Refused {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> WriteError {
    let path = path.to_path_buf();
    move |source| WriteError::Io {
        action,
        path,
        source,
    }
}

/// The output directory under a root prefix (`/` in a pod VM).
#[derive(Debug, Clone)]
pub struct Outputs {
    root: PathBuf,
}

impl Outputs {
    /// Outputs under `root` (`/` for the real thing).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `<root>/run/peerpod`.
    pub fn dir(&self) -> PathBuf {
        self.root.join(PEERPOD_DIR.trim_start_matches('/'))
    }

    /// `<root>/run/peerpod/<name>`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }

    /// Creates the output directory (0755, as upstream) and checks that it is a real directory
    /// at `<root>/run/peerpod`, not a symlink to somewhere else.
    pub fn prepare(&self) -> Result<(), WriteError> {
        let dir = self.dir();
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_symlink() || !m.is_dir() => {
                return Err(WriteError::Refused {
                    path: dir,
                    reason: "it is not a directory (a symlink?)",
                });
            }
            Ok(_) => {}
            Err(_) => fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&dir)
                .map_err(io("create", &dir))?,
        }
        let real = fs::canonicalize(&dir).map_err(io("resolve", &dir))?;
        let root = fs::canonicalize(&self.root).map_err(io("resolve", &self.root))?;
        if real != root.join(PEERPOD_DIR.trim_start_matches('/')) {
            return Err(WriteError::Refused {
                path: dir,
                reason: "it resolves outside the root (a symlinked parent?)",
            });
        }
        Ok(())
    }

    /// Replaces `<dir>/<name>` with `bytes` atomically (a new file with `mode`, synced, renamed
    /// over the old one). A symlink or a directory at the path is refused, never followed.
    pub fn write(&self, name: &str, bytes: &[u8], mode: u32) -> Result<(), WriteError> {
        let target = self.path(name);
        if let Ok(m) = fs::symlink_metadata(&target)
            && !m.file_type().is_file()
        {
            return Err(WriteError::Refused {
                path: target,
                reason: "something other than a regular file is there (a symlink?)",
            });
        }
        let tmp = self
            .dir()
            .join(format!(".{name}.tmp-{}", std::process::id()));
        // A leftover of a crashed run of ours; O_EXCL below refuses anything else.
        let _ = fs::remove_file(&tmp);
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                // O_CREAT|O_EXCL: never opens through a symlink planted at the name.
                .mode(mode)
                .open(&tmp)
                .map_err(io("create", &tmp))?;
            f.write_all(bytes).map_err(io("write", &tmp))?;
            f.sync_all().map_err(io("sync", &tmp))?;
            fs::rename(&tmp, &target).map_err(io("rename into place", &target))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result?;
        if let Ok(d) = fs::File::open(self.dir()) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_is_exact() {
        assert_eq!(allowed("/run/peerpod/aa.toml"), Some("aa.toml"));
        assert_eq!(
            allowed("/run/peerpod/scratch-space.marker"),
            Some("scratch-space.marker")
        );
        for bad in [
            "/run/peerpod/../peerpod/aa.toml",
            "/run/peerpod/./aa.toml",
            "/run/peerpod//aa.toml",
            "run/peerpod/aa.toml",
            "/run/peerpod/aa.toml/",
            "/run/peerpod/AA.toml",
            "/run/peerpod/policy.rego",
            "/run/peerpod/initdata.digest",
            "/run/peerpod/agent-config.toml",
            "/run/peerpodaa.toml",
            "/etc/passwd",
            "/run/peerpod/sub/aa.toml",
            "/run/peerpod/aa.toml\0",
            "",
        ] {
            assert_eq!(allowed(bad), None, "{bad:?}");
        }
    }
}
