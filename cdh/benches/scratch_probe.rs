//! What the scratch-space check costs the first `PullImage` (it runs once per CDH): the probe
//! (`ScratchProbe::judge`: this process's `/proc/self/mountinfo` read and parsed, sysfs looked
//! up) on a tmpfs mounted in a temp directory, against the check it replaced in the same run
//! (two `stat`s: is the path another device than its parent), and the parser alone on a
//! synthetic mountinfo of a busy pod VM (2,000 mounts).
//!
//! Run with `cargo bench -p confidential-data-hub --bench scratch_probe` (as root, to mount the
//! tmpfs; without it the probe sees nothing mounted). `BENCH_ITERS` sets the rounds (default 2000).

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use confidential_data_hub::scratch::{ScratchProbe, parse_mountinfo};
use peerpod_tests::bench::percentile;
use peerpod_tests::scratch::ScratchDir;

fn time(iters: usize, mut f: impl FnMut()) -> Duration {
    let mut samples: Vec<Duration> = (0..iters)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    percentile(&mut samples, 0.5)
}

/// The check before the probe: a directory on another device than its parent.
fn old_check(scratch: &Path) -> bool {
    let (Ok(here), Some(Ok(parent))) = (
        std::fs::symlink_metadata(scratch),
        scratch.parent().map(std::fs::metadata),
    ) else {
        return false;
    };
    here.is_dir() && here.dev() != parent.dev()
}

fn main() {
    let iters = std::env::var("BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let dir = ScratchDir::new("cdh-bench-scratch").expect("temp dir");
    let scratch = dir.path().join("image");
    std::fs::create_dir_all(&scratch).expect("mount point");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "bench"])
        .arg(&scratch)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("note: cannot mount a tmpfs (not root?): the probe finds nothing mounted");
    }
    let probe = ScratchProbe::at(scratch.clone());
    println!("probe verdict: {:?}", probe.judge());
    let lines = std::fs::read("/proc/self/mountinfo")
        .map(|t| t.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count())
        .unwrap_or(0);
    let new = time(iters, || {
        std::hint::black_box(probe.judge());
    });
    let old = time(iters, || {
        std::hint::black_box(old_check(&scratch));
    });
    let busy: String = (0..2000)
        .map(|i| {
            format!(
                "{} 25 0:{i} / /run/kata-containers/shared/containers/c{i:04}/rootfs rw,relatime \
                 shared:{i} master:1 - overlay overlay rw,lowerdir=/run/image-rs/layers/a:/b,upperdir=/u,workdir=/w\n",
                100 + i
            )
        })
        .collect();
    let parse = time(iters.min(200), || {
        std::hint::black_box(parse_mountinfo(busy.as_bytes()).expect("synthetic mountinfo"));
    });
    if mounted {
        let _ = std::process::Command::new("umount").arg(&scratch).status();
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "scratch probe (mountinfo of {lines} mounts + sysfs), median: {:.1} us; \
         baseline two stats: {:.2} us; ratio {:.0}x; once per CDH, at the first pull",
        us(new),
        us(old),
        us(new) / us(old).max(1e-3)
    );
    println!(
        "parse_mountinfo of 2,000 overlay mounts ({} KiB), median: {:.0} us",
        busy.len() / 1024,
        us(parse)
    );
}
