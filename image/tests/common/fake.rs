//! In-process fake registries (axum on a loopback port) serving a hand-made one-layer image,
//! for the behaviour a real registry cannot be made to show: faults, redirects, auth tricks.

use std::collections::HashMap;
use std::io::Write as _;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use peerpod_image::Digest;

/// A one-layer image: its manifest, its blobs by digest, the layer blob's digest and the
/// diff_id its config names.
pub struct OneLayer {
    pub manifest: Vec<u8>,
    pub blobs: HashMap<String, Bytes>,
    pub layer: String,
    pub diff_id: Digest,
}

/// `len` bytes of a fixed pattern (the same each run).
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7919 % 251) as u8).collect()
}

/// The image whose layer holds `data/file` with `data`, gzip-compressed. `corrupt` may then
/// change the layer blob, the diff_id the config names and the size the manifest declares
/// (the layer's digest stays the one of the blob as made).
pub fn one_layer_image(
    data: &[u8],
    corrupt: impl Fn(&mut Vec<u8>, &mut String, &mut u64),
) -> OneLayer {
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "data/file", data).unwrap();
    let tar = tar.into_inner().unwrap();
    let diff_id = Digest::of(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let mut blob = gz.finish().unwrap();
    let layer = Digest::of(&blob).to_string();
    let mut size = blob.len() as u64;
    let mut diff = diff_id.to_string();
    corrupt(&mut blob, &mut diff, &mut size);
    let config = serde_json::json!({
        "architecture": peerpod_image::manifest::guest_architecture(), "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff]}
    })
    .to_string()
    .into_bytes();
    let config_digest = Digest::of(&config).to_string();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": size}]
    })
    .to_string()
    .into_bytes();
    let mut blobs = HashMap::new();
    blobs.insert(config_digest, Bytes::from(config));
    blobs.insert(layer.clone(), Bytes::from(blob));
    OneLayer {
        manifest,
        blobs,
        layer,
        diff_id: Digest::parse(&diff).unwrap_or(diff_id),
    }
}

/// Serves `app` on a loopback port until the test ends; its `host:port`.
pub async fn serve_app(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// An OCI manifest reply.
pub fn manifest_reply(manifest: impl Into<Body>) -> Response {
    Response::builder()
        .header(
            header::CONTENT_TYPE,
            "application/vnd.oci.image.manifest.v1+json",
        )
        .body(manifest.into())
        .unwrap()
}

/// A blob of `blobs`, or 404.
pub fn blob_reply(blobs: &HashMap<String, Bytes>, digest: &str) -> Response {
    match blobs.get(digest) {
        Some(b) => Response::new(Body::from(b.clone())),
        None => status(StatusCode::NOT_FOUND),
    }
}

/// An empty reply with `code`.
pub fn status(code: StatusCode) -> Response {
    Response::builder()
        .status(code)
        .body(Body::empty())
        .unwrap()
}

/// A redirect (307) to `location`.
pub fn redirect(location: String) -> Response {
    Response::builder()
        .status(StatusCode::TEMPORARY_REDIRECT)
        .header(header::LOCATION, location)
        .body(Body::empty())
        .unwrap()
}

/// The request's `Range` header.
pub fn range_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The start of a `bytes=<start>-` range.
pub fn range_start(range: &str) -> Option<usize> {
    range
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse().ok())
}

/// The reply's headers for `len` bytes of a blob of `total` from `start`: 200, or 206 with
/// its `Content-Range`.
pub fn ranged(len: usize, start: usize, total: usize) -> axum::http::response::Builder {
    let b = Response::builder().header(header::CONTENT_LENGTH, len);
    if start > 0 {
        b.status(StatusCode::PARTIAL_CONTENT).header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{total}", total - 1),
        )
    } else {
        b.status(StatusCode::OK)
    }
}

/// A body stream: the first half of `body`, then, after `wait`, the connection dropped.
pub fn half_then_drop(
    body: Bytes,
    wait: Duration,
) -> futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>> {
    let half = body.slice(..body.len() / 2);
    Box::pin(futures::stream::unfold(Some(half), move |s| async move {
        match s {
            Some(b) => Some((Ok(b), None)),
            None => {
                tokio::time::sleep(wait).await;
                Some((Err(std::io::Error::other("dropped")), None))
            }
        }
    }))
}

/// 401 with `WWW-Authenticate: <challenge>`.
pub fn unauthorized(challenge: String) -> Response {
    Response::builder()
        .status(StatusCode::UNAUTHORIZED)
        .header(header::WWW_AUTHENTICATE, challenge)
        .body(Body::empty())
        .unwrap()
}
