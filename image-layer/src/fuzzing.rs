//! Entry points for the cargo-fuzz target in `../fuzz` (feature `fuzzing`).

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::LayerError;
use crate::options::{UnpackOptions, UnpackStats};

static RUN: AtomicU64 = AtomicU64::new(0);

/// What a path beside the layer is: kind, mode, owner, size, link count, mtime, content or
/// link target.
type Snapshot = BTreeMap<PathBuf, (u32, u32, u64, u64, i64, i64, Vec<u8>)>;

/// Unpacks arbitrary bytes into a fresh directory `<tmp>/<unique>/layer` whose siblings are
/// sentinels an escape would reach (`outside/victim`, `outside/dir/`, a symbolic link to
/// `outside`), then checks, panicking otherwise:
///
/// - every sentinel is exactly as made (names, kinds, modes, owners, sizes, link counts,
///   mtimes, contents, link targets) and nothing new appeared beside `layer`;
/// - an input that is refused is refused with an error about the layer
///   ([`LayerError::Archive`], [`Malformed`](LayerError::Malformed),
///   [`Refused`](LayerError::Refused) or [`Limit`](LayerError::Limit)), never an I/O error
///   of the machine or a misuse error: a hostile input must be named as such.
///
/// Removes everything afterwards (with the store's own tree removal) and answers the outcome.
pub fn unpack_sandboxed(data: &[u8]) -> Result<UnpackStats, LayerError> {
    let base: PathBuf = std::env::temp_dir().join(format!(
        "peerpod-layer-fuzz-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    ));
    let made = std::fs::create_dir(&base)
        .and_then(|()| std::fs::create_dir(base.join("outside")))
        .and_then(|()| std::fs::write(base.join("outside/victim"), b"victim\n"))
        .and_then(|()| std::fs::create_dir(base.join("outside/dir")))
        .and_then(|()| symlink("outside", base.join("link")));
    if let Err(e) = made {
        panic!("cannot make the fuzzing sandbox {}: {e}", base.display());
    }
    let before = snapshot(&base);
    let dest = base.join("layer");
    let opts = UnpackOptions {
        max_entries: 10_000,
        max_total_bytes: 64 << 20,
        ..UnpackOptions::default()
    };
    let result = crate::unpack(data, &dest, &opts);
    let after = snapshot(&base);
    let removed = crate::remove::remove_tree(&base);
    assert!(
        before == after,
        "unpack changed something outside its destination:\nbefore {before:?}\nafter {after:?}"
    );
    if let Err(e) = &result {
        assert!(
            matches!(
                e,
                LayerError::Archive { .. }
                    | LayerError::Malformed { .. }
                    | LayerError::Refused { .. }
                    | LayerError::Limit { .. }
            ),
            "a refused input must give a layer error, not {e:?}"
        );
    }
    if let Err(e) = removed {
        panic!("cannot remove the fuzzing sandbox: {e}");
    }
    result
}

/// Everything below `base` except `base/layer`, without following symbolic links.
fn snapshot(base: &Path) -> Snapshot {
    let mut out = Snapshot::new();
    let mut todo = vec![base.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path == base.join("layer") {
                continue;
            }
            let Ok(md) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let content = if md.file_type().is_symlink() {
                std::fs::read_link(&path)
                    .map(|t| t.into_os_string().into_encoded_bytes())
                    .unwrap_or_default()
            } else if md.is_file() {
                std::fs::read(&path).unwrap_or_default()
            } else {
                if md.is_dir() {
                    todo.push(path.clone());
                }
                Vec::new()
            };
            out.insert(
                path,
                (
                    md.mode(),
                    md.uid(),
                    md.size(),
                    md.nlink(),
                    md.mtime(),
                    md.mtime_nsec(),
                    content,
                ),
            );
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The escape check is not vacuous: a byte changed in a sentinel, a file made beside the
    /// destination or in a sentinel directory, a link retargeted each change the snapshot;
    /// writes inside `layer` do not.
    #[test]
    fn the_sandbox_snapshot_sees_every_change_outside_the_layer() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        std::fs::create_dir_all(base.join("outside/dir")).unwrap();
        std::fs::create_dir(base.join("layer")).unwrap();
        std::fs::write(base.join("outside/victim"), b"victim\n").unwrap();
        symlink("outside", base.join("link")).unwrap();
        let before = snapshot(base);
        std::fs::write(base.join("layer/inside"), b"fine").unwrap();
        assert_eq!(snapshot(base), before);
        let changes: [&dyn Fn(); 4] = [
            &|| std::fs::write(base.join("outside/victim"), b"victiM\n").unwrap(),
            &|| std::fs::write(base.join("beside"), b"").unwrap(),
            &|| std::fs::write(base.join("outside/dir/new"), b"").unwrap(),
            &|| {
                std::fs::remove_file(base.join("link")).unwrap();
                symlink("/", base.join("link")).unwrap();
            },
        ];
        for change in changes {
            let before = snapshot(base);
            change();
            assert_ne!(snapshot(base), before);
        }
    }
}
