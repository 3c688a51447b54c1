//! Redirects and credentials, with stand-ins under the test's control: a TLS registry that
//! wants Basic credentials and redirects layer blobs to "blob storage" on another origin (TLS,
//! another port), and a token service of the storage's choosing. The registry's credentials
//! must reach the registry only: never the storage (reqwest drops `Authorization` across
//! origins), never a realm the storage names in a 401, never a service the token realm
//! redirects to, and no redirect may leave TLS; a 401 from the registry's own origin after a
//! redirect there is answered.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use base64::Engine as _;
use bytes::Bytes;
use common::fake::*;
use common::*;
use peerpod_image::resources::NoResources;
use peerpod_image::{ImageError, Puller};
use peerpod_tests::cvm::certs::TlsCa;

const USER: &str = "puller";
const PASSWORD: &str = "pw-registry-only-5521";

/// Every request a stand-in got: path and `Authorization` header.
#[derive(Default)]
struct Log(Mutex<Vec<(String, Option<String>)>>);

impl Log {
    fn record(&self, path: &str, headers: &HeaderMap) {
        let auth = headers
            .get(header::AUTHORIZATION)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        self.0.lock().unwrap().push((path.to_string(), auth));
    }
    fn all(&self) -> Vec<(String, Option<String>)> {
        self.0.lock().unwrap().clone()
    }
}

type Image = OneLayer;

fn image() -> Image {
    one_layer_image(b"from the blob storage\n", |_, _, _| {})
}

fn basic() -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    )
}

/// The registry: Basic auth on every request; the layer blob redirected to `storage`.
struct RegistryState {
    image: Image,
    storage: String,
    log: Log,
}

async fn registry_manifest(
    State(s): State<Arc<RegistryState>>,
    Path((_, _, r)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    s.log.record(&format!("manifests/{r}"), &headers);
    if let Some(r) = basic_challenge(&headers) {
        return r;
    }
    manifest_reply(s.image.manifest.clone())
}

async fn registry_blob(
    State(s): State<Arc<RegistryState>>,
    Path((_, _, d)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    s.log.record(&format!("blobs/{d}"), &headers);
    if let Some(r) = basic_challenge(&headers) {
        return r;
    }
    if d == s.image.layer {
        return redirect(format!("{}/storage/{d}?signature=abc", s.storage));
    }
    blob_reply(&s.image.blobs, &d)
}

fn basic_challenge(headers: &HeaderMap) -> Option<Response> {
    let ok = headers
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == basic().as_bytes());
    (!ok).then(|| unauthorized(r#"Basic realm="registry""#.into()))
}

/// The blob storage: serves blobs, or answers 401 with a Bearer realm of its choosing.
struct StorageState {
    blobs: HashMap<String, Bytes>,
    challenge_realm: Option<String>,
    /// Redirect this many requests to itself first (`usize::MAX`: a loop).
    self_redirects: usize,
    log: Log,
}

async fn storage_blob(
    State(s): State<Arc<StorageState>>,
    Path(d): Path<String>,
    headers: HeaderMap,
) -> Response {
    s.log.record(&format!("storage/{d}"), &headers);
    if s.log.all().len() <= s.self_redirects {
        return redirect(format!("/storage/{d}"));
    }
    if let Some(realm) = &s.challenge_realm {
        return unauthorized(format!(
            r#"Bearer realm="{realm}",service="storage",scope="repository:t/app:pull""#
        ));
    }
    blob_reply(&s.blobs, &d)
}

/// A token service that logs who asked (and what they sent).
async fn token(State(log): State<Arc<Log>>, headers: HeaderMap) -> Response {
    log.record("token", &headers);
    Response::new(Body::from(r#"{"token":"storage-token"}"#))
}

fn tls_acceptor(ca: &TlsCa) -> tokio_rustls::TlsAcceptor {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    peerpod_tests::http::install_crypto_provider();
    let certs = CertificateDer::pem_slice_iter(ca.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(ca.key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// Serves `app` on 127.0.0.1, over TLS when `tls` is given; its `scheme://addr`.
async fn serve(app: axum::Router, tls: Option<&TlsCa>) -> String {
    let Some(ca) = tls else {
        return format!("http://{}", serve_app(app).await);
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let acceptor = tls_acceptor(ca);
    tokio::spawn(async move {
        use hyper_util::rt::TokioIo;
        use hyper_util::service::TowerToHyperService;
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
                    .await;
            });
        }
    });
    format!("https://{addr}")
}

struct Setup {
    registry: Arc<RegistryState>,
    storage: Arc<StorageState>,
    tokens: Arc<Log>,
    /// `host:port` of the registry.
    addr: String,
    ca: TlsCa,
}

/// A TLS registry redirecting the layer to storage served as `storage_tls` says; the storage
/// challenges with a realm at a token service (TLS) when `challenge` is set.
async fn setup(registry_tls: bool, storage_tls: bool, challenge: bool) -> Setup {
    setup_with(registry_tls, storage_tls, challenge, 0).await
}

async fn setup_with(
    registry_tls: bool,
    storage_tls: bool,
    challenge: bool,
    self_redirects: usize,
) -> Setup {
    let ca = TlsCa::generate(&["localhost"]).unwrap();
    let img = image();
    let tokens = Arc::new(Log::default());
    let token_url = serve(
        axum::Router::new()
            .route("/token", axum::routing::get(token))
            .with_state(tokens.clone()),
        Some(&ca),
    )
    .await;
    let storage = Arc::new(StorageState {
        blobs: img.blobs.clone(),
        challenge_realm: challenge.then(|| format!("{token_url}/token")),
        self_redirects,
        log: Log::default(),
    });
    let storage_url = serve(
        axum::Router::new()
            .route("/storage/{d}", axum::routing::get(storage_blob))
            .with_state(storage.clone()),
        storage_tls.then_some(&ca),
    )
    .await;
    let registry = Arc::new(RegistryState {
        image: img,
        storage: storage_url,
        log: Log::default(),
    });
    let registry_url = serve(
        axum::Router::new()
            .route(
                "/v2/{a}/{b}/manifests/{r}",
                axum::routing::get(registry_manifest),
            )
            .route("/v2/{a}/{b}/blobs/{d}", axum::routing::get(registry_blob))
            .with_state(registry.clone()),
        registry_tls.then_some(&ca),
    )
    .await;
    let addr = registry_url
        .split_once("://")
        .map(|(_, a)| a.to_string())
        .unwrap();
    Setup {
        registry,
        storage,
        tokens,
        addr,
        ca,
    }
}

async fn pull(s: &Setup, insecure: bool) -> Result<peerpod_image::PullOutcome, ImageError> {
    pull_at(&s.addr, &s.ca, insecure).await
}

/// Pulls `t/app:v1` from the registry at `addr` (TLS with `ca` unless `insecure`) with
/// Basic credentials for it, into a recording store.
async fn pull_at(
    addr: &str,
    ca: &TlsCa,
    insecure: bool,
) -> Result<peerpod_image::PullOutcome, ImageError> {
    let scratch = Scratch::new("redirects");
    let mut config = test_config(&scratch.path().join("work"));
    config.extra_root_certificates = vec![ca.ca_pem.clone()];
    config.authenticated_registry_credentials_uri = Some(file_uri(
        scratch.path(),
        "auth.json",
        &serde_json::json!({"auths": {addr: {"username": USER, "password": PASSWORD}}}).to_string(),
    ));
    if insecure {
        config.registry_configuration_uri =
            Some(file_uri(scratch.path(), "r.conf", &insecure_conf(addr)));
    }
    let store = Arc::new(RecordingStore::default());
    let p = Puller::new(config, Arc::new(NoResources), store).unwrap();
    p.pull(
        &format!("{addr}/t/app:v1"),
        &PathBuf::from("/run/b/redirect"),
    )
    .await
}

fn leaked(entries: &[(String, Option<String>)]) -> Vec<String> {
    entries
        .iter()
        .filter_map(|(p, a)| a.as_ref().map(|a| format!("{p}: {a}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_are_not_forwarded_to_blob_storage_on_another_origin() -> Result<()> {
    let s = setup(true, true, false).await;
    let out = pull(&s, false).await?;
    assert_eq!(out.fetched_layers, 1);
    // The registry got the credentials (the pull used them) ...
    assert!(
        s.registry
            .log
            .all()
            .iter()
            .any(|(_, a)| a.as_deref() == Some(basic().as_str()))
    );
    // ... the storage got the redirected request, without them.
    let storage = s.storage.log.all();
    assert!(!storage.is_empty());
    assert_eq!(leaked(&storage), Vec::<String>::new());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_challenge_from_blob_storage_is_not_answered_with_the_registry_credentials() -> Result<()>
{
    let s = setup(true, true, true).await;
    let e = pull(&s, false).await.expect_err("storage refuses");
    // The realm the storage chose was never asked, so it never saw the credentials.
    assert_eq!(s.tokens.all(), Vec::new());
    let text = e.to_string();
    assert!(
        matches!(e, ImageError::Status { status: 401, .. }),
        "{text}"
    );
    assert!(text.contains("another origin"), "{text}");
    assert!(!text.contains("signature=abc"), "{text}");
    assert!(!text.contains(PASSWORD), "{text}");
    assert_eq!(leaked(&s.storage.log.all()), Vec::<String>::new());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redirect_from_https_to_http_is_refused() -> Result<()> {
    let s = setup(true, false, false).await;
    let e = pull(&s, false).await.expect_err("leaves TLS");
    let text = e.to_string();
    assert!(
        matches!(e, ImageError::Status { status: 307, .. }),
        "{text}"
    );
    assert!(text.contains("leaves TLS"), "{text}");
    assert!(!text.contains("signature=abc"), "{text}");
    assert_eq!(s.storage.log.all(), Vec::new());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_insecure_registry_may_redirect_to_plain_http_storage() -> Result<()> {
    // Configured insecure: plain HTTP from the start, so nothing is downgraded.
    let s = setup(false, false, false).await;
    let out = pull(&s, true).await?;
    assert_eq!(out.fetched_layers, 1);
    assert!(!s.storage.log.all().is_empty());
    assert_eq!(leaked(&s.storage.log.all()), Vec::<String>::new());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redirect_loop_is_cut_after_ten_redirects_and_not_retried() -> Result<()> {
    let s = setup_with(true, true, false, usize::MAX).await;
    let e = pull(&s, false).await.expect_err("loops");
    let text = e.to_string();
    assert!(
        matches!(e, ImageError::Status { status: 307, .. }),
        "{text}"
    );
    assert!(text.contains("more than 10 redirects"), "{text}");
    // One request to the registry's blob URL, then ten redirects: the eleventh is refused,
    // and a refused redirect is not a transient failure.
    assert_eq!(s.storage.log.all().len(), 10);
    assert_eq!(leaked(&s.storage.log.all()), Vec::<String>::new());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn storage_redirecting_to_itself_gets_no_credentials_on_any_hop() -> Result<()> {
    // reqwest 0.13 re-sends the first request's headers on every hop and drops them only on a
    // hop that changes origin: the second hop inside the storage carried the registry's
    // Basic credentials.
    let s = setup_with(true, true, false, 2).await;
    let out = pull(&s, false).await?;
    assert_eq!(out.fetched_layers, 1);
    let storage = s.storage.log.all();
    assert_eq!(storage.len(), 3, "{storage:?}");
    assert_eq!(leaked(&storage), Vec::<String>::new());
    Ok(())
}

/// A registry for the authentication cases. With `bearer_realm`, every request wants
/// `Bearer good-token` and the challenge names that realm; without, manifests and blobs are
/// anonymous and the layer blob is redirected to `/same/{d}` on the registry's own origin,
/// which wants the registry's Basic credentials.
struct AuthRegistry {
    image: Image,
    bearer_realm: Option<String>,
    log: Log,
}

impl AuthRegistry {
    fn challenge(&self, headers: &HeaderMap) -> Option<Response> {
        let realm = self.bearer_realm.as_ref()?;
        let ok = headers
            .get(header::AUTHORIZATION)
            .is_some_and(|v| v.as_bytes() == b"Bearer good-token");
        (!ok).then(|| unauthorized(format!(r#"Bearer realm="{realm}",service="registry""#)))
    }
}

async fn auth_manifest(
    State(s): State<Arc<AuthRegistry>>,
    Path((_, _, r)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    s.log.record(&format!("manifests/{r}"), &headers);
    if let Some(r) = s.challenge(&headers) {
        return r;
    }
    manifest_reply(s.image.manifest.clone())
}

async fn auth_blob(
    State(s): State<Arc<AuthRegistry>>,
    Path((_, _, d)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    s.log.record(&format!("blobs/{d}"), &headers);
    if let Some(r) = s.challenge(&headers) {
        return r;
    }
    if s.bearer_realm.is_none() && d == s.image.layer {
        return redirect(format!("/same/{d}"));
    }
    blob_reply(&s.image.blobs, &d)
}

async fn same_origin_blob(
    State(s): State<Arc<AuthRegistry>>,
    Path(d): Path<String>,
    headers: HeaderMap,
) -> Response {
    s.log.record(&format!("same/{d}"), &headers);
    if let Some(r) = basic_challenge(&headers) {
        return r;
    }
    blob_reply(&s.image.blobs, &d)
}

async fn serve_auth_registry(
    ca: &TlsCa,
    bearer_realm: Option<String>,
) -> (Arc<AuthRegistry>, String) {
    let registry = Arc::new(AuthRegistry {
        image: image(),
        bearer_realm,
        log: Log::default(),
    });
    let url = serve(
        axum::Router::new()
            .route(
                "/v2/{a}/{b}/manifests/{r}",
                axum::routing::get(auth_manifest),
            )
            .route("/v2/{a}/{b}/blobs/{d}", axum::routing::get(auth_blob))
            .route("/same/{d}", axum::routing::get(same_origin_blob))
            .with_state(registry.clone()),
        Some(ca),
    )
    .await;
    let addr = url.split_once("://").map(|(_, a)| a.to_string()).unwrap();
    (registry, addr)
}

/// The registry's token service (which gets the Basic credentials) redirects the token
/// request to a service on another origin: that one gets the request without them, and its
/// token is used.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_service_redirecting_elsewhere_does_not_forward_the_credentials() -> Result<()> {
    let ca = TlsCa::generate(&["localhost"]).unwrap();
    let elsewhere = Arc::new(Log::default());
    let elsewhere_url = serve(
        axum::Router::new()
            .route(
                "/token2",
                axum::routing::get(
                    |State(log): State<Arc<Log>>, headers: HeaderMap| async move {
                        log.record("token2", &headers);
                        Response::new(Body::from(r#"{"token":"good-token"}"#))
                    },
                ),
            )
            .with_state(elsewhere.clone()),
        Some(&ca),
    )
    .await;
    let realm = Arc::new((Log::default(), elsewhere_url));
    let realm_url = serve(
        axum::Router::new()
            .route(
                "/token",
                axum::routing::get(
                    |State(r): State<Arc<(Log, String)>>, headers: HeaderMap| async move {
                        r.0.record("token", &headers);
                        Response::builder()
                            .status(StatusCode::TEMPORARY_REDIRECT)
                            .header(header::LOCATION, format!("{}/token2", r.1))
                            .body(Body::empty())
                            .unwrap()
                    },
                ),
            )
            .with_state(realm.clone()),
        Some(&ca),
    )
    .await;
    let (registry, addr) = serve_auth_registry(&ca, Some(format!("{realm_url}/token"))).await;
    let out = pull_at(&addr, &ca, false).await?;
    assert_eq!(out.fetched_layers, 1);
    let asked = realm.0.all();
    assert!(!asked.is_empty());
    assert!(
        asked
            .iter()
            .all(|(_, a)| a.as_deref() == Some(basic().as_str())),
        "the realm the registry named gets the credentials: {asked:?}"
    );
    let redirected = elsewhere.all();
    assert!(!redirected.is_empty(), "the redirect was followed");
    assert_eq!(leaked(&redirected), Vec::<String>::new());
    assert!(
        registry
            .log
            .all()
            .iter()
            .any(|(_, a)| a.as_deref() == Some("Bearer good-token"))
    );
    Ok(())
}

/// The registry redirects a blob to another path of its own origin, which asks for the
/// registry's credentials: that 401 is the registry's, so it is answered and the blob arrives.
#[tokio::test(flavor = "multi_thread")]
async fn a_401_from_the_registry_origin_after_a_same_origin_redirect_is_answered() -> Result<()> {
    let ca = TlsCa::generate(&["localhost"]).unwrap();
    let (registry, addr) = serve_auth_registry(&ca, None).await;
    let out = pull_at(&addr, &ca, false).await?;
    assert_eq!(out.fetched_layers, 1);
    let same: Vec<_> = registry
        .log
        .all()
        .into_iter()
        .filter(|(p, _)| p.starts_with("same/"))
        .collect();
    assert_eq!(same.len(), 2, "challenged, then answered: {same:?}");
    assert_eq!(same[0].1, None);
    assert_eq!(same[1].1.as_deref(), Some(basic().as_str()));
    Ok(())
}
