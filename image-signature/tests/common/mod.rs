//! Shared parts of the signature tests: real GnuPG keys and signatures, cosign-format
//! signatures made with p256 (Debian has no cosign package), an in-memory registry, a resource
//! fetcher, and a real HTTPS lookaside server.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use p256::ecdsa::signature::Signer;
use p256::elliptic_curve::Generate;
use peerpod_image_signature::{
    ImageIdentity, LookasideConfig, Policy, RegistryAccess, ResourceFetcher, SignatureError,
};
use sha2::{Digest, Sha256};

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// `(registry/repository, reference)` → (media type, body).
pub type Manifests = HashMap<(String, String), (String, Vec<u8>)>;
/// Path → (HTTP status, body).
pub type Files = Arc<Mutex<HashMap<String, (u16, Vec<u8>)>>>;

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A made-up manifest and its digest (what the image crate would have pulled).
pub fn manifest(seed: &str) -> (Vec<u8>, String) {
    let body = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},"layers":[]}}"#,
        digest(seed.as_bytes())
    );
    let d = digest(body.as_bytes());
    (body.into_bytes(), d)
}

pub fn image(
    registry: &str,
    repository: &str,
    tag: Option<&str>,
    manifest_digest: &str,
) -> ImageIdentity {
    ImageIdentity {
        registry: registry.into(),
        repository: repository.into(),
        tag: tag.map(Into::into),
        manifest_digest: manifest_digest.into(),
    }
}

/// The simple-signing payload skopeo writes.
pub fn simple_payload(reference: &str, manifest_digest: &str) -> Vec<u8> {
    serde_json::json!({
        "critical": {
            "identity": {"docker-reference": reference},
            "image": {"docker-manifest-digest": manifest_digest},
            "type": "atomic container signature"
        },
        "optional": {"creator": "peerpod test", "timestamp": 1_700_000_000}
    })
    .to_string()
    .into_bytes()
}

/// The payload `cosign sign` writes.
pub fn cosign_payload(reference: &str, manifest_digest: &str) -> Vec<u8> {
    serde_json::json!({
        "critical": {
            "identity": {"docker-reference": reference},
            "image": {"docker-manifest-digest": manifest_digest},
            "type": "cosign container image signature"
        },
        "optional": null
    })
    .to_string()
    .into_bytes()
}

/// Whether `tool` runs; when it does not, a loud SKIPPED line (outside CI) or a panic (CI=true).
pub fn have_tool(tool: &str, package: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return true;
    }
    let message =
        format!("{tool} is missing: apt-get install {package} (scripts/install-test-deps.sh)");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message} (CI=true: a missing tool fails)");
    }
    let _ = std::io::stderr().write_all(format!("\n*** SKIPPED: {message} ***\n").as_bytes());
    false
}

/// A GnuPG home of its own with keys made by `gpg` itself. Dropping it stops its agent.
pub struct Gpg {
    home: peerpod_tests::scratch::ScratchDir,
}

static HOMES: AtomicUsize = AtomicUsize::new(0);

impl Gpg {
    /// `None` (after a SKIPPED line) when gpg is missing outside CI.
    pub fn new() -> Option<Self> {
        if !have_tool("gpg", "gnupg") {
            return None;
        }
        let n = HOMES.fetch_add(1, Ordering::SeqCst);
        let home =
            peerpod_tests::scratch::ScratchDir::new(&format!("gpg{n}")).expect("scratch dir");
        std::fs::set_permissions(
            home.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .expect("chmod gnupg home");
        Some(Self { home })
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new("gpg");
        c.env("GNUPGHOME", self.home.path()).args([
            "--batch",
            "--yes",
            "--no-tty",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
        ]);
        c
    }

    fn run(&self, args: &[&str]) -> Vec<u8> {
        let out = self.cmd().args(args).output().expect("run gpg");
        assert!(
            out.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// A new key (`algo`: ed25519, rsa2048, nistp256 …) able to sign; its fingerprint.
    pub fn generate(&self, name: &str, algo: &str) -> String {
        self.run(&[
            "--quick-gen-key",
            &format!("{name} <{name}@example.test>"),
            algo,
            "sign",
            "never",
        ]);
        self.fingerprint(name)
    }

    /// A key made on 2020-01-01 that expired a day later; its fingerprint.
    pub fn generate_expired(&self, name: &str) -> String {
        self.run(&[
            "--faked-system-time",
            "20200101T000000",
            "--quick-gen-key",
            &format!("{name} <{name}@example.test>"),
            "ed25519",
            "sign",
            "1d",
        ]);
        self.fingerprint(name)
    }

    /// Revokes `fingerprint` with the revocation certificate gpg stored when it made the key.
    pub fn revoke(&self, fingerprint: &str) {
        let cert = self
            .home
            .path()
            .join(format!("openpgp-revocs.d/{fingerprint}.rev"));
        let text = std::fs::read_to_string(&cert).expect("revocation certificate");
        // gpg stores it with the armor's first line escaped against accidental import.
        let armored = text.replace(
            ":-----BEGIN PGP PUBLIC KEY BLOCK-----",
            "-----BEGIN PGP PUBLIC KEY BLOCK-----",
        );
        let path = self.home.path().join("revocation.asc");
        std::fs::write(&path, armored).expect("write revocation");
        self.run(&["--import", path.to_str().expect("path")]);
    }

    /// The fingerprint of the primary key with `name` in its user ID.
    pub fn fingerprint(&self, name: &str) -> String {
        let listing =
            String::from_utf8(self.run(&["--with-colons", "--list-keys", name])).expect("utf8");
        listing
            .lines()
            .find(|l| l.starts_with("fpr:"))
            .and_then(|l| l.split(':').nth(9))
            .expect("fingerprint")
            .to_string()
    }

    /// Adds a signing subkey to `fingerprint`; the subkey's fingerprint.
    pub fn add_signing_subkey(&self, fingerprint: &str) -> String {
        self.run(&["--quick-add-key", fingerprint, "ed25519", "sign", "never"]);
        let listing = String::from_utf8(self.run(&["--with-colons", "--list-keys", fingerprint]))
            .expect("utf8");
        listing
            .lines()
            .filter(|l| l.starts_with("fpr:"))
            .filter_map(|l| l.split(':').nth(9))
            .next_back()
            .expect("subkey fingerprint")
            .to_string()
    }

    /// `gpg --export` (binary, or armored).
    pub fn export(&self, fingerprint: &str, armor: bool) -> Vec<u8> {
        let mut args = vec!["--export"];
        if armor {
            args.push("--armor");
        }
        args.push(fingerprint);
        let key = self.run(&args);
        assert!(!key.is_empty(), "gpg exported nothing for {fingerprint}");
        key
    }

    /// `gpg --sign` of `payload` by `key` (extra options such as `--digest-algo`).
    pub fn sign(&self, key: &str, payload: &[u8], extra: &[&str]) -> Vec<u8> {
        let dir = self.home.path();
        let input = dir.join("payload.json");
        let output = dir.join("payload.sig");
        std::fs::write(&input, payload).expect("write payload");
        let mut args = vec!["--local-user", key];
        args.extend_from_slice(extra);
        let (i, o) = (
            input.to_str().expect("path"),
            output.to_str().expect("path"),
        );
        args.extend_from_slice(&["--output", o, "--sign", i]);
        self.run(&args);
        std::fs::read(&output).expect("read signature")
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        // The agent gpg started for this home (its own tool stops exactly that one).
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.home.path())
            .args(["--kill", "gpg-agent"])
            .output();
    }
}

/// A cosign key pair made with p256 (the curve and encoding `cosign generate-key-pair` uses).
pub struct CosignKey {
    pub signing: p256::ecdsa::SigningKey,
}

impl CosignKey {
    pub fn generate() -> Self {
        Self {
            signing: p256::ecdsa::SigningKey::generate(),
        }
    }

    /// `cosign.pub`: PEM SubjectPublicKeyInfo.
    pub fn public_pem(&self) -> Vec<u8> {
        use p256::pkcs8::EncodePublicKey;
        self.signing
            .verifying_key()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .expect("pem")
            .into_bytes()
    }

    /// base64 of the DER ECDSA signature over `payload`, as in the annotation.
    pub fn sign(&self, payload: &[u8]) -> String {
        let sig: p256::ecdsa::Signature = self.signing.sign(payload);
        base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes())
    }
}

/// The signature manifest `cosign sign` pushes, for payload layers `(payload digest, size,
/// base64 signature)`.
pub fn cosign_manifest(layers: &[(String, usize, String)]) -> Vec<u8> {
    let layers: Vec<_> = layers
        .iter()
        .map(|(d, size, sig)| {
            serde_json::json!({
                "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                "size": size,
                "digest": d,
                "annotations": {"dev.cosignproject.cosign/signature": sig}
            })
        })
        .collect();
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "size": 233,
            "digest": "sha256:0000000000000000000000000000000000000000000000000000000000000000"
        },
        "layers": layers
    })
    .to_string()
    .into_bytes()
}

/// A registry in memory, counting what is asked of it.
#[derive(Default)]
pub struct MemRegistry {
    /// `(registry/repository, reference)` → (media type, body).
    pub manifests: Mutex<Manifests>,
    /// `(registry/repository, digest)` → body.
    pub blobs: Mutex<HashMap<(String, String), Vec<u8>>>,
    pub requests: AtomicUsize,
}

impl MemRegistry {
    pub fn put_manifest(&self, name: &str, reference: &str, body: Vec<u8>) {
        self.manifests.lock().expect("lock").insert(
            (name.into(), reference.into()),
            ("application/vnd.oci.image.manifest.v1+json".into(), body),
        );
    }

    pub fn put_blob(&self, name: &str, body: Vec<u8>) -> String {
        let d = digest(&body);
        self.blobs
            .lock()
            .expect("lock")
            .insert((name.into(), d.clone()), body);
        d
    }

    /// Stores a cosign signature of `payload` by `key` for `manifest_digest` in `name`.
    pub fn cosign_sign(&self, name: &str, manifest_digest: &str, key: &CosignKey, payload: &[u8]) {
        let d = self.put_blob(name, payload.to_vec());
        let tag = format!("{}.sig", manifest_digest.replacen(':', "-", 1));
        self.put_manifest(
            name,
            &tag,
            cosign_manifest(&[(d, payload.len(), key.sign(payload))]),
        );
    }
}

#[async_trait::async_trait]
impl RegistryAccess for MemRegistry {
    async fn manifest(
        &self,
        registry: &str,
        repository: &str,
        reference: &str,
    ) -> Result<Option<(String, Vec<u8>)>, String> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        Ok(self
            .manifests
            .lock()
            .map_err(|_| "lock")?
            .get(&(format!("{registry}/{repository}"), reference.to_string()))
            .cloned())
    }

    async fn blob(
        &self,
        registry: &str,
        repository: &str,
        digest: &str,
        max_bytes: usize,
    ) -> Result<Vec<u8>, String> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let blob = self
            .blobs
            .lock()
            .map_err(|_| "lock")?
            .get(&(format!("{registry}/{repository}"), digest.to_string()))
            .cloned()
            .ok_or("blob unknown")?;
        if blob.len() > max_bytes {
            return Err(format!("blob larger than {max_bytes}"));
        }
        Ok(blob)
    }
}

/// The CDH's resource fetch, in memory: URI → bytes, recording what was asked.
#[derive(Default)]
pub struct MemResources {
    pub resources: HashMap<String, Vec<u8>>,
    pub asked: Mutex<Vec<String>>,
}

impl MemResources {
    pub fn with(uri: &str, bytes: Vec<u8>) -> Self {
        let mut r = Self::default();
        r.resources.insert(uri.into(), bytes);
        r
    }
}

#[async_trait::async_trait]
impl ResourceFetcher for MemResources {
    async fn fetch(&self, uri: &str) -> Result<Vec<u8>, String> {
        self.asked.lock().map_err(|_| "lock")?.push(uri.to_string());
        self.resources
            .get(uri)
            .cloned()
            .ok_or_else(|| format!("resource {uri} not found"))
    }
}

/// A real lookaside server (HTTPS, a test CA) serving `path → body`, counting requests.
pub struct Lookaside {
    pub files: Files,
    pub hits: Arc<AtomicUsize>,
    pub ca_pem: String,
    server: peerpod_tests::http::ServerThread,
}

impl Lookaside {
    pub fn start() -> Self {
        let ca = peerpod_tests::cvm::certs::TlsCa::generate(&["localhost"]).expect("test CA");
        let files: Files = Arc::default();
        let hits = Arc::new(AtomicUsize::new(0));
        let (f, h) = (files.clone(), hits.clone());
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
            let (f, h) = (f.clone(), h.clone());
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                let found = f.lock().ok().and_then(|m| m.get(uri.path()).cloned());
                match found {
                    Some((status, body)) => (
                        axum::http::StatusCode::from_u16(status)
                            .unwrap_or(axum::http::StatusCode::OK),
                        body,
                    ),
                    None => (axum::http::StatusCode::NOT_FOUND, Vec::new()),
                }
            }
        });
        let acceptor = tls_acceptor(&ca.cert_pem, &ca.key_pem);
        let server = peerpod_tests::http::ServerThread::spawn(
            "lookaside",
            "127.0.0.1:0",
            move |listener, stop| serve_tls(listener, acceptor, app, stop),
        )
        .expect("lookaside server");
        Self {
            files,
            hits,
            ca_pem: ca.ca_pem,
            server,
        }
    }

    pub fn base(&self) -> String {
        format!("https://localhost:{}/sigstore", self.server.addr().port())
    }

    /// Publishes `body` as `signature-<n>` for `repository@digest`.
    pub fn put(&self, repository: &str, manifest_digest: &str, n: usize, body: Vec<u8>) {
        self.put_status(repository, manifest_digest, n, 200, body);
    }

    pub fn put_status(
        &self,
        repository: &str,
        manifest_digest: &str,
        n: usize,
        status: u16,
        body: Vec<u8>,
    ) {
        let path = format!(
            "/sigstore/{repository}@{}/signature-{n}",
            manifest_digest.replacen(':', "=", 1)
        );
        self.files
            .lock()
            .expect("lock")
            .insert(path, (status, body));
    }

    /// A lookaside configuration pointing every image here, with a client trusting the test CA.
    pub fn config(&self) -> LookasideConfig {
        let yaml = format!("default-docker:\n  lookaside: {}\n", self.base());
        LookasideConfig::parse(yaml.as_bytes())
            .expect("lookaside config")
            .with_http_client(peerpod_tests::http::client_trusting(&self.ca_pem).expect("client"))
    }
}

fn tls_acceptor(cert_pem: &str, key_pem: &str) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    peerpod_tests::http::install_crypto_provider();
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("certificate");
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key");
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("TLS config");
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

async fn serve_tls(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: axum::Router,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;
    loop {
        let (tcp, _) = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
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
}

/// `verify` with the given parts.
pub async fn check(
    policy: &str,
    image: &ImageIdentity,
    registry: &MemRegistry,
    resources: &MemResources,
    lookaside: Option<&LookasideConfig>,
) -> Result<peerpod_image_signature::Accepted, SignatureError> {
    let policy = Policy::parse(policy.as_bytes()).expect("policy parses");
    peerpod_image_signature::verify(&policy, image, registry, resources, lookaside).await
}

/// The refusal's rule and reason, or a panic naming what came instead.
pub fn refusal(
    result: Result<peerpod_image_signature::Accepted, SignatureError>,
) -> (String, String) {
    match result {
        Err(SignatureError::Refused { rule, reason, .. }) => (rule, reason),
        other => panic!("expected a refusal, got {other:?}"),
    }
}
