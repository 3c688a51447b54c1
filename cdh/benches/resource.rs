//! `GetResource` through the CDH's socket, with the attestation agent on its socket attesting
//! a simulated Azure SNP CVM to the local KBS: the first fetch (an attestation, a token, the
//! resource) and later ones (the cached token: one KBS round trip), and UnsealSecret of a vault
//! secret. Baseline, in the same process: a fresh agent and CDH per fetch — what a hub that
//! attests for every resource pays.
//!
//! Run with `make bench` (or `cargo bench -p confidential-data-hub --bench resource`).
//! `BENCH_ITERS` sets the number of later fetches (default 500) and fresh rounds (default 5).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use attestation_agent::AttestationAgent;
use attestation_agent::config::{AaConfig, KbsSection};
use confidential_data_hub::sealed::make;
use confidential_data_hub::{CdhConfig, Hub};
use peerpod_protocols::cdh::api::{GetResourceRequest, UnsealSecretInput};
use peerpod_protocols::cdh::api_ttrpc::{GetResourceServiceClient, SealedSecretServiceClient};
use peerpod_tests::bench::{ms, percentile};
use peerpod_tests::cvm::{CvmOptions, Flavour, SimulatedCvm};
use peerpod_tests::kbs::{KbsOptions, RunningKbs};
use peerpod_tests::scratch::ScratchDir;

/// The simulated paravisor (like Azure's) refreshes the HCL report at most every 2 s.
const REFRESH_LIMIT: Duration = Duration::from_millis(2100);

struct Servers {
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    cdh_socket: String,
}

impl Drop for Servers {
    fn drop(&mut self) {
        for s in self.stops.drain(..) {
            let _ = s.send(());
        }
    }
}

async fn servers(dir: &Path, run: usize, kbs: &RunningKbs, cvm: &SimulatedCvm) -> Servers {
    let config = AaConfig {
        kbs: Some(KbsSection {
            url: kbs.url(),
            cert: None,
            tee_key_algorithm: Default::default(),
        }),
        tpm: cvm.tpm_spec(),
        imds_url: cvm.imds_url(),
        tsm_root: "/nonexistent-tsm".into(),
        allow_sample: false,
        insecure_http: true,
        ..AaConfig::default()
    };
    let aa = Arc::new(AttestationAgent::new(&config, None).expect("AA"));
    let aa_socket = dir.join(format!("aa-{run}.sock"));
    let cdh_socket = dir.join(format!("cdh-{run}.sock"));
    let hub = Arc::new(
        Hub::new(
            CdhConfig::parse(&format!(
                "[kbc]\nname = \"cc_kbc\"\nurl = \"{}\"\n[aa]\naa_socket = \"unix://{}\"\n\
                 [peerpod]\ninsecure_http = true\n",
                kbs.url(),
                aa_socket.display()
            ))
            .expect("cdh.toml"),
        )
        .expect("hub"),
    );
    let (tx1, rx1) = tokio::sync::oneshot::channel::<()>();
    let (tx2, rx2) = tokio::sync::oneshot::channel::<()>();
    let aa_addr = format!("unix://{}", aa_socket.display());
    tokio::spawn(async move {
        let _ = attestation_agent::server::serve(&aa_addr, aa, async {
            let _ = rx1.await;
        })
        .await;
    });
    let cdh_addr = format!("unix://{}", cdh_socket.display());
    let addr = cdh_addr.clone();
    tokio::spawn(async move {
        let _ = confidential_data_hub::server::serve(&addr, hub, async {
            let _ = rx2.await;
        })
        .await;
    });
    while !(aa_socket.exists() && cdh_socket.exists()) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Servers {
        stops: vec![tx1, tx2],
        cdh_socket: cdh_addr,
    }
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(30_000_000_000)
}

fn main() {
    let iters: usize = std::env::var("BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let rounds = (iters / 100).clamp(3, 10);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = ScratchDir::new("cdh-bench").expect("scratch");
    let cvm = SimulatedCvm::start(CvmOptions::new(Flavour::Snp, dir.path())).expect("CVM");
    let signer = make::generate_key().expect("key");
    let mut options = KbsOptions::for_cvm(&cvm, None).expect("KBS");
    options
        .resources
        .insert("default/key/db".into(), vec![0x42; 64]);
    options.resources.insert(
        "default/sign/jwk".into(),
        make::public_jwk(&signer).to_string().into_bytes(),
    );
    let kbs = RunningKbs::start(options, "127.0.0.1:0", None).expect("KBS");
    let request = GetResourceRequest {
        ResourcePath: "kbs:///default/key/db".into(),
        ..Default::default()
    };
    rt.block_on(async {
        // Baseline: fresh components for every fetch.
        let mut fresh = Vec::new();
        for run in 0..rounds {
            tokio::time::sleep(REFRESH_LIMIT).await;
            let s = servers(dir.path(), run, &kbs, &cvm).await;
            let client = GetResourceServiceClient::new(
                ttrpc::r#async::Client::connect(&s.cdh_socket)
                    .await
                    .expect("connect"),
            );
            let started = Instant::now();
            client.get_resource(ctx(), &request).await.expect("first");
            fresh.push(started.elapsed());
        }

        // Ours: one set of components; later fetches reuse the token.
        tokio::time::sleep(REFRESH_LIMIT).await;
        let s = servers(dir.path(), rounds, &kbs, &cvm).await;
        let raw = ttrpc::r#async::Client::connect(&s.cdh_socket)
            .await
            .expect("connect");
        let client = GetResourceServiceClient::new(raw.clone());
        let started = Instant::now();
        client.get_resource(ctx(), &request).await.expect("first");
        let first = started.elapsed();
        let mut later = Vec::new();
        for _ in 0..iters {
            let started = Instant::now();
            client.get_resource(ctx(), &request).await.expect("later");
            later.push(started.elapsed());
        }
        let sealed = make::seal(
            &make::vault("kbs:///default/key/db"),
            &signer,
            "kbs:///default/sign/jwk",
        );
        let unseal = SealedSecretServiceClient::new(raw);
        let input = UnsealSecretInput {
            secret: sealed.into_bytes(),
            ..Default::default()
        };
        let mut unseals = Vec::new();
        for _ in 0..iters / 5 {
            let started = Instant::now();
            unseal.unseal_secret(ctx(), &input).await.expect("unseal");
            unseals.push(started.elapsed());
        }

        let (f50, l50) = (percentile(&mut fresh, 0.5), percentile(&mut later, 0.5));
        println!("confidential-data-hub, GetResource over ttrpc; attestation agent on a simulated az-snp-vtpm CVM; local KBS over HTTP");
        println!(
            "  fresh agent + CDH per fetch (baseline) p50 {:8.2} ms  ({} rounds)",
            ms(f50),
            fresh.len()
        );
        println!("  first fetch (attests)                      {:8.2} ms", ms(first));
        println!(
            "  later fetches (cached token)          p50 {:8.3} ms  p99 {:8.3} ms  ({} fetches)",
            ms(l50),
            ms(percentile(&mut later, 0.99)),
            later.len()
        );
        println!(
            "  UnsealSecret, vault (2 KBS fetches)   p50 {:8.3} ms  ({} calls)",
            ms(percentile(&mut unseals, 0.5)),
            unseals.len()
        );
        println!(
            "  ratio baseline / later (p50)               {:8.1}x",
            f50.as_secs_f64() / l50.as_secs_f64().max(1e-9)
        );
    });
}
