//! The front door served by the agent itself (`kata-agent --front-door-config apf.json`): the
//! same TLS as the separate forwarder, and the same rewrites applied before the policy sees the
//! request — so the same requests get the same decisions through
//! `agent-protocol-forwarder` → agent socket as through the agent's own front door. A control
//! sends them to the agent's socket directly (no rewrite): there the policy decides
//! differently, so the comparison can fail.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use peerpod_protocols::kata::{agent, health, oci};

/// Allows a container only in the pod network namespace, alone; a sandbox only without DNS.
/// The prints put what the policy saw into each denial.
const POLICY: &str = r#"package agent_policy

import rego.v1

default CreateContainerRequest := false
default CreateSandboxRequest := false
default ExecProcessRequest := false
default GuestDetailsRequest := true

CreateContainerRequest if {
	nets := [ns.Path | some ns in input.OCI.Linux.Namespaces; ns.Type == "network"]
	print("network namespaces:", nets)
	nets == ["/run/netns/podns"]
}

CreateSandboxRequest if {
	print("dns:", input.dns)
	count(input.dns) == 0
}
"#;

fn container(id: &str, netns: &[&str], with_spec: bool) -> agent::CreateContainerRequest {
    let mut req = agent::CreateContainerRequest::new();
    req.container_id = id.into();
    req.exec_id = id.into();
    if with_spec {
        let mut spec = oci::Spec::new();
        let linux = spec.Linux.mut_or_insert_default();
        for (kind, path) in [("ipc", ""), ("uts", "")]
            .into_iter()
            .chain(netns.iter().map(|p| ("network", *p)))
        {
            let mut ns = oci::LinuxNamespace::new();
            ns.Type = kind.into();
            ns.Path = path.into();
            linux.Namespaces.push(ns);
        }
        req.OCI = Some(spec).into();
    }
    req
}

/// The outcome of each request: "ok" or the status code and message (paths of the agent's own
/// directory replaced, so two agents' answers compare).
async fn outcomes(
    client: &peerpod_protocols::kata::agent_ttrpc::AgentServiceClient,
    health: &peerpod_protocols::kata::health_ttrpc::HealthClient,
    dir: &Path,
) -> Vec<(String, String)> {
    let norm = |r: Result<(), ttrpc::Error>| match r {
        Ok(()) => "ok".to_owned(),
        Err(ttrpc::Error::RpcStatus(s)) => format!(
            "{:?}: {}",
            s.code(),
            s.message().replace(&dir.display().to_string(), "<dir>")
        ),
        Err(e) => format!("transport: {e}"),
    };
    let mut out = Vec::new();
    let mut sandbox = agent::CreateSandboxRequest::new();
    sandbox.dns = vec!["nameserver 10.96.0.10".into()];
    sandbox.sandbox_id = "eq".into();
    out.push((
        "CreateSandbox with DNS".to_owned(),
        norm(client.create_sandbox(ctx(), &sandbox).await.map(drop)),
    ));
    for (what, req) in [
        (
            "CreateContainer in the host netns",
            container("c1", &["/proc/1/ns/net"], true),
        ),
        (
            "CreateContainer in podns and the host netns",
            container("c2", &["/run/netns/podns", "/proc/1/ns/net"], true),
        ),
        (
            "CreateContainer without a netns",
            container("c3", &[], true),
        ),
        (
            "CreateContainer without a spec",
            container("c4", &[], false),
        ),
    ] {
        out.push((
            what.to_owned(),
            norm(client.create_container(ctx(), &req).await.map(drop)),
        ));
    }
    let mut exec = agent::ExecProcessRequest::new();
    exec.container_id = "c1".into();
    exec.exec_id = "e1".into();
    out.push((
        "ExecProcess".to_owned(),
        norm(client.exec_process(ctx(), &exec).await.map(drop)),
    ));
    out.push((
        "GuestDetails".to_owned(),
        norm(
            client
                .get_guest_details(ctx(), &agent::GuestDetailsRequest::new())
                .await
                .map(drop),
        ),
    ));
    out.push((
        "Health".to_owned(),
        norm(
            health
                .check(ctx(), &health::CheckRequest::new())
                .await
                .map(drop),
        ),
    ));
    out
}

fn wait_for_socket(socket: &Path, log: &Path) {
    let started = Instant::now();
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        assert!(
            started.elapsed() < TIMEOUT,
            "the agent never listened: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_for_port(port: u16, log: &Path) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < TIMEOUT,
            "the agent's front door never opened: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_front_door_decides_as_forwarder_then_agent() {
    let Some(bin) = kata_agent_binary() else {
        return;
    };
    let pki = Pki::new();
    let apf = pki.apf_json("");

    // Mode 1: agent-protocol-forwarder → the agent's unix socket.
    let dir_a = scratch("eq-forwarder");
    std::fs::write(dir_a.join("policy.rego"), POLICY).unwrap();
    let socket_a = dir_a.join("agent.sock");
    let _agent_a = RealAgent::launch(
        &bin,
        &dir_a,
        &format!("unix://{}", socket_a.display()),
        &format!("policy_file = '{}'\n", dir_a.join("policy.rego").display()),
        &[],
    );
    wait_for_socket(&socket_a, &dir_a.join("agent.log"));
    let forwarder = ForwarderProcess::start(&dir_a, &apf, &socket_a, &[]);

    // Mode 2: the agent's own front door.
    let dir_b = scratch("eq-in-agent");
    std::fs::write(dir_b.join("policy.rego"), POLICY).unwrap();
    std::fs::write(dir_b.join("apf.json"), &apf).unwrap();
    let socket_b = dir_b.join("agent.sock");
    let port = free_port();
    let apf_b = dir_b.join("apf.json").display().to_string();
    let listen = format!("127.0.0.1:{port}");
    let _agent_b = RealAgent::launch(
        &bin,
        &dir_b,
        &format!("unix://{}", socket_b.display()),
        &format!("policy_file = '{}'\n", dir_b.join("policy.rego").display()),
        &[
            "--front-door-config",
            &apf_b,
            "--front-door-listen",
            &listen,
        ],
    );
    wait_for_port(port, &dir_b.join("agent.log"));

    let identity = Some((pki.client.cert_pem.as_str(), pki.client.key_pem.as_str()));
    let via_forwarder = {
        let tls = tls_connect(forwarder.addr, client_config(&pki.server.ca_pem, identity))
            .await
            .unwrap();
        let (a, h) = ttrpc_clients(tls);
        outcomes(&a, &h, &dir_a).await
    };
    let in_agent = {
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        let tls = tls_connect(addr, client_config(&pki.server.ca_pem, identity))
            .await
            .unwrap();
        let (a, h) = ttrpc_clients(tls);
        outcomes(&a, &h, &dir_b).await
    };
    let log_b = std::fs::read_to_string(dir_b.join("agent.log")).unwrap_or_default();
    assert_eq!(
        via_forwarder, in_agent,
        "the same requests, different decisions; agent log: {log_b}"
    );

    // The rewrites came before the policy: what the host sent is allowed only rewritten.
    let decided = |name: &str| {
        in_agent
            .iter()
            .find(|(w, _)| w == name)
            .map(|(_, o)| o.clone())
            .unwrap()
    };
    for name in [
        "CreateSandbox with DNS",
        "CreateContainer in the host netns",
        "CreateContainer in podns and the host netns",
        "CreateContainer without a netns",
    ] {
        assert!(
            !decided(name).starts_with("PERMISSION_DENIED"),
            "{name}: {}",
            decided(name)
        );
    }
    assert!(
        decided("CreateContainer without a spec").starts_with("INVALID_ARGUMENT")
            && decided("CreateContainer without a spec").contains("no OCI spec"),
        "{}",
        decided("CreateContainer without a spec")
    );
    assert!(decided("ExecProcess").starts_with("PERMISSION_DENIED"));
    assert_eq!(decided("GuestDetails"), "ok");
    assert_eq!(decided("Health"), "ok");

    // Control: the same requests on the agent's socket, not rewritten, are decided otherwise.
    let direct = {
        let client = ttrpc::r#async::Client::connect(&format!("unix://{}", socket_b.display()))
            .await
            .unwrap();
        let a = peerpod_protocols::kata::agent_ttrpc::AgentServiceClient::new(client.clone());
        let h = peerpod_protocols::kata::health_ttrpc::HealthClient::new(client);
        outcomes(&a, &h, &dir_b).await
    };
    for (what, outcome) in &direct[..3] {
        assert!(
            outcome.starts_with("PERMISSION_DENIED"),
            "{what} without the rewrites: {outcome}"
        );
    }
    assert!(
        direct[1].1.contains("/proc/1/ns/net"),
        "the policy saw the host's namespace: {}",
        direct[1].1
    );
    assert_ne!(direct, in_agent);
    eprintln!("through the front doors: {in_agent:#?}\nstraight to the socket: {direct:#?}");
}

/// The agent's front door takes the forwarder's TLS settings: a client without a certificate,
/// or with one from another CA, is refused; nothing is served before the TLS handshake.
#[tokio::test]
async fn the_agents_front_door_requires_the_shims_certificate() {
    let Some(bin) = kata_agent_binary() else {
        return;
    };
    let pki = Pki::new();
    let dir = scratch("in-agent-tls");
    std::fs::write(dir.join("apf.json"), pki.apf_json("")).unwrap();
    let port = free_port();
    let apf = dir.join("apf.json").display().to_string();
    let listen = format!("127.0.0.1:{port}");
    let _agent = RealAgent::launch(
        &bin,
        &dir,
        &format!("unix://{}", dir.join("agent.sock").display()),
        "",
        &["--front-door-config", &apf, "--front-door-listen", &listen],
    );
    wait_for_port(port, &dir.join("agent.log"));
    let addr = listen.parse().unwrap();
    let none = tls_connect(addr, client_config(&pki.server.ca_pem, None)).await;
    assert!(none.is_err(), "a client without a certificate got in");
    let other = peerpod_tests::cvm::certs::TlsCa::generate(&["intruder"]).unwrap();
    let wrong = tls_connect(
        addr,
        client_config(&pki.server.ca_pem, Some((&other.cert_pem, &other.key_pem))),
    )
    .await;
    assert!(wrong.is_err(), "a client from another CA got in");
    let tls = tls_connect(addr, pki.shim_config()).await.unwrap();
    let (_, health) = ttrpc_clients(tls);
    health
        .check(ctx(), &health::CheckRequest::new())
        .await
        .unwrap();
}

/// A front door that cannot open (here: apf.json is not JSON) stops the agent with the cause,
/// before anything is served.
#[tokio::test]
async fn a_bad_front_door_configuration_stops_the_agent() {
    let Some(bin) = kata_agent_binary() else {
        return;
    };
    let dir = scratch("in-agent-bad");
    std::fs::write(dir.join("apf.json"), "{ not json").unwrap();
    let apf = dir.join("apf.json").display().to_string();
    let mut agent = RealAgent::launch(
        &bin,
        &dir,
        &format!("unix://{}", dir.join("agent.sock").display()),
        "",
        &[
            "--front-door-config",
            &apf,
            "--front-door-listen",
            "127.0.0.1:1",
        ],
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = agent.child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < TIMEOUT, "the agent kept running");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
    let log = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
    assert!(log.contains("the front door cannot open"), "{log}");
    assert!(log.contains("apf.json"), "{log}");
    assert!(!dir.join("agent.sock").exists(), "the agent served");
}
