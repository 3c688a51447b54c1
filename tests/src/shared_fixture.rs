//! The shared test fixtures (`../shared` next to the project, or `$PEERPOD_SHARED`).
//!
//! A clone without them still runs every other test: a test that needs a fixture calls
//! [`shared_fixture`] and returns early when it answers `None`, after a loud note on stderr.
//! Under CI (`CI=true`) a missing fixture is a failure, never a skip. This file is also
//! included by path (`#[path]`) in the test crates that do not depend on `peerpod-tests`.

// Public for `peerpod-tests`' users; private where a test crate includes the file by path.
#![allow(unreachable_pub)]

use std::io::Write as _;
use std::path::PathBuf;

/// The path of `relative` inside the shared directory, or `None` (outside CI, with a note
/// naming the test's skip and how to get the fixture) when it is missing.
///
/// # Panics
///
/// When the fixture is missing and `CI` is `true`.
pub fn shared_fixture(relative: &str) -> Option<PathBuf> {
    let root = std::env::var_os("PEERPOD_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared"));
    let path = root.join(relative);
    if path.exists() {
        return Some(path);
    }
    let message = format!(
        "the shared fixture {} is missing: put the project's shared directory next to the \
         clone (../shared) or set PEERPOD_SHARED to it",
        path.display()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message} (CI=true: a missing fixture fails)");
    }
    // Straight to the process's stderr: the test harness captures `eprintln!`, and a skip
    // must be seen.
    let _ = std::io::stderr().write_all(format!("\n*** SKIPPED: {message} ***\n").as_bytes());
    None
}
