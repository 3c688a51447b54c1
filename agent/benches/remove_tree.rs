//! `kata_agent::tree::remove_tree` (how a guest-pull bundle is removed) against GNU `rm -rf
//! --one-file-system` (coreutils' fts walk) on the same trees, built afresh for each run:
//! a wide tree (100 directories of 200 files) and a deep one (a chain of 3,000 directories,
//! a file every 10 levels). Prints the median of `BENCH_ITERS` runs (default 5) of each and
//! their ratio. Needs nothing but coreutils.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn wide(root: &Path) {
    for d in 0..100 {
        let dir = root.join(format!("d{d}"));
        std::fs::create_dir_all(&dir).expect("dir");
        for f in 0..200 {
            std::fs::write(dir.join(format!("f{f}")), b"x").expect("file");
        }
    }
}

fn deep(root: &Path) {
    std::fs::create_dir_all(root).expect("root");
    // Relative steps (a path of 3,000 components is longer than PATH_MAX).
    let previous = std::env::current_dir().expect("cwd");
    std::env::set_current_dir(root).expect("cd");
    for i in 0..3000 {
        std::fs::create_dir("d").expect("mkdir");
        if i % 10 == 0 {
            std::fs::write("f", b"x").expect("file");
        }
        std::env::set_current_dir("d").expect("cd");
    }
    std::env::set_current_dir(previous).expect("cd back");
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn measure(name: &str, build: fn(&Path), scratch: &Path, iters: usize) {
    let mut ours = Vec::new();
    let mut rm = Vec::new();
    for i in 0..iters {
        let tree: PathBuf = scratch.join(format!("{name}-ours-{i}"));
        build(&tree);
        let start = Instant::now();
        kata_agent::tree::remove_tree(&tree).expect("remove_tree");
        ours.push(start.elapsed());
        assert!(!tree.exists());

        let tree: PathBuf = scratch.join(format!("{name}-rm-{i}"));
        build(&tree);
        let start = Instant::now();
        let status = std::process::Command::new("rm")
            .args(["-rf", "--one-file-system"])
            .arg(&tree)
            .status()
            .expect("rm");
        rm.push(start.elapsed());
        assert!(status.success() && !tree.exists());
    }
    let (ours, rm) = (median(ours), median(rm));
    println!(
        "{name:5}: remove_tree {:8.2} ms   rm -rf {:8.2} ms   ratio (rm / ours) {:.2}x",
        ours.as_secs_f64() * 1e3,
        rm.as_secs_f64() * 1e3,
        rm.as_secs_f64() / ours.as_secs_f64()
    );
}

fn main() {
    let iters = std::env::var("BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let scratch = std::env::temp_dir().join(format!("agent-bench-tree-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).expect("scratch");
    println!("remove a tree: median of {iters} runs (rm's time includes its process start)");
    measure("wide", wide, &scratch, iters);
    measure("deep", deep, &scratch, iters);
    let _ = std::fs::remove_dir_all(&scratch);
}
