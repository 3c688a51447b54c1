//! The attestation agent on the simulated Azure SNP CVM against the local KBS: the first
//! `GetToken` (a whole attestation), a cached one, and evidence generation; then the size of the
//! stripped binary.
//!
//! Run with `make bench` (or `cargo bench -p attestation-agent --bench attest`). The baseline,
//! run in the same process, is what upstream's agent does on every `GetToken`: a new client, a
//! new TEE key and a whole attestation — here, a fresh agent per call. `BENCH_ITERS` sets the
//! rounds (default 6 attestations, 2000 cached calls).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use attestation_agent::AttestationAgent;
use common::{aa_config, cvm, kbs_options};
use peerpod_tests::bench::{ms, percentile};
use peerpod_tests::cvm::Flavour;
use peerpod_tests::kbs::RunningKbs;

/// How long the simulated paravisor (like Azure's) refuses to refresh the report again.
const REFRESH_LIMIT: Duration = Duration::from_millis(2100);

fn main() {
    let rounds: usize = std::env::var("BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (_dir, cvm) = cvm(Flavour::Snp, "aa-bench");
    let kbs = RunningKbs::start(kbs_options(Some(&cvm)), "127.0.0.1:0", None).expect("KBS");
    let config = aa_config(&kbs.url(), Some(&cvm));

    rt.block_on(async {
        // Evidence: one report refresh and a quote per call, spaced past the refresh limit.
        let aa = AttestationAgent::new(&config, None).expect("AA");
        let mut evidence = Vec::new();
        for i in 0..rounds {
            tokio::time::sleep(REFRESH_LIMIT).await;
            let started = Instant::now();
            aa.get_evidence(&[i as u8; 64]).await.expect("evidence");
            evidence.push(started.elapsed());
        }
        let started = Instant::now();
        aa.get_evidence(&[0xee; 64]).await.expect("evidence");
        let back_to_back = started.elapsed();

        // Baseline: a fresh agent per GetToken (new client, new key, whole attestation).
        let mut first = Vec::new();
        for _ in 0..rounds {
            tokio::time::sleep(REFRESH_LIMIT).await;
            let aa = AttestationAgent::new(&config, None).expect("AA");
            let started = Instant::now();
            aa.get_token("kbs").await.expect("token");
            first.push(started.elapsed());
        }

        // Ours after the first: the cached token and key.
        let aa = AttestationAgent::new(&config, None).expect("AA");
        aa.get_token("kbs").await.expect("token");
        let mut cached = Vec::new();
        for _ in 0..rounds * 333 {
            let started = Instant::now();
            aa.get_token("kbs").await.expect("token");
            cached.push(started.elapsed());
        }

        let (f50, c50) = (percentile(&mut first, 0.5), percentile(&mut cached, 0.5));
        println!("attestation-agent, simulated az-snp-vtpm CVM + local KBS over HTTP");
        println!(
            "  evidence (report refresh + quote)   p50 {:8.2} ms  max {:8.2} ms  ({} calls)",
            ms(percentile(&mut evidence, 0.5)),
            ms(percentile(&mut evidence, 1.0)),
            evidence.len()
        );
        println!(
            "  evidence right after another        {:8.2} ms  (the paravisor refreshes at most every 2 s; upstream sleeps 3 s every time)",
            ms(back_to_back)
        );
        println!(
            "  first GetToken (whole attestation)  p50 {:8.2} ms  max {:8.2} ms  ({} calls) (upstream pays this, plus a fixed 3 s sleep on Azure, on every GetToken)",
            ms(f50),
            ms(percentile(&mut first, 1.0)),
            first.len()
        );
        println!(
            "  cached GetToken                     p50 {:8.3} ms  p99 {:8.3} ms  ({} calls)",
            ms(c50),
            ms(percentile(&mut cached, 0.99)),
            cached.len()
        );
        println!(
            "  ratio first / cached (p50)          {:8.0}x",
            f50.as_secs_f64() / c50.as_secs_f64().max(1e-9)
        );
    });

    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_attestation-agent"));
    let stripped = std::env::temp_dir().join(format!("aa-stripped-{}", std::process::id()));
    std::fs::copy(binary, &stripped).expect("copy the binary");
    let ok = std::process::Command::new("strip")
        .arg(&stripped)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let size = std::fs::metadata(&stripped).map(|m| m.len()).unwrap_or(0);
    let _ = std::fs::remove_file(&stripped);
    if ok {
        println!(
            "  binary {} stripped: {:.2} MiB",
            binary.display(),
            size as f64 / (1024.0 * 1024.0)
        );
    } else {
        println!("  binary size: strip (binutils) is not installed");
    }
}
