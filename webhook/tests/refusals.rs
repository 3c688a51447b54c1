//! What the webhook refuses, over the real HTTPS server: malformed reviews get HTTP 400 with
//! the reason; well-formed reviews of pods that cannot be mutated are denied (code 400, the
//! reason) so the API server refuses the pod; nothing hostile comes back unescaped.

mod common;

use common::{Conn, Server, TestResult, container, pod, review_of};
use peerpod_webhook::mutate::MutationConfig;
use peerpod_webhook::review::{Handler, MAX_REVIEW_BYTES};
use peerpod_webhook::tls::TlsOptions;
use serde_json::{Value, json};

async fn setup() -> Result<(Server, Conn), common::BoxError> {
    let server = Server::start(
        Handler::Mutate(MutationConfig::default()),
        TlsOptions::default(),
        None,
    )
    .await;
    let conn = Conn::connect(server.addr, server.client_config()).await?;
    Ok((server, conn))
}

async fn bad_request(
    conn: &mut Conn,
    body: Vec<u8>,
    content_type: &str,
) -> Result<String, common::BoxError> {
    let reply = conn
        .send("POST", "/mutate-v1-pod", Some(content_type), body)
        .await?;
    assert_eq!(reply.status, 400, "{}", reply.text());
    Ok(reply.text())
}

#[tokio::test]
async fn malformed_reviews_get_400_with_the_reason() -> TestResult {
    let (_server, mut conn) = setup().await?;
    let json = "application/json";
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (vec![], json, "the request body is empty"),
        (b"{not json".to_vec(), json, "not an AdmissionReview"),
        (b"[]".to_vec(), json, "not an AdmissionReview"),
        (
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
            json,
            "has no request",
        ),
        (
            br#"{"apiVersion":"v1","kind":"Pod","request":null}"#.to_vec(),
            json,
            "expected kind AdmissionReview",
        ),
        (
            serde_json::to_vec(&json!({
                "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "request": {"uid": 7}
            }))?,
            json,
            "not an AdmissionReview",
        ),
        (
            serde_json::to_vec(&review_of(pod(Some("kata-remote"), vec![], vec![])))?,
            "text/plain",
            "Content-Type must be application/json",
        ),
    ];
    for (body, content_type, reason) in cases {
        let text = bad_request(&mut conn, body.clone(), content_type).await?;
        assert!(
            text.contains(reason),
            "{:?}: {text}",
            String::from_utf8_lossy(&body)
        );
    }
    // The connection survived all of them.
    let ok = conn
        .review(&review_of(pod(
            None,
            vec![],
            vec![container("c", &[], &[])],
        )))
        .await?;
    assert_eq!(ok.status, 200);
    Ok(())
}

#[tokio::test]
async fn an_oversized_review_is_refused_without_reading_it_all() -> TestResult {
    let (server, mut conn) = setup().await?;
    // Declared too large: answered 413 on the headers, the body never sent.
    let head = format!(
        "POST /mutate-v1-pod HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        MAX_REVIEW_BYTES + 1
    );
    let answer =
        common::answer_to_head(server.addr, server.client_config(), head.as_bytes()).await?;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // Chunked, no length: refused once more than the cap has arrived.
    let mut chunked = b"POST /mutate-v1-pod HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let chunk = vec![b' '; 64 << 10];
    for _ in 0..=(MAX_REVIEW_BYTES / chunk.len()) {
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(&chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    let answer = common::answer_to_head(server.addr, server.client_config(), &chunked).await?;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // Exactly the cap is read (and refused as not JSON, not as too large).
    let body = vec![b' '; MAX_REVIEW_BYTES];
    let reply = conn
        .send("POST", "/mutate-v1-pod", Some("application/json"), body)
        .await?;
    assert_eq!(reply.status, 400, "{}", reply.text());
    Ok(())
}

#[tokio::test]
async fn other_paths_and_methods_are_refused() -> TestResult {
    let (_server, mut conn) = setup().await?;
    assert_eq!(
        conn.send("GET", "/mutate-v1-pod", None, vec![])
            .await?
            .status,
        405
    );
    assert_eq!(
        conn.send(
            "POST",
            "/validate",
            Some("application/json"),
            b"{}".to_vec()
        )
        .await?
        .status,
        404
    );
    assert_eq!(
        conn.send("GET", "/healthz", None, vec![]).await?.status,
        200
    );
    assert_eq!(conn.send("GET", "/readyz", None, vec![]).await?.status, 200);
    Ok(())
}

/// Posts a review and expects it denied with code 400; returns the message.
async fn denied(conn: &mut Conn, review: Value) -> Result<String, common::BoxError> {
    let reply = conn.review(&review).await?;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let answer = reply.json();
    assert_eq!(answer["response"]["allowed"], false, "{answer}");
    assert_eq!(answer["response"]["status"]["code"], 400, "{answer}");
    assert!(answer["response"]["patch"].is_null(), "{answer}");
    assert_eq!(answer["response"]["uid"], review["request"]["uid"]);
    Ok(answer["response"]["status"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

#[tokio::test]
async fn unmutable_pods_are_denied_with_the_reason() -> TestResult {
    let (_server, mut conn) = setup().await?;

    let bad_quantity = pod(
        Some("kata-remote"),
        vec![],
        vec![container("app", &[("cpu", "two")], &[])],
    );
    let m = denied(&mut conn, review_of(bad_quantity)).await?;
    assert!(
        m.contains("\"app\"") && m.contains("cpu request") && m.contains("\"two\""),
        "{m}"
    );

    let huge = pod(
        Some("kata-remote"),
        vec![],
        vec![container("app", &[("memory", "1e30")], &[])],
    );
    let m = denied(&mut conn, review_of(huge)).await?;
    assert!(m.contains("out of range"), "{m}");

    let overflowing_sum = pod(
        Some("kata-remote"),
        vec![],
        (0..3)
            .map(|i| container(&format!("c{i}"), &[("cpu", "100000000000000000000E")], &[]))
            .collect(),
    );
    let m = denied(&mut conn, review_of(overflowing_sum)).await?;
    assert!(m.contains("out of range"), "{m}");

    let no_containers = pod(Some("kata-remote"), vec![], vec![]);
    let m = denied(&mut conn, review_of(no_containers)).await?;
    assert!(m.contains("no containers"), "{m}");

    let mut not_a_pod = review_of(pod(
        Some("kata-remote"),
        vec![],
        vec![container("c", &[], &[])],
    ));
    not_a_pod["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    let m = denied(&mut conn, not_a_pod).await?;
    assert!(
        m.contains("expected a v1 Pod") && m.contains("apps/v1 Deployment"),
        "{m}"
    );

    let mut wrong_shape = pod(Some("kata-remote"), vec![], vec![container("c", &[], &[])]);
    wrong_shape["spec"]["containers"][0]["resources"]["requests"] = json!(["cpu", "2"]);
    let m = denied(&mut conn, review_of(wrong_shape)).await?;
    assert!(m.contains("not a valid Pod"), "{m}");

    let mut delete = review_of(pod(
        Some("kata-remote"),
        vec![],
        vec![container("c", &[], &[])],
    ));
    delete["request"]["operation"] = json!("DELETE");
    delete["request"]["object"] = Value::Null;
    let m = denied(&mut conn, delete).await?;
    assert!(m.contains("no object"), "{m}");
    Ok(())
}

#[tokio::test]
async fn hostile_text_comes_back_escaped_and_bounded() -> TestResult {
    let (_server, mut conn) = setup().await?;
    let name = format!("evil\nINFO forged log line\u{1b}[31m{}", "x".repeat(5000));
    let p = pod(
        Some("kata-remote"),
        vec![],
        vec![container(&name, &[("cpu", "1\n2")], &[])],
    );
    let m = denied(&mut conn, review_of(p)).await?;
    assert!(!m.contains('\n') && !m.contains('\u{1b}'), "{m:?}");
    assert!(
        m.chars().count() <= 1100,
        "{} characters",
        m.chars().count()
    );
    Ok(())
}

#[tokio::test]
async fn a_v1beta1_review_is_answered_in_v1beta1() -> TestResult {
    let (_server, mut conn) = setup().await?;
    let mut review = review_of(pod(
        Some("kata-remote"),
        vec![],
        vec![container("c", &[("cpu", "1")], &[])],
    ));
    review["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let answer = conn.review(&review).await?.json();
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1beta1");
    assert_eq!(answer["response"]["allowed"], true);
    Ok(())
}

#[tokio::test]
async fn echo_admits_everything_unchanged() -> TestResult {
    let server = Server::start(Handler::Echo, TlsOptions::default(), None).await;
    let mut conn = Conn::connect(server.addr, server.client_config()).await?;
    let p = pod(
        Some("kata-remote"),
        vec![],
        vec![container("c", &[("cpu", "1")], &[])],
    );
    let answer = conn.review(&review_of(p)).await?.json();
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"]["patch"].is_null());
    Ok(())
}

#[tokio::test]
async fn stalled_clients_do_not_hold_up_others() -> TestResult {
    use tokio::io::AsyncWriteExt as _;
    let (server, mut conn) = setup().await?;
    // One connection that never starts TLS, one that sends half a ClientHello, one TLS client
    // that sends half a request.
    let _silent = tokio::net::TcpStream::connect(server.addr).await?;
    let mut half_hello = tokio::net::TcpStream::connect(server.addr).await?;
    half_hello
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await?;
    let tcp = tokio::net::TcpStream::connect(server.addr).await?;
    let mut half_request =
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(server.client_config()))
            .connect(rustls::pki_types::ServerName::try_from("localhost")?, tcp)
            .await?;
    half_request
        .write_all(b"POST /mutate-v1-pod HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"apiVersion\"")
        .await?;
    half_request.flush().await?;
    // Others are served meanwhile, on the open connection and on new ones.
    let p = pod(None, vec![], vec![container("c", &[], &[])]);
    assert_eq!(conn.review(&review_of(p.clone())).await?.status, 200);
    let mut fresh = Conn::connect(server.addr, server.client_config()).await?;
    assert_eq!(fresh.review(&review_of(p)).await?.status, 200);
    drop(half_request);
    Ok(())
}

/// A body sent a byte at a time does not hold its connection past the body timeout: the server
/// answers 408 and the slot is free again.
#[tokio::test]
async fn a_body_sent_too_slowly_is_answered_408() -> TestResult {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (server, _conn) = setup().await?;
    let tcp = tokio::net::TcpStream::connect(server.addr).await?;
    let mut slow = tokio_rustls::TlsConnector::from(std::sync::Arc::new(server.client_config()))
        .connect(rustls::pki_types::ServerName::try_from("localhost")?, tcp)
        .await?;
    slow.write_all(b"POST /mutate-v1-pod HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        .await?;
    slow.flush().await?;
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    // One byte every second, for longer than the timeout; stop when the server answers.
    while started.elapsed() < peerpod_webhook::server::BODY_TIMEOUT * 2 {
        tokio::select! {
            n = slow.read(&mut buf) => {
                let n = n?;
                answer.extend_from_slice(&buf[..n]);
                if n == 0 || answer.windows(4).any(|w| w == b"\r\n\r\n") { break; }
            }
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {
                if slow.write_all(b" ").await.is_err() { break; }
                let _ = slow.flush().await;
            }
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < peerpod_webhook::server::BODY_TIMEOUT * 2);
    Ok(())
}

/// More stalled TLS handshakes than there are connection slots, renewed while a real client
/// connects: the real client still completes its handshake and gets its answer well before
/// the stalled ones would time out (a new connection ends the oldest pending handshake).
#[tokio::test]
async fn stalled_handshakes_cannot_keep_a_real_client_out() -> TestResult {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    use peerpod_webhook::server::{HANDSHAKE_TIMEOUT, MAX_CONNECTIONS};
    use tokio::io::AsyncWriteExt as _;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < 8192 {
        setrlimit(Resource::RLIMIT_NOFILE, hard.min(8192), hard)?;
    }
    let (server, _conn) = setup().await?;
    let stall = |addr| async move {
        let mut tcp = tokio::net::TcpStream::connect(addr).await?;
        // Half a ClientHello, then nothing.
        tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await?;
        Ok::<_, std::io::Error>(tcp)
    };
    let mut stalled = Vec::with_capacity(MAX_CONNECTIONS + 100);
    for _ in 0..MAX_CONNECTIONS + 100 {
        stalled.push(stall(server.addr).await?);
    }
    // The attacker keeps renewing them, one every millisecond.
    let addr = server.addr;
    let renewer = tokio::spawn(async move {
        let mut more = Vec::new();
        loop {
            if let Ok(tcp) = stall(addr).await {
                more.push(tcp);
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    });
    let started = std::time::Instant::now();
    let real = async {
        let mut conn = Conn::connect(server.addr, server.client_config()).await?;
        let p = pod(
            Some("kata-remote"),
            vec![],
            vec![container("c", &[("cpu", "1")], &[])],
        );
        conn.review(&review_of(p)).await
    };
    let reply = tokio::time::timeout(HANDSHAKE_TIMEOUT / 2, real).await;
    renewer.abort();
    let reply = reply.map_err(|_| {
        format!(
            "no answer within {:?}: the stalled handshakes kept the real client out",
            HANDSHAKE_TIMEOUT / 2
        )
    })??;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["response"]["allowed"], true);
    eprintln!(
        "a real client got its answer {:?} after {} stalled handshakes",
        started.elapsed(),
        stalled.len()
    );
    Ok(())
}

/// Bodies sent all but their last byte, then stalled, fill the bytes-in-flight budget: a real
/// review still gets in (the oldest stalled body is dropped with 503 to make room) instead of
/// waiting for the stalled ones' body timeout.
#[tokio::test]
async fn stalled_bodies_cannot_hold_the_in_flight_budget() -> TestResult {
    use peerpod_webhook::server::MAX_BODY_BYTES_IN_FLIGHT;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (server, mut conn) = setup().await?;
    let size = MAX_REVIEW_BYTES;
    let mut stalled = Vec::new();
    for _ in 0..=(MAX_BODY_BYTES_IN_FLIGHT / size) {
        let tcp = tokio::net::TcpStream::connect(server.addr).await?;
        let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(server.client_config()))
            .connect(rustls::pki_types::ServerName::try_from("localhost")?, tcp)
            .await?;
        tls.write_all(format!("POST /mutate-v1-pod HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n").as_bytes()).await?;
        tls.write_all(&vec![b' '; size - 1]).await?;
        tls.flush().await?;
        stalled.push(tls);
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut p = pod(
        Some("kata-remote"),
        vec![],
        vec![container("c", &[("cpu", "1")], &[])],
    );
    p["metadata"]["annotations"]["pad"] = json!("x".repeat(size - 4096));
    // (Waiting for room would end in 503 after IN_FLIGHT_WAIT, long before the stalled
    // bodies' timeout.)
    let reply = conn.review(&review_of(p)).await?;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["response"]["allowed"], true);
    // The oldest stalled body was answered 503, naming why.
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stalled[0].read(&mut answer),
    )
    .await??;
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("dropped to make room"), "{answer}");
    Ok(())
}

/// Every served connection slot held by a TLS connection that never sends a request: a real
/// client still gets in (the connection idle longest is closed for it) and is answered.
#[tokio::test]
async fn idle_connections_cannot_keep_a_real_client_out() -> TestResult {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    use peerpod_webhook::server::MAX_CONNECTIONS;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < 8192 {
        setrlimit(Resource::RLIMIT_NOFILE, hard.min(8192), hard)?;
    }
    let (server, mut first) = setup().await?;
    let config = std::sync::Arc::new(server.client_config());
    let mut idle = Vec::with_capacity(MAX_CONNECTIONS);
    for _ in 0..MAX_CONNECTIONS {
        let tcp = tokio::net::TcpStream::connect(server.addr).await?;
        idle.push(
            tokio_rustls::TlsConnector::from(std::sync::Arc::clone(&config))
                .connect(rustls::pki_types::ServerName::try_from("localhost")?, tcp)
                .await?,
        );
    }
    // The earliest connection, used once before the flood, was the one idle longest: it is
    // gone, and a newcomer is answered.
    let p = pod(
        Some("kata-remote"),
        vec![],
        vec![container("c", &[("cpu", "1")], &[])],
    );
    let mut conn = Conn::connect(server.addr, server.client_config()).await?;
    let reply = conn.review(&review_of(p.clone())).await?;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["response"]["allowed"], true);
    assert!(first.review(&review_of(p.clone())).await.is_err());
    // And so is the next, again and again.
    for _ in 0..3 {
        let mut conn = Conn::connect(server.addr, server.client_config()).await?;
        assert_eq!(conn.review(&review_of(p.clone())).await?.status, 200);
    }
    Ok(())
}
