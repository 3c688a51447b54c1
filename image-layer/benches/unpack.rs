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

use peerpod_image_layer::{ChargeHook, UnpackOptions, unpack};

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

/// CPU seconds (user + system) of this process and of its waited-for children, from
/// `/proc/self/stat` (clock ticks of 1/100 s on Linux): under a loaded machine they vary less
/// than wall time.
fn cpu_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<f64> = after.split(' ').map(|f| f.parse().unwrap_or(0.0)).collect();
    // Fields 14-17 of the stat line are the 12th-15th after the command name.
    (
        (fields[11] + fields[12]) / 100.0,
        (fields[13] + fields[14]) / 100.0,
    )
}

/// Wall time and CPU seconds.
type Sample = (Duration, f64);

fn time_gnu(tarball: &Path, dest: &Path) -> Sample {
    std::fs::create_dir(dest).unwrap();
    let cpu = cpu_seconds().1;
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
    (elapsed, cpu_seconds().1 - cpu)
}

/// A hook charging shared counters under a limit, as the image puller's budget does.
fn counting_hook() -> ChargeHook {
    use std::sync::atomic::{AtomicU64, Ordering};
    let (bytes, inodes) = (AtomicU64::new(0), AtomicU64::new(0));
    ChargeHook::new(move |c| {
        if inodes.fetch_add(c.inodes, Ordering::Relaxed) > u64::MAX / 2 {
            return Err("over".into());
        }
        bytes.fetch_add(c.bytes, Ordering::Relaxed);
        Ok(())
    })
}

fn time_ours(tarball: &Path, dest: &Path, charge: Option<ChargeHook>) -> Sample {
    let cpu = cpu_seconds().0;
    let start = Instant::now();
    let file = std::fs::File::open(tarball).unwrap();
    unpack(
        std::io::BufReader::with_capacity(1 << 20, file),
        dest,
        &UnpackOptions {
            charge,
            ..UnpackOptions::default()
        },
    )
    .unwrap();
    (start.elapsed(), cpu_seconds().0 - cpu)
}

/// Best and median wall time, best and median CPU seconds.
fn stats(v: &[Sample]) -> (Duration, Duration, f64, f64) {
    let mut wall: Vec<Duration> = v.iter().map(|s| s.0).collect();
    let mut cpu: Vec<f64> = v.iter().map(|s| s.1).collect();
    wall.sort();
    cpu.sort_by(f64::total_cmp);
    (wall[0], wall[wall.len() / 2], cpu[0], cpu[cpu.len() / 2])
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
    let base = std::env::var_os("PEERPOD_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let shm = Path::new("/dev/shm");
            if shm.is_dir() {
                shm.to_path_buf()
            } else {
                Path::new(env!("CARGO_TARGET_TMPDIR")).to_path_buf()
            }
        });
    println!("running in {}", base.display());
    let tmp = tempfile::Builder::new()
        .prefix("layer-bench")
        .tempdir_in(&base)
        .unwrap();
    let tarball = tmp.path().join("layer.tar");
    let (bytes, members) = generate(&tarball, mb << 20);
    let archive = std::fs::metadata(&tarball).unwrap().len();
    println!(
        "layer: {members} members, {:.1} MB of file data, {:.1} MB tarball",
        bytes as f64 / 1e6,
        archive as f64 / 1e6
    );
    let (mut gnu, mut ours, mut charged) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let g = tmp.path().join(format!("gnu{run}"));
        let o = tmp.path().join(format!("ours{run}"));
        let c = tmp.path().join(format!("charged{run}"));
        // Alternate which goes first, so neither always gets the warmer cache.
        if run % 2 == 0 {
            gnu.push(time_gnu(&tarball, &g));
            ours.push(time_ours(&tarball, &o, None));
            charged.push(time_ours(&tarball, &c, Some(counting_hook())));
        } else {
            charged.push(time_ours(&tarball, &c, Some(counting_hook())));
            ours.push(time_ours(&tarball, &o, None));
            gnu.push(time_gnu(&tarball, &g));
        }
        for d in [&g, &o, &c] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }
    let (gb, gm, gcb, gcm) = stats(&gnu);
    let (ob, om, ocb, ocm) = stats(&ours);
    let (cb, cm, ccb, ccm) = stats(&charged);
    let mbps = |d: Duration| archive as f64 / 1e6 / d.as_secs_f64();
    println!(
        "GNU tar -x: wall best {:>6.3} s ({:>5.1} MB/s), median {:>6.3} s; CPU best {:>6.2} s, median {:>6.2} s",
        gb.as_secs_f64(),
        mbps(gb),
        gm.as_secs_f64(),
        gcb,
        gcm
    );
    println!(
        "unpack:     wall best {:>6.3} s ({:>5.1} MB/s), median {:>6.3} s; CPU best {:>6.2} s, median {:>6.2} s",
        ob.as_secs_f64(),
        mbps(ob),
        om.as_secs_f64(),
        ocb,
        ocm
    );
    println!(
        "ratio GNU tar / ours (>1 = ours faster): wall best {:.2}x, median {:.2}x; CPU best {:.2}x, median {:.2}x",
        gb.as_secs_f64() / ob.as_secs_f64(),
        gm.as_secs_f64() / om.as_secs_f64(),
        gcb / ocb,
        gcm / ocm
    );
    println!(
        "unpack with a charge hook: wall best {:>6.3} s, median {:>6.3} s; CPU best {:>6.2} s, median {:>6.2} s; \
         ratio without / with (<1 = the hook costs): CPU best {:.2}x",
        cb.as_secs_f64(),
        cm.as_secs_f64(),
        ccb,
        ccm,
        ocb / ccb
    );
}
