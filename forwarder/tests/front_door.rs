//! The front door end to end: the `agent-protocol-forwarder` binary on TCP with mTLS, a
//! shim-side ttrpc client, and behind it the real kata-agent or a stand-in agent that records
//! what reaches it.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use peerpod_protocols::kata::{agent, health, oci};
use protobuf::Message as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

#[tokio::test]
async fn shim_with_certificate_reaches_the_real_agent() {
    let Some(bin) = kata_agent_binary() else {
        return;
    };
    let dir = scratch("real-agent");
    let _agent = RealAgent::start(&bin, &dir);
    let pki = Pki::new();
    let fwd = ForwarderProcess::start(&dir, &pki.apf_json(""), &dir.join("agent.sock"), &[]);
    let cfg = pki.shim_config();
    let tls = tls_connect(fwd.addr, cfg).await.unwrap();
    let (_agent_client, health_client) = ttrpc_clients(tls);
    let reply = health_client
        .check(ctx(), &health::CheckRequest::new())
        .await
        .unwrap();
    assert_eq!(
        reply.status.enum_value_or_default(),
        health::health_check_response::ServingStatus::SERVING
    );
    let version = health_client
        .version(ctx(), &health::CheckRequest::new())
        .await
        .unwrap();
    assert!(
        !version.agent_version.is_empty(),
        "the real agent answered Version"
    );
    let log = fwd.stop();
    assert!(log.contains("agent-protocol-forwarder serving"), "{log}");
}

#[tokio::test]
async fn clients_without_a_certificate_or_from_another_ca_are_refused() {
    let Fronted {
        fwd,
        stand_in,
        pki,
        server: _server,
    } = fronted("refused").await;

    let no_cert = client_config(&pki.server.ca_pem, None);
    let Err(err) = tls_connect(fwd.addr, no_cert).await else {
        panic!("a client without a certificate was let in");
    };
    assert!(!err.is_empty());

    let stranger = Pki::new();
    let wrong_ca = client_config(
        &pki.server.ca_pem,
        Some((&stranger.client.cert_pem, &stranger.client.key_pem)),
    );
    let Err(err) = tls_connect(fwd.addr, wrong_ca).await else {
        panic!("a client from another CA was let in");
    };
    assert!(!err.is_empty());

    // The right client still gets through, so the refusals were about the certificates.
    let ok = pki.shim_config();
    let (_, health_client) = ttrpc_clients(tls_connect(fwd.addr, ok).await.unwrap());
    health_client
        .check(ctx(), &health::CheckRequest::new())
        .await
        .unwrap();

    let log = fwd.stop();
    assert!(log.contains("error=peer sent no certificates"), "{log}");
    assert!(log.contains("error=invalid peer certificate"), "{log}");
    assert!(stand_in.recorded.lock().unwrap().containers.is_empty());
}

/// A ClientHello for `version` (no supported_versions extension, so TLS 1.3 is not offered)
/// with suites, groups and signature schemes the forwarder supports for TLS 1.2.
fn client_hello(version: [u8; 2]) -> Vec<u8> {
    let mut body = version.to_vec();
    body.extend_from_slice(&[0x42; 32]);
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x04, 0xC0, 0x2B, 0xC0, 0x2F]);
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let mut ext = Vec::new();
    for (kind, data) in [
        (0x000Du16, vec![0x00, 0x04, 0x04, 0x03, 0x08, 0x04]),
        (0x000A, vec![0x00, 0x04, 0x00, 0x1D, 0x00, 0x17]),
        (0x000B, vec![0x01, 0x00]),
    ] {
        ext.extend_from_slice(&kind.to_be_bytes());
        ext.extend_from_slice(&(data.len() as u16).to_be_bytes());
        ext.extend_from_slice(&data);
    }
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![0x01, 0x00, (body.len() >> 8) as u8, body.len() as u8];
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01, (hs.len() >> 8) as u8, hs.len() as u8];
    record.extend_from_slice(&hs);
    record
}

async fn first_reply(addr: std::net::SocketAddr, hello: &[u8]) -> Vec<u8> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(hello).await.unwrap();
    let mut reply = vec![0u8; 7];
    let _ = tokio::time::timeout(TIMEOUT, tcp.read_exact(&mut reply)).await;
    reply
}

#[tokio::test]
async fn a_tls_1_1_client_is_refused() {
    let Fronted {
        fwd,
        stand_in: _stand_in,
        pki: _,
        server: _server,
    } = fronted("tls11").await;
    // The same hello as TLS 1.2 gets a ServerHello (a handshake record, 22) ...
    let reply = first_reply(fwd.addr, &client_hello([3, 3])).await;
    assert_eq!(
        reply.first(),
        Some(&22),
        "TLS 1.2 control, reply {reply:02x?}"
    );
    // ... and as TLS 1.1 an alert record (21), fatal, and no ServerHello.
    let reply = first_reply(fwd.addr, &client_hello([3, 2])).await;
    assert_eq!(reply.first(), Some(&21), "TLS 1.1, reply {reply:02x?}");
    assert_eq!(reply.get(5), Some(&2), "a fatal alert, got {reply:02x?}");
    let log = fwd.stop();
    assert!(
        log.contains("error=peer is incompatible: Tls12NotOffered"),
        "{log}"
    );
}

#[tokio::test]
async fn create_container_joins_the_pod_netns_and_create_sandbox_loses_dns() {
    let Fronted {
        fwd,
        stand_in,
        pki,
        server: _server,
    } = fronted("rewrite").await;
    let cfg = pki.shim_config();
    let (agent_client, _) = ttrpc_clients(tls_connect(fwd.addr, cfg).await.unwrap());

    let mut sandbox = agent::CreateSandboxRequest::new();
    sandbox.hostname = "pod".into();
    sandbox.dns = vec!["nameserver 10.96.0.10".into(), "search default.svc".into()];
    agent_client.create_sandbox(ctx(), &sandbox).await.unwrap();

    let mut req = agent::CreateContainerRequest::new();
    req.container_id = "c1".into();
    let mut spec = oci::Spec::new();
    let mut linux = oci::Linux::new();
    let mut hostile = oci::LinuxNamespace::new();
    hostile.Type = "network".into();
    hostile.Path = "/proc/1/ns/net".into();
    linux.Namespaces.push(hostile);
    let mut pid = oci::LinuxNamespace::new();
    pid.Type = "pid".into();
    linux.Namespaces.push(pid);
    spec.Linux = Some(linux).into();
    spec.Hostname = "pod".into();
    req.OCI = Some(spec).into();
    agent_client.create_container(ctx(), &req).await.unwrap();

    let rec = stand_in.recorded.lock().unwrap();
    assert_eq!(rec.sandboxes.len(), 1);
    assert!(rec.sandboxes[0].dns.is_empty(), "DNS reached the agent");
    assert_eq!(rec.sandboxes[0].hostname, "pod");
    assert_eq!(rec.containers.len(), 1);
    let got = &rec.containers[0];
    let ns: Vec<_> = got
        .OCI
        .Linux
        .Namespaces
        .iter()
        .map(|n| (n.Type.as_str(), n.Path.as_str()))
        .collect();
    assert_eq!(ns, [("pid", ""), ("network", "/run/netns/podns")]);
    assert_eq!(got.OCI.Hostname, "pod", "the rest of the request is intact");
}

#[tokio::test]
async fn concurrent_requests_on_one_connection_stay_concurrent() {
    let Fronted {
        fwd,
        stand_in: _stand_in,
        pki,
        server: _server,
    } = fronted("mux").await;
    let cfg = pki.shim_config();
    let (agent_client, health_client) = ttrpc_clients(tls_connect(fwd.addr, cfg).await.unwrap());
    let mut slow_req = agent::StartContainerRequest::new();
    slow_req.container_id = "slow".into();
    let slow = agent_client.start_container(ctx(), &slow_req);
    tokio::pin!(slow);
    // The stand-in holds "slow" for 500 ms; ten Checks sent after it must all come back first.
    let checks = async {
        for _ in 0..10 {
            health_client
                .check(ctx(), &health::CheckRequest::new())
                .await
                .unwrap();
        }
    };
    tokio::select! {
        biased;
        r = &mut slow => panic!("the slow request finished first: {r:?}"),
        () = checks => {}
    }
    slow.await.unwrap();
}

fn raw_request(stream_id: u32, method: &str, payload: Vec<u8>) -> Vec<u8> {
    let mut r = ttrpc::Request::new();
    r.service = "grpc.AgentService".into();
    r.method = method.into();
    r.payload = payload;
    let body = r.write_to_bytes().unwrap();
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&body);
    out
}

#[tokio::test]
async fn hostile_frames_close_the_connection_with_a_clear_log() {
    let Fronted {
        fwd,
        stand_in,
        pki,
        server: _server,
    } = fronted("hostile").await;
    let cfg = || pki.shim_config();

    // A frame announcing 4 MiB + 1: closed before any payload is read.
    let mut tls = tls_connect(fwd.addr, cfg()).await.unwrap();
    let mut frame = ((4u32 << 20) + 1).to_be_bytes().to_vec();
    frame.extend_from_slice(&[0, 0, 0, 1, 1, 0]);
    tls.write_all(&frame).await.unwrap();
    tls.flush().await.unwrap();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(TIMEOUT, tls.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(n.is_err() || rest.is_empty(), "no answer, just a close");

    // A frame of a type ttrpc does not define.
    let mut tls = tls_connect(fwd.addr, cfg()).await.unwrap();
    tls.write_all(&[0, 0, 0, 1, 0, 0, 0, 3, 9, 0, 0])
        .await
        .unwrap();
    tls.flush().await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(TIMEOUT, tls.read_to_end(&mut rest))
        .await
        .unwrap();

    // A CreateContainer whose body is garbage: answered INVALID_ARGUMENT on its stream, not
    // forwarded (it could not get the pod namespace).
    let mut tls = tls_connect(fwd.addr, cfg()).await.unwrap();
    tls.write_all(&raw_request(5, "CreateContainer", vec![0xFF, 0xFF, 0xFF]))
        .await
        .unwrap();
    tls.flush().await.unwrap();
    let mut header = [0u8; 10];
    tokio::time::timeout(TIMEOUT, tls.read_exact(&mut header))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        u32::from_be_bytes([header[4], header[5], header[6], header[7]]),
        5
    );
    assert_eq!(header[8], 2, "a response");
    let mut body =
        vec![0u8; u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize];
    tls.read_exact(&mut body).await.unwrap();
    let response = ttrpc::Response::parse_from_bytes(&body).unwrap();
    assert_eq!(
        response.status.code.enum_value_or_default(),
        ttrpc::Code::INVALID_ARGUMENT
    );
    assert!(
        response
            .status
            .message
            .contains("CreateContainer request does not decode"),
        "{}",
        response.status.message
    );
    drop(tls);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let log = fwd.stop();
    assert!(
        log.contains("a frame of 4194305 bytes on stream 1 is over ttrpc's 4194304-byte limit"),
        "{log}"
    );
    assert!(
        log.contains("has message type 9, which ttrpc does not define"),
        "{log}"
    );
    assert!(log.contains("request refused, not forwarded"), "{log}");
    assert!(
        stand_in.recorded.lock().unwrap().containers.is_empty(),
        "nothing reached the agent"
    );
}

#[tokio::test]
async fn the_port_opens_only_once_the_agent_listens() {
    let dir = scratch("wait-agent");
    let socket = dir.join("agent.sock");
    let pki = Pki::new();
    std::fs::write(dir.join("apf.json"), pki.apf_json("")).unwrap();
    let port = free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_agent-protocol-forwarder"))
        .args(["-config", &dir.join("apf.json").display().to_string()])
        .args(["-listen", &format!("127.0.0.1:{port}")])
        .args(["-kata-agent-socket", &socket.display().to_string()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "served before the agent was up"
    );
    let (_server, _s) = stand_in(&socket).await;
    let deadline = std::time::Instant::now() + TIMEOUT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "never served after the agent came up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn a_pod_network_that_cannot_be_set_up_means_nothing_is_served() {
    let dir = scratch("no-podns");
    let socket = dir.join("agent.sock");
    let (_server, _s) = stand_in(&socket).await;
    let pki = Pki::new();
    let net = r#""pod-network": {"tunnel-type": "vxlan", "podip": "10.244.9.5/24", "interface": "eth0", "worker-node-ip": "192.0.2.1/24", "vxlan-id": 555999}, "#;
    std::fs::write(dir.join("apf.json"), pki.apf_json(net)).unwrap();
    let port = free_port();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agent-protocol-forwarder"))
        .args(["-config", &dir.join("apf.json").display().to_string()])
        .args(["-listen", &format!("127.0.0.1:{port}")])
        .args(["-kata-agent-socket", &socket.display().to_string()])
        .args([
            "-pod-namespace",
            &dir.join("missing-podns").display().to_string(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the pod network cannot be set up"),
        "{stderr}"
    );
    assert!(
        stderr.contains("ip netns add"),
        "the fix is named: {stderr}"
    );
}

#[test]
fn upstream_flag_spellings_are_accepted() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agent-protocol-forwarder"))
        .args(["-version"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("agent-protocol-forwarder"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agent-protocol-forwarder"))
        .args([
            "-config=/nonexistent/apf.json",
            "-disable-tls",
            "-listen",
            "127.0.0.1:1",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/apf.json"), "{stderr}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agent-protocol-forwarder"))
        .args(["-secure-comms"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not supported"));
}

#[tokio::test]
async fn systemd_hears_ready_only_once_the_port_accepts() {
    let dir = scratch("notify");
    let socket = dir.join("agent.sock");
    let (_server, _s) = stand_in(&socket).await;
    let pki = Pki::new();
    std::fs::write(dir.join("apf.json"), pki.apf_json("")).unwrap();
    let notify = std::os::unix::net::UnixDatagram::bind(dir.join("notify.sock")).unwrap();
    notify.set_read_timeout(Some(TIMEOUT)).unwrap();
    let port = free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_agent-protocol-forwarder"))
        .args(["-config", &dir.join("apf.json").display().to_string()])
        .args(["-listen", &format!("127.0.0.1:{port}")])
        .args(["-kata-agent-socket", &socket.display().to_string()])
        .env("NOTIFY_SOCKET", dir.join("notify.sock"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 64];
    let n = notify.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "READY=1 came before the port accepted"
    );
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let n = notify.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
    let status = child.wait().unwrap();
    assert!(status.success(), "a clean exit on SIGTERM: {status}");
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// 2,000 raw TCP connections that never send a ClientHello: the front door's descriptors stay
/// bounded (at most `MAX_HANDSHAKES` pending handshakes) and a real shim still gets its Check
/// answered at once, not after the flood's 10 s handshake timeouts.
#[tokio::test]
async fn a_flood_of_silent_connections_keeps_fds_bounded_and_the_shim_gets_in() {
    let Fronted {
        fwd,
        stand_in: _stand_in,
        pki,
        server: _server,
    } = fronted("flood").await;
    let pid = fwd.child.id();
    // Room for the flood on this side (a 1024 soft limit is common).
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < 4096 {
        setrlimit(Resource::RLIMIT_NOFILE, hard.min(4096), hard).unwrap();
    }
    let before = fd_count(pid);
    let mut flood = Vec::new();
    for _ in 0..2000 {
        flood.push(tokio::net::TcpStream::connect(fwd.addr).await.unwrap());
    }
    // Let the front door accept them all.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = fd_count(pid);
    assert!(
        during <= before + peerpod_forwarder::server::MAX_HANDSHAKES + 16,
        "{during} descriptors open with the flood (before: {before})"
    );
    let cfg = pki.shim_config();
    let checked = tokio::time::timeout(Duration::from_secs(5), async {
        let (_agent_client, health_client) =
            ttrpc_clients(tls_connect(fwd.addr, cfg).await.unwrap());
        health_client
            .check(ctx(), &health::CheckRequest::new())
            .await
    })
    .await
    .expect("the Check came back while the flood held its connections");
    assert_eq!(
        checked.unwrap().status.enum_value_or_default(),
        health::health_check_response::ServingStatus::SERVING
    );
    drop(flood);
    let log = fwd.stop();
    assert!(log.contains("newer connections were waiting"), "{log}");
}

/// Authenticated connections are capped too: with the cap reached, one more is closed (its
/// Check fails at once); once one ends, a new one is served. (The listener in-process, with a
/// cap of 4 instead of `MAX_CONNECTIONS`, so the test does not spend its time in handshakes.)
#[tokio::test]
async fn served_connections_are_capped() {
    use peerpod_forwarder::config::TlsSettings;
    use peerpod_forwarder::proxy::Forwarder;
    use peerpod_forwarder::rewrite::Rewriter;
    use peerpod_forwarder::server::{Limits, serve_with_limits};
    use peerpod_forwarder::tls::{TlsFlags, server_config};
    use std::sync::Arc;
    const CAP: usize = 4;
    let dir = scratch("conn-cap");
    let socket = dir.join("agent.sock");
    let (_server, _stand_in) = stand_in(&socket).await;
    let pki = Pki::new();
    let settings = TlsSettings {
        server_cert: Some(pki.server.cert_pem.clone()),
        server_key: Some(pki.server.key_pem.clone()),
        client_ca: Some(pki.client.ca_pem.clone()),
        ..TlsSettings::default()
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(
        server_config(&settings, &TlsFlags::default()).unwrap(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let forwarder = Arc::new(Forwarder::new(Rewriter::default(), socket.clone(), TIMEOUT));
    let limits = Limits {
        connections: CAP,
        ..Limits::default()
    };
    tokio::spawn(serve_with_limits(
        listener,
        Some(acceptor),
        forwarder,
        std::future::pending(),
        limits,
    ));
    let cfg = pki.shim_config();
    let mut held = Vec::new();
    for _ in 0..CAP {
        let (a, h) = ttrpc_clients(tls_connect(addr, cfg.clone()).await.unwrap());
        h.check(ctx(), &health::CheckRequest::new()).await.unwrap();
        held.push((a, h));
    }
    let one_more = async {
        let (_a, h) = ttrpc_clients(tls_connect(addr, cfg.clone()).await?);
        h.check(ctx(), &health::CheckRequest::new())
            .await
            .map_err(|e| e.to_string())
    };
    let refused = tokio::time::timeout(Duration::from_secs(5), one_more)
        .await
        .expect("the connection over the cap is closed at once");
    assert!(refused.is_err(), "served over the cap: {refused:?}");
    held.pop();
    // The front door notices the closed connection and frees its place.
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let (_a, h) = ttrpc_clients(tls_connect(addr, cfg.clone()).await.unwrap());
        if h.check(ctx(), &health::CheckRequest::new()).await.is_ok() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never served again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The separate forwarder answers a request over 4 MiB once rewritten exactly as the in-agent
/// dispatch does (tests/dispatch.rs), and forwards nothing.
#[tokio::test]
async fn a_request_over_4_mib_once_rewritten_is_refused_with_the_in_agent_status() {
    let Fronted {
        fwd,
        stand_in,
        pki,
        server: _server,
    } = fronted("rewrite-4mib").await;
    let cfg = pki.shim_config();
    let mut tls = tls_connect(fwd.addr, cfg).await.unwrap();
    let body = create_container_just_under_the_limit();
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&[0, 0, 0, 7, 1, 0]);
    frame.extend_from_slice(&body);
    tls.write_all(&frame).await.unwrap();
    tls.flush().await.unwrap();
    let mut header = [0u8; 10];
    tokio::time::timeout(TIMEOUT, tls.read_exact(&mut header))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(u32::from_be_bytes(header[4..8].try_into().unwrap()), 7);
    let mut answer = vec![0u8; u32::from_be_bytes(header[0..4].try_into().unwrap()) as usize];
    tls.read_exact(&mut answer).await.unwrap();
    let answer = ttrpc::Response::parse_from_bytes(&answer).unwrap();
    let status = answer.status.as_ref().cloned().unwrap_or_default();
    assert_eq!(status.code(), ttrpc::Code::INVALID_ARGUMENT);
    assert_eq!(
        status.message(),
        format!(
            "agent-protocol-forwarder: {}",
            peerpod_forwarder::rewrite::REWRITTEN_TOO_LARGE
        )
    );
    assert!(stand_in.recorded.lock().unwrap().containers.is_empty());
}
