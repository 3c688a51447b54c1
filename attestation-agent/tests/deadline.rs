//! The attestation deadline (`[peerpod] attestation_deadline_secs`) against a hostile host that
//! owns the network: a KBS that accepts and never answers, one that answers slowly with errors,
//! evidence that never comes, and callers that give up. Every case runs many concurrent callers
//! and asserts how many handshakes reached the KBS: one attestation in flight at a time, its
//! outcome shared by every caller that waited for it, each caller answered within the deadline.
//! Timings are asserted only as generous upper bounds.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use attestation_agent::attester::{AttestError, Attester, Measured, Sample};
use attestation_agent::{AaError, AttestationAgent};
use peerpod_tests::kbs::RunningKbs;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::*;

/// A stand-in KBS on a real TCP listener: counts connections; for each, either holds it open
/// without a word (`reply: None`) or, after reading a request, waits `delay` and answers
/// `reply` and closes.
async fn stand_in(reply: Option<(Duration, &'static str)>) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let connections = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                match reply {
                    // Read whatever comes, never answer, keep the connection open.
                    None => while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {},
                    Some((delay, reply)) => {
                        let _ = conn.read(&mut buf).await;
                        tokio::time::sleep(delay).await;
                        let _ = conn.write_all(reply.as_bytes()).await;
                        let _ = conn.shutdown().await;
                    }
                }
            });
        }
    });
    (url, connections)
}

/// Runs `n` GetToken callers, the second half started `stagger` after the first; returns each
/// caller's outcome and how long it waited.
async fn callers(
    aa: &Arc<AttestationAgent>,
    n: usize,
    stagger: Duration,
) -> Vec<(Result<Vec<u8>, AaError>, Duration)> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let aa = Arc::clone(aa);
        tasks.push(tokio::spawn(async move {
            if i >= n / 2 {
                tokio::time::sleep(stagger).await;
            }
            let started = Instant::now();
            let outcome = aa.get_token("kbs").await;
            (outcome, started.elapsed())
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("caller task"));
    }
    out
}

fn chain(e: &AaError) -> String {
    peerpod_kbs_client::error_chain(e)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalling_kbs_costs_one_attestation_per_deadline_however_many_callers_wait() {
    let (url, connections) = stand_in(None).await;
    let mut config = aa_config(&url, None);
    // Upstream-like per-request limits that alone would let one attestation take 90 s.
    config.kbs_request_timeout = Duration::from_secs(30);
    config.kbs_attempts = 3;
    config.attestation_deadline = Duration::from_secs(2);
    let aa = Arc::new(sample_aa(&config));

    let started = Instant::now();
    let wave = callers(&aa, 16, Duration::from_millis(800)).await;
    let total = started.elapsed();
    for (outcome, waited) in &wave {
        let err = outcome.as_ref().expect_err("a stalled KBS gives no token");
        let text = chain(err);
        assert!(
            text.contains("attestation_deadline_secs")
                && text.contains("within 2 s")
                && text.contains("waiting for the KBS's auth reply"),
            "the error names the deadline, the key and the stalled step: {text}"
        );
        assert!(
            *waited < Duration::from_secs(6),
            "waited {waited:?}: {text}"
        );
    }
    assert!(total < Duration::from_secs(8), "all answered in {total:?}");
    let kbs = aa.kbs().expect("kbs");
    assert_eq!(kbs.handshakes(), 1, "16 callers shared one handshake");
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "the KBS saw one connection"
    );
    assert_eq!(kbs.attestations(), 0);

    // A failure is not cached: the next callers start one new attestation, and share it.
    let wave = callers(&aa, 8, Duration::ZERO).await;
    assert!(wave.iter().all(|(o, _)| o.is_err()));
    assert_eq!(kbs.handshakes(), 2, "the second wave shared one handshake");
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowly_failing_kbs_is_retried_only_within_the_deadline() {
    // Every request: 600 ms of silence, then a 503 (transient, so retried).
    let (url, connections) = stand_in(Some((
        Duration::from_millis(600),
        "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbusy",
    )))
    .await;
    let mut config = aa_config(&url, None);
    config.kbs_request_timeout = Duration::from_secs(30);
    config.kbs_attempts = 10;
    config.attestation_deadline = Duration::from_secs(3);
    let aa = Arc::new(sample_aa(&config));

    let wave = callers(&aa, 12, Duration::from_millis(500)).await;
    for (outcome, waited) in &wave {
        let err = outcome.as_ref().expect_err("no token");
        let text = chain(err);
        assert!(
            text.contains("attestation_deadline_secs") && text.contains("503"),
            "the deadline error carries the last failure: {text}"
        );
        assert!(
            *waited < Duration::from_secs(7),
            "waited {waited:?}: {text}"
        );
    }
    let kbs = aa.kbs().expect("kbs");
    // 0.6 s per attempt and 0.5 s, 1 s, 2 s of back-off fit at most 4 attempts in 3 s.
    let handshakes = kbs.handshakes();
    assert!(
        (2..=4).contains(&handshakes),
        "{handshakes} handshakes of 10 allowed"
    );
    assert_eq!(
        connections.load(Ordering::SeqCst) as u64,
        handshakes,
        "one connection per handshake, none per waiting caller"
    );
}

/// The sample TEE, with evidence that takes `delay` (forever: `None`) or blocks its thread.
struct SlowEvidence {
    delay: Option<Duration>,
    block_thread: bool,
    calls: AtomicUsize,
}

impl SlowEvidence {
    fn new(delay: Option<Duration>, block_thread: bool) -> Arc<Self> {
        Arc::new(Self {
            delay,
            block_thread,
            calls: AtomicUsize::new(0),
        })
    }
}

#[async_trait]
impl Attester for SlowEvidence {
    fn tee(&self) -> &'static str {
        "sample"
    }

    async fn evidence(&self, report_data: &[u8]) -> Result<Value, AttestError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match self.delay {
            None => std::future::pending::<()>().await,
            Some(d) if self.block_thread => std::thread::sleep(d),
            Some(d) => tokio::time::sleep(d).await,
        }
        Sample::default().evidence(report_data).await
    }

    async fn bind_init_data(&self, digest: &[u8]) -> Result<(), AttestError> {
        Sample::default().bind_init_data(digest).await
    }

    async fn extend(&self, index: u64, digest: &[u8]) -> Result<Measured, AttestError> {
        Sample::default().extend(index, digest).await
    }

    async fn register(&self, index: u64) -> Result<Vec<u8>, AttestError> {
        Sample::default().register(index).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_that_never_comes_is_bounded_by_the_deadline_in_attestation_and_get_evidence() {
    let options = kbs_options(None);
    let stats = Arc::clone(&options.stats);
    let kbs = RunningKbs::start(options, "127.0.0.1:0", None).expect("KBS");
    let mut config = aa_config(&kbs.url(), None);
    config.attestation_deadline = Duration::from_secs(2);
    let attester = SlowEvidence::new(None, false);
    let aa =
        Arc::new(AttestationAgent::with_attester(&config, attester.clone(), None).expect("AA"));
    let wave = callers(&aa, 10, Duration::from_millis(500)).await;
    for (outcome, waited) in &wave {
        let text = chain(outcome.as_ref().expect_err("no evidence, no token"));
        assert!(
            text.contains("making evidence in the TEE") && text.contains("attestation_deadline"),
            "{text}"
        );
        assert!(*waited < Duration::from_secs(6), "waited {waited:?}");
    }
    assert_eq!(
        attester.calls.load(Ordering::SeqCst),
        1,
        "one evidence request"
    );
    assert_eq!(aa.kbs().expect("kbs").handshakes(), 1);
    assert_eq!(stats.attestations.load(Ordering::Relaxed), 0);

    // GetEvidence itself (what the CDH asks for) is bounded by the same deadline.
    let started = Instant::now();
    let err = aa.get_evidence(&[7; 32]).await.expect_err("no evidence");
    assert!(matches!(err, AaError::Deadline { secs: 2, .. }), "{err}");
    let text = chain(&err);
    assert!(
        text.contains("making evidence in the TEE") && text.contains("attestation_deadline_secs"),
        "{text}"
    );
    assert!(started.elapsed() < Duration::from_secs(6));
    assert_eq!(attester.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_gives_up_does_not_end_the_attestation_others_wait_for() {
    let options = kbs_options(None);
    let stats = Arc::clone(&options.stats);
    let kbs = RunningKbs::start(options, "127.0.0.1:0", None).expect("KBS");
    let config = aa_config(&kbs.url(), None);
    let attester = SlowEvidence::new(Some(Duration::from_millis(800)), false);
    let aa =
        Arc::new(AttestationAgent::with_attester(&config, attester.clone(), None).expect("AA"));
    // The first caller starts the attestation and is cancelled while evidence is being made
    // (as a ttrpc request whose client hung up).
    let first = {
        let aa = Arc::clone(&aa);
        tokio::spawn(async move { aa.get_token("kbs").await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    first.abort();
    assert!(first.await.is_err_and(|e| e.is_cancelled()));
    let wave = callers(&aa, 6, Duration::from_millis(100)).await;
    let mut tokens = std::collections::BTreeSet::new();
    for (outcome, _) in wave {
        let v: Value = serde_json::from_slice(&outcome.expect("token")).expect("json");
        tokens.insert(v["token"].as_str().expect("token").to_string());
    }
    assert_eq!(
        tokens.len(),
        1,
        "every caller got the one attestation's token"
    );
    assert_eq!(
        attester.calls.load(Ordering::SeqCst),
        1,
        "one evidence request"
    );
    assert_eq!(aa.kbs().expect("kbs").handshakes(), 1);
    assert_eq!(stats.attestations.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn waiters_give_up_at_the_deadline_even_if_the_attestation_cannot_be_stopped() {
    // Evidence that blocks its thread (not cancellable at an await): the attestation overruns
    // its deadline; the callers waiting for it do not.
    let options = kbs_options(None);
    let kbs = RunningKbs::start(options, "127.0.0.1:0", None).expect("KBS");
    let mut config = aa_config(&kbs.url(), None);
    config.attestation_deadline = Duration::from_secs(1);
    let attester = SlowEvidence::new(Some(Duration::from_secs(5)), true);
    let aa =
        Arc::new(AttestationAgent::with_attester(&config, attester.clone(), None).expect("AA"));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let aa = Arc::clone(&aa);
        tasks.push(tokio::spawn(async move { aa.get_token("kbs").await }));
    }
    for t in tasks {
        let text = chain(&t.await.expect("caller").expect_err("no token in time"));
        assert!(
            text.contains("gave up after waiting 1 s") && text.contains("attestation_deadline"),
            "{text}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "answered in {:?}, before the 5 s evidence",
        started.elapsed()
    );
    assert_eq!(attester.calls.load(Ordering::SeqCst), 1);
    assert_eq!(aa.kbs().expect("kbs").handshakes(), 1);
}
