//! `kata-agent`: the Kata agent for peer-pod VMs.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use kata_agent::config::{AgentConfig, Sources};
use kata_agent::rpc::GuestInfo;
use kata_agent::runtime::RuntimeConfig;
use kata_agent::server;

/// The Kata agent: serves the Kata agent API inside the pod VM, every request decided by the
/// agent policy.
#[derive(Parser, Debug)]
#[command(name = "kata-agent", version)]
struct Cli {
    /// Agent configuration file (TOML, upstream keys such as server_addr, log_level,
    /// policy_file, guest_components_procs). Without it, the kernel command line's agent.*
    /// options are read.
    #[arg(short, long)]
    config: Option<PathBuf>,

    /// Where to read the kernel command line from.
    #[arg(long, default_value = "/proc/cmdline", hide = true)]
    cmdline: PathBuf,

    /// Log format: JSON lines (as upstream) or human-readable text.
    #[arg(long, value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,

    /// Where container state and bundles live (a tmpfs).
    #[arg(long, default_value = "/run/kata-agent", hide = true)]
    state_dir: PathBuf,

    /// The cgroup under which containers' cgroups are made.
    #[arg(long, default_value = "/kata-agent", hide = true)]
    cgroup_parent: String,

    /// The only directory CopyFile may write under.
    #[arg(long, default_value = kata_agent::rpc::DEFAULT_COPY_ROOT, hide = true)]
    copy_root: PathBuf,

    /// The resolver configuration CreateSandbox's DNS settings go to.
    #[arg(long, default_value = "/etc/resolv.conf", hide = true)]
    resolv_conf: PathBuf,

    /// Serve the pod VM's front door (TLS on 15150, agent-protocol-forwarder's rewrites) in the
    /// agent itself, configured by this apf.json (as agent-protocol-forwarder's -config);
    /// the pod network is set up before anything is served.
    #[arg(long)]
    front_door_config: Option<PathBuf>,

    /// The front door's listen address.
    #[arg(long, default_value = "0.0.0.0:15150")]
    front_door_listen: String,

    /// The pod's network namespace (the tunnel goes there, containers join it).
    #[arg(long, default_value = "/run/netns/podns")]
    pod_namespace: PathBuf,

    /// Give the pod a NATed path to the IMDS (169.254.169.254) through the pod VM.
    #[arg(long)]
    imds_nat: bool,

    /// Serve the front door in plain TCP (tests only).
    #[arg(long, hide = true)]
    front_door_disable_tls: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

fn main() -> Result<()> {
    // The runtime helper is this binary too; it must not start threads or parse flags.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == kata_agent::runtime::helper::HELPER_ARG)
    {
        kata_agent::runtime::helper::helper_main();
    }
    let cli = Cli::parse();
    let cmdline = match &cli.config {
        Some(_) => None,
        None => std::fs::read_to_string(&cli.cmdline).ok(),
    };
    let env = |name: &str| std::env::var(name).ok();
    let (config, notes) = AgentConfig::load(&Sources {
        config_file: cli.config.as_deref(),
        cmdline: cmdline.as_deref(),
        env: &env,
    })
    .context("cannot read the agent configuration")?;

    let format = match cli.log_format {
        LogFormat::Json => peerpod_logging::Format::Json,
        LogFormat::Text => peerpod_logging::Format::Text,
    };
    peerpod_logging::init(&config.log_level.as_str().to_lowercase(), format)?;
    for note in &notes {
        tracing::warn!("{note}");
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let policy = server::load_policy(&config);
        let runtime = RuntimeConfig {
            state_dir: cli.state_dir.clone(),
            helper_exe: std::env::current_exe().context("cannot find the agent's own binary")?,
            cgroup_parent: cli.cgroup_parent.clone(),
        };
        let guest = GuestInfo {
            copy_root: cli.copy_root.clone(),
            resolv_conf: cli.resolv_conf.clone(),
            ..GuestInfo::default()
        };
        let front_door = match &cli.front_door_config {
            Some(apf) => Some(
                kata_agent::front_door::prepare(kata_agent::front_door::options(
                    apf.clone(),
                    cli.front_door_listen.clone(),
                    cli.pod_namespace.clone(),
                    cli.imds_nat,
                    cli.front_door_disable_tls,
                ))
                .await
                .map_err(|e| anyhow::anyhow!(peerpod_text::error_chain(&e)))
                .context("the front door cannot open")?,
            ),
            None => None,
        };
        server::serve_with_front_door(
            &config,
            policy,
            guest,
            runtime,
            front_door,
            shutdown_signal(),
        )
        .await
        .with_context(|| format!("the agent failed on {}", config.server_addr))
    })
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; the agent stops only when killed");
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
