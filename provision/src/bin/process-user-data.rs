//! `process-user-data`: upstream's command line (`provision-files`, `-t/--user-data-fetch-timeout`,
//! `-v/--version`), plus `setup-scratch-storage` (upstream's shell script of that name) and
//! the test hooks `--root`, `--imds-url`, `--user-data-file`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use peerpod_provision::scratch::{self, ScratchOptions, ScratchOutcome};
use peerpod_provision::{ProvisionOptions, provision};

/// Process the pod VM's user data and provision its files.
#[derive(Parser)]
#[command(name = "process-user-data", disable_version_flag = true)]
struct Cli {
    /// Print the version.
    #[arg(short = 'v', long = "version", global = true)]
    version: bool,
    /// Log level (trace, debug, info, warn, error).
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Provision /run/peerpod from user data and initdata.
    ProvisionFiles {
        /// Timeout (in secs) for fetching user data.
        #[arg(short = 't', long = "user-data-fetch-timeout", default_value_t = 180)]
        user_data_fetch_timeout: u64,
        /// The IMDS user data URL (default: Azure's, when on Azure; env PEERPOD_IMDS_URL).
        #[arg(long)]
        imds_url: Option<String>,
        /// The user data file read first when it exists (env PEERPOD_USER_DATA_FILE; default
        /// /media/cidata/user-data).
        #[arg(long)]
        user_data_file: Option<PathBuf>,
        /// Root prefix for the outputs (tests; env PEERPOD_ROOT).
        #[arg(long, hide = true)]
        root: Option<PathBuf>,
    },
    /// Encrypt and mount the scratch space when /run/peerpod/scratch-space.marker exists.
    SetupScratchStorage {
        /// The block device.
        #[arg(long, default_value = scratch::TRUSTED_STORE)]
        device: PathBuf,
        /// Where to mount it.
        #[arg(long, default_value = scratch::MOUNT_POINT)]
        mount_point: PathBuf,
        /// dm-integrity (HMAC-SHA256) under the encryption (true or false).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        data_integrity: bool,
        /// Root prefix the marker is looked for under (tests; env PEERPOD_ROOT).
        #[arg(long, hide = true)]
        root: Option<PathBuf>,
    },
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn root_or_env(root: Option<PathBuf>) -> PathBuf {
    root.or_else(|| env_path("PEERPOD_ROOT"))
        .unwrap_or_else(|| PathBuf::from("/"))
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::ProvisionFiles {
            user_data_fetch_timeout,
            imds_url,
            user_data_file,
            root,
        } => {
            let mut options = ProvisionOptions::new(Duration::from_secs(user_data_fetch_timeout));
            options.imds_url = imds_url.or_else(|| std::env::var("PEERPOD_IMDS_URL").ok());
            options.user_data_file = user_data_file
                .or_else(|| env_path("PEERPOD_USER_DATA_FILE"))
                .unwrap_or_else(|| PathBuf::from(peerpod_provision::source::USER_DATA_FILE));
            options.root = root_or_env(root);
            let report = provision(&options).await.context(
                "provisioning failed: nothing was written and the pod VM will not serve",
            )?;
            tracing::info!(
                source = %report.source,
                written = ?report.written,
                refused = report.refused.len(),
                "provisioning done"
            );
        }
        Command::SetupScratchStorage {
            device,
            mount_point,
            data_integrity,
            root,
        } => {
            let options = ScratchOptions {
                root: root_or_env(root),
                device,
                mount_point,
                integrity: data_integrity,
                ..ScratchOptions::default()
            };
            if let ScratchOutcome::Mounted { device } = scratch::setup(&options)
                .await
                .context("scratch space setup failed: the kata agent will not start")?
            {
                tracing::info!(device = %device.display(), "scratch space ready");
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.version {
        println!("process-user-data {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let Some(command) = cli.command else {
        let _ = <Cli as clap::CommandFactory>::command().print_help();
        return ExitCode::SUCCESS;
    };
    if let Err(e) = peerpod_logging::init(&cli.log_level, peerpod_logging::Format::Text) {
        eprintln!("process-user-data: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("process-user-data: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The whole chain on one line, on stderr (the unit sends it to the console too).
            eprintln!("process-user-data: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
