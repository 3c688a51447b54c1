//! Shared by the forwarder's tests: test certificates, the forwarder binary, a stand-in agent
//! that records what it receives, the real kata-agent, and shim-side ttrpc clients over TLS.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use peerpod_protocols::kata::{agent, agent_ttrpc, health, health_ttrpc};
use peerpod_tests::cvm::certs::TlsCa;
use protobuf::well_known_types::empty::Empty;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

pub const TIMEOUT: Duration = Duration::from_secs(20);

pub fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(TIMEOUT.as_nanos() as i64)
}

pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fwd-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A server CA (with the pod VM's certificate) and a client CA (with the shim's).
pub struct Pki {
    pub server: TlsCa,
    pub client: TlsCa,
}

impl Pki {
    pub fn new() -> Self {
        Self {
            server: TlsCa::generate(&["podvm"]).unwrap(),
            client: TlsCa::generate(&["shim"]).unwrap(),
        }
    }

    /// apf.json with this PKI's server cert and client CA, plus `extra` keys (`"k": v,`).
    pub fn apf_json(&self, extra: &str) -> String {
        serde_json::json!({
            "tls-server-cert": self.server.cert_pem,
            "tls-server-key": self.server.key_pem,
            "tls-client-ca": self.client.ca_pem,
        })
        .to_string()
        .replacen('{', &format!("{{{extra}"), 1)
    }
    /// A client configuration of the shim: trusts the server CA, presents the client cert.
    pub fn shim_config(&self) -> rustls::ClientConfig {
        client_config(
            &self.server.ca_pem,
            Some((&self.client.cert_pem, &self.client.key_pem)),
        )
    }
}

pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A rustls client trusting `server_ca`, presenting `identity` (cert, key) if given.
pub fn client_config(server_ca: &str, identity: Option<(&str, &str)>) -> rustls::ClientConfig {
    install_provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(server_ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder().with_root_certificates(roots);
    match identity {
        Some((cert, key)) => b
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    }
}

/// A TLS connection to `addr`, or the handshake error's text.
pub async fn tls_connect(
    addr: SocketAddr,
    config: rustls::ClientConfig,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    // With TLS 1.3 the server checks the client certificate after the client thinks the
    // handshake is done: a refusal shows on the first read.
    use tokio::io::AsyncReadExt as _;
    match tokio::time::timeout(Duration::from_millis(300), tls.read(&mut [0u8; 1])).await {
        Ok(Ok(0)) => Err("closed by the server".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(_)) => Err("unexpected data".into()),
        Err(_) => Ok(tls),
    }
}

/// ttrpc clients over an established stream.
pub fn ttrpc_clients<S>(stream: S) -> (agent_ttrpc::AgentServiceClient, health_ttrpc::HealthClient)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Sync + 'static,
{
    let client = ttrpc::r#async::Client::new(ttrpc::r#async::transport::Socket::new(stream));
    (
        agent_ttrpc::AgentServiceClient::new(client.clone()),
        health_ttrpc::HealthClient::new(client),
    )
}

/// The forwarder binary, killed on drop.
pub struct ForwarderProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl ForwarderProcess {
    /// Starts `agent-protocol-forwarder` with `apf` as its config and `args` added; waits
    /// until it accepts connections.
    pub fn start(dir: &Path, apf: &str, agent_socket: &Path, args: &[&str]) -> Self {
        Self::start_wrapped(dir, apf, agent_socket, args, &[])
    }

    pub fn start_wrapped(
        dir: &Path,
        apf: &str,
        agent_socket: &Path,
        args: &[&str],
        wrapper: &[&str],
    ) -> Self {
        let config = dir.join("apf.json");
        std::fs::write(&config, apf).unwrap();
        let port = free_port();
        let log = dir.join("forwarder.log");
        let bin = env!("CARGO_BIN_EXE_agent-protocol-forwarder");
        let (program, prefix) = match wrapper.split_first() {
            Some((p, rest)) => (*p, [rest, &[bin]].concat()),
            None => (bin, Vec::new()),
        };
        let child = Command::new(program)
            .args(prefix)
            .arg("-config")
            .arg(&config)
            .arg("-listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("-kata-agent-socket")
            .arg(agent_socket)
            .args(args)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut me = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
        };
        me.wait_listening();
        me
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if std::net::TcpStream::connect(self.addr).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the forwarder exited with {status}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "the forwarder did not listen: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits for the exit; returns the log.
    pub fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return self.log();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log()
    }
}

impl Drop for ForwarderProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What the stand-in agent received.
#[derive(Default)]
pub struct Recorded {
    pub containers: Vec<agent::CreateContainerRequest>,
    pub sandboxes: Vec<agent::CreateSandboxRequest>,
}

#[derive(Clone, Default)]
pub struct StandIn {
    pub recorded: Arc<Mutex<Recorded>>,
}

#[async_trait]
impl agent_ttrpc::AgentService for StandIn {
    async fn create_container(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: agent::CreateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.recorded.lock().unwrap().containers.push(req);
        Ok(Empty::new())
    }

    async fn create_sandbox(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: agent::CreateSandboxRequest,
    ) -> ttrpc::Result<Empty> {
        self.recorded.lock().unwrap().sandboxes.push(req);
        Ok(Empty::new())
    }

    async fn start_container(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: agent::StartContainerRequest,
    ) -> ttrpc::Result<Empty> {
        // Slow on purpose for "slow" ids: concurrent requests must not wait for each other.
        if req.container_id == "slow" {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(Empty::new())
    }
}

#[async_trait]
impl health_ttrpc::Health for StandIn {
    async fn check(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        _: health::CheckRequest,
    ) -> ttrpc::Result<health::HealthCheckResponse> {
        let mut r = health::HealthCheckResponse::new();
        r.status = health::health_check_response::ServingStatus::SERVING.into();
        Ok(r)
    }
}

/// A ttrpc server on `socket` answering as [`StandIn`].
pub async fn stand_in(socket: &Path) -> (ttrpc::r#async::Server, StandIn) {
    let s = StandIn::default();
    let mut server = ttrpc::r#async::Server::new()
        .bind(&format!("unix://{}", socket.display()))
        .unwrap()
        .register_service(agent_ttrpc::create_agent_service(Arc::new(s.clone())))
        .register_service(health_ttrpc::create_health(Arc::new(s.clone())));
    server.start().await.unwrap();
    (server, s)
}

/// A forwarder process in front of a stand-in agent, in the scratch directory `name`.
pub struct Fronted {
    pub fwd: ForwarderProcess,
    pub stand_in: StandIn,
    pub pki: Pki,
    pub server: ttrpc::r#async::Server,
}

/// Starts a stand-in agent and a forwarder before it (no extra arguments).
pub async fn fronted(name: &str) -> Fronted {
    let dir = scratch(name);
    let socket = dir.join("agent.sock");
    let (server, stand_in) = stand_in(&socket).await;
    let pki = Pki::new();
    let fwd = ForwarderProcess::start(&dir, &pki.apf_json(""), &socket, &[]);
    Fronted {
        fwd,
        stand_in,
        pki,
        server,
    }
}

/// The real kata-agent binary (built by `make test` / `cargo build -p kata-agent`), or `None`
/// with a loud note (a failure under CI=true).
pub fn kata_agent_binary() -> Option<PathBuf> {
    workspace_binary("kata-agent", "KATA_AGENT_BIN", "kata-agent")
}

/// Another crate's binary `name` in the workspace's debug target directory (or `$env`), or
/// `None` with a loud note (a failure under CI=true).
pub fn workspace_binary(name: &str, env: &str, package: &str) -> Option<PathBuf> {
    let path = std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/debug")
            .join(name)
    });
    if path.is_file() {
        return Some(path);
    }
    let message = format!(
        "{} is missing: build it (cargo build -p {package}) or set {env}",
        path.display()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message} (CI=true: a missing binary fails)");
    }
    let _ = std::io::stderr().write_all(format!("\n*** SKIPPED: {message} ***\n").as_bytes());
    None
}

/// The real kata-agent on a unix socket in `dir`, killed on drop.
pub struct RealAgent {
    pub child: Child,
    pub socket: PathBuf,
    pub dir: PathBuf,
}

impl RealAgent {
    pub fn start(bin: &Path, dir: &Path) -> Self {
        let socket = dir.join("agent.sock");
        Self::start_on(bin, dir, &format!("unix://{}", socket.display()))
    }

    /// The agent serving on `server_addr` (`unix://…` or `tcp://host:port`).
    pub fn start_on(bin: &Path, dir: &Path, server_addr: &str) -> Self {
        Self::launch(bin, dir, server_addr, "", &[])
    }

    /// The agent serving on `server_addr`, with `config_extra` in its configuration file and
    /// `args` on its command line.
    pub fn launch(
        bin: &Path,
        dir: &Path,
        server_addr: &str,
        config_extra: &str,
        args: &[&str],
    ) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let socket = dir.join("agent.sock");
        let child = agent_args(Command::new(bin).args(args), dir, server_addr, config_extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("agent.log")).unwrap())
            .spawn()
            .unwrap();
        Self {
            child,
            socket,
            dir: dir.to_path_buf(),
        }
    }
}

/// Writes the agent's configuration into `dir` (serving on `server_addr`, `config_extra`
/// appended) and adds to `cmd` (the agent, or a wrapper that runs it) the arguments that keep
/// its state, copies and resolv.conf in `dir` and its cgroup named after `dir`.
pub fn agent_args<'a>(
    cmd: &'a mut Command,
    dir: &Path,
    server_addr: &str,
    config_extra: &str,
) -> &'a mut Command {
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!("server_addr = '{server_addr}'\nlog_level = 'info'\n{config_extra}"),
    )
    .unwrap();
    cmd.arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--copy-root")
        .arg(dir.join("shared"))
        .arg("--resolv-conf")
        .arg(dir.join("resolv.conf"))
        .arg("--cgroup-parent")
        .arg(format!(
            "/fwd-test-{}-{}",
            std::process::id(),
            dir.file_name().and_then(|n| n.to_str()).unwrap_or("agent")
        ))
}

impl Drop for RealAgent {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CreateContainer envelope (a ttrpc request body) just under ttrpc's 4 MiB that the rewrite
/// (the pod namespace entry) takes over it.
pub fn create_container_just_under_the_limit() -> Vec<u8> {
    use protobuf::Message as _;
    const MAX: usize = 4 << 20;
    let build = |pad: usize| {
        let mut req = agent::CreateContainerRequest::new();
        req.container_id = "big".into();
        req.exec_id = "x".repeat(pad);
        req.OCI = Some(peerpod_protocols::kata::oci::Spec::new()).into();
        let mut r = ttrpc::Request::new();
        r.service = "grpc.AgentService".into();
        r.method = "CreateContainer".into();
        r.payload = req.write_to_bytes().unwrap();
        r.write_to_bytes().unwrap()
    };
    // The varint lengths grow with the padding: aim, then step down to fit.
    let mut pad = MAX - 4 - build(0).len();
    loop {
        let env = build(pad);
        if env.len() <= MAX - 4 {
            return env;
        }
        pad -= env.len() - (MAX - 4);
    }
}
