//! `api-server-rest`: the REST endpoint for containers on the pod's loopback (see
//! `confidential_data_hub::rest`). Flags as upstream's.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use confidential_data_hub::config::{DEFAULT_AA_SOCKET, DEFAULT_SOCKET};
use confidential_data_hub::rest::{Features, Rest, serve};

/// Serves CDH resources and attestation agent calls over HTTP to the pod's containers.
#[derive(Parser, Debug)]
#[command(name = "api-server-rest", version)]
struct Cli {
    /// Listen address.
    #[arg(short = 'b', long = "bind", default_value = "127.0.0.1:8006")]
    bind: String,
    /// resource, attestation or all.
    #[arg(short = 'f', long = "features", default_value = "resource")]
    features: String,
    /// The confidential data hub's socket.
    #[arg(short = 'c', long = "cdh_addr", visible_alias = "cdh-addr", default_value = DEFAULT_SOCKET)]
    cdh_addr: String,
    /// The attestation agent's socket.
    #[arg(short = 'a', long = "aa_addr", visible_alias = "aa-addr", default_value = DEFAULT_AA_SOCKET)]
    aa_addr: String,
    /// Deadline of each call to the CDH or the agent, in seconds.
    #[arg(long, default_value = "50")]
    timeout_secs: u64,
    /// Log format: text, or json.
    #[arg(long, default_value = "text")]
    log_format: String,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    peerpod_logging::init("info", cli.log_format.parse()?)?;
    let Some(features) = Features::parse(&cli.features) else {
        bail!(
            "--features {:?} is not resource, attestation or all",
            cli.features
        );
    };
    let rest = Arc::new(Rest::new(
        features,
        &cli.cdh_addr,
        &cli.aa_addr,
        Duration::from_secs(cli.timeout_secs.max(1)),
    ));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&cli.bind)
            .await
            .with_context(|| format!("cannot listen on {}", cli.bind))?;
        tracing::info!(addr = %cli.bind, features = %cli.features, "api-server-rest serving");
        let shutdown = async {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        };
        serve(listener, rest, shutdown).await?;
        Ok(())
    })
}
