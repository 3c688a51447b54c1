//! Connections from IPv6 clients count per /64 prefix, over real sockets: in a network
//! namespace of its own (root), the test gives `lo` addresses in two /64s and connects from
//! many addresses of one of them. Without root it prints SKIPPED (a failure under CI=true).

mod common;

use std::io::Write as _;
use std::net::{IpAddr, Ipv6Addr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{BoxError, Server, TestResult};
use peerpod_webhook::mutate::MutationConfig;
use peerpod_webhook::review::Handler;
use peerpod_webhook::server::MAX_CONNECTIONS_PER_PEER;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::client::TlsStream;

/// The /64 the flood comes from.
fn flooding(host: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, host))
}

/// Another /64 (the server's and a bystander's).
fn other(host: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 2, 0, 0, 0, host))
}

/// Moves this thread into a new network namespace with `lo` up holding the test's addresses;
/// `false` (after a loud SKIPPED) without the privilege, a panic under CI=true.
fn own_network(addresses: &[IpAddr]) -> bool {
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
        let message = format!("a network namespace of its own needs root ({e})");
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "{message} (CI=true: a skip fails)"
        );
        let _ = std::io::stderr().write_all(format!("\n*** SKIPPED: {message} ***\n").as_bytes());
        return false;
    }
    // Children inherit the calling thread's namespace.
    let mut batch = String::from("link set lo up\n");
    for a in addresses {
        batch.push_str(&format!("addr add {a}/64 dev lo nodad\n"));
    }
    let mut ip = Command::new("ip")
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("ip (iproute2) runs");
    ip.stdin
        .take()
        .expect("stdin")
        .write_all(batch.as_bytes())
        .expect("ip -batch input");
    assert!(ip.wait().expect("ip exits").success(), "ip -batch failed");
    true
}

/// A TLS connection from `from` that was served one request (so it is admitted).
async fn served_from(
    server: &Server,
    config: &Arc<rustls::ClientConfig>,
    from: IpAddr,
) -> Result<TlsStream<tokio::net::TcpStream>, BoxError> {
    let tcp = common::tcp_from(server.addr, from).await?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::clone(config))
        .connect(rustls::pki_types::ServerName::try_from("localhost")?, tcp)
        .await?;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await??;
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "from {from}: {answer}");
    Ok(tls)
}

/// Which of `conns` the server has closed, waiting up to `wait` for the first.
async fn closed(conns: &mut [TlsStream<tokio::net::TcpStream>], wait: Duration) -> Vec<usize> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut out = Vec::new();
    for (i, c) in conns.iter_mut().enumerate() {
        let until = if out.is_empty() {
            deadline
        } else {
            tokio::time::Instant::now() + Duration::from_millis(5)
        };
        let mut buf = [0u8; 64];
        // End of stream or a reset: closed by the server. Bytes or no answer: open.
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout_at(until, c.read(&mut buf)).await {
            out.push(i);
        }
    }
    out
}

/// 64 connections, each from its own address of one /64, fill that prefix's cap: one more from
/// a new address of the prefix closes one of them (per address, it would have been let in
/// beside them), and one from another /64 closes none.
#[tokio::test]
async fn one_ipv6_slash_64_is_capped_whatever_addresses_it_connects_from() -> TestResult {
    let count = u16::try_from(MAX_CONNECTIONS_PER_PEER)?;
    let mut addresses: Vec<IpAddr> = (1..=count + 1).map(flooding).collect();
    addresses.extend([other(1), other(2)]);
    if !own_network(&addresses) {
        return Ok(());
    }
    let server = Server::start_at(
        &format!("[{}]:0", other(1)),
        Handler::Mutate(MutationConfig::default()),
        peerpod_webhook::tls::TlsOptions::default(),
        None,
    )
    .await;
    let config = Arc::new(server.client_config());
    let mut flood = Vec::with_capacity(MAX_CONNECTIONS_PER_PEER);
    for host in 1..=count {
        flood.push(served_from(&server, &config, flooding(host)).await?);
    }
    let _bystander = served_from(&server, &config, other(2)).await?;
    assert!(
        closed(&mut flood, Duration::from_millis(200))
            .await
            .is_empty(),
        "a connection was closed before the prefix reached its cap"
    );
    let _newcomer = served_from(&server, &config, flooding(count + 1)).await?;
    let ended = closed(&mut flood, Duration::from_secs(5)).await;
    assert_eq!(ended.len(), 1, "closed: {ended:?}");
    Ok(())
}
