//! The webhook binary's memory under hostile reviews and connection floods, measured as a
//! real process: its peak resident set (`VmHWM` in /proc/PID/status) must stay under the
//! memory limit `deploy/webhook.yaml` gives the container, or the kubelet kills it and, with
//! `failurePolicy: Fail`, pod creation stops cluster-wide. Each test prints the figures.
//! `PEERPOD_WEBHOOK_BIN=path` runs them on another build of the binary.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{BoxError, Certs, Conn, TempDir, TestResult, client_config};
use peerpod_webhook::review::MAX_REVIEW_BYTES;
use peerpod_webhook::server::{
    MAX_CONNECTIONS, MAX_CONNECTIONS_PER_PEER, MAX_HANDSHAKES, MAX_HEADER_BYTES,
};

/// The webhook binary on a loopback port, killed on drop.
struct Running {
    child: tokio::process::Child,
    addr: SocketAddr,
    certs: Certs,
    _dir: TempDir,
}

impl Running {
    async fn start() -> Result<Self, BoxError> {
        common::install_provider();
        let dir = TempDir::new("mem");
        let certs = Certs::generate("webhook");
        certs.write(&dir.0);
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        // PEERPOD_WEBHOOK_BIN measures another build (an older one, a release build).
        let bin = std::env::var("PEERPOD_WEBHOOK_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_peerpod-webhook").to_owned());
        let child = tokio::process::Command::new(bin)
            .arg("--bind-address")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--cert-dir")
            .arg(&dir.0)
            .arg("--log-level")
            .arg("error")
            .env_clear()
            .kill_on_drop(true)
            .spawn()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Conn::connect(addr, client_config(&certs.ca_pem, None, None)).await {
                Ok(_) => break,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(format!("the webhook never answered: {e}").into()),
            }
        }
        Ok(Running {
            child,
            addr,
            certs,
            _dir: dir,
        })
    }

    async fn conn(&self) -> Result<Conn, BoxError> {
        Conn::connect(self.addr, client_config(&self.certs.ca_pem, None, None)).await
    }

    /// `(VmHWM, VmRSS)` in bytes.
    fn memory(&self) -> Result<(u64, u64), BoxError> {
        let pid = self.child.id().ok_or("the webhook exited")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| -> Result<u64, BoxError> {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .ok_or(format!("no {name}"))?;
            let kib: u64 = line
                .trim_start_matches(name)
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()?;
            Ok(kib * 1024)
        };
        Ok((field("VmHWM:")?, field("VmRSS:")?))
    }
}

/// The container memory limit in deploy/webhook.yaml, in bytes.
fn manifest_limit() -> Result<u64, BoxError> {
    let yaml =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/webhook.yaml"))?;
    let mut lines = yaml.lines().skip_while(|l| l.trim() != "limits:");
    let memory = lines
        .find_map(|l| l.trim().strip_prefix("memory:"))
        .ok_or("no memory limit in deploy/webhook.yaml")?
        .trim();
    let mib: u64 = memory
        .strip_suffix("Mi")
        .ok_or("the memory limit is not in Mi")?
        .parse()?;
    Ok(mib << 20)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

/// An AdmissionReview of a peer pod whose JSON is about `size` bytes, padded with `pad`
/// repeated in an array at `where_` (`"spec"`: a field the mutation does not read;
/// `"options"`/`"userInfo"`: parts of the request the webhook skips).
fn padded_review(size: usize, where_: &str, pad: &str) -> Vec<u8> {
    let head_len = 2048;
    let count = size.saturating_sub(head_len) / (pad.len() + 1);
    let mut array = String::with_capacity(size);
    array.push('[');
    for i in 0..count {
        if i > 0 {
            array.push(',');
        }
        array.push_str(pad);
    }
    array.push(']');
    let (mut spec_pad, mut user_pad, mut options_pad) =
        (String::new(), String::new(), String::new());
    let pad = format!(r#","x":{array}"#);
    match where_ {
        "spec" => spec_pad = pad,
        "userInfo" => user_pad = pad,
        _ => options_pad = pad,
    }
    format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u-1","kind":{{"group":"","version":"v1","kind":"Pod"}},"resource":{{"group":"","version":"v1","resource":"pods"}},"requestKind":{{"group":"","version":"v1","kind":"Pod"}},"requestResource":{{"group":"","version":"v1","resource":"pods"}},"name":"p","namespace":"default","operation":"CREATE","userInfo":{{"username":"admin","groups":["system:authenticated"]{user_pad}}},"options":{{"apiVersion":"meta.k8s.io/v1","kind":"CreateOptions"{options_pad}}},"dryRun":false,"oldObject":null,"object":{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"p","annotations":{{"a":"b"}}}},"spec":{{"runtimeClassName":"kata-remote","containers":[{{"name":"c","image":"i","resources":{{"requests":{{"cpu":"1","memory":"1Gi"}}}}}}]{spec_pad}}}}}}}}}"#
    )
    .into_bytes()
}

/// A review whose object nests arrays `depth` deep.
fn deep_review(depth: usize) -> Vec<u8> {
    format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u-2","kind":{{"group":"","version":"v1","kind":"Pod"}},"operation":"CREATE","object":{{"spec":{{"runtimeClassName":"kata-remote","x":{}{}}}}}}}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    )
    .into_bytes()
}

/// A review of a peer pod with as many empty containers as fit in `size` bytes.
fn many_containers_review(size: usize) -> Vec<u8> {
    let one = r#"{"name":""}"#;
    let containers = vec![one; size / (one.len() + 1)].join(",");
    format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u-3","kind":{{"group":"","version":"v1","kind":"Pod"}},"operation":"CREATE","object":{{"spec":{{"runtimeClassName":"kata-remote","containers":[{containers}]}}}}}}}}"#
    )
    .into_bytes()
}

/// How many concurrent reviews were answered (200) and refused as busy (503); any other
/// status is an error.
async fn answered_and_busy(
    mut tasks: tokio::task::JoinSet<Result<u16, BoxError>>,
) -> Result<(usize, usize), BoxError> {
    let (mut ok, mut busy) = (0, 0);
    while let Some(status) = tasks.join_next().await {
        match status?? {
            200 => ok += 1,
            503 => busy += 1,
            other => return Err(format!("a concurrent review got {other}").into()),
        }
    }
    Ok((ok, busy))
}

async fn post(conn: &mut Conn, body: Vec<u8>) -> Result<common::Reply, BoxError> {
    conn.send("POST", "/mutate-v1-pod", Some("application/json"), body)
        .await
}

#[tokio::test]
async fn hostile_reviews_stay_under_the_manifest_memory_limit() -> TestResult {
    let limit = manifest_limit()?;
    let webhook = Running::start().await?;
    let (idle, _) = webhook.memory()?;
    eprintln!("memory: idle peak {:.1} MiB", mib(idle));
    let near_cap = MAX_REVIEW_BYTES - 1024;

    // `[0,0,…]` in a field of the pod the mutation does not read: the review is answered.
    let mut conn = webhook.conn().await?;
    for (where_, pad) in [("spec", "0"), ("options", "0"), ("userInfo", "\"\"")] {
        let body = padded_review(near_cap, where_, pad);
        assert!(body.len() <= MAX_REVIEW_BYTES, "{}", body.len());
        let reply = post(&mut conn, body).await?;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let answer = reply.json();
        assert_eq!(answer["response"]["allowed"], true, "{answer}");
        assert!(answer["response"]["patch"].is_string(), "{answer}");
        eprintln!(
            "memory: after a {:.1} MiB review padded in {where_}: peak {:.1} MiB",
            mib(near_cap as u64),
            mib(webhook.memory()?.0)
        );
    }

    // The 8.2 MB body of the review finding: refused by its declared length before a byte of
    // it is read.
    let answer = common::answer_to_head(
        webhook.addr,
        client_config(&webhook.certs.ca_pem, None, None),
        b"POST /mutate-v1-pod HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 8200000\r\n\r\n[0,0,0,0",
    )
    .await?;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // 1.5 million levels of nesting in a field the mutation skips: skipped without recursion
    // (the pod is then denied for having no containers), no stack or memory blow-up.
    let reply = post(&mut conn, deep_review(near_cap / 2)).await?;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let answer = reply.json();
    assert_eq!(answer["response"]["allowed"], false, "{answer}");
    assert!(
        answer["response"]["status"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no containers")),
        "{answer}"
    );

    // A pod of 250,000 empty containers: denied at the 4,097th.
    let reply = post(&mut conn, many_containers_review(near_cap)).await?;
    let answer = reply.json();
    assert_eq!(answer["response"]["allowed"], false, "{answer}");
    assert!(
        answer["response"]["status"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("more than 4096 containers")),
        "{answer}"
    );
    eprintln!(
        "memory: after deep and container-flood reviews: peak {:.1} MiB",
        mib(webhook.memory()?.0)
    );

    // 32 reviews of 3 MiB at once, on 32 connections: 96 MiB of bodies against the in-flight
    // budget; each is answered, or refused with 503 when it waited too long.
    let body = padded_review(near_cap, "spec", "0");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let mut conn = webhook.conn().await?;
        let body = body.clone();
        tasks.spawn(async move { post(&mut conn, body).await.map(|r| r.status) });
    }
    let (ok, busy) = answered_and_busy(tasks).await?;
    let (peak, now) = webhook.memory()?;
    eprintln!(
        "memory: 32 concurrent 3 MiB reviews: {ok} answered, {busy} refused 503; peak {:.1} \
         MiB, resident now {:.1} MiB, manifest limit {:.0} MiB",
        mib(peak),
        mib(now),
        mib(limit)
    );
    assert!(ok > 0, "no concurrent review was answered");
    assert!(
        peak < limit,
        "peak {:.1} MiB over the manifest's {:.0} MiB",
        mib(peak),
        mib(limit)
    );
    // Still serving.
    let reply = post(&mut conn, padded_review(4096, "spec", "0")).await?;
    assert_eq!(reply.status, 200);
    Ok(())
}

/// Raises this process's open-file limit (the child inherits it) so that it can hold the
/// connections of a flood.
fn raise_fd_limit(want: u64) -> Result<(), BoxError> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < want {
        setrlimit(Resource::RLIMIT_NOFILE, hard.min(want), hard)?;
    }
    Ok(())
}

/// The worst a client can hold at once: every served connection slot taken (all but 32 by a
/// TLS connection that has sent most of a request's headers, filling hyper's read buffer),
/// every handshake slot by half a ClientHello, and 3 MiB reviews sent on the other 32.
#[tokio::test]
async fn a_connection_flood_with_reviews_stays_under_the_manifest_memory_limit() -> TestResult {
    use tokio::io::AsyncWriteExt as _;
    const REVIEWERS: usize = 32;
    raise_fd_limit(8192)?;
    let limit = manifest_limit()?;
    let webhook = Running::start().await?;
    let mut reviewers = Vec::with_capacity(REVIEWERS);
    // The reviewers from one address (the API server's), the flood from as many others as it
    // takes to fill every connection slot within the per-address cap.
    let api_server = std::net::IpAddr::from([127, 0, 0, 2]);
    for _ in 0..REVIEWERS {
        reviewers.push(
            Conn::connect_from(
                webhook.addr,
                api_server,
                client_config(&webhook.certs.ca_pem, None, None),
            )
            .await?,
        );
    }
    let config = std::sync::Arc::new(client_config(&webhook.certs.ca_pem, None, None));
    let mut held = Vec::with_capacity(MAX_CONNECTIONS);
    let header = format!(
        "POST /mutate-v1-pod HTTP/1.1\r\nHost: localhost\r\nX-Pad: {}",
        "a".repeat(MAX_HEADER_BYTES - 200)
    );
    for i in REVIEWERS..MAX_CONNECTIONS {
        let octet = u8::try_from(i / MAX_CONNECTIONS_PER_PEER)?;
        let tcp =
            common::tcp_from(webhook.addr, std::net::IpAddr::from([127, 0, 1, octet])).await?;
        let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::clone(&config))
            .connect(rustls::pki_types::ServerName::try_from("localhost")?, tcp)
            .await?;
        tls.write_all(header.as_bytes()).await?;
        tls.flush().await?;
        held.push(tls);
    }
    let mut stalled = Vec::with_capacity(MAX_HANDSHAKES);
    for _ in 0..MAX_HANDSHAKES {
        let mut tcp = tokio::net::TcpStream::connect(webhook.addr).await?;
        tcp.write_all(&[0x16, 0x03, 0x01, 0x40, 0x00, 0x01]).await?;
        tcp.write_all(&[0u8; 8192]).await?;
        stalled.push(tcp);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (flood, _) = webhook.memory()?;
    let body = padded_review(MAX_REVIEW_BYTES - 1024, "spec", "0");
    let mut tasks = tokio::task::JoinSet::new();
    for mut conn in reviewers {
        let body = body.clone();
        tasks.spawn(async move { post(&mut conn, body).await.map(|r| r.status) });
    }
    let (ok, busy) = answered_and_busy(tasks).await?;
    let (peak, now) = webhook.memory()?;
    eprintln!(
        "memory: {} served connections with {MAX_HEADER_BYTES} bytes of headers pending and \
         {MAX_HANDSHAKES} half handshakes: peak {:.1} MiB; then {REVIEWERS} concurrent 3 MiB \
         reviews ({ok} answered, {busy} refused 503): peak {:.1} MiB, resident {:.1} MiB, \
         manifest limit {:.0} MiB",
        held.len(),
        mib(flood),
        mib(peak),
        mib(now),
        mib(limit)
    );
    assert!(ok > 0, "no review was answered");
    assert!(
        peak < limit,
        "peak {:.1} MiB over the manifest's {:.0} MiB",
        mib(peak),
        mib(limit)
    );
    Ok(())
}
