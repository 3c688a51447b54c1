//! Per-RPC latency added by the front door: `grpc.Health/Check` round trips from a shim-side
//! ttrpc client through the forwarder (TCP + mTLS, and plain TCP) and through the agent's own
//! front door (`kata-agent --front-door-config`, TCP + mTLS and plain TCP: no extra hop)
//! against the same client directly on the agent's unix socket, in the same run, alternating
//! in rounds.
//!
//! The agent is the real `kata-agent` when its binary is found (`KATA_AGENT_BIN`, else
//! `target/release/kata-agent`, else `target/debug/kata-agent`), and a stand-in ttrpc server
//! (the same ttrpc server code, answering Check) otherwise; the figures say which. The
//! forwarder runs in this process, built with the bench profile.
#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use peerpod_forwarder::config::TlsSettings;
use peerpod_forwarder::proxy::Forwarder;
use peerpod_forwarder::rewrite::Rewriter;
use peerpod_forwarder::tls::{TlsFlags, server_config};
use peerpod_protocols::kata::{health, health_ttrpc};
use peerpod_tests::bench::{ms, percentile};

const ROUNDS: usize = 10;
const PER_ROUND: usize = 500;

async fn time_calls(client: &health_ttrpc::HealthClient, n: usize, out: &mut Vec<Duration>) {
    let req = health::CheckRequest::new();
    for _ in 0..n {
        let t = Instant::now();
        client.check(ctx(), &req).await.unwrap();
        out.push(t.elapsed());
    }
}

async fn connect_health(addr: &str) -> health_ttrpc::HealthClient {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Ok(c) = ttrpc::r#async::Client::connect(addr).await {
            let h = health_ttrpc::HealthClient::new(c);
            if h.check(ctx(), &health::CheckRequest::new()).await.is_ok() {
                return h;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the agent at {addr} did not answer"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn agent_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KATA_AGENT_BIN") {
        return Some(PathBuf::from(p));
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
    ["release/kata-agent", "debug/kata-agent"]
        .iter()
        .map(|p| root.join(p))
        .find(|p| p.is_file())
}

fn report(name: &str, samples: &mut [Duration], base_p50: f64, base_mean: f64) -> (f64, f64) {
    let mean = ms(samples.iter().sum::<Duration>()) / samples.len() as f64;
    let p50 = ms(percentile(samples, 0.5));
    let p99 = ms(percentile(samples, 0.99));
    if base_p50 > 0.0 {
        println!(
            "{name:<34} p50 {:>7.1} us  p99 {:>7.1} us  mean {:>7.1} us  p50 x{:.3} (+{:.1} us)  mean x{:.3}",
            p50 * 1e3,
            p99 * 1e3,
            mean * 1e3,
            p50 / base_p50,
            (p50 - base_p50) * 1e3,
            mean / base_mean
        );
    } else {
        println!(
            "{name:<34} p50 {:>7.1} us  p99 {:>7.1} us  mean {:>7.1} us  (baseline)",
            p50 * 1e3,
            p99 * 1e3,
            mean * 1e3
        );
    }
    (p50, mean)
}

fn main() {
    install_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = scratch("bench");
        let tcp_port = free_port();
        let pki = Pki::new();
        let (in_agent_tls_port, in_agent_plain_port) = (free_port(), free_port());
        let (agent_kind, socket, real, _stand_in) = match agent_binary() {
            Some(bin) => {
                // Two agents serving the front door themselves (mTLS, and plain TCP).
                let apf = dir.join("apf.json");
                std::fs::write(&apf, pki.apf_json("")).unwrap();
                let apf = apf.display().to_string();
                let in_agent = [
                    ("in-agent-tls", in_agent_tls_port, false),
                    ("in-agent-plain", in_agent_plain_port, true),
                ]
                .map(|(name, port, plain)| {
                    let sub = dir.join(name);
                    let listen = format!("127.0.0.1:{port}");
                    let mut args =
                        vec!["--front-door-config", &apf, "--front-door-listen", &listen];
                    if plain {
                        args.push("--front-door-disable-tls");
                    }
                    RealAgent::launch(
                        &bin,
                        &sub,
                        &format!("unix://{}", sub.join("agent.sock").display()),
                        "",
                        &args,
                    )
                });
                let agent = RealAgent::start(&bin, &dir);
                // A second agent on TCP: what a shim would see with no forwarder at all.
                let on_tcp = RealAgent::start_on(
                    &bin,
                    &dir.join("tcp"),
                    &format!("tcp://127.0.0.1:{tcp_port}"),
                );
                let socket = agent.socket.clone();
                (
                    format!("kata-agent ({})", bin.display()),
                    socket,
                    Some((agent, on_tcp, in_agent)),
                    None,
                )
            }
            None => {
                let socket = dir.join("agent.sock");
                let s = stand_in(&socket).await;
                ("stand-in ttrpc agent".to_owned(), socket, None, Some(s))
            }
        };
        let direct = connect_health(&format!("unix://{}", socket.display())).await;
        let direct_tcp = match &real {
            Some(_) => Some(connect_health(&format!("tcp://127.0.0.1:{tcp_port}")).await),
            None => None,
        };

        let settings = TlsSettings {
            server_cert: Some(pki.server.cert_pem.clone()),
            server_key: Some(pki.server.key_pem.clone()),
            client_ca: Some(pki.client.ca_pem.clone()),
            ..TlsSettings::default()
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(
            server_config(&settings, &TlsFlags::default()).unwrap(),
        ));
        let forwarder = Arc::new(Forwarder::new(Rewriter::default(), socket.clone(), TIMEOUT));
        let tls_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tls_addr = tls_listener.local_addr().unwrap();
        let plain_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let plain_addr = plain_listener.local_addr().unwrap();
        tokio::spawn(peerpod_forwarder::server::serve(
            tls_listener,
            Some(acceptor),
            Arc::clone(&forwarder),
            std::future::pending(),
        ));
        tokio::spawn(peerpod_forwarder::server::serve(
            plain_listener,
            None,
            Arc::clone(&forwarder),
            std::future::pending(),
        ));
        let cfg = pki.shim_config();
        let (_, via_tls) = ttrpc_clients(tls_connect(tls_addr, cfg).await.unwrap());
        let tcp = tokio::net::TcpStream::connect(plain_addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let (_, via_tcp) = ttrpc_clients(tcp);
        let in_agent = match &real {
            Some(_) => {
                let deadline = Instant::now() + TIMEOUT;
                while std::net::TcpStream::connect(("127.0.0.1", in_agent_tls_port)).is_err()
                    || std::net::TcpStream::connect(("127.0.0.1", in_agent_plain_port)).is_err()
                {
                    assert!(
                        Instant::now() < deadline,
                        "the agents' front doors did not open"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let cfg = pki.shim_config();
                let tls_addr = format!("127.0.0.1:{in_agent_tls_port}").parse().unwrap();
                let (_, tls) = ttrpc_clients(tls_connect(tls_addr, cfg).await.unwrap());
                let tcp = tokio::net::TcpStream::connect(("127.0.0.1", in_agent_plain_port))
                    .await
                    .unwrap();
                tcp.set_nodelay(true).unwrap();
                let (_, plain) = ttrpc_clients(tcp);
                Some((tls, plain))
            }
            None => None,
        };

        // Warm-up, then rounds that alternate the three paths.
        let mut scratch_samples = Vec::new();
        for c in [&direct, &via_tls, &via_tcp] {
            time_calls(c, 200, &mut scratch_samples).await;
        }
        if let Some((tls, plain)) = &in_agent {
            time_calls(tls, 200, &mut scratch_samples).await;
            time_calls(plain, 200, &mut scratch_samples).await;
        }
        let (mut d, mut t, mut p, mut dt) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut it, mut ip) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            time_calls(&direct, PER_ROUND, &mut d).await;
            time_calls(&via_tls, PER_ROUND, &mut t).await;
            time_calls(&via_tcp, PER_ROUND, &mut p).await;
            if let Some(c) = &direct_tcp {
                time_calls(c, PER_ROUND, &mut dt).await;
            }
            if let Some((tls, plain)) = &in_agent {
                time_calls(tls, PER_ROUND, &mut it).await;
                time_calls(plain, PER_ROUND, &mut ip).await;
            }
        }
        println!(
            "Health/Check round trips, {} each, agent: {agent_kind}",
            ROUNDS * PER_ROUND
        );
        let (bp50, bmean) = report("direct on the agent's unix socket", &mut d, 0.0, 0.0);
        report("through the forwarder, TCP + mTLS", &mut t, bp50, bmean);
        report("through the forwarder, plain TCP", &mut p, bp50, bmean);
        if !dt.is_empty() {
            report("agent itself on TCP (no forwarder)", &mut dt, bp50, bmean);
        }
        if !it.is_empty() {
            report("agent's front door, TCP + mTLS", &mut it, bp50, bmean);
            report("agent's front door, plain TCP", &mut ip, bp50, bmean);
        } else {
            println!("(no kata-agent binary: the agent's own front door is not measured)");
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
}
