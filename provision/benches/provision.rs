//! Provisioning start → files written, with user data from an IMDS stand-in on loopback.
//!
//! A: IMDS ready at once. `process-user-data provision-files` (fetch, base64, strict YAML,
//!    allow-list, initdata decode + check + digest, atomic writes) against the least a
//!    provisioner must do, measured in the same run: `curl -H Metadata:true | base64 -d >
//!    file` (no parsing, no initdata).
//! B: IMDS answering 503 for its first second (user data set late by the host). Ours (pauses
//!    from 100 ms, doubling to 2 s) against upstream's published retry policy (a fixed 5 s
//!    pause between attempts, `retry.Delay(5s)` with `FixedDelay`) run as a curl loop.
//!
//! C: provisioning start → 15150 accepting (issue 14). Each round: `process-user-data
//!    provision-files` fetches user data (cloud-config with apf.json and initdata) from the
//!    stand-in and writes the files under a fresh root (part 1); then the front door starts from
//!    that apf.json and a TLS client with the shim's certificate completes a handshake on the
//!    listen port (part 2). Ours: `kata-agent --front-door-config apf.json` (one process).
//!    Baseline, same run, same binaries: upstream's architecture, the agent on its unix socket
//!    plus a separate `agent-protocol-forwarder -config apf.json` in front of it, both started
//!    at once; part 2 ends when the handshake is done and the agent's socket accepts (the
//!    forwarder serves nothing before that). The agent and forwarder binaries are the
//!    workspace's debug builds (`cargo build -p kata-agent -p peerpod-forwarder`) or
//!    `$KATA_AGENT_BIN` / `$APF_BIN`; without them C prints SKIPPED (a failure under CI=true).
//!    Run as root (the agent needs it).
//!
//! Run: `cargo bench -p peerpod-provision` (about a minute).

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;

const BIN: &str = env!("CARGO_BIN_EXE_process-user-data");
const PATH: &str = "/metadata/instance/compute/userData?api-version=2021-01-01&format=text";

fn user_data() -> String {
    user_data_with("{\"pod-network\":{\"podip\":\"10.0.0.2/24\"}}")
}

fn user_data_with(apf: &str) -> String {
    let doc = "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"aa.toml\" = '''\n\
               [token_configs.kbs]\nurl = \"https://kbs.example.com\"\n'''\n\"cdh.toml\" = '''\n\
               socket = \"unix:///run/confidential-containers/cdh.sock\"\n[kbc]\nname = \"cc_kbc\"\n\
               url = \"https://kbs.example.com\"\n'''\n\"policy.rego\" = '''\npackage agent_policy\n\n\
               default CreateContainerRequest := true\n'''\n";
    let initdata = peerpod_policy::initdata::encode_annotation(doc.as_bytes());
    let ud = format!(
        "#cloud-config\nwrite_files:\n- path: /run/peerpod/apf.json\n  content: |\n    \
         {apf}\n- path: /run/peerpod/initdata\n  \
         content: {initdata}\n"
    );
    base64::engine::general_purpose::STANDARD.encode(ud)
}

/// Serves `body` to requests with `Metadata: true`; 503 until `ready` is in the past.
fn serve(body: String, ready: Arc<Mutex<Instant>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut metadata = false;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                metadata |= line.split_once(':').is_some_and(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("metadata") && v.trim() == "true"
                });
            }
            let ok = metadata && Instant::now() >= *ready.lock().expect("ready");
            let (status, reply) = if ok { (200, body.as_str()) } else { (503, "") };
            let mut s = stream;
            let _ = write!(
                s,
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                reply.len()
            );
        }
    });
    port
}

fn ours(url: &str, root: &Path) -> Duration {
    let _ = std::fs::remove_dir_all(root);
    std::fs::create_dir_all(root).expect("root");
    let start = Instant::now();
    let out = Command::new(BIN)
        .args([
            "--log-level",
            "error",
            "provision-files",
            "--user-data-file",
        ])
        .arg("/nonexistent/user-data")
        .args(["--imds-url", url, "-t", "60", "--root"])
        .arg(root)
        .output()
        .expect("process-user-data");
    let t = start.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(root.join("run/peerpod/initdata.digest").exists());
    t
}

fn baseline(url: &str, root: &Path, retry_pause: &str) -> Duration {
    let _ = std::fs::remove_dir_all(root);
    std::fs::create_dir_all(root).expect("root");
    let file = root.join("user-data");
    let script = format!(
        "until curl -sf -H 'Metadata: true' '{url}' > '{f}.b64'; do sleep {retry_pause}; done; \
         base64 -d < '{f}.b64' > '{f}'",
        f = file.display()
    );
    let start = Instant::now();
    let ok = Command::new("sh")
        .args(["-c", &script])
        .status()
        .is_ok_and(|s| s.success());
    let t = start.elapsed();
    assert!(ok && file.exists(), "the curl baseline failed");
    t
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("*** SKIPPED: curl is needed for the baseline ***");
        return;
    }
    let ready = Arc::new(Mutex::new(Instant::now()));
    let port = serve(user_data(), ready.clone());
    let url = format!("http://127.0.0.1:{port}{PATH}");
    let dir = std::env::temp_dir().join(format!("pp-prov-bench-{}", std::process::id()));

    let runs = 20;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        a.push(ours(&url, &dir.join("ours")));
        b.push(baseline(&url, &dir.join("curl"), "5"));
    }
    let (a, b) = (median(a), median(b));
    println!(
        "A  IMDS ready:  process-user-data {:.1} ms  curl|base64 {:.1} ms  ratio {:.2}x  \
         (median of {runs})",
        ms(a),
        ms(b),
        a.as_secs_f64() / b.as_secs_f64()
    );

    let late = Duration::from_secs(1);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        *ready.lock().expect("ready") = Instant::now() + late;
        a.push(ours(&url, &dir.join("ours")));
        *ready.lock().expect("ready") = Instant::now() + late;
        b.push(baseline(&url, &dir.join("curl"), "5"));
    }
    let (a, b) = (median(a), median(b));
    println!(
        "B  IMDS 1 s late:  process-user-data {:.0} ms  upstream's fixed 5 s retry (curl loop) \
         {:.0} ms  ratio {:.2}x  (median of 3)",
        ms(a),
        ms(b),
        a.as_secs_f64() / b.as_secs_f64()
    );
    front_door(&dir.join("front-door"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `name` from `$env`, else the workspace's debug build; `None` with a loud note (a failure
/// under CI=true).
fn workspace_binary(name: &str, env: &str, package: &str) -> Option<PathBuf> {
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
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "{message} (CI=true: a missing binary fails)"
    );
    eprintln!("*** SKIPPED C: {message} ***");
    None
}

/// A child killed (and reaped) on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The shim's TLS client: trusts the pod VM's CA, presents the shim's certificate.
fn client_config(pki: &Pki) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pki.server.ca_pem.as_bytes()) {
        roots.add(c.expect("CA pem")).expect("CA");
    }
    let chain = CertificateDer::pem_slice_iter(pki.client.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("client cert");
    let key = PrivateKeyDer::from_pem_slice(pki.client.key_pem.as_bytes()).expect("client key");
    Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .expect("client auth"),
    )
}

/// Polls `port` until a TLS handshake with the client certificate completes; returns the
/// connection (still open, for the check after the clock stops).
fn handshake(
    port: u16,
    cfg: &Arc<rustls::ClientConfig>,
    started: Instant,
    log: &Path,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "15150 never accepted: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        if let Ok(tcp) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let name = "127.0.0.1".try_into().expect("server name");
            let conn = rustls::ClientConnection::new(cfg.clone(), name).expect("client");
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut done = true;
            while tls.conn.is_handshaking() {
                if tls.conn.complete_io(&mut tls.sock).is_err() {
                    done = false;
                    break;
                }
            }
            if done {
                return tls;
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// After the clock stopped: the server did not refuse the client certificate (with TLS 1.3 a
/// refusal arrives after the client's side of the handshake is done).
fn accepted(mut tls: rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>) -> bool {
    use std::io::Read as _;
    let _ = tls.sock.set_read_timeout(Some(Duration::from_millis(300)));
    match tls.read(&mut [0u8; 1]) {
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        // 0: closed by the server (refused); data: the connection is alive.
        Ok(n) => n > 0,
    }
}

/// The agent with its configuration in `dir`, serving ttrpc on `dir/agent.sock`, with `args`.
fn agent(bin: &Path, dir: &Path, args: &[&str]) -> Killed {
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "server_addr = 'unix://{}'\nlog_level = 'info'\n",
            dir.join("agent.sock").display()
        ),
    )
    .expect("agent.toml");
    let child = Command::new(bin)
        .args(args)
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--copy-root")
        .arg(dir.join("shared"))
        .arg("--resolv-conf")
        .arg(dir.join("resolv.conf"))
        .arg("--cgroup-parent")
        .arg(format!(
            "/prov-bench-{}-{}",
            std::process::id(),
            dir.file_name().and_then(|n| n.to_str()).unwrap_or("agent")
        ))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("agent.log")).expect("agent.log"))
        .spawn()
        .expect("kata-agent");
    Killed(child)
}

struct Pki {
    server: peerpod_tests::cvm::certs::TlsCa,
    client: peerpod_tests::cvm::certs::TlsCa,
}

/// One round: part 1 (process-user-data, IMDS → files) and part 2 (front door start → TLS
/// handshake done), `in_agent` choosing our architecture or upstream's.
fn round(
    url: &str,
    root: &Path,
    bins: (&Path, &Path),
    cfg: &Arc<rustls::ClientConfig>,
    in_agent: bool,
) -> (Duration, Duration) {
    let part1 = ours(url, root);
    let apf = root.join("run/peerpod/apf.json");
    assert!(apf.exists(), "process-user-data wrote no apf.json");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let apf = apf.display().to_string();
    let socket = root.join("agent.sock");
    let log = root.join(if in_agent {
        "agent.log"
    } else {
        "forwarder.log"
    });
    let start = Instant::now();
    let (tls, _children) = if in_agent {
        let a = agent(
            bins.0,
            root,
            &["--front-door-config", &apf, "--front-door-listen", &listen],
        );
        (handshake(port, cfg, start, &log), vec![a])
    } else {
        let a = agent(bins.0, root, &[]);
        let f = Command::new(bins.1)
            .args(["-config", &apf, "-listen", &listen, "-kata-agent-socket"])
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("forwarder.log"))
            .spawn()
            .expect("agent-protocol-forwarder");
        let f = Killed(f);
        let tls = handshake(port, cfg, start, &log);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(start.elapsed() < Duration::from_secs(30), "no agent socket");
            std::thread::sleep(Duration::from_millis(2));
        }
        (tls, vec![a, f])
    };
    let part2 = start.elapsed();
    assert!(
        accepted(tls),
        "the front door refused the shim's certificate: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    (part1, part2)
}

fn front_door(dir: &Path) {
    let (Some(agent_bin), Some(apf_bin)) = (
        workspace_binary("kata-agent", "KATA_AGENT_BIN", "kata-agent"),
        workspace_binary("agent-protocol-forwarder", "APF_BIN", "peerpod-forwarder"),
    ) else {
        return;
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    use peerpod_tests::cvm::certs::TlsCa;
    let pki = Pki {
        server: TlsCa::generate(&["podvm"]).expect("server CA"),
        client: TlsCa::generate(&["shim"]).expect("client CA"),
    };
    let apf = format!(
        "{{\"tls-server-cert\":{:?},\"tls-server-key\":{:?},\"tls-client-ca\":{:?}}}",
        pki.server.cert_pem, pki.server.key_pem, pki.client.ca_pem
    );
    let port = serve(user_data_with(&apf), Arc::new(Mutex::new(Instant::now())));
    let url = format!("http://127.0.0.1:{port}{PATH}");
    let cfg = client_config(&pki);
    let runs = 10;
    let mut samples: [Vec<Duration>; 6] = Default::default();
    for i in 0..runs {
        for (k, in_agent) in [(0, true), (3, false)] {
            let root = dir.join(format!("{}-{i}", if in_agent { "in-agent" } else { "apf" }));
            let (p1, p2) = round(&url, &root, (&agent_bin, &apf_bin), &cfg, in_agent);
            samples[k].push(p1 + p2);
            samples[k + 1].push(p1);
            samples[k + 2].push(p2);
        }
    }
    let stat = |v: &[Duration]| {
        let min = v.iter().min().copied().unwrap_or_default();
        (median(v.to_vec()), min)
    };
    for (what, k) in [
        ("whole span (start → handshake)", 0),
        ("part 1: process-user-data, IMDS → files", 1),
        ("part 2: front door start → handshake", 2),
    ] {
        let (ours_p50, ours_min) = stat(&samples[k]);
        let (base_p50, base_min) = stat(&samples[k + 3]);
        println!(
            "C  {what}:  in-agent p50 {:.1} ms (min {:.1})  agent + forwarder p50 {:.1} ms \
             (min {:.1})  ratio {:.2}x  (p50 of {runs})",
            ms(ours_p50),
            ms(ours_min),
            ms(base_p50),
            ms(base_min),
            ours_p50.as_secs_f64() / base_p50.as_secs_f64()
        );
    }
}
