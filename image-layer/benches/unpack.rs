//! Unpack of a large generated layer (~200 MB, ~40,000 members) against GNU `tar -x` of the
//! same tarball, in the same run, alternating, best and median of the runs.
//!
//! `cargo bench -p peerpod-image-layer --bench unpack` (run as root, like the pod VM's unpacker:
//! both keep owners and modes). `PEERPOD_BENCH_MB` sets the size, `PEERPOD_BENCH_RUNS` the runs,
//! `PEERPOD_BENCH_DIR` where it runs: by default `/dev/shm`, a tmpfs like the pod VM's
//! `/run/image-rs`, so the figures are the unpackers' own cost rather than a shared disk's.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use peerpod_image_layer::{UnpackOptions, unpack};

/// A deterministic layer: directories of small files (the bulk of real images by count), a few
/// large ones (by size), symlinks and hard links.
fn generate(path: &Path, target_bytes: u64) -> (u64, u64) {
    let file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut builder = tar::Builder::new(file);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut data = vec![0u8; 4 << 20];
    for chunk in data.chunks_mut(8) {
        let v = next().to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
    let (mut total, mut members) = (0u64, 0u64);
    let mut i = 0u64;
    while total < target_bytes {
        let dir = format!("usr/lib/pkg{:03}/sub{}", i / 200, (i / 40) % 5);
        if i.is_multiple_of(40) {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            h.set_size(0);
            builder
                .append_data(&mut h, format!("{dir}/"), std::io::empty())
                .unwrap();
            members += 1;
        }
        let size = match next() % 1000 {
            0..=1 => 1 << 20,
            2..=21 => 64 << 10,
            _ => (next() % 4096) as usize,
        };
        let start = (next() % (data.len() as u64 - size as u64)) as usize;
        let mut h = tar::Header::new_gnu();
        h.set_mode(if i.is_multiple_of(17) { 0o755 } else { 0o644 });
        h.set_uid(i % 3);
        h.set_gid(i % 5);
        h.set_mtime(1_700_000_000 + i);
        h.set_size(size as u64);
        let name = format!("{dir}/file{i}.so");
        builder
            .append_data(&mut h, &name, &data[start..start + size])
            .unwrap();
        total += size as u64;
        members += 1;
        if i.is_multiple_of(50) {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_mode(0o777);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            h.set_size(0);
            builder
                .append_link(&mut h, format!("{dir}/link{i}"), format!("file{i}.so"))
                .unwrap();
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Link);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            h.set_size(0);
            builder
                .append_link(&mut h, format!("{dir}/hard{i}"), &name)
                .unwrap();
            members += 2;
        }
        i += 1;
    }
    builder.into_inner().unwrap().flush().unwrap();
    (total, members)
}

fn time_gnu(tarball: &Path, dest: &Path) -> Duration {
    std::fs::create_dir(dest).unwrap();
    let start = Instant::now();
    let status = Command::new("tar")
        .arg("-xf")
        .arg(tarball)
        .arg("-C")
        .arg(dest)
        .status()
        .unwrap();
    let elapsed = start.elapsed();
    assert!(status.success(), "GNU tar failed");
    elapsed
}

fn time_ours(tarball: &Path, dest: &Path) -> Duration {
    let start = Instant::now();
    let file = std::fs::File::open(tarball).unwrap();
    unpack(
        std::io::BufReader::with_capacity(1 << 20, file),
        dest,
        &UnpackOptions::default(),
    )
    .unwrap();
    start.elapsed()
}

fn stats(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[0], v[v.len() / 2])
}

fn main() {
    if std::process::Command::new("tar")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("*** SKIPPED: the unpack benchmark needs GNU tar as its baseline ***");
        return;
    }
    let mb: u64 = std::env::var("PEERPOD_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let runs: usize = std::env::var("PEERPOD_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let tmp = tempfile::Builder::new()
        .prefix("layer-bench")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let tarball = tmp.path().join("layer.tar");
    let (bytes, members) = generate(&tarball, mb << 20);
    let archive = std::fs::metadata(&tarball).unwrap().len();
    println!(
        "layer: {members} members, {:.1} MB of file data, {:.1} MB tarball",
        bytes as f64 / 1e6,
        archive as f64 / 1e6
    );
    let (mut gnu, mut ours) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let g = tmp.path().join(format!("gnu{run}"));
        let o = tmp.path().join(format!("ours{run}"));
        // Alternate which goes first, so neither always gets the warmer cache.
        if run % 2 == 0 {
            gnu.push(time_gnu(&tarball, &g));
            ours.push(time_ours(&tarball, &o));
        } else {
            ours.push(time_ours(&tarball, &o));
            gnu.push(time_gnu(&tarball, &g));
        }
        std::fs::remove_dir_all(&g).unwrap();
        std::fs::remove_dir_all(&o).unwrap();
    }
    let (gb, gm) = stats(gnu);
    let (ob, om) = stats(ours);
    let mbps = |d: Duration| archive as f64 / 1e6 / d.as_secs_f64();
    println!(
        "GNU tar -x:   best {:>7.3} s ({:>6.1} MB/s), median {:>7.3} s",
        gb.as_secs_f64(),
        mbps(gb),
        gm.as_secs_f64()
    );
    println!(
        "unpack:       best {:>7.3} s ({:>6.1} MB/s), median {:>7.3} s",
        ob.as_secs_f64(),
        mbps(ob),
        om.as_secs_f64()
    );
    println!(
        "ratio (GNU tar time / ours, >1 = faster): best {:.2}x, median {:.2}x",
        gb.as_secs_f64() / ob.as_secs_f64(),
        gm.as_secs_f64() / om.as_secs_f64()
    );
}
