//! Scratch directories for tests: unique per process and name, removed when dropped (kept when
//! `PEERPOD_KEEP_SCRATCH` is set, for debugging).

use std::path::{Path, PathBuf};

/// A directory under the system's temporary directory.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Creates `peerpod-<name>-<pid>` afresh (short, so Unix socket paths inside stay valid).
    pub fn new(name: &str) -> std::io::Result<Self> {
        let path = std::env::temp_dir().join(format!("peerpod-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        Ok(Self { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if std::env::var_os("PEERPOD_KEEP_SCRATCH").is_none() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
