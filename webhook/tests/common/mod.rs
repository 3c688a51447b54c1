//! Shared by the webhook's integration tests and its benchmark: test certificates, a running
//! webhook server on a loopback port, a real TLS + HTTP/1.1 keep-alive client, and (in
//! `apiserver`) a stand-in of the API server's node endpoints.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

pub mod apiserver;
pub mod reference;
pub mod rng;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use der::asn1::{Ia5String, OctetString};
use der::{Encode, EncodePem};
use http_body_util::{BodyExt, Full};
use p256::elliptic_curve::Generate;
use p256::pkcs8::EncodePrivateKey;
use peerpod_webhook::review::Handler;
use peerpod_webhook::server::serve;
use peerpod_webhook::tls::{ReloadingCert, TlsOptions};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use spki::{EncodePublicKey, SubjectPublicKeyInfoRef};
use tokio_rustls::TlsConnector;
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::builder::{Builder, CertificateBuilder};
use x509_cert::certificate::TbsCertificate;
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{BasicConstraints, SubjectAltName};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};

pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A CA and a server certificate for `localhost` and 127.0.0.1.
#[derive(Clone)]
pub struct Certs {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

struct Profile {
    issuer: Name,
    subject: Name,
    ca: bool,
    san: bool,
}

impl BuilderProfile for Profile {
    fn get_issuer(&self, _subject: &Name) -> Name {
        self.issuer.clone()
    }
    fn get_subject(&self) -> Name {
        self.subject.clone()
    }
    fn build_extensions(
        &self,
        _spk: SubjectPublicKeyInfoRef<'_>,
        _issuer_spk: SubjectPublicKeyInfoRef<'_>,
        _tbs: &TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        let bc = BasicConstraints {
            ca: self.ca,
            path_len_constraint: None,
        };
        let mut out = vec![Extension {
            extn_id: const_oid::db::rfc5280::ID_CE_BASIC_CONSTRAINTS,
            critical: true,
            extn_value: OctetString::new(bc.to_der()?)?,
        }];
        if self.san {
            let names = vec![
                GeneralName::DnsName(Ia5String::new("localhost")?),
                GeneralName::IpAddress(OctetString::new(vec![127, 0, 0, 1])?),
            ];
            out.push(Extension {
                extn_id: const_oid::db::rfc5280::ID_CE_SUBJECT_ALT_NAME,
                critical: false,
                extn_value: OctetString::new(SubjectAltName(names).to_der()?)?,
            });
        }
        Ok(out)
    }
}

fn serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).unwrap();
    bytes[0] = (bytes[0] & 0x7F) | 0x01;
    SerialNumber::new(&bytes).unwrap()
}

impl Certs {
    /// A fresh CA and a server certificate whose subject CN is `cn`.
    pub fn generate(cn: &str) -> Self {
        let validity = Validity::new(
            Time::try_from(SystemTime::now() - Duration::from_secs(3600)).unwrap(),
            Time::try_from(SystemTime::now() + Duration::from_secs(86400)).unwrap(),
        );
        let ca_key = p256::ecdsa::SigningKey::generate();
        let ca_name = Name::from_str(&format!("CN=webhook test CA {cn}")).unwrap();
        let spki = |key: &dyn Fn() -> spki::Document| {
            x509_cert::SubjectPublicKeyInfo::try_from(key().as_bytes()).unwrap()
        };
        let ca_spki = spki(&|| ca_key.verifying_key().to_public_key_der().unwrap());
        let ca = CertificateBuilder::new(
            Profile {
                issuer: ca_name.clone(),
                subject: ca_name.clone(),
                ca: true,
                san: false,
            },
            serial(),
            validity,
            ca_spki,
        )
        .unwrap()
        .build::<_, p256::ecdsa::DerSignature>(&ca_key)
        .unwrap();
        let server_key = p256::SecretKey::generate();
        let server_spki = spki(&|| server_key.public_key().to_public_key_der().unwrap());
        let cert = CertificateBuilder::new(
            Profile {
                issuer: ca_name.clone(),
                subject: Name::from_str(&format!("CN={cn}")).unwrap(),
                ca: false,
                san: true,
            },
            serial(),
            validity,
            server_spki,
        )
        .unwrap()
        .build::<_, p256::ecdsa::DerSignature>(&ca_key)
        .unwrap();
        Certs {
            ca_pem: ca.to_pem(der::pem::LineEnding::LF).unwrap(),
            cert_pem: cert.to_pem(der::pem::LineEnding::LF).unwrap(),
            key_pem: server_key
                .to_pkcs8_pem(der::pem::LineEnding::LF)
                .unwrap()
                .to_string(),
        }
    }

    /// The server certificate's DER.
    pub fn cert_der(&self) -> Vec<u8> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    /// Writes `tls.crt` and `tls.key` into `dir`.
    pub fn write(&self, dir: &Path) {
        std::fs::write(dir.join("tls.crt"), &self.cert_pem).unwrap();
        std::fs::write(dir.join("tls.key"), &self.key_pem).unwrap();
    }
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let mut r = [0u8; 8];
        getrandom::fill(&mut r).unwrap();
        let path = std::env::temp_dir().join(format!(
            "peerpod-webhook-{tag}-{}-{}",
            std::process::id(),
            u64::from_le_bytes(r)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A webhook server running on a loopback port until dropped.
pub struct Server {
    pub addr: SocketAddr,
    pub certs: Certs,
    pub dir: TempDir,
    pub cert: Arc<ReloadingCert>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    reloader: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(r) = self.reloader.take() {
            r.abort();
        }
    }
}

pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Server {
    /// Starts `handler` with `options`, a fresh certificate, and reloads every `reload`.
    pub async fn start(handler: Handler, options: TlsOptions, reload: Option<Duration>) -> Self {
        Self::start_at("127.0.0.1:0", handler, options, reload).await
    }

    /// [`Server::start`] listening on `bind`.
    pub async fn start_at(
        bind: &str,
        handler: Handler,
        options: TlsOptions,
        reload: Option<Duration>,
    ) -> Self {
        install_provider();
        let dir = TempDir::new("server");
        let certs = Certs::generate("webhook-a");
        certs.write(&dir.0);
        let cert = ReloadingCert::load(&dir.0.join("tls.crt"), &dir.0.join("tls.key")).unwrap();
        let reloader = reload.map(|every| cert.spawn_reloader(every));
        let tls = Arc::new(options.server_config(cert.clone()).unwrap());
        let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(listener, tls, handler, async move {
            let _ = stopped.await;
        }));
        Server {
            addr,
            certs,
            dir,
            cert,
            stop: Some(stop),
            reloader,
        }
    }

    /// A client trusting this server's CA, with the default versions and suites.
    pub fn client_config(&self) -> rustls::ClientConfig {
        client_config(&self.certs.ca_pem, None, None)
    }
}

/// A rustls client trusting `ca_pem`, optionally limited to one version and some suites.
pub fn client_config(
    ca_pem: &str,
    version: Option<&'static rustls::SupportedProtocolVersion>,
    suites: Option<Vec<rustls::SupportedCipherSuite>>,
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(suites) = suites {
        provider.cipher_suites = suites;
    }
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = match version {
        Some(v) => vec![v],
        None => vec![&rustls::version::TLS13, &rustls::version::TLS12],
    };
    rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// One keep-alive TLS connection speaking HTTP/1.1.
pub struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    /// The server's certificate (DER) as seen in the handshake.
    pub peer_cert: Vec<u8>,
    /// The negotiated suite.
    pub suite: rustls::CipherSuite,
    /// The negotiated version.
    pub version: rustls::ProtocolVersion,
}

/// A reply: status and body.
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "reply is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Conn {
    /// Connects and completes the TLS handshake.
    pub async fn connect(addr: SocketAddr, config: rustls::ClientConfig) -> Result<Self, BoxError> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        Self::over(tcp, config).await
    }

    /// Connects from the loopback address `from` (e.g. 127.0.0.2: another client's address).
    pub async fn connect_from(
        addr: SocketAddr,
        from: std::net::IpAddr,
        config: rustls::ClientConfig,
    ) -> Result<Self, BoxError> {
        Self::over(tcp_from(addr, from).await?, config).await
    }

    async fn over(
        tcp: tokio::net::TcpStream,
        config: rustls::ClientConfig,
    ) -> Result<Self, BoxError> {
        tcp.set_nodelay(true)?;
        let tls = TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        let (_, session) = tls.get_ref();
        let peer_cert = session
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .unwrap_or_default();
        let suite = session
            .negotiated_cipher_suite()
            .map(|s| s.suite())
            .ok_or("no suite")?;
        let version = session.protocol_version().ok_or("no version")?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn {
            sender,
            peer_cert,
            suite,
            version,
        })
    }

    /// Sends one request and reads the whole reply.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<Reply, BoxError> {
        self.sender.ready().await?;
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let reply = self
            .sender
            .send_request(req.body(Full::new(Bytes::from(body)))?)
            .await?;
        let status = reply.status().as_u16();
        let body = reply.into_body().collect().await?.to_bytes().to_vec();
        Ok(Reply { status, body })
    }

    /// Posts an AdmissionReview to `/mutate-v1-pod`.
    pub async fn review(&mut self, review: &serde_json::Value) -> Result<Reply, BoxError> {
        self.send(
            "POST",
            "/mutate-v1-pod",
            Some("application/json"),
            serde_json::to_vec(review)?,
        )
        .await
    }
}

/// An AdmissionReview v1 for creating `pod`.
pub fn review_of(pod: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": pod["metadata"]["name"].clone(),
            "namespace": "default",
            "operation": "CREATE",
            "userInfo": {"username": "admin", "uid": "014fbff9a07c", "groups": ["system:authenticated"]},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
}

/// A pod as the API server sends it after defaulting (abridged).
pub fn pod(
    runtime_class: Option<&str>,
    init: Vec<serde_json::Value>,
    containers: Vec<serde_json::Value>,
) -> serde_json::Value {
    let mut spec = serde_json::json!({
        "containers": containers,
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default",
        "schedulerName": "default-scheduler",
        "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
        "priority": 0,
        "enableServiceLinks": true,
        "preemptionPolicy": "PreemptLowerPriority"
    });
    if !init.is_empty() {
        spec["initContainers"] = serde_json::Value::Array(init);
    }
    if let Some(rc) = runtime_class {
        spec["runtimeClassName"] = serde_json::Value::String(rc.to_owned());
        spec["overhead"] = serde_json::json!({"cpu": "250m", "memory": "120Mi"});
    }
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "test-pod",
            "namespace": "default",
            "labels": {"app": "test"},
            "annotations": {"existing": "kept"}
        },
        "spec": spec,
        "status": {}
    })
}

/// A container with the given requests and limits (empty: none).
pub fn container(
    name: &str,
    requests: &[(&str, &str)],
    limits: &[(&str, &str)],
) -> serde_json::Value {
    let list = |items: &[(&str, &str)]| {
        serde_json::Value::Object(
            items
                .iter()
                .map(|(k, v)| ((*k).to_owned(), serde_json::Value::String((*v).to_owned())))
                .collect(),
        )
    };
    let mut resources = serde_json::Map::new();
    if !requests.is_empty() {
        resources.insert("requests".into(), list(requests));
    }
    if !limits.is_empty() {
        resources.insert("limits".into(), list(limits));
    }
    serde_json::json!({
        "name": name,
        "image": "quay.io/prometheus/busybox:latest",
        "resources": resources,
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "Always"
    })
}

/// The patch of an allowed review's response: base64 of the JSON Patch, as the
/// AdmissionReview API's `[]byte` is encoded.
pub fn patch_of(review: &serde_json::Value) -> Option<json_patch::Patch> {
    use base64::Engine as _;
    let bytes = match &review["response"]["patch"] {
        serde_json::Value::Null => {
            assert!(review["response"]["patchType"].is_null(), "{review}");
            return None;
        }
        serde_json::Value::String(text) => base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap_or_else(|e| panic!("the patch is not base64 ({e}): {text}")),
        other => panic!("unexpected patch encoding {other}"),
    };
    assert_eq!(review["response"]["patchType"], "JSONPatch");
    Some(serde_json::from_slice(&bytes).unwrap())
}

/// `pod` with the review's patch applied (unchanged when there is none).
pub fn patched(pod: &serde_json::Value, review: &serde_json::Value) -> serde_json::Value {
    let mut out = pod.clone();
    if let Some(p) = patch_of(review) {
        json_patch::patch(&mut out, &p).unwrap();
    }
    out
}

pub fn cert_dir(server: &Server) -> PathBuf {
    server.dir.0.clone()
}

/// Opens a TLS connection, sends `head` (request line and headers, and whatever body bytes
/// the caller includes), then reads the answer's status line and headers without sending
/// more: how a server that refuses a request by its headers is seen.
pub async fn answer_to_head(
    addr: SocketAddr,
    config: rustls::ClientConfig,
    head: &[u8],
) -> Result<String, BoxError> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    tls.write_all(head).await?;
    tls.flush().await?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            let n = tls.read(&mut buf).await?;
            answer.extend_from_slice(&buf[..n]);
            if n == 0 || answer.windows(4).any(|w| w == b"\r\n\r\n") {
                return Ok::<_, std::io::Error>(());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read).await??;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// A connection to a webhook process starting at `addr`, retried for 10 s; `what` names it
/// in the error if it never answers.
pub async fn connect_when_up(addr: SocketAddr, ca_pem: &str, what: &str) -> Result<Conn, BoxError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Conn::connect(addr, client_config(ca_pem, None, None)).await {
            Ok(c) => return Ok(c),
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => return Err(format!("{what} never answered: {e}").into()),
        }
    }
}

/// A TCP connection to `addr` from the local address `from`.
pub async fn tcp_from(
    addr: SocketAddr,
    from: std::net::IpAddr,
) -> Result<tokio::net::TcpStream, BoxError> {
    let socket = if from.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(from, 0))?;
    Ok(socket.connect(addr).await?)
}
