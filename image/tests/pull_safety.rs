//! The puller against an attacker who names layers, not just serves them: images pushed by
//! hand (registry HTTP API) to Debian's `docker-registry`, pulled into the real layer store
//! (`LayerDirStore`, overlay mounts: root).
//!
//! - A layer decrypted for one image is not handed to another image that merely names its
//!   diff_id: that image must unwrap the same key for the same blob, or download and verify it.
//! - Decompression bombs stop at the per-pull total (`max_image_unpacked_bytes`, by default
//!   from work_dir's free space) or the store's (`max_layer_store_bytes`), with nothing kept.
//! - An image that repeats a layer mounts (overlayfs refuses a lower directory twice).
//! - A failed pull leaves no in-flight entry; `/b/` and `/b` are one bundle.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use common::raw::*;
use common::*;
use peerpod_image::{Digest, ImageError};

const KID_A: &str = "kbs:///default/image-kek/a";
const KID_ATTACKER: &str = "kbs:///default/image-kek/attacker";

/// Image A's secret layer, encrypted under KEK A; the layer and the encrypted layer.
fn secret_layer(kek: &[u8; 32]) -> (Vec<u8>, RawLayer) {
    let tar = tar_of(&[(
        "secret/model",
        b"the weights only A's owner may use".to_vec(),
        0o644,
    )]);
    let gz = gzip(&tar);
    let (cipher, annotations) = peerpod_image_crypt::testing::encrypt_layer(&gz, kek, KID_A);
    (
        tar.clone(),
        RawLayer {
            media_type: GZIP_ENCRYPTED,
            blob: cipher,
            diff_id: Digest::of(&tar),
            annotations,
        },
    )
}

/// Image A (encrypted layer, D) pulled with its key; then images that name D without being
/// entitled to it: a plain descriptor whose blob is not D (the attacker never had the
/// plaintext), A's blob with annotations whose KEK this pod cannot get, and A's blob with a
/// key of the attacker's own (wrapped under a KEK the pod can get). Each is refused; before,
/// each mounted A's decrypted content. A re-pull of A with its key reuses the layer, and a
/// genuine plain copy of D makes it public content.
#[tokio::test(flavor = "multi_thread")]
async fn a_decrypted_layer_is_not_reused_by_an_image_that_cannot_obtain_its_key() -> Result<()> {
    if !ready() {
        return Ok(());
    }
    let w = World::new("origin")?;
    let kek_a = [7u8; 32];
    let kek_attacker = [9u8; 32];
    let (secret_tar, enc) = secret_layer(&kek_a);
    let d = enc.diff_id.clone();
    push_raw(&w.registry, "victim/a", "v1", std::slice::from_ref(&enc)).await?;

    // B: a plain descriptor with diff_id D and a blob that is anything but D.
    let mut fake = plain_layer(&tar_of(&[("x", b"not the secret".to_vec(), 0o644)]));
    fake.diff_id = d.clone();
    push_raw(&w.registry, "attacker/b", "v1", &[fake]).await?;
    // C: A's ciphertext and annotations; this pod is not given KEK A when C is pulled.
    push_raw(&w.registry, "attacker/c", "v1", std::slice::from_ref(&enc)).await?;
    // E: A's ciphertext and public options, with a key of the attacker's own wrapped under a
    // KEK the pod can get: the key unwraps, so only its check against A's stops the reuse.
    let attacker_options = peerpod_image_crypt::testing::private_options(
        &[3u8; 32],
        &[4u8; 16],
        &Digest::of(b"anything").to_string(),
    );
    let packet = peerpod_image_crypt::testing::wrap(&attacker_options, &kek_attacker, KID_ATTACKER);
    let mut forged = enc.clone();
    forged.annotations.insert(
        "org.opencontainers.image.enc.keys.provider.attestation-agent".into(),
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, packet),
    );
    push_raw(&w.registry, "attacker/e", "v1", &[forged]).await?;

    let both = HashMap::from([
        (KID_A.to_string(), kek_a.to_vec()),
        (KID_ATTACKER.to_string(), kek_attacker.to_vec()),
    ]);
    let only_attacker = HashMap::from([(KID_ATTACKER.to_string(), kek_attacker.to_vec())]);
    let config = w.config();
    let (pa, store) = w.puller(config.clone(), both.clone())?;
    let a = pa.pull(&w.image("victim/a:v1"), &w.bundle("a")).await?;
    assert_eq!((a.fetched_layers, a.reused_layers), (1, 0));
    assert!(store.inner().contains(&d.to_string()));

    // Same work_dir, the attacker's pulls (a puller that never got KEK A).
    let (pb, _) = w.puller(config.clone(), only_attacker.clone())?;
    let e = pb
        .pull(&w.image("attacker/b:v1"), &w.bundle("b"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ImageError::DigestMismatch { .. } | ImageError::Layer { .. }
        ),
        "verified, not reused: {e}"
    );
    assert!(!w.bundle("b").join("rootfs/secret").exists());

    let e = pb
        .pull(&w.image("attacker/c:v1"), &w.bundle("c"))
        .await
        .unwrap_err();
    assert!(matches!(e, ImageError::Encrypted { .. }), "{e}");
    assert!(e.to_string().contains(KID_A), "{e}");
    assert!(!w.bundle("c").join("rootfs/secret").exists());

    let e = pb
        .pull(&w.image("attacker/e:v1"), &w.bundle("e"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ImageError::Encrypted { .. } | ImageError::Layer { .. }),
        "the attacker's key does not open A's blob: {e}"
    );
    assert!(!w.bundle("e").join("rootfs/secret").exists());
    assert!(store.inner().contains(&d.to_string()), "A's copy stays");

    // A again, with its key: reused.
    let a2 = pa.pull(&w.image("victim/a:v1"), &w.bundle("a2")).await?;
    assert_eq!((a2.fetched_layers, a2.reused_layers), (0, 1));
    assert_eq!(
        std::fs::read(w.bundle("a2").join("rootfs/secret/model"))?,
        b"the weights only A's owner may use"
    );

    // Someone publishes D in clear: a genuine download proves it, D becomes public content.
    push_raw(&w.registry, "public/d", "v1", &[plain_layer(&secret_tar)]).await?;
    let p1 = pb.pull(&w.image("public/d:v1"), &w.bundle("p1")).await?;
    assert_eq!((p1.fetched_layers, p1.reused_layers), (1, 0), "verified");
    let p2 = pb.pull(&w.image("public/d:v1"), &w.bundle("p2")).await?;
    assert_eq!((p2.fetched_layers, p2.reused_layers), (0, 1), "then reused");
    // The key is still needed for an encrypted descriptor, public content or not.
    let e = pb
        .pull(&w.image("attacker/c:v1"), &w.bundle("c2"))
        .await
        .unwrap_err();
    assert!(matches!(e, ImageError::Encrypted { .. }), "{e}");
    for b in ["a", "a2", "p1", "p2"] {
        pa.release(&w.bundle(b))?;
    }
    Ok(())
}

/// 64 MiB of zeros: 64 KiB of gzip.
fn bomb() -> RawLayer {
    plain_layer(&tar_of(&[("bomb", vec![0u8; 64 << 20], 0o644)]))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gzip_bomb_is_stopped_by_the_image_limit_with_nothing_kept() -> Result<()> {
    if !ready() {
        return Ok(());
    }
    let w = World::new("bomb")?;
    let small = plain_layer(&tar_of(&[("ok", vec![1u8; 1 << 20], 0o644)]));
    let bomb = bomb();
    assert!(bomb.blob.len() < 200_000, "{}", bomb.blob.len());
    push_raw(
        &w.registry,
        "bomb/img",
        "v1",
        &[small.clone(), bomb.clone()],
    )
    .await?;
    let mut config = w.config();
    config.max_image_unpacked_bytes = Some(16 << 20);
    let (p, _) = w.puller(config, HashMap::new())?;
    w.refused_by_limit(
        &p,
        "bomb/img:v1",
        "x",
        "max_image_unpacked_bytes",
        &["16777216", &bomb.diff_id.to_string()],
    )
    .await?;
    assert_eq!(w.staging_count(), 0, "no half-unpacked layer left");
    assert!(
        !w.work
            .join("layers/sha256")
            .join(bomb.diff_id.hex())
            .exists(),
        "the bomb is not kept"
    );
    assert!(!w.bundle("x").join("rootfs/bomb").exists());
    assert_eq!(p.layers_in_flight(), 0);
    Ok(())
}

/// With no limit configured, the default comes from work_dir's filesystem: on a 32 MiB tmpfs
/// the 64 MiB bomb is refused naming the default (before, the tmpfs filled up and the unpack
/// died of ENOSPC), the tmpfs is as empty after as before, and a normal image still pulls.
#[tokio::test(flavor = "multi_thread")]
async fn the_default_limit_comes_from_work_dir_free_space() -> Result<()> {
    if !ready() {
        return Ok(());
    }
    let w = World::new("bomb-tmpfs")?;
    let _tmpfs = Tmpfs::mount(&w.work, "size=32m,mode=0700")?;
    let used = || -> Result<u64> {
        let out = run(Command::new("df")
            .args(["-B1", "--output=used"])
            .arg(&w.work))?;
        Ok(out.lines().nth(1).context("df")?.trim().parse()?)
    };
    let bomb = bomb();
    push_raw(&w.registry, "bomb/tmpfs", "v1", std::slice::from_ref(&bomb)).await?;
    let ok = plain_layer(&tar_of(&[("ok", vec![2u8; 4 << 20], 0o644)]));
    push_raw(&w.registry, "fine/img", "v1", &[ok]).await?;
    let (p, _) = w.puller(w.config(), HashMap::new())?;
    let before = used()?;
    let text = w
        .refused_by_limit(
            &p,
            "bomb/tmpfs:v1",
            "bomb",
            "max_image_unpacked_bytes",
            &["by default 3/4", &bomb.diff_id.to_string()],
        )
        .await?;
    assert!(!text.contains("No space left"), "{text}");
    assert!(
        used()? <= before + (64 << 10),
        "the tmpfs is left as it was"
    );
    w.pull_one_file(&p, "fine/img:v1", "fine", "ok", 4 << 20)
        .await
}

/// `max_layer_store_bytes` bounds all the layers in work_dir together: a second image that
/// would cross it is refused, naming the key; once the first is released it fits.
#[tokio::test(flavor = "multi_thread")]
async fn the_store_limit_counts_every_layer_in_work_dir() -> Result<()> {
    if !ready() {
        return Ok(());
    }
    let w = World::new("store-limit")?;
    let one = plain_layer(&tar_of(&[("one", vec![1u8; 6 << 20], 0o644)]));
    let two = plain_layer(&tar_of(&[("two", vec![2u8; 6 << 20], 0o644)]));
    push_raw(&w.registry, "s/one", "v1", &[one]).await?;
    push_raw(&w.registry, "s/two", "v1", std::slice::from_ref(&two)).await?;
    let mut config = w.config();
    config.max_layer_store_bytes = Some(10 << 20);
    let (p, _) = w.puller(config, HashMap::new())?;
    p.pull(&w.image("s/one:v1"), &w.bundle("one")).await?;
    let e = p
        .pull(&w.image("s/two:v1"), &w.bundle("two"))
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(text.contains("max_layer_store_bytes = 10485760"), "{text}");
    assert!(text.contains(&two.diff_id.to_string()), "{text}");
    assert_eq!(w.layer_count(), 1);
    assert_eq!(w.staging_count(), 0);
    p.release(&w.bundle("one"))?;
    let out = p.pull(&w.image("s/two:v1"), &w.bundle("two")).await?;
    assert_eq!(out.fetched_layers, 1);
    p.release(&w.bundle("two"))?;
    Ok(())
}

/// An image whose configuration names one layer twice (A, B, A): overlayfs refuses a lower
/// directory given twice, so only the topmost A is stacked; the container sees A's file over
/// B's, B's other file, and runs busybox from A.
#[tokio::test(flavor = "multi_thread")]
async fn an_image_repeating_a_layer_mounts_with_the_topmost_copy_winning() -> Result<()> {
    if !ready() {
        return Ok(());
    }
    let w = World::new("repeat")?;
    let busybox = std::fs::read(BUSYBOX)?;
    let a = plain_layer(&tar_of(&[
        ("bin/busybox", busybox, 0o755),
        ("etc/who", b"A".to_vec(), 0o644),
    ]));
    let b = plain_layer(&tar_of(&[
        ("etc/who", b"B".to_vec(), 0o644),
        ("etc/only-b", b"b".to_vec(), 0o644),
    ]));
    push_raw(&w.registry, "repeat/img", "v1", &[a.clone(), b, a.clone()]).await?;
    let (p, _) = w.puller(w.config(), HashMap::new())?;
    let bundle = w.bundle("r");
    let out = p.pull(&w.image("repeat/img:v1"), &bundle).await?;
    assert_eq!(out.diff_ids.len(), 3);
    assert_eq!(out.fetched_layers, 2);
    let rootfs = bundle.join("rootfs");
    let ran = run(Command::new("chroot").arg(&rootfs).args([
        "/bin/busybox",
        "cat",
        "/etc/who",
        "/etc/only-b",
    ]))?;
    assert_eq!(ran, "Ab", "the topmost A wins over B");
    p.release(&bundle)?;
    assert_eq!(w.layer_count(), 0);
    Ok(())
}

/// Failing pulls (a layer whose tar is not its diff_id, a layer missing from the registry)
/// leave nothing in the in-flight map; before, each failure left its layers' entries.
#[tokio::test(flavor = "multi_thread")]
async fn failed_pulls_leave_no_layer_in_flight() -> Result<()> {
    if !ready() {
        return Ok(());
    }
    let w = World::new("inflight")?;
    let (p, _) = w.puller(w.config(), HashMap::new())?;
    for i in 0..5u8 {
        let good = plain_layer(&tar_of(&[("big", vec![i; 8 << 20], 0o644)]));
        let mut bad = plain_layer(&tar_of(&[("x", vec![i], 0o644)]));
        bad.diff_id = Digest::of(&[i, 1, 2, 3]);
        push_raw(&w.registry, "fail/img", &format!("v{i}"), &[good, bad]).await?;
        let e = p
            .pull(
                &w.image(&format!("fail/img:v{i}")),
                &w.bundle(&format!("f{i}")),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, ImageError::DigestMismatch { .. }), "{e}");
        assert_eq!(p.layers_in_flight(), 0, "after failure {i}");
    }
    // The other layer's unpacking stops when its download is dropped, and cleans up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while w.staging_count() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(w.staging_count(), 0);
    Ok(())
}

/// `/b/`, `//b` and `/b` are one bundle: a second pull into `/b` after one into `/b/` is
/// refused as already mounted (before, it mounted a second overlay over the first with a
/// second state), and releasing `//b` unmounts it. Relative and dotted paths are refused.
#[tokio::test(flavor = "multi_thread")]
async fn bundle_paths_are_normalised_and_dotted_ones_refused() -> Result<()> {
    if !ready() {
        return Ok(());
    }
    let w = World::new("bundle-norm")?;
    push_raw(
        &w.registry,
        "norm/img",
        "v1",
        &[plain_layer(&tar_of(&[("f", b"x".to_vec(), 0o644)]))],
    )
    .await?;
    let (p, _) = w.puller(w.config(), HashMap::new())?;
    let image = w.image("norm/img:v1");
    let b = w.bundle("b");
    let slash = PathBuf::from(format!("{}/", b.display()));
    p.pull(&image, &slash).await?;
    let e = p.pull(&image, &b).await.unwrap_err();
    assert!(matches!(e, ImageError::Bundle { .. }), "{e}");
    assert!(e.to_string().contains("already"), "{e}");
    assert_eq!(std::fs::read_dir(w.work.join("overlay"))?.count(), 1);
    let double = PathBuf::from(b.display().to_string().replacen('/', "//", 2));
    p.release(&double)?;
    assert!(!b.join("rootfs").exists());
    assert_eq!(std::fs::read_dir(w.work.join("overlay"))?.count(), 0);
    for bad in ["relative/b", "/run/../etc", "/run/./b"] {
        let e = p.pull(&image, Path::new(bad)).await.unwrap_err();
        assert!(matches!(e, ImageError::Bundle { .. }), "{bad}: {e}");
        let e = p.release(Path::new(bad)).unwrap_err();
        assert!(matches!(e, ImageError::Bundle { .. }), "{bad}: {e}");
    }
    Ok(())
}
