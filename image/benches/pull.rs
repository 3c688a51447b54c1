//! Pull + unpack of a five-layer image (about 200 MB unpacked) from Debian's `docker-registry`
//! on 127.0.0.1, cold, and then of an image sharing its first four layers, against
//! `skopeo copy docker://… oci:…` + `umoci unpack` of the same images in the same run; and the
//! peak RSS (VmHWM) of a process that does nothing but the pull, for a small and the big image.
//!
//! Run as root (overlay mounts) with `cargo bench -p peerpod-image --bench pull`.
//! `BENCH_LAYER_MB` sets the size of each of the four data layers (default 50).
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use peerpod_image::resources::NoResources;
use peerpod_image::{LayerDirStore, Puller};

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// In the child: pulls `BENCH_PULL_IMAGE` into `BENCH_PULL_WORK` / `BENCH_PULL_BUNDLE` with the
/// registries.conf `BENCH_PULL_CONF`; prints `seconds bytes vmhwm_kib`.
fn child() {
    let var = |k: &str| std::env::var(k).unwrap();
    let work = PathBuf::from(var("BENCH_PULL_WORK"));
    let bundle = PathBuf::from(var("BENCH_PULL_BUNDLE"));
    let mut config = test_config(&work);
    config.registry_configuration_uri = Some(var("BENCH_PULL_CONF"));
    config.transfer.read_timeout = Duration::from_secs(30);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = Arc::new(LayerDirStore::open(&work, Default::default()).unwrap());
    let puller = Puller::new(config, Arc::new(NoResources), store).unwrap();
    std::fs::create_dir_all(&bundle).unwrap();
    let started = Instant::now();
    let out = rt
        .block_on(puller.pull(&var("BENCH_PULL_IMAGE"), &bundle))
        .unwrap();
    let took = started.elapsed();
    // The mount stays for the parent to look at and undo (the store records the bundle).
    println!("{} {} {}", took.as_secs_f64(), out.bytes, vm_hwm_kib());
}

struct Pull {
    took: Duration,
    bytes: u64,
    hwm_kib: u64,
}

fn ours(conf: &str, work: &Path, image: &str, bundle: &Path) -> Pull {
    let out = run(Command::new(std::env::current_exe().unwrap())
        .env("BENCH_PULL_CHILD", "1")
        .env("BENCH_PULL_WORK", work)
        .env("BENCH_PULL_BUNDLE", bundle)
        .env("BENCH_PULL_CONF", conf)
        .env("BENCH_PULL_IMAGE", image))
    .unwrap();
    let f: Vec<&str> = out.split_whitespace().collect();
    Pull {
        took: Duration::from_secs_f64(f[0].parse().unwrap()),
        bytes: f[1].parse().unwrap(),
        hwm_kib: f[2].parse().unwrap(),
    }
}

fn baseline(registry: &Registry, image: &str, oci: &Path, bundle: &Path) -> Duration {
    let tag = image.replace(['/', ':'], "-");
    let started = Instant::now();
    run(Command::new("skopeo").args([
        "copy",
        "--insecure-policy",
        "--quiet",
        "--src-tls-verify=false",
        &format!("docker://{}/{image}", registry.addr),
        &format!("oci:{}:{tag}", oci.display()),
    ]))
    .unwrap();
    run(Command::new("umoci")
        .args(["unpack", "--image", &format!("{}:{tag}", oci.display())])
        .arg(bundle))
    .unwrap();
    started.elapsed()
}

fn main() {
    if std::env::var_os("BENCH_PULL_CHILD").is_some() {
        return child();
    }
    if !tools_present() {
        return;
    }
    let layer_mb: usize = std::env::var("BENCH_LAYER_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let scratch = Scratch::new("bench");
    let dir = scratch.path();
    let registry = Registry::start(RegistryOptions::default()).unwrap();
    let layout = dir.join("layout");
    // Each data layer: half pseudo-random bytes, half text (real layers mix both).
    let half = layer_mb * 512 * 1024;
    let text: Vec<u8> = (0..half)
        .map(|i| b"the quick brown fox jumps over the lazy dog 0123456789\n"[i % 55])
        .collect();
    let names: Vec<(String, String)> = (0..6)
        .map(|n| (format!("/data/random{n}"), format!("/data/text{n}")))
        .collect();
    let layer = |n: usize| {
        vec![
            Step::Seeded(&names[n].0, half, n as u64 + 1),
            Step::Write(&names[n].1, &text),
        ]
    };
    let setup = Instant::now();
    build_image(
        &layout,
        "base",
        &[vec![Step::Busybox], layer(1), layer(2), layer(3)],
    )
    .unwrap();
    extend_image(&layout, "base", "big", &[layer(4)]).unwrap();
    extend_image(&layout, "base", "shared", &[layer(5)]).unwrap();
    build_image(
        &layout,
        "small",
        &[
            vec![Step::Busybox],
            vec![Step::Seeded("/data/small", 4 << 20, 9)],
        ],
    )
    .unwrap();
    for (tag, repo) in [
        ("big", "bench/big"),
        ("shared", "bench/shared"),
        ("small", "bench/small"),
    ] {
        registry.push(&layout, tag, repo, "v1", "oci").unwrap();
    }
    eprintln!(
        "setup (build + push): {:.1} s",
        setup.elapsed().as_secs_f64()
    );

    let conf = file_uri(dir, "r.conf", &insecure_conf(&registry.addr));
    let oci = dir.join("skopeo-oci");
    let base_cold = baseline(&registry, "bench/big:v1", &oci, &dir.join("umoci-big"));
    let base_shared = baseline(
        &registry,
        "bench/shared:v1",
        &oci,
        &dir.join("umoci-shared"),
    );

    let work = dir.join("work");
    let image = |repo: &str| format!("{}/{repo}:v1", registry.addr);
    let cold = ours(&conf, &work, &image("bench/big"), &dir.join("b-big"));
    let shared = ours(&conf, &work, &image("bench/shared"), &dir.join("b-shared"));
    let small = ours(
        &conf,
        &dir.join("work-small"),
        &image("bench/small"),
        &dir.join("b-small"),
    );
    let store = LayerDirStore::open(&work, Default::default()).unwrap();
    let small_store = LayerDirStore::open(&dir.join("work-small"), Default::default()).unwrap();
    for b in ["b-big", "b-shared"] {
        let _ = store.inner().unmount_rootfs(&dir.join(b));
    }
    let _ = small_store.inner().unmount_rootfs(&dir.join("b-small"));

    let du = |p: &Path| {
        run(Command::new("du").args(["-sb"]).arg(p))
            .ok()
            .and_then(|o| {
                o.split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
            })
            .unwrap_or(0)
    };
    let unpacked = du(&dir.join("umoci-big/rootfs"));
    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "image: 5 layers, {:.0} MB unpacked, {:.0} MB compressed",
        mb(unpacked),
        mb(cold.bytes)
    );
    println!(
        "cold pull+unpack: ours {:.2} s ({:.0} MB/s unpacked); skopeo copy + umoci unpack {:.2} s; ratio {:.2}x",
        cold.took.as_secs_f64(),
        mb(unpacked) / cold.took.as_secs_f64(),
        base_cold.as_secs_f64(),
        base_cold.as_secs_f64() / cold.took.as_secs_f64()
    );
    println!(
        "4 of 5 layers shared ({:.0} MB fetched): ours {:.2} s; skopeo copy (blobs reused) + umoci unpack {:.2} s; ratio {:.2}x",
        mb(shared.bytes),
        shared.took.as_secs_f64(),
        base_shared.as_secs_f64(),
        base_shared.as_secs_f64() / shared.took.as_secs_f64()
    );
    println!(
        "peak RSS (VmHWM) of the pulling process: {:.1} MiB for the {:.0} MB image, {:.1} MiB for a {:.0} MB image",
        cold.hwm_kib as f64 / 1024.0,
        mb(cold.bytes),
        small.hwm_kib as f64 / 1024.0,
        mb(small.bytes)
    );
}
