//! One retry budget per fetch: a stand-in registry (axum, plain HTTP, configured insecure)
//! that fails every way at once — 503s, then a reply cut off half-way — and counts the
//! requests it gets. With `attempts = 3` a manifest or a layer costs at most 3 requests,
//! whether the failures are refused requests or cut replies (nested retries made it 9: the
//! request retries inside each resume or re-read).
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
use peerpod_image::ImageError;

/// How a resource answers its `n`th request (from 0).
#[derive(Clone, Copy)]
enum Script {
    /// Always whole.
    Good,
    /// 503, 503, cut short, 503, 503, cut short, ...
    Flaky,
    /// Cut short, then 503, then whole (from the requested Range).
    CutThen503ThenGood,
}

impl Script {
    fn answer(self, n: usize) -> Answer {
        match self {
            Self::Good => Answer::Whole,
            Self::Flaky if n % 3 == 2 => Answer::Cut,
            Self::Flaky => Answer::Busy,
            Self::CutThen503ThenGood => match n {
                0 => Answer::Cut,
                1 => Answer::Busy,
                _ => Answer::Whole,
            },
        }
    }
}

enum Answer {
    Whole,
    Busy,
    Cut,
}

struct Fake {
    manifest: Bytes,
    blobs: HashMap<String, Bytes>,
    layer: String,
    manifest_script: Script,
    layer_script: Script,
    manifest_requests: AtomicUsize,
    layer_requests: AtomicUsize,
    ranges: Mutex<Vec<Option<String>>>,
}

fn reply(answer: Answer, body: Bytes, start: usize, total: usize) -> Response {
    if let Answer::Busy = answer {
        return status(StatusCode::SERVICE_UNAVAILABLE);
    }
    let b = ranged(body.len(), start, total);
    let stream: futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>> = match answer {
        Answer::Cut => half_then_drop(body, Duration::from_millis(100)),
        _ => Box::pin(futures::stream::iter(vec![Ok(body)])),
    };
    b.body(Body::from_stream(stream)).unwrap()
}

async fn manifests(
    State(f): State<Arc<Fake>>,
    Path(_): Path<(String, String, String)>,
) -> Response {
    let n = f.manifest_requests.fetch_add(1, Ordering::SeqCst);
    let m = f.manifest.clone();
    let len = m.len();
    let mut r = reply(f.manifest_script.answer(n), m, 0, len);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        "application/vnd.oci.image.manifest.v1+json"
            .parse()
            .unwrap(),
    );
    r
}

async fn blob_handler(
    State(f): State<Arc<Fake>>,
    Path((_, _, d)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if d != f.layer {
        return blob_reply(&f.blobs, &d);
    }
    let Some(blob) = f.blobs.get(&d).cloned() else {
        return status(StatusCode::NOT_FOUND);
    };
    let n = f.layer_requests.fetch_add(1, Ordering::SeqCst);
    let range = range_of(&headers);
    f.ranges.lock().unwrap().push(range.clone());
    let start = range.as_deref().and_then(range_start).unwrap_or(0);
    let total = blob.len();
    reply(f.layer_script.answer(n), blob.slice(start..), start, total)
}

async fn serve(manifest_script: Script, layer_script: Script) -> (String, Arc<Fake>) {
    let OneLayer {
        manifest,
        blobs,
        layer,
        ..
    } = one_layer_image(&pattern(300_000), |_, _, _| {});
    let fake = Arc::new(Fake {
        manifest: Bytes::from(manifest),
        blobs,
        layer,
        manifest_script,
        layer_script,
        manifest_requests: AtomicUsize::new(0),
        layer_requests: AtomicUsize::new(0),
        ranges: Mutex::new(Vec::new()),
    });
    let app = axum::Router::new()
        .route("/v2/{a}/{b}/manifests/{r}", axum::routing::get(manifests))
        .route("/v2/{a}/{b}/blobs/{d}", axum::routing::get(blob_handler))
        .with_state(fake.clone());
    (serve_app(app).await, fake)
}

async fn pull(addr: &str) -> (Result<peerpod_image::PullOutcome, ImageError>, usize) {
    let scratch = Scratch::new("retries");
    let mut config = test_config(&scratch.path().join("work"));
    assert_eq!(config.transfer.attempts, 3);
    config.registry_configuration_uri =
        Some(file_uri(scratch.path(), "r.conf", &insecure_conf(addr)));
    let (p, store) = recording_puller(config);
    let out = p
        .pull(&format!("{addr}/t/app:v1"), &PathBuf::from("/run/b/retry"))
        .await;
    let installed = store.installs.lock().unwrap().len();
    (out, installed)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_layer_fetch_has_one_retry_budget_across_resumes() -> Result<()> {
    let (addr, fake) = serve(Script::Good, Script::Flaky).await;
    let (out, installed) = pull(&addr).await;
    let e = out.unwrap_err();
    assert!(
        matches!(e, ImageError::Transport { attempts: 3, .. }),
        "{e}"
    );
    assert_eq!(fake.layer_requests.load(Ordering::SeqCst), 3, "{e}");
    assert_eq!(installed, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_fetch_has_one_retry_budget_across_rereads() -> Result<()> {
    let (addr, fake) = serve(Script::Flaky, Script::Good).await;
    let (out, _) = pull(&addr).await;
    let e = out.unwrap_err();
    assert!(
        matches!(e, ImageError::Transport { attempts: 3, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("cut short"), "{e}");
    assert_eq!(fake.manifest_requests.load(Ordering::SeqCst), 3, "{e}");
    assert_eq!(fake.layer_requests.load(Ordering::SeqCst), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_layer_resumes_with_range_within_the_budget() -> Result<()> {
    let (addr, fake) = serve(Script::Good, Script::CutThen503ThenGood).await;
    let (out, installed) = pull(&addr).await;
    let out = out?;
    assert_eq!((out.fetched_layers, installed), (1, 1));
    assert_eq!(fake.layer_requests.load(Ordering::SeqCst), 3);
    let ranges = fake.ranges.lock().unwrap().clone();
    assert_eq!(ranges[0], None);
    // The resume asks for the rest, at the same offset both times.
    let resumed = ranges[2].clone().expect("a Range on the resume");
    assert!(
        resumed.starts_with("bytes=") && resumed != "bytes=0-",
        "{ranges:?}"
    );
    assert_eq!(ranges[1], ranges[2]);
    Ok(())
}
