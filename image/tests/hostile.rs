//! A hostile or failing registry (an axum server under the test's control): blobs whose
//! digest or diff_id does not match, oversized and overlong replies, connections dropped mid
//! blob (resumed with Range; refused after the bounded attempts), a registry that stalls.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use common::fake::*;
use common::*;
use peerpod_image::resources::NoResources;
use peerpod_image::{Digest, ImageError, Puller};

/// How the fake registry misbehaves on blob requests for the layer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    None,
    /// Drop the connection half-way through the first `n` layer replies.
    Truncate(usize),
    /// Send half the layer, then stall.
    Stall,
    /// Drop half-way through the first `n` replies, and ignore Range (always 200, whole blob).
    TruncateNoRange(usize),
}

struct Fake {
    /// Bearer auth: a token for anonymous requests, 401 for any Basic credentials.
    bearer: bool,
    addr: std::sync::OnceLock<String>,
    manifest: Vec<u8>,
    blobs: HashMap<String, Bytes>,
    layer_digest: String,
    fault: Fault,
    layer_requests: AtomicUsize,
    ranges: Mutex<Vec<String>>,
}

const GOOD_TOKEN: &str = "Bearer anonymous-token";

/// `Some(401)` when bearer auth is on and the request lacks the token.
fn challenge(f: &Fake, headers: &HeaderMap) -> Option<Response> {
    let authorized = headers
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == GOOD_TOKEN.as_bytes());
    (f.bearer && !authorized).then(|| {
        unauthorized(format!(
            r#"Bearer realm="http://{}/token",service="fake",scope="repository:evil/img:pull""#,
            f.addr.get().map(String::as_str).unwrap_or_default()
        ))
    })
}

async fn token(headers: HeaderMap) -> Response {
    if headers.contains_key(header::AUTHORIZATION) {
        // The configured credentials are refused (expired, say).
        return Response::builder().status(401).body(Body::empty()).unwrap();
    }
    Response::new(Body::from(r#"{"token":"anonymous-token"}"#))
}

async fn manifests(
    State(f): State<Arc<Fake>>,
    Path(_r): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = challenge(&f, &headers) {
        return r;
    }
    manifest_reply(f.manifest.clone())
}

async fn blobs(
    State(f): State<Arc<Fake>>,
    Path((_a, _b, digest)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = challenge(&f, &headers) {
        return r;
    }
    if digest != f.layer_digest {
        return blob_reply(&f.blobs, &digest);
    }
    let Some(blob) = f.blobs.get(&digest).cloned() else {
        return status(StatusCode::NOT_FOUND);
    };
    let n = f.layer_requests.fetch_add(1, Ordering::SeqCst);
    let start = match (range_of(&headers), f.fault) {
        (Some(r), fault) if !matches!(fault, Fault::TruncateNoRange(_)) => {
            let start = range_start(&r).unwrap();
            f.ranges.lock().unwrap().push(r);
            start
        }
        _ => 0,
    };
    let body = blob.slice(start..);
    let builder = ranged(body.len(), start, blob.len());
    let half = body.len() / 2;
    let stream: futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>> = match f.fault {
        // Half the body, time for it to reach the client, then the connection drops.
        Fault::Truncate(k) | Fault::TruncateNoRange(k) if n < k => {
            half_then_drop(body, Duration::from_millis(200))
        }
        Fault::Stall => {
            let first = body.slice(..half);
            Box::pin(futures::stream::unfold(Some(first), |s| async move {
                match s {
                    Some(b) => Some((Ok(b), None)),
                    None => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        None
                    }
                }
            }))
        }
        _ => Box::pin(futures::stream::iter(vec![Ok(body)])),
    };
    builder.body(Body::from_stream(stream)).unwrap()
}

type Image = OneLayer;

/// `out` is `img` pulled whole: its one diff_id, and the layer's one file in `store`.
fn assert_pulled_whole(out: &peerpod_image::PullOutcome, img: &Image, store: &RecordingStore) {
    assert_eq!(out.diff_ids, vec![img.diff_id.clone()]);
    assert_eq!(
        store.layers.lock().unwrap()[&img.diff_id],
        vec!["data/file".to_string()]
    );
}

/// A one-layer image of `payload` pattern bytes, `corrupt` applied (see
/// [`one_layer_image`]).
fn image(payload: usize, corrupt: impl Fn(&mut Vec<u8>, &mut String, &mut u64)) -> Image {
    one_layer_image(&pattern(payload), corrupt)
}

/// A 400,000-byte image served with `fault`, and a fresh store to pull it into.
async fn served_with_fault(fault: Fault) -> (Image, String, Arc<Fake>, Arc<RecordingStore>) {
    let img = image(400_000, |_, _, _| {});
    let (addr, fake) = serve(&img, fault).await;
    (img, addr, fake, Arc::new(RecordingStore::default()))
}

async fn serve(img: &Image, fault: Fault) -> (String, Arc<Fake>) {
    serve_manifest(img, img.manifest.clone(), fault).await
}

async fn serve_manifest(img: &Image, manifest: Vec<u8>, fault: Fault) -> (String, Arc<Fake>) {
    serve_with(img, manifest, fault, false).await
}

async fn serve_with(
    img: &Image,
    manifest: Vec<u8>,
    fault: Fault,
    bearer: bool,
) -> (String, Arc<Fake>) {
    let fake = Arc::new(Fake {
        bearer,
        addr: std::sync::OnceLock::new(),
        manifest,
        blobs: img.blobs.clone(),
        layer_digest: img.layer.clone(),
        fault,
        layer_requests: AtomicUsize::new(0),
        ranges: Mutex::new(Vec::new()),
    });
    let app = axum::Router::new()
        .route("/v2/{a}/{b}/manifests/{r}", axum::routing::get(manifests))
        .route("/v2/{a}/{b}/blobs/{d}", axum::routing::get(blobs))
        .route("/token", axum::routing::get(token))
        .with_state(fake.clone());
    let addr = serve_app(app).await;
    let _ = fake.addr.set(addr.clone());
    (addr, fake)
}

fn puller(addr: &str, scratch: &Scratch, store: &Arc<RecordingStore>) -> Puller {
    let config = insecure_config(scratch, addr, "work");
    Puller::new(config, Arc::new(NoResources), store.clone()).unwrap()
}

async fn pull(
    addr: &str,
    store: &Arc<RecordingStore>,
) -> Result<peerpod_image::PullOutcome, ImageError> {
    let scratch = Scratch::new("hostile");
    puller(addr, &scratch, store)
        .pull(&format!("{addr}/evil/img:v1"), &PathBuf::from("/run/b/h"))
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_well_behaved_fake_serves_a_pullable_image() -> Result<()> {
    let img = image(300_000, |_, _, _| {});
    let (addr, _) = serve(&img, Fault::None).await;
    let store = Arc::new(RecordingStore::default());
    let out = pull(&addr, &store).await?;
    assert_pulled_whole(&out, &img, &store);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn blob_not_matching_its_digest_is_refused_and_nothing_installed() -> Result<()> {
    // The manifest names the real digest, the registry serves other bytes of the same size.
    let mut img = image(100_000, |_, _, _| {});
    let blob = img.blobs.get_mut(&img.layer).unwrap();
    let mut tampered = blob.to_vec();
    let last = tampered.len() - 20;
    tampered[last] ^= 0xff;
    *blob = Bytes::from(tampered);
    let (addr, _) = serve(&img, Fault::None).await;
    let store = Arc::new(RecordingStore::default());
    let e = pull(&addr, &store).await.unwrap_err();
    assert!(matches!(e, ImageError::DigestMismatch { .. }), "{e}");
    assert!(e.to_string().contains(&img.layer), "{e}");
    assert!(store.installs.lock().unwrap().is_empty());
    assert!(store.mounts.lock().unwrap().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn tar_not_matching_its_diff_id_is_refused() -> Result<()> {
    let wrong = format!("sha256:{}", "e".repeat(64));
    let img = image(50_000, |_, diff, _| *diff = wrong.clone());
    let (addr, _) = serve(&img, Fault::None).await;
    let store = Arc::new(RecordingStore::default());
    let e = pull(&addr, &store).await.unwrap_err();
    assert!(matches!(e, ImageError::DigestMismatch { .. }), "{e}");
    assert!(e.to_string().contains("uncompressed"), "{e}");
    assert!(store.installs.lock().unwrap().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn blob_longer_than_its_descriptor_is_refused() -> Result<()> {
    let img = image(50_000, |_, _, size| *size -= 100);
    let (addr, _) = serve(&img, Fault::None).await;
    let store = Arc::new(RecordingStore::default());
    let e = pull(&addr, &store).await.unwrap_err();
    assert!(matches!(e, ImageError::SizeMismatch { .. }), "{e}");
    assert!(store.installs.lock().unwrap().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_manifest_refused_as_it_arrives() -> Result<()> {
    let img = image(1000, |_, _, _| {});
    let huge = vec![b' '; peerpod_image::manifest::MAX_MANIFEST + 10];
    let (addr, _) = serve_manifest(&img, huge, Fault::None).await;
    let e = pull(&addr, &Arc::default()).await.unwrap_err();
    assert!(matches!(e, ImageError::TooLarge { .. }), "{e}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn dropped_connection_resumes_with_range() -> Result<()> {
    let (img, addr, fake, store) = served_with_fault(Fault::Truncate(2)).await;
    let out = pull(&addr, &store).await?;
    assert_eq!(out.diff_ids, vec![img.diff_id.clone()]);
    assert_eq!(fake.layer_requests.load(Ordering::SeqCst), 3);
    let ranges = fake.ranges.lock().unwrap().clone();
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert!(
        ranges
            .iter()
            .all(|r| r.starts_with("bytes=") && r != "bytes=0-"),
        "{ranges:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_ignoring_range_is_resumed_by_skipping() -> Result<()> {
    let (img, addr, fake, store) = served_with_fault(Fault::TruncateNoRange(1)).await;
    let out = pull(&addr, &store).await?;
    assert_eq!(fake.layer_requests.load(Ordering::SeqCst), 2);
    assert_pulled_whole(&out, &img, &store);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_that_keeps_truncating_fails_after_bounded_attempts() -> Result<()> {
    let (_, addr, fake, store) = served_with_fault(Fault::Truncate(usize::MAX)).await;
    let e = pull(&addr, &store).await.unwrap_err();
    assert!(
        matches!(e, ImageError::Transport { attempts: 3, .. }),
        "{e}"
    );
    assert_eq!(fake.layer_requests.load(Ordering::SeqCst), 3);
    assert!(store.installs.lock().unwrap().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_registry_times_out_with_a_clear_error() -> Result<()> {
    let (_, addr, _, store) = served_with_fault(Fault::Stall).await;
    let started = std::time::Instant::now();
    let e = pull(&addr, &store).await.unwrap_err();
    assert!(matches!(e, ImageError::Transport { .. }), "{e}");
    assert!(
        e.to_string().contains("timed out") || e.to_string().contains("cut short"),
        "{e}"
    );
    // 3 attempts x 2 s read timeout + backoff, well below the stall.
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(store.installs.lock().unwrap().is_empty());
    Ok(())
}

/// Resources holding one KEK, or refusing everything (an unattested pod).
struct Kbs(Option<(String, Vec<u8>)>);

#[async_trait::async_trait]
impl peerpod_image::Resources for Kbs {
    async fn resource(&self, uri: &str) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
        match &self.0 {
            Some((kid, kek)) if kid == uri => Ok(zeroize::Zeroizing::new(kek.clone())),
            Some(_) => Err("no such resource".into()),
            None => Err("attestation refused: the KBS gives nothing to this pod".into()),
        }
    }
}

/// A one-layer image whose gzip layer is ocicrypt-encrypted under `kek` named `kid`.
fn encrypted_image(kek: &[u8; 32], kid: &str) -> Image {
    let plain = image(200_000, |_, _, _| {});
    let gz = plain.blobs[&plain.layer].clone();
    let (cipher, annotations) = peerpod_image_crypt::testing::encrypt_layer(&gz, kek, kid);
    let layer_digest = Digest::of(&cipher).to_string();
    let config_digest = plain
        .blobs
        .keys()
        .find(|k| **k != plain.layer)
        .unwrap()
        .clone();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": plain.blobs[&config_digest].len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip+encrypted", "digest": layer_digest, "size": cipher.len(), "annotations": annotations}]
    })
    .to_string()
    .into_bytes();
    let mut blobs = HashMap::new();
    blobs.insert(config_digest.clone(), plain.blobs[&config_digest].clone());
    blobs.insert(layer_digest.clone(), Bytes::from(cipher));
    Image {
        manifest,
        blobs,
        layer: layer_digest,
        diff_id: plain.diff_id,
    }
}

async fn pull_with(
    addr: &str,
    store: &Arc<RecordingStore>,
    kbs: Kbs,
) -> Result<peerpod_image::PullOutcome, ImageError> {
    let scratch = Scratch::new("crypt");
    let config = insecure_config(&scratch, addr, "work");
    Puller::new(config, Arc::new(kbs), store.clone())
        .unwrap()
        .pull(&format!("{addr}/enc/img:v1"), &PathBuf::from("/run/b/e"))
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn encrypted_layer_decrypted_with_the_kek_from_the_kbs() -> Result<()> {
    let kek = [7u8; 32];
    let kid = "kbs:///default/image-kek/app";
    let img = encrypted_image(&kek, kid);
    let (addr, fake) = serve(&img, Fault::Truncate(1)).await;
    let store = Arc::new(RecordingStore::default());
    let out = pull_with(&addr, &store, Kbs(Some((kid.into(), kek.to_vec())))).await?;
    assert_pulled_whole(&out, &img, &store);
    // Resumed after a drop: the decryption stayed in step with the ciphertext.
    assert_eq!(fake.layer_requests.load(Ordering::SeqCst), 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn encrypted_layer_refused_without_the_key_and_never_downloaded() -> Result<()> {
    let kek = [7u8; 32];
    let kid = "kbs:///default/image-kek/app";
    let img = encrypted_image(&kek, kid);
    let (addr, fake) = serve(&img, Fault::None).await;
    let store = Arc::new(RecordingStore::default());
    // Not attested: the KBS gives nothing.
    let e = pull_with(&addr, &store, Kbs(None)).await.unwrap_err();
    assert!(matches!(e, ImageError::Encrypted { .. }), "{e}");
    assert!(e.to_string().contains(kid), "{e}");
    assert_eq!(fake.layer_requests.load(Ordering::SeqCst), 0);
    // The wrong KEK: refused too.
    let e = pull_with(&addr, &store, Kbs(Some((kid.into(), vec![8u8; 32]))))
        .await
        .unwrap_err();
    assert!(matches!(e, ImageError::Encrypted { .. }), "{e}");
    assert!(store.installs.lock().unwrap().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_ciphertext_with_a_matching_digest_is_refused_by_the_hmac() -> Result<()> {
    // A registry that rewrites the blob and the manifest's digest to match (the manifest is
    // not signed here): the layer HMAC in the annotations still refuses it.
    let kek = [7u8; 32];
    let kid = "kbs:///default/image-kek/app";
    let mut img = encrypted_image(&kek, kid);
    let mut blob = img.blobs.remove(&img.layer).unwrap().to_vec();
    blob[100] ^= 1;
    let new_digest = Digest::of(&blob).to_string();
    img.manifest = String::from_utf8(img.manifest.clone())
        .unwrap()
        .replace(&img.layer, &new_digest)
        .into_bytes();
    img.blobs.insert(new_digest.clone(), Bytes::from(blob));
    img.layer = new_digest;
    let (addr, _) = serve(&img, Fault::None).await;
    let store = Arc::new(RecordingStore::default());
    let e = pull_with(&addr, &store, Kbs(Some((kid.into(), kek.to_vec()))))
        .await
        .unwrap_err();
    assert!(matches!(e, ImageError::Encrypted { .. }), "{e}");
    assert!(store.installs.lock().unwrap().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_credentials_fall_back_to_anonymous_only_when_configured() -> Result<()> {
    let img = image(10_000, |_, _, _| {});
    let (addr, _) = serve_with(&img, img.manifest.clone(), Fault::None, true).await;
    let scratch = Scratch::new("fallback");
    let auth = serde_json::json!({"auths": {addr.clone(): {"username": "old", "password": "expired-pass"}}});
    let mut config = insecure_config(&scratch, &addr, "work");
    config.authenticated_registry_credentials_uri =
        Some(file_uri(scratch.path(), "auth.json", &auth.to_string()));
    let image = format!("{addr}/evil/img:v1");
    // Without the option: refused, naming the credentials, not quoting them.
    let store = Arc::new(RecordingStore::default());
    let e = Puller::new(config.clone(), Arc::new(NoResources), store.clone())?
        .pull(&image, &PathBuf::from("/run/b/f1"))
        .await
        .unwrap_err();
    assert!(matches!(e, ImageError::Unauthorized { .. }), "{e}");
    assert!(!e.to_string().contains("expired-pass"), "{e}");
    assert!(store.installs.lock().unwrap().is_empty());
    // With it: pulled anonymously (a Bearer token without credentials).
    config.anonymous_fallback_on_unauthorized = true;
    let out = Puller::new(config, Arc::new(NoResources), store.clone())?
        .pull(&image, &PathBuf::from("/run/b/f2"))
        .await?;
    assert_eq!(out.diff_ids, vec![img.diff_id.clone()]);
    Ok(())
}

/// A collection while a pull is in flight is skipped (the pull may have found a layer
/// installed and will mount it without fetching it): neither the timer's nor a release's
/// collection removes layers under a running pull. Once the pull is over, collections run.
#[tokio::test(flavor = "multi_thread")]
async fn collections_wait_for_pulls_in_flight() -> Result<()> {
    let (_, addr, _, store) = served_with_fault(Fault::Stall).await;
    let scratch = Scratch::new("hostile-collect");
    let p = Arc::new(puller(&addr, &scratch, &store));
    let pulling = {
        let p = p.clone();
        let image = format!("{addr}/evil/img:v1");
        tokio::spawn(async move { p.pull(&image, &PathBuf::from("/run/b/c")).await })
    };
    // The pull collects once as it starts, then stalls in the layer download.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!pulling.is_finished());
    assert_eq!(
        store.gcs.lock().unwrap().len(),
        1,
        "the pull's own collection"
    );
    assert_eq!(p.collect().await?, None, "skipped under a pull");
    p.release(&PathBuf::from("/run/b/other"))?;
    assert_eq!(store.gcs.lock().unwrap().len(), 1, "no GC under a pull");
    assert!(pulling.await?.is_err(), "the stalled pull fails");
    assert_eq!(p.collect().await?, Some(0));
    assert_eq!(store.gcs.lock().unwrap().len(), 2);
    Ok(())
}
