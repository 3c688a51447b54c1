//! Scratch directories for the crate's unit tests, removed when dropped (with
//! [`crate::tree::remove_tree`]: a mount a failed test left inside is not entered, and named).

use std::path::{Path, PathBuf};

/// `<temp dir>/<prefix>-<pid>-<name>`, fresh; removed on drop.
#[derive(Debug)]
pub(crate) struct Scratch(PathBuf);

impl Scratch {
    /// Makes the directory (removing what an earlier run with the same pid left there).
    pub(crate) fn new(prefix: &str, name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{name}", std::process::id()));
        let _ = crate::tree::remove_tree(&dir);
        std::fs::create_dir_all(&dir).expect("a scratch directory in the temp dir");
        Self(dir)
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = crate::tree::remove_tree(&self.0) {
            eprintln!("*** scratch {} left behind: {e}", self.0.display());
        }
    }
}
