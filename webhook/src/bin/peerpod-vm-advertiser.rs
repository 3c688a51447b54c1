//! `peerpod-vm-advertiser`: sets this node's `kata.peerpods.io/vm` capacity to
//! `PEERPODS_LIMIT_PER_NODE` and removes it at shutdown while still its owner.

use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use peerpod_webhook::advertiser::{Advertised, Advertiser, AdvertiserConfig};

/// Advertises the per-node pod VM limit on the node's status (run as a DaemonSet).
///
/// Environment: NODE_NAME (required), PEERPODS_LIMIT_PER_NODE (default 10; negative: nothing
/// is advertised), POD_VM_EXTENDED_RESOURCE (default kata.peerpods.io/vm), POD_NAME (the
/// owner annotation's value; default: the host name).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Seconds between checks that the capacity is still there (re-added when missing).
    #[arg(long, default_value_t = 60)]
    recheck_seconds: u64,
    /// Where the service account's token and ca.crt are mounted.
    #[arg(long, default_value = peerpod_webhook::advertiser::SERVICE_ACCOUNT_DIR)]
    service_account_dir: std::path::PathBuf,
    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    log_format: String,
    /// Log level (RUST_LOG overrides it).
    #[arg(long, default_value = "info")]
    log_level: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    peerpod_logging::init(&args.log_level, args.log_format.parse()?)?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = AdvertiserConfig::from_lookup(|n| std::env::var(n).ok())?;
    let advertiser = Advertiser::in_cluster(config, &args.service_account_dir)
        .context("cannot reach the API server")?;
    run(
        &advertiser,
        Duration::from_secs(args.recheck_seconds.max(1)),
    )
    .await
}

async fn run(advertiser: &Advertiser, recheck: Duration) -> anyhow::Result<()> {
    // The handlers first: a SIGTERM that arrives just after the capacity is set must still
    // withdraw it, not kill the process with the capacity left behind.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot handle SIGTERM")?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot handle SIGINT")?;
    let first = advertiser
        .advertise()
        .await
        .context("cannot advertise the pod VM capacity")?;
    let mut tick = tokio::time::interval(recheck);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tick.tick(), if first == Advertised::Set => {
                if let Err(e) = advertiser.ensure().await {
                    tracing::warn!(
                        error = %peerpod_webhook::error_chain(&e),
                        "capacity check failed; retrying later"
                    );
                }
            }
        }
    }
    let outcome = advertiser
        .withdraw()
        .await
        .context("cannot withdraw the pod VM capacity")?;
    tracing::info!(?outcome, "stopped");
    Ok(())
}
