//! `attestation-agent`: serves the attestation agent API on its ttrpc socket.
//!
//! Flags as upstream's: `-c/--config-file` (aa.toml), `-a/--attestation_sock`,
//! `-t/--initdata-toml`, `-i/--initdata-digest` (standard base64). A command after the flags runs
//! one operation and exits instead of serving (for people and scripts): `token`, `evidence`,
//! `tee`, `resource <repository>/<type>/<tag>`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use attestation_agent::AttestationAgent;
use attestation_agent::config::AaConfig;
use attestation_agent::server::{DEFAULT_SOCKET, serve};
use base64::Engine;
use clap::{Parser, Subcommand};
use peerpod_policy::initdata::InitData;

/// The attestation agent of a peer-pod VM: proves the VM to Trustee's KBS and serves evidence,
/// tokens, initdata binding and runtime measurements over ttrpc.
#[derive(Parser, Debug)]
#[command(name = "attestation-agent", version)]
struct Cli {
    /// aa.toml; without it, defaults and the KBS from AA_KBC_PARAMS or agent.aa_kbc_params.
    #[arg(short = 'c', long = "config-file", visible_alias = "config")]
    config: Option<PathBuf>,
    /// The ttrpc socket.
    #[arg(short = 'a', long = "attestation_sock", visible_alias = "attestation-sock", default_value = DEFAULT_SOCKET)]
    socket: String,
    /// The initdata document: its digest is bound to the TEE at start and it is sent to the KBS.
    #[arg(short = 't', long = "initdata-toml", visible_alias = "initdata_toml")]
    initdata_toml: Option<PathBuf>,
    /// An initdata digest (standard base64) to bind at start, when no document is given.
    #[arg(
        short = 'i',
        long = "initdata-digest",
        visible_alias = "initdata_digest"
    )]
    initdata_digest: Option<String>,
    /// Log format: text, or json (one object per line).
    #[arg(long, default_value = "text")]
    log_format: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Attest to the KBS and print GetToken("kbs")'s reply.
    Token,
    /// Print evidence for report data given as hex (default: 64 zero bytes).
    Evidence {
        /// Report data, hex.
        #[arg(default_value = "")]
        report_data: String,
    },
    /// Print the detected TEE.
    Tee,
    /// Attest (once) and print a KBS resource.
    Resource {
        /// `<repository>/<type>/<tag>`.
        path: String,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let mut config =
        AaConfig::load(cli.config.as_deref()).context("cannot load the configuration")?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").ok();
    config.apply_kbc_params(
        std::env::var("AA_KBC_PARAMS").ok().as_deref(),
        cmdline.as_deref(),
    );
    peerpod_logging::init(&config.log_level, cli.log_format.parse()?)?;
    for w in &config.warnings {
        tracing::warn!("aa.toml: {w}");
    }
    let (digest, text) = match (&cli.initdata_toml, &cli.initdata_digest) {
        (Some(path), _) => {
            let raw =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let doc = InitData::parse(&raw)
                .with_context(|| format!("{} is not valid initdata", path.display()))?;
            (
                Some(doc.digest().as_bytes().to_vec()),
                Some(doc.text().to_string()),
            )
        }
        (None, Some(b64)) => (
            Some(
                base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .context("--initdata-digest is not standard base64")?,
            ),
            None,
        ),
        (None, None) => (None, None),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let aa =
            AttestationAgent::new(&config, text).context("cannot start the attestation agent")?;
        if let Some(d) = &digest {
            aa.bind_init_data(d)
                .await
                .context("the initdata does not match this TEE")?;
        }
        aa.init().await.context("cannot recover the event log")?;
        let aa = Arc::new(aa);
        let mut out = std::io::stdout();
        match cli.command {
            None => {
                serve(
                    &cli.socket,
                    aa,
                    peerpod_protocols::socket::shutdown_signal(),
                )
                .await?;
            }
            Some(Command::Token) => out.write_all(&aa.get_token("kbs").await?)?,
            Some(Command::Tee) => writeln!(out, "{}", aa.tee())?,
            Some(Command::Evidence { report_data }) => {
                let data = if report_data.is_empty() {
                    vec![0; 64]
                } else {
                    hex::decode(&report_data)?
                };
                out.write_all(&aa.get_evidence(&data).await?)?;
            }
            Some(Command::Resource { path }) => {
                let kbs = aa.kbs().context("no KBS configured")?;
                out.write_all(&kbs.resource(&path).await?)?;
            }
        }
        out.flush()?;
        Ok(())
    })
}
