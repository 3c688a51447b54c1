//! What hostile clients can hold, over the real HTTPS server: headers declaring large bodies,
//! bodies stalled part-way, and floods of connections from one address must not keep a real
//! review (the API server's) from being answered.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use common::{Conn, Server, TestResult, container, pod, review_of};
use peerpod_webhook::mutate::MutationConfig;
use peerpod_webhook::review::{Handler, MAX_REVIEW_BYTES};
use peerpod_webhook::server::{
    MAX_BODY_BYTES_IN_FLIGHT, MAX_CONNECTIONS, MAX_CONNECTIONS_PER_PEER,
};
use peerpod_webhook::tls::TlsOptions;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::client::TlsStream;

const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const API_SERVER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

async fn start() -> Server {
    Server::start(
        Handler::Mutate(MutationConfig::default()),
        TlsOptions::default(),
        None,
    )
    .await
}

fn raise_fd_limit() -> TestResult {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < 8192 {
        setrlimit(Resource::RLIMIT_NOFILE, hard.min(8192), hard)?;
    }
    Ok(())
}

/// A TLS connection from `from`, handshake done.
async fn tls_from(
    server: &Server,
    config: &Arc<rustls::ClientConfig>,
    from: IpAddr,
) -> Result<TlsStream<tokio::net::TcpStream>, common::BoxError> {
    let tcp = common::tcp_from(server.addr, from).await?;
    Ok(tokio_rustls::TlsConnector::from(Arc::clone(config))
        .connect(rustls::pki_types::ServerName::try_from("localhost")?, tcp)
        .await?)
}

/// `n` connections holding budget: each sent all but the last byte of the largest review.
async fn holders(
    server: &Server,
    config: &Arc<rustls::ClientConfig>,
    n: usize,
) -> Result<Vec<TlsStream<tokio::net::TcpStream>>, common::BoxError> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(
            stalled(
                server,
                config,
                ATTACKER,
                MAX_REVIEW_BYTES,
                MAX_REVIEW_BYTES - 1,
            )
            .await?,
        );
    }
    Ok(held)
}

/// A TLS connection from `from` that sent a review's headers declaring `declared` bytes, then
/// `sent` bytes of body, and nothing more.
async fn stalled(
    server: &Server,
    config: &Arc<rustls::ClientConfig>,
    from: IpAddr,
    declared: usize,
    sent: usize,
) -> Result<TlsStream<tokio::net::TcpStream>, common::BoxError> {
    let mut tls = tls_from(server, config, from).await?;
    tls.write_all(
        format!(
            "POST /mutate-v1-pod HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    tls.write_all(&vec![b' '; sent]).await?;
    tls.flush().await?;
    Ok(tls)
}

fn small_review() -> serde_json::Value {
    review_of(pod(
        Some("kata-remote"),
        vec![],
        vec![container("c", &[("cpu", "1")], &[])],
    ))
}

/// A keep-alive connection from `from` whose first review was answered (200); open.
async fn answered_from(server: &Server, from: IpAddr) -> Result<Conn, common::BoxError> {
    let mut conn = Conn::connect_from(server.addr, from, server.client_config()).await?;
    let reply = conn.review(&small_review()).await?;
    assert_eq!(reply.status, 200, "from {from}: {}", reply.text());
    assert_eq!(reply.json()["response"]["allowed"], true);
    Ok(conn)
}

/// What the server sent on `tls` within `wait` (empty if nothing).
async fn answer_within(tls: &mut TlsStream<tokio::net::TcpStream>, wait: Duration) -> String {
    let mut buf = [0u8; 512];
    match tokio::time::timeout(wait, tls.read(&mut buf)).await {
        Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        _ => String::new(),
    }
}

/// Decoys (headers declaring the largest body, no body) opened first, then holders (the same
/// headers and one byte) whose declared lengths add up to the whole in-flight budget: a
/// declared length reserves nothing, so a real review is answered at once.
#[tokio::test]
async fn declared_lengths_alone_cannot_hold_the_in_flight_budget() -> TestResult {
    let server = start().await;
    let config = Arc::new(server.client_config());
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(stalled(&server, &config, ATTACKER, MAX_REVIEW_BYTES, 0).await?);
    }
    let whole = MAX_BODY_BYTES_IN_FLIGHT / MAX_REVIEW_BYTES;
    for _ in 0..=whole {
        held.push(stalled(&server, &config, ATTACKER, MAX_REVIEW_BYTES, 1).await?);
    }
    let rest = MAX_BODY_BYTES_IN_FLIGHT - whole * MAX_REVIEW_BYTES;
    held.push(stalled(&server, &config, ATTACKER, rest, 1).await?);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut conn = Conn::connect_from(server.addr, API_SERVER, server.client_config()).await?;
    let started = std::time::Instant::now();
    let reply = conn.review(&small_review()).await?;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["response"]["allowed"], true);
    eprintln!(
        "a real review was answered in {:?} with {} decoys and holders open",
        started.elapsed(),
        held.len()
    );
    Ok(())
}

/// Decoys opened first, then bodies sent all but their last byte and stalled, over the
/// budget: a real review of the largest size is answered, the room coming from ending the
/// stalled bodies that hold it (HTTP 503), never the decoys (ending those frees nothing).
#[tokio::test]
async fn only_bodies_holding_budget_are_ended_for_room() -> TestResult {
    let server = start().await;
    let config = Arc::new(server.client_config());
    let mut decoys = Vec::new();
    for _ in 0..8 {
        decoys.push(stalled(&server, &config, ATTACKER, MAX_REVIEW_BYTES, 0).await?);
    }
    let mut holders = holders(
        &server,
        &config,
        MAX_BODY_BYTES_IN_FLIGHT / MAX_REVIEW_BYTES + 1,
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut review = small_review();
    review["request"]["object"]["metadata"]["annotations"]["pad"] =
        json!("x".repeat(MAX_REVIEW_BYTES - 4096));
    let mut conn = Conn::connect_from(server.addr, API_SERVER, server.client_config()).await?;
    let reply = conn.review(&review).await?;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["response"]["allowed"], true);
    // The oldest holder was ended with 503 naming why; no decoy was touched.
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), holders[0].read(&mut answer)).await??;
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("dropped to make room"), "{answer}");
    // (A decoy may have reached its body timeout on a slow machine: 408, not 503.)
    for decoy in &mut decoys {
        let answer = answer_within(decoy, Duration::from_millis(20)).await;
        assert!(
            !answer.starts_with("HTTP/1.1 503"),
            "a decoy holding no budget was ended: {answer}"
        );
    }
    Ok(())
}

/// [`MAX_CONNECTIONS`] connections from [`ATTACKER`], each with a review's headers and `sent`
/// bytes of its body sent; then, after `pause`, a review from each of `newcomers` is answered.
async fn flood_then_answered(sent: usize, pause: Duration, newcomers: [IpAddr; 2]) -> TestResult {
    raise_fd_limit()?;
    let server = start().await;
    let config = Arc::new(server.client_config());
    let mut flood = Vec::with_capacity(MAX_CONNECTIONS);
    for _ in 0..MAX_CONNECTIONS {
        flood.push(stalled(&server, &config, ATTACKER, 1000, sent).await?);
    }
    tokio::time::sleep(pause).await;
    for from in newcomers {
        answered_from(&server, from).await?;
    }
    Ok(())
}

/// As many connections as the server serves, all from one address, each with a review's
/// headers sent and no body: a real client from another address is answered, and so is a
/// newcomer from the flooding address (it ends one of that address's own stalled ones).
#[tokio::test]
async fn header_only_connections_from_one_address_cannot_keep_a_real_client_out() -> TestResult {
    flood_then_answered(0, Duration::ZERO, [API_SERVER, ATTACKER]).await
}

/// The same with bodies begun and then stalled (one byte sent): past the stall allowance
/// they may be ended for a newcomer from their address.
#[tokio::test]
async fn stalled_bodies_from_one_address_cannot_keep_its_newcomers_out() -> TestResult {
    flood_then_answered(
        1,
        peerpod_webhook::server::EVICT_AFTER * 2,
        [ATTACKER, API_SERVER],
    )
    .await
}

/// The API server's keep-alive connection, idle between reviews, survives a flood of idle
/// connections from another address larger than the server's connection cap.
#[tokio::test]
async fn a_flood_from_one_address_does_not_close_another_address_s_keep_alive() -> TestResult {
    raise_fd_limit()?;
    let server = start().await;
    let mut api = answered_from(&server, API_SERVER).await?;
    let config = Arc::new(server.client_config());
    let mut flood = Vec::with_capacity(MAX_CONNECTIONS + 64);
    for _ in 0..MAX_CONNECTIONS + 64 {
        flood.push(tls_from(&server, &config, ATTACKER).await?);
    }
    let reply = api.review(&small_review()).await?;
    assert_eq!(reply.status, 200, "{}", reply.text());
    Ok(())
}

/// The API server's keep-alive, idle longest of all, survives a flood from 17 addresses that
/// fills every connection slot (64 from each, each connection served a request so that it
/// was admitted before the next): the connections ended for the newcomers are the flooding
/// addresses' own, those holding the most.
#[tokio::test]
async fn a_flood_from_many_addresses_does_not_close_a_lone_keep_alive() -> TestResult {
    raise_fd_limit()?;
    let server = start().await;
    let mut api = answered_from(&server, API_SERVER).await?;
    let config = Arc::new(server.client_config());
    let addresses = MAX_CONNECTIONS / MAX_CONNECTIONS_PER_PEER + 1;
    let mut flood = Vec::with_capacity(addresses * MAX_CONNECTIONS_PER_PEER);
    for a in 0..addresses {
        let from = IpAddr::V4(Ipv4Addr::new(127, 0, 1, u8::try_from(a)?));
        for _ in 0..MAX_CONNECTIONS_PER_PEER {
            let mut tls = tls_from(&server, &config, from).await?;
            tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .await?;
            let answer = answer_within(&mut tls, Duration::from_secs(10)).await;
            assert!(answer.starts_with("HTTP/1.1 200"), "from {from}: {answer}");
            flood.push(tls);
        }
    }
    let reply = api.review(&small_review()).await?;
    assert_eq!(reply.status, 200, "{}", reply.text());
    Ok(())
}

/// A body whose bytes keep coming (older than the stalled ones) is not the one ended for room
/// while stalled bodies hold budget: those go first.
#[tokio::test]
async fn stalled_bodies_are_ended_before_one_still_arriving() -> TestResult {
    let server = start().await;
    let config = Arc::new(server.client_config());
    let mut arriving = stalled(
        &server,
        &config,
        ATTACKER,
        MAX_REVIEW_BYTES,
        // Its buffer is then 1 MiB, which the trickle below (60 bytes) does not outgrow.
        MAX_BODY_BYTES_IN_FLIGHT / 16 - 100,
    )
    .await?;
    let trickle = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let mut buf = [0u8; 512];
        while started.elapsed() < Duration::from_secs(3) {
            tokio::select! {
                n = arriving.read(&mut buf) => {
                    return n.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned()).unwrap_or_default();
                }
                _ = tokio::time::sleep(Duration::from_millis(50)) => {
                    if arriving.write_all(b" ").await.is_err() || arriving.flush().await.is_err() {
                        return "write failed".to_owned();
                    }
                }
            }
        }
        String::new()
    });
    let mut holders = holders(
        &server,
        &config,
        MAX_BODY_BYTES_IN_FLIGHT / MAX_REVIEW_BYTES,
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut review = small_review();
    review["request"]["object"]["metadata"]["annotations"]["pad"] =
        json!("x".repeat(MAX_REVIEW_BYTES / 2));
    let mut conn = Conn::connect_from(server.addr, API_SERVER, server.client_config()).await?;
    let reply = conn.review(&review).await?;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let answer = trickle.await?;
    assert!(
        answer.is_empty(),
        "the body still arriving was answered: {answer}"
    );
    let answer = answer_within(&mut holders[0], Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    Ok(())
}
