//! Concurrent `GetToken` callers against a KBS the host stalls (it accepts connections and never
//! answers), with `attestation_deadline_secs = 2`: how long until every caller has an answer, and
//! how many connections (handshakes) the KBS saw.
//!
//! Baseline, run in the same process: upstream's way, a fresh client and a whole attestation
//! per `GetToken` (here a fresh agent per caller), given one attempt and a 2 s request timeout so
//! that it ends as soon as ours. Upstream's defaults have no overall deadline at all. Run with
//! `cargo bench -p attestation-agent --bench stalled_kbs`; `BENCH_CALLERS` sets the callers
//! (default 32).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use attestation_agent::AaConfig;
use common::{aa_config, sample_aa};

/// A listener that accepts, counts and holds connections without a word.
async fn stalling_kbs() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let connections = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&connections);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(conn);
        }
    });
    (url, connections)
}

/// `callers` concurrent GetToken calls, on one shared agent or a fresh agent each: the time
/// until all are answered, and the KBS's connections.
async fn round(config: &AaConfig, callers: usize, shared: bool) -> (Duration, usize) {
    let (url, connections) = stalling_kbs().await;
    let mut config = config.clone();
    if let Some(kbs) = config.kbs.as_mut() {
        kbs.url = url;
    }
    let one = Arc::new(sample_aa(&config));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let aa = if shared {
            Arc::clone(&one)
        } else {
            Arc::new(sample_aa(&config))
        };
        tasks.push(tokio::spawn(async move { aa.get_token("kbs").await }));
    }
    for t in tasks {
        t.await
            .expect("caller")
            .expect_err("a stalled KBS gives no token");
    }
    (started.elapsed(), connections.load(Ordering::SeqCst))
}

fn main() {
    let callers: usize = std::env::var("BENCH_CALLERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut ours = aa_config("http://unused", None);
        ours.kbs_request_timeout = Duration::from_secs(30);
        ours.kbs_attempts = 3;
        ours.attestation_deadline = Duration::from_secs(2);
        let mut baseline = ours.clone();
        baseline.kbs_request_timeout = Duration::from_secs(2);
        baseline.kbs_attempts = 1;
        let (t_ours, c_ours) = round(&ours, callers, true).await;
        let (t_base, c_base) = round(&baseline, callers, false).await;
        println!("attestation-agent, {callers} concurrent GetToken callers, KBS stalled by the host");
        println!(
            "  ours (one shared attestation, 2 s deadline)      all answered in {:6.2} s, KBS connections {c_ours}",
            t_ours.as_secs_f64()
        );
        println!(
            "  baseline (an attestation per call, 2 s timeout)  all answered in {:6.2} s, KBS connections {c_base}",
            t_base.as_secs_f64()
        );
        println!(
            "  ratio of KBS connections baseline / ours         {:6.1}x",
            c_base as f64 / c_ours.max(1) as f64
        );
    });
}
