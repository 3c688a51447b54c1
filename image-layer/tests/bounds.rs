//! Trees and archives built to exhaust the unpacking process: directory trees thousands of
//! levels deep (removed under a small descriptor limit), layers deeper than `max_depth`, and a
//! layer listing one directory a million times (memory stays flat).
//!
//! The descriptor limit and the memory measurement are per process, so those parts run in a
//! child process: this test binary re-run with `--ignored --exact <child test>`.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use peerpod_image_layer::{LayerError, LayerStore, UnpackOptions, unpack};
use rustix::fs::{self as rfs, Mode, OFlags};

/// Set in a child process, with its work directory.
const CHILD_ENV: &str = "PEERPOD_IMAGE_LAYER_BOUNDS_CHILD";

/// Runs the ignored test `name` of this binary in a child process; answers its stdout.
fn in_child(name: &str, work: &Path) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            name,
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, work)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child {name} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    stdout
}

/// The work directory when running as a child, `None` when run by hand (nothing to do).
fn child_work() -> Option<PathBuf> {
    std::env::var_os(CHILD_ENV).map(PathBuf::from)
}

fn open_dir(path: &Path) -> OwnedFd {
    rfs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap()
}

/// Makes `levels` nested directories `d/d/d/...` below `base` one descriptor at a time (the
/// path is far longer than `PATH_MAX`), some of them without write permission, with a file
/// at the bottom.
fn build_deep(base: &Path, levels: usize) {
    let mut dir = open_dir(base);
    for level in 0..levels {
        rfs::mkdirat(&dir, "d", Mode::from_bits_retain(0o755)).unwrap();
        let next = rfs::openat(
            &dir,
            "d",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        if level % 700 == 0 {
            rfs::fchmod(&dir, Mode::from_bits_retain(0o555)).unwrap();
        }
        dir = next;
    }
    let file = rfs::openat(
        &dir,
        "bottom",
        OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC,
        Mode::from_bits_retain(0o644),
    )
    .unwrap();
    std::io::Write::write_all(&mut std::fs::File::from(file), b"deep").unwrap();
}

fn diff_id(tar: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let hex: String = Sha256::digest(tar)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// A layer with one file `levels` directories down (`a/a/.../a/f`).
fn deep_layer(levels: usize) -> Vec<u8> {
    let name = [&b"a/".repeat(levels)[..], b"f"].concat();
    Tar::new()
        .pax(&[("path", &name)])
        .add(Member::file(b"placeholder", b"deep"))
        .finish()
}

/// A layer 2,000 levels deep installed, overlays over it whose containers wrote trees 3,000
/// levels deep, removed by unmount, by reap after a plain umount, a failed deep install cleaned
/// up, and the layer collected, all under a limit of 64 open descriptors (std's
/// `remove_dir_all` needs one per level).
#[test]
fn deep_trees_are_removed_under_a_small_descriptor_limit() {
    let test = "deep_trees_are_removed_under_a_small_descriptor_limit";
    if !require_root(test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = in_child("child_deep_trees_under_64_descriptors", tmp.path());
    assert!(out.contains("descriptor limit 64"), "{out}");
    assert_eq!(
        std::fs::read_dir(tmp.path().join("work/overlay"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(tmp.path().join("work/layers/sha256"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(tmp.path().join("work/layers/.tmp"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
#[ignore = "run in a child process by deep_trees_are_removed_under_a_small_descriptor_limit"]
fn child_deep_trees_under_64_descriptors() {
    let Some(base) = child_work() else { return };
    let limit = rustix::process::Rlimit {
        current: Some(64),
        maximum: rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum,
    };
    rustix::process::setrlimit(rustix::process::Resource::Nofile, limit).unwrap();
    println!("descriptor limit 64");
    let work = base.join("work");
    let store = LayerStore::open(&work).unwrap();
    let opts = UnpackOptions {
        max_depth: 4096,
        ..Default::default()
    };

    // A deep layer installs (unpacking holds a few descriptors, not one per level).
    let layer = deep_layer(2000);
    let id = diff_id(&layer);
    let stats = store.install(&id, &layer[..], &opts).unwrap();
    assert_eq!(stats.implicit_dirs, 2000);
    // A deep layer that fails at its last member leaves nothing in the staging directory.
    let mut bad = layer.clone();
    bad.truncate(bad.len() - 1024);
    let bad = Tar(bad).add(Member::file(b"../escape", b"x")).finish();
    let err = store.install(&diff_id(&bad), &bad[..], &opts).unwrap_err();
    assert!(matches!(err, LayerError::Refused { .. }), "{err}");
    assert_eq!(
        std::fs::read_dir(work.join("layers/.tmp")).unwrap().count(),
        0
    );

    // A container writes a tree 3,000 levels deep; unmounting removes it.
    let a = base.join("a");
    std::fs::create_dir(&a).unwrap();
    let rootfs = store.mount_rootfs(std::slice::from_ref(&id), &a).unwrap();
    build_deep(&rootfs, 3000);
    store.unmount_rootfs(&a).unwrap();

    // The same, unmounted by someone else (as the kata-agent does) and reaped.
    let b = base.join("b");
    std::fs::create_dir(&b).unwrap();
    let rootfs = store.mount_rootfs(std::slice::from_ref(&id), &b).unwrap();
    build_deep(&rootfs, 3000);
    rustix::mount::unmount(&rootfs, rustix::mount::UnmountFlags::empty()).unwrap();
    let then = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    for entry in std::fs::read_dir(work.join("overlay")).unwrap() {
        std::fs::File::open(entry.unwrap().path())
            .unwrap()
            .set_modified(then)
            .unwrap();
    }
    assert_eq!(store.reap_unmounted().unwrap(), 1);
    let gc = store.gc().unwrap();
    assert_eq!((gc.removed, gc.kept, gc.failed), (1, 0, 0));
    assert!(!store.contains(&id));
}

/// A layer deeper than `max_depth` (default 512) is refused with an error naming the option;
/// one at the limit unpacks.
#[test]
fn layers_deeper_than_max_depth_are_refused() {
    if !require_root("layers_deeper_than_max_depth_are_refused") {
        return;
    }
    let sb = Sandbox::new();
    let err = unpack(&deep_layer(600)[..], &sb.dest, &UnpackOptions::default()).unwrap_err();
    match &err {
        LayerError::Limit { field, limit, .. } => {
            assert_eq!((*field, *limit), ("max_depth", 512));
        }
        other => panic!("expected the max_depth limit, got {other}"),
    }
    assert!(
        err.to_string().contains("UnpackOptions::max_depth"),
        "{err}"
    );
    sb.assert_outside_untouched();
    let sb = Sandbox::new();
    // 511 directories and the file: 512 components.
    unpack(&deep_layer(511)[..], &sb.dest, &UnpackOptions::default()).unwrap();
    // Too long for one path lookup: check from a descriptor halfway down.
    let half: PathBuf = std::iter::repeat_n("a", 256).collect();
    let rest: PathBuf = std::iter::repeat_n("a", 255).collect();
    let mid = open_dir(&sb.dest.join(half));
    let f = rfs::openat(&mid, rest.join("f"), OFlags::RDONLY, Mode::empty()).unwrap();
    let mut content = Vec::new();
    std::fs::File::from(f).read_to_end(&mut content).unwrap();
    assert_eq!(content, b"deep");
    sb.assert_outside_untouched();
}

/// Directory members made on the fly (`make(i)` names the i-th, with an mtime of
/// 1,000,000,000 + i), then the end-of-archive marker: a million entries cost no memory to
/// produce.
struct DirMembers {
    make: fn(u64) -> Vec<u8>,
    next: u64,
    count: u64,
    tail: usize,
}

impl DirMembers {
    fn new(count: u64, make: fn(u64) -> Vec<u8>) -> Self {
        Self {
            make,
            next: 0,
            count,
            tail: 1024,
        }
    }

    /// A ustar header for a directory named `prefix` + `/` + `name` (`prefix` may be empty).
    fn header(prefix: &[u8], name: &[u8], mtime: u64) -> [u8; 512] {
        let mut h = tar::Header::new_ustar();
        {
            let raw = h.as_mut_bytes();
            raw[345..345 + prefix.len()].copy_from_slice(prefix);
            raw[..name.len()].copy_from_slice(name);
        }
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime);
        h.set_size(0);
        h.set_entry_type(tar::EntryType::Directory);
        h.set_cksum();
        let mut header = [0u8; 512];
        header.copy_from_slice(h.as_bytes());
        header
    }
}

impl Read for DirMembers {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut n = 0;
        while n + 512 <= buf.len() && self.next < self.count {
            let header = (self.make)(self.next);
            buf[n..n + 512].copy_from_slice(&header);
            n += 512;
            self.next += 1;
        }
        if self.next == self.count {
            let zeros = self.tail.min(buf.len() - n);
            buf[n..n + zeros].fill(0);
            n += zeros;
            self.tail -= zeros;
        }
        Ok(n)
    }
}

/// The one 250-byte directory of the duplicates test.
fn duplicate(_: u64) -> Vec<u8> {
    let prefix = [
        &b"p".repeat(50)[..],
        b"/",
        &b"q".repeat(50),
        b"/",
        &b"r".repeat(52),
    ]
    .concat();
    let name = [&b"s".repeat(94)[..], b"/"].concat();
    DirMembers::header(&prefix, &name, 1_000_000_000).to_vec()
}

/// The parent of the distinct directories (154 bytes).
fn distinct_parent() -> String {
    format!("top/{}", "x".repeat(150))
}

/// `<distinct_parent>/<95 digits>/` (250 bytes), distinct for each `i`.
fn distinct(i: u64) -> Vec<u8> {
    let name = format!("{i:095}/");
    DirMembers::header(
        distinct_parent().as_bytes(),
        name.as_bytes(),
        1_000_000_000 + i,
    )
    .to_vec()
}

/// Kilobytes of a `/proc/self/status` field.
fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap()
}

/// A layer of a million entries all naming one 250-byte directory (a few MB gzipped) unpacks
/// with the peak memory of the process growing by less than 32 MiB (keeping every listing's
/// path, as before, took over 300 MB), and the directory gets the listed mtime.
#[test]
fn a_million_duplicate_directory_entries_keep_memory_flat() {
    // Owners are kept (chown to root).
    if !require_root("a_million_duplicate_directory_entries_keep_memory_flat") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = in_child("child_duplicate_directory_entries", tmp.path());
    let growth: u64 = out
        .lines()
        .find_map(|l| l.split_once("peak growth kB ").map(|(_, v)| v))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    eprintln!("peak memory growth over a million duplicate directory entries: {growth} kB");
    assert!(growth < 32 << 10, "peak memory grew by {growth} kB");
}

#[test]
#[ignore = "run in a child process by a_million_duplicate_directory_entries_keep_memory_flat"]
fn child_duplicate_directory_entries() {
    let Some(base) = child_work() else { return };
    let dest = base.join("layer");
    let before = status_kb("VmRSS:");
    let stats = unpack(
        DirMembers::new(1_000_000, duplicate),
        &dest,
        &UnpackOptions::default(),
    )
    .unwrap();
    let peak = status_kb("VmHWM:");
    assert_eq!(stats.dirs, 1_000_000);
    let dir = dest.join(format!(
        "{}/{}/{}/{}",
        "p".repeat(50),
        "q".repeat(50),
        "r".repeat(52),
        "s".repeat(94)
    ));
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&dir).unwrap().mtime(), 1_000_000_000);
    println!("peak growth kB {}", peak.saturating_sub(before));
}

/// 60,000 distinct 250-byte directories (over 16 MiB of paths with their overhead): the paths are dropped past the budget
/// and one walk of the tree sets every directory's time; peak memory grows by less than
/// 64 MiB.
#[test]
fn many_distinct_directories_get_their_times_within_a_memory_bound() {
    // Owners are kept (chown to root).
    if !require_root("many_distinct_directories_get_their_times_within_a_memory_bound") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = in_child("child_distinct_directories", tmp.path());
    let growth: u64 = out
        .lines()
        .find_map(|l| l.split_once("peak growth kB ").map(|(_, v)| v))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    eprintln!("peak memory growth over 60,000 distinct directories: {growth} kB");
    assert!(growth < 64 << 10, "peak memory grew by {growth} kB");
}

#[test]
#[ignore = "run in a child process by many_distinct_directories_get_their_times_within_a_memory_bound"]
fn child_distinct_directories() {
    let Some(base) = child_work() else { return };
    let dest = base.join("layer");
    let count = 60_000;
    let before = status_kb("VmRSS:");
    let stats = unpack(
        DirMembers::new(count, distinct),
        &dest,
        &UnpackOptions::default(),
    )
    .unwrap();
    let peak = status_kb("VmHWM:");
    assert_eq!((stats.dirs, stats.implicit_dirs), (count, 2));
    use std::os::unix::fs::MetadataExt;
    for i in [0, 1, count / 2, count - 1] {
        let dir = dest.join(distinct_parent()).join(format!("{i:095}"));
        assert_eq!(
            std::fs::metadata(&dir).unwrap().mtime(),
            1_000_000_000 + i as i64
        );
    }
    println!("peak growth kB {}", peak.saturating_sub(before));
}
