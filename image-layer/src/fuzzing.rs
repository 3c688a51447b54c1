//! Entry points for the cargo-fuzz target in `../fuzz` (feature `fuzzing`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::options::UnpackOptions;

static RUN: AtomicU64 = AtomicU64::new(0);

/// Unpacks arbitrary bytes into a fresh directory `<tmp>/<unique>/layer`, then checks that
/// nothing appeared beside `layer` (an escape) and removes the lot. Panics on an escape.
pub fn unpack_sandboxed(data: &[u8]) {
    let base: PathBuf = std::env::temp_dir().join(format!(
        "peerpod-layer-fuzz-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    ));
    if std::fs::create_dir(&base).is_err() {
        return;
    }
    let dest = base.join("layer");
    let opts = UnpackOptions {
        max_entries: 10_000,
        max_total_bytes: 64 << 20,
        ..UnpackOptions::default()
    };
    let _ = crate::unpack(data, &dest, &opts);
    let beside: Vec<_> = std::fs::read_dir(&base)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name())
                .filter(|n| n != "layer")
                .collect()
        })
        .unwrap_or_default();
    let _ = std::fs::remove_dir_all(&base);
    assert!(
        beside.is_empty(),
        "unpack wrote outside its destination: {beside:?}"
    );
}
