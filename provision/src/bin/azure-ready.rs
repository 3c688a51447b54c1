//! `azure-ready`: reports the VM Ready to the Azure WireServer (upstream's podvm
//! `azure-ready.service`), retrying until `--timeout`. Exits non-zero with the cause when it
//! could not.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use peerpod_provision::azure_ready::{self, Retry};

/// Report Ready to the Azure WireServer.
#[derive(Parser)]
#[command(name = "azure-ready")]
struct Cli {
    /// The WireServer's base URL (tests; env AZURE_READY_WIRESERVER).
    #[arg(long)]
    wireserver: Option<String>,
    /// Seconds to keep retrying before giving up.
    #[arg(long, default_value_t = 240)]
    timeout: u64,
    /// Log level (trace, debug, info, warn, error).
    #[arg(long, default_value = "info")]
    log_level: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = peerpod_logging::init(&cli.log_level, peerpod_logging::Format::Text) {
        eprintln!("azure-ready: {e}");
        return ExitCode::FAILURE;
    }
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("azure-ready: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let retry = Retry::with_deadline(Duration::from_secs(cli.timeout));
    let base = cli
        .wireserver
        .clone()
        .or_else(|| std::env::var("AZURE_READY_WIRESERVER").ok())
        .unwrap_or_else(|| azure_ready::WIRESERVER.to_owned());
    rt.block_on(azure_ready::report_ready(&base, retry))
        .context("reporting Ready failed")?;
    Ok(())
}
