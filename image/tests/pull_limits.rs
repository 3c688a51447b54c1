//! What a pull costs work_dir, and what a failed or abandoned pull leaves there, against the
//! real layer store and Debian's `docker-registry` (root: tmpfs and overlay mounts).
//!
//! - A layer of 300,000 empty files (a small gzip) is refused at the inode limit
//!   (`max_image_unpacked_inodes`, by default from work_dir's free inodes) before it exhausts
//!   a small tmpfs, which is left as it was.
//! - A pull whose last layer fails leaves none of the layers it installed (unless a mounted
//!   bundle uses them), so the next pull is not refused by `max_layer_store_bytes`.
//! - A pull dropped while a layer is being installed still leaves that layer with its origin
//!   record (the store-wide total counts it).
//! - A layer whose record is lost is measured, and still counts against the store limit.
//! - Unwrapping layer keys (a KBS request each) is bounded by
//!   `max_concurrent_layer_downloads_per_image`.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use common::raw::*;
use common::*;
use peerpod_image::{ChargeHook, Digest, ImageError, LayerDirStore, Layers, Puller};
use sha2::Digest as _;

/// A writer that hashes what it forwards.
struct Hashing<W> {
    inner: W,
    hash: sha2::Sha256,
}

impl<W: std::io::Write> std::io::Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// `count` empty files, streamed into gzip (the tar itself is 512 bytes a file).
fn empty_files_layer(count: usize) -> RawLayer {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(Hashing {
        inner: gz,
        hash: sha2::Sha256::new(),
    });
    for i in 0..count {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        tar.append_data(&mut h, format!("f{i:07}"), std::io::empty())
            .unwrap();
    }
    let hashing = tar.into_inner().unwrap();
    let diff_id =
        Digest::parse(&format!("sha256:{}", hex::encode(hashing.hash.finalize()))).unwrap();
    RawLayer {
        media_type: GZIP,
        blob: hashing.inner.finish().unwrap(),
        diff_id,
        annotations: Default::default(),
    }
}

/// Before, each empty file cost 512 bytes of the byte limit: 300,000 of them (150 MB of tar,
/// far under the byte default of a 1 GiB tmpfs) were all made, and a tmpfs of 20,000 inodes
/// ran out (in the pod VM: /run, where kata-agent then cannot create a container's
/// directory). Now the inode default (3/4 of the free inodes) refuses the layer, naming the
/// key, with the tmpfs as it was; a normal image still pulls.
#[tokio::test(flavor = "multi_thread")]
async fn many_empty_files_are_refused_at_the_inode_limit_and_the_tmpfs_is_left_as_it_was()
-> Result<()> {
    if !ready() {
        return Ok(());
    }
    let w = World::new("inodes")?;
    let _tmpfs = Tmpfs::mount(&w.work, "size=1g,nr_inodes=20000,mode=0700")?;
    let flood = empty_files_layer(300_000);
    assert!(flood.blob.len() < 8 << 20, "{}", flood.blob.len());
    push_raw(&w.registry, "flood/img", "v1", std::slice::from_ref(&flood)).await?;
    let ok = plain_layer(&tar_of(&[("ok", vec![2u8; 1 << 20], 0o644)]));
    push_raw(&w.registry, "fine/img", "v1", &[ok]).await?;
    let (p, _) = w.puller(w.config(), HashMap::new())?;
    let statvfs = || rustix::fs::statvfs(&w.work).unwrap();
    let before = statvfs();
    let text = w
        .refused_by_limit(
            &p,
            "flood/img:v1",
            "flood",
            "max_image_unpacked_inodes",
            &["inodes free in work_dir", &flood.diff_id.to_string()],
        )
        .await?;
    assert!(!text.contains("No space left"), "{text}");
    let after = statvfs();
    // New: the store's lock file (made by the first collection) and layers/sha256.
    assert!(
        after.f_ffree + 2 >= before.f_ffree,
        "every inode given back: {} then {}",
        before.f_ffree,
        after.f_ffree
    );
    assert!(
        after.f_bfree + 2 >= before.f_bfree,
        "every block given back: {} then {}",
        before.f_bfree,
        after.f_bfree
    );
    assert_eq!(w.staging_count(), 0);
    assert_eq!(w.layer_count(), 0);
    w.pull_one_file(&p, "fine/img:v1", "fine", "ok", 1 << 20)
        .await
}

/// Image X (layer S) is mounted. Image F = S, A (6 MiB), then a layer whose content is not
/// its diff_id: one download at a time, so A is installed before the last layer fails.
/// Before, A stayed "fresh" for 30 minutes and counted against the 10 MiB store limit, and
/// image C (6 MiB) was refused; now A is removed with the failed pull, S stays (X uses it),
/// and C pulls.
#[tokio::test(flavor = "multi_thread")]
async fn a_pull_whose_last_layer_fails_leaves_none_of_its_layers_and_the_next_pull_fits()
-> Result<()> {
    if !ready() {
        return Ok(());
    }
    let w = World::new("failed-last")?;
    let s = plain_layer(&tar_of(&[("s", b"shared".to_vec(), 0o644)]));
    let a = plain_layer(&tar_of(&[("a", vec![1u8; 6 << 20], 0o644)]));
    let mut bad = plain_layer(&tar_of(&[(
        "bad",
        b"not what the config says".to_vec(),
        0o644,
    )]));
    bad.diff_id = Digest::of(b"something else");
    let c = plain_layer(&tar_of(&[("c", vec![3u8; 6 << 20], 0o644)]));
    push_raw(&w.registry, "x/img", "v1", std::slice::from_ref(&s)).await?;
    push_raw(&w.registry, "f/img", "v1", &[s.clone(), a.clone(), bad]).await?;
    push_raw(&w.registry, "c/img", "v1", std::slice::from_ref(&c)).await?;
    let mut config = w.config();
    config.max_layer_store_bytes = Some(10 << 20);
    config.max_concurrent_layer_downloads_per_image = 1;
    let (p, store) = w.puller(config, HashMap::new())?;
    p.pull(&w.image("x/img:v1"), &w.bundle("x")).await?;
    let e = p
        .pull(&w.image("f/img:v1"), &w.bundle("f"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ImageError::DigestMismatch { .. } | ImageError::Layer { .. }
        ),
        "{e}"
    );
    assert!(!store.inner().contains(&a.diff_id.to_string()), "A is gone");
    assert!(store.inner().contains(&s.diff_id.to_string()), "S is X's");
    assert_eq!(w.layer_count(), 1);
    assert_eq!(w.staging_count(), 0);
    let out = p.pull(&w.image("c/img:v1"), &w.bundle("c")).await?;
    assert_eq!(out.fetched_layers, 1);
    p.release(&w.bundle("c"))?;
    p.release(&w.bundle("x"))?;
    assert_eq!(w.layer_count(), 0);
    Ok(())
}

/// The real store, with each install held back after it completes (a slow disk): a pull
/// dropped meanwhile (its caller gave up) cancels the layer task, not the unpacking thread.
struct SlowInstalls(Arc<LayerDirStore>);

impl Layers for SlowInstalls {
    fn contains(&self, d: &Digest) -> bool {
        self.0.contains(d)
    }
    fn install(&self, d: &Digest, tar: &mut dyn Read, charge: ChargeHook) -> std::io::Result<()> {
        self.0.install(d, tar, charge)?;
        std::thread::sleep(Duration::from_millis(1500));
        Ok(())
    }
    fn abandon(&self, d: &[Digest]) {
        self.0.abandon(d)
    }
    fn mount_rootfs(&self, d: &[Digest], bundle: &Path) -> std::io::Result<()> {
        self.0.mount_rootfs(d, bundle)
    }
    fn unmount_rootfs(&self, bundle: &Path) -> std::io::Result<()> {
        self.0.unmount_rootfs(bundle)
    }
    fn gc(&self) -> std::io::Result<()> {
        self.0.gc()
    }
}

/// Before, the origin record (with the layer's size, which the store-wide total adds up) was
/// written by the layer task after the unpacking thread answered: a pull dropped in between
/// left an installed layer the store limit did not count. Now the thread writes it.
#[tokio::test(flavor = "multi_thread")]
async fn a_layer_installed_after_its_pull_was_dropped_has_its_record() -> Result<()> {
    if !ready() {
        return Ok(());
    }
    let w = World::new("dropped")?;
    let a = plain_layer(&tar_of(&[("a", vec![1u8; 1 << 20], 0o644)]));
    push_raw(&w.registry, "a/img", "v1", std::slice::from_ref(&a)).await?;
    let config = w.config();
    let real = Arc::new(LayerDirStore::open(&config.work_dir, Default::default())?);
    let p = Puller::new(
        config,
        Arc::new(Kbs(HashMap::new())),
        Arc::new(SlowInstalls(real.clone())),
    )?;
    let (image, bundle) = (w.image("a/img:v1"), w.bundle("a"));
    let dropped = tokio::time::timeout(Duration::from_millis(700), p.pull(&image, &bundle)).await;
    assert!(dropped.is_err(), "the pull was dropped mid-install");
    let record = w
        .work
        .join("origins")
        .join(format!("sha256-{}", a.diff_id.hex()));
    let mut text = String::new();
    for _ in 0..100 {
        if let Ok(t) = std::fs::read_to_string(&record) {
            text = t;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(real.contains(&a.diff_id), "the thread installed the layer");
    let bytes: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("bytes "))
        .context(format!("a byte count in the record: {text:?}"))?
        .parse()?;
    assert!(bytes >= 1 << 20, "{bytes}");
    assert!(text.lines().any(|l| l == "plain"), "{text}");
    Ok(())
}

/// Image one (6 MiB) is mounted and its origin record lost (its write failed: a full disk).
/// Before, the store-wide total added up records only, so image two (6 MiB more) passed a
/// 10 MiB limit; now the layer without a record is measured and two is refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_layer_without_a_record_still_counts_against_the_store_limit() -> Result<()> {
    if !ready() {
        return Ok(());
    }
    let w = World::new("unrecorded")?;
    let one = plain_layer(&tar_of(&[("one", vec![1u8; 6 << 20], 0o644)]));
    let two = plain_layer(&tar_of(&[("two", vec![2u8; 6 << 20], 0o644)]));
    push_raw(&w.registry, "u/one", "v1", std::slice::from_ref(&one)).await?;
    push_raw(&w.registry, "u/two", "v1", std::slice::from_ref(&two)).await?;
    let mut config = w.config();
    config.max_layer_store_bytes = Some(10 << 20);
    let (p, _) = w.puller(config, HashMap::new())?;
    p.pull(&w.image("u/one:v1"), &w.bundle("one")).await?;
    let record = w
        .work
        .join("origins")
        .join(format!("sha256-{}", one.diff_id.hex()));
    std::fs::remove_file(&record)?;
    // Every pull starts with a collection, after which the store's total is counted again.
    let e = p
        .pull(&w.image("u/two:v1"), &w.bundle("two"))
        .await
        .unwrap_err();
    let text = e.to_string();
    assert_eq!(e.limit_key(), Some("max_layer_store_bytes"), "{text}");
    assert!(text.contains("max_layer_store_bytes = 10485760"), "{text}");
    assert!(text.contains(&two.diff_id.to_string()), "{text}");
    assert_eq!(w.layer_count(), 1);
    p.release(&w.bundle("one"))?;
    Ok(())
}

const KID: &str = "kbs:///default/image-kek/k";

/// A KBS stand-in that takes 100 ms a request and counts the most requests in flight.
struct SlowKbs {
    kek: Vec<u8>,
    now: AtomicUsize,
    most: AtomicUsize,
}

#[async_trait::async_trait]
impl peerpod_image::Resources for SlowKbs {
    async fn resource(&self, uri: &str) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(n, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        if uri == KID {
            Ok(zeroize::Zeroizing::new(self.kek.clone()))
        } else {
            Err(format!("no {uri}"))
        }
    }
}

/// Eight encrypted layers, two download slots: before, the eight keys were requested from
/// the KBS at once; now at most two are.
#[tokio::test(flavor = "multi_thread")]
async fn key_requests_are_bounded_by_the_download_slots() -> Result<()> {
    if !ready() {
        return Ok(());
    }
    let w = World::new("keys")?;
    let kek = [5u8; 32];
    let layers: Vec<RawLayer> = (0..8)
        .map(|i| {
            let tar = tar_of(&[(&format!("l{i}"), vec![i as u8; 1000], 0o644)]);
            let (blob, annotations) =
                peerpod_image_crypt::testing::encrypt_layer(&gzip(&tar), &kek, KID);
            RawLayer {
                media_type: GZIP_ENCRYPTED,
                blob,
                diff_id: Digest::of(&tar),
                annotations,
            }
        })
        .collect();
    push_raw(&w.registry, "enc/img", "v1", &layers).await?;
    let mut config = w.config();
    config.max_concurrent_layer_downloads_per_image = 2;
    let kbs = Arc::new(SlowKbs {
        kek: kek.to_vec(),
        now: AtomicUsize::new(0),
        most: AtomicUsize::new(0),
    });
    let (p, _) = w.puller_with(config, kbs.clone())?;
    let out = p.pull(&w.image("enc/img:v1"), &w.bundle("e")).await?;
    assert_eq!(out.fetched_layers, 8);
    let most = kbs.most.load(Ordering::SeqCst);
    assert!((1..=2).contains(&most), "{most} key requests at once");
    assert_eq!(
        std::fs::read(w.bundle("e").join("rootfs/l7"))?,
        vec![7u8; 1000]
    );
    p.release(&w.bundle("e"))?;
    Ok(())
}
