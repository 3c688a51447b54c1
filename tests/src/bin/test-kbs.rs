//! `test-kbs`: a local KBS that speaks Trustee's protocol, for tests and demos.
//!
//! ```sh
//! test-kbs --config kbs.toml
//! ```
//! See `peerpod_tests::kbs::config` for the file's format, and `docs/testing-attestation.md`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use peerpod_tests::kbs::RunningKbs;
use peerpod_tests::kbs::config::KbsConfig;

/// A local KBS speaking Trustee's KBS protocol (RCAR 0.4.0), for tests and demos. Never use it
/// to protect real secrets.
#[derive(Parser, Debug)]
#[command(name = "test-kbs", version)]
struct Cli {
    /// The configuration file (TOML).
    #[arg(long)]
    config: PathBuf,
    /// Listen here instead of the configured address.
    #[arg(long)]
    listen: Option<String>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let config = KbsConfig::load(&cli.config).map_err(anyhow::Error::msg)?;
    let listen = cli.listen.unwrap_or(config.listen);
    let kbs = RunningKbs::start(config.options, &listen, config.tls)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("cannot start the KBS on {listen}"))?;
    println!("test-kbs: serving {}", kbs.url());
    kbs.wait();
    Ok(())
}
