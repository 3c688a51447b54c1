//! Admission reviews per second and latency over real TLS keep-alive connections.
//!
//! Baseline: the same server, TLS, HTTP and AdmissionReview parsing/answering path with the
//! mutation replaced by an identity echo (`Handler::Echo`: every review allowed, no patch),
//! measured in the same run, alternating with the real webhook. The review is upstream's
//! init-containers scenario (four containers), as the API server sends it.
//!
//! `cargo bench -p peerpod-webhook --bench admission` (`BENCH_SECONDS` per phase, default 2).

#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Conn, Server, container, pod, review_of};
use peerpod_webhook::mutate::MutationConfig;
use peerpod_webhook::review::Handler;
use peerpod_webhook::tls::TlsOptions;

struct Figures {
    per_second: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

fn review_body() -> Vec<u8> {
    let p = pod(
        Some("kata-remote"),
        vec![container(
            "init",
            &[("cpu", "1"), ("memory", "2Gi")],
            &[("cpu", "1"), ("memory", "2Gi")],
        )],
        vec![
            container(
                "app",
                &[("cpu", "2"), ("memory", "4Gi")],
                &[("cpu", "3"), ("memory", "5Gi")],
            ),
            container(
                "sidecar",
                &[("cpu", "1"), ("memory", "1Gi")],
                &[("cpu", "1"), ("memory", "1Gi")],
            ),
            container(
                "gpu",
                &[("cpu", "1"), ("nvidia.com/gpu", "1")],
                &[("cpu", "1"), ("nvidia.com/gpu", "1")],
            ),
        ],
    );
    serde_json::to_vec(&review_of(p)).unwrap()
}

async fn run(server: &Server, connections: usize, body: &[u8], length: Duration) -> Figures {
    let mut tasks = Vec::new();
    let start = Instant::now();
    for _ in 0..connections {
        let mut conn = Conn::connect(server.addr, server.client_config())
            .await
            .unwrap();
        let body = body.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            // Warm-up: a few reviews not counted.
            for _ in 0..20 {
                conn.send(
                    "POST",
                    "/mutate-v1-pod",
                    Some("application/json"),
                    body.clone(),
                )
                .await
                .unwrap();
            }
            let until = Instant::now() + length;
            while Instant::now() < until {
                let t = Instant::now();
                let reply = conn
                    .send(
                        "POST",
                        "/mutate-v1-pod",
                        Some("application/json"),
                        body.clone(),
                    )
                    .await
                    .unwrap();
                latencies.push(t.elapsed());
                assert_eq!(reply.status, 200);
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let wall = start.elapsed().as_secs_f64();
    all.sort();
    let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    Figures {
        per_second: all.len() as f64 / wall,
        p50: at(0.50),
        p99: at(0.99),
        max: all[all.len() - 1],
    }
}

fn show(name: &str, f: &Figures) {
    println!(
        "  {name:<9} {:>9.0} reviews/s   p50 {:>7.1} µs   p99 {:>7.1} µs   max {:>8.1} µs",
        f.per_second,
        f.p50.as_secs_f64() * 1e6,
        f.p99.as_secs_f64() * 1e6,
        f.max.as_secs_f64() * 1e6
    );
}

fn main() {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let webhook = Server::start(
            Handler::Mutate(MutationConfig::default()),
            TlsOptions::default(),
            None,
        )
        .await;
        let echo = Server::start(Handler::Echo, TlsOptions::default(), None).await;
        let body = review_body();
        println!(
            "admission reviews over TLS 1.3 keep-alive connections ({} byte review, {seconds} s per phase)",
            body.len()
        );
        for connections in [1, 4] {
            let mut best: Option<(Figures, Figures)> = None;
            for _round in 0..2 {
                let e = run(&echo, connections, &body, Duration::from_secs(seconds)).await;
                let w = run(&webhook, connections, &body, Duration::from_secs(seconds)).await;
                let better = best
                    .as_ref()
                    .is_none_or(|(be, bw)| e.per_second + w.per_second > be.per_second + bw.per_second);
                if better {
                    best = Some((e, w));
                }
            }
            let (e, w) = best.unwrap();
            println!("{connections} connection(s), best of 2 alternating rounds:");
            show("echo", &e);
            show("webhook", &w);
            println!(
                "  webhook/echo: {:.2}x the reviews/s, p99 {:.2}x",
                w.per_second / e.per_second,
                w.p99.as_secs_f64() / e.p99.as_secs_f64()
            );
        }
    });
}
