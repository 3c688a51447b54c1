//! `agent-protocol-forwarder`: the peer-pod VM's front door on TCP 15150, with upstream's flags
//! (Go style: `-flag value`, `-flag=value`, `--flag` all work).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{ArgAction, Parser};
use peerpod_forwarder::front_door::{FrontDoor, FrontDoorOptions, notify};
use peerpod_forwarder::proxy::{Forwarder, connect_agent};
use peerpod_forwarder::tls::TlsFlags;
use tracing::info;

/// How long each client connection waits for the agent's socket (upstream: 150 s).
const AGENT_DIAL_TIMEOUT: Duration = Duration::from_secs(150);

#[derive(Debug, Parser)]
#[command(
    name = "agent-protocol-forwarder",
    about = "The peer-pod VM's front door: TLS on 15150 to the kata agent's socket"
)]
struct Flags {
    /// Path to the daemon config file (apf.json).
    #[arg(long, default_value = "/run/peerpod/apf.json")]
    config: PathBuf,
    /// Listen address.
    #[arg(long, default_value = "0.0.0.0:15150")]
    listen: String,
    /// Path to the kata agent socket.
    #[arg(
        long = "kata-agent-socket",
        default_value = "/run/kata-containers/agent.sock"
    )]
    kata_agent_socket: PathBuf,
    /// Path to the network namespace where the pod runs.
    #[arg(long = "pod-namespace", default_value = "/run/netns/podns")]
    pod_namespace: PathBuf,
    /// Network interface used for tunnel traffic (accepted for compatibility; the kernel picks
    /// the route to the worker).
    #[arg(long = "host-interface", default_value = "")]
    host_interface: String,
    /// CA certificate file: client certificates must chain to it.
    #[arg(long = "ca-cert-file")]
    ca_cert_file: Option<String>,
    /// Server certificate file.
    #[arg(long = "cert-file")]
    cert_file: Option<String>,
    /// Server key file.
    #[arg(long = "cert-key")]
    cert_key: Option<String>,
    /// Do not check client certificates (tests only).
    #[arg(long = "tls-skip-verify", action = ArgAction::Set, num_args = 0..=1, default_value = "false", default_missing_value = "true", require_equals = true)]
    tls_skip_verify: bool,
    /// Serve plain TCP (tests only).
    #[arg(long = "disable-tls", action = ArgAction::Set, num_args = 0..=1, default_value = "false", default_missing_value = "true", require_equals = true)]
    disable_tls: bool,
    /// Give the pod a path to the cloud's instance metadata service (169.254.169.254) through
    /// the pod VM, with NAT, as upstream's setup-nat-for-imds service does (off by default:
    /// the IMDS serves the pod VM's user data).
    #[arg(long = "imds-nat", action = ArgAction::Set, num_args = 0..=1, default_value = "false", default_missing_value = "true", require_equals = true)]
    imds_nat: bool,
    /// Upstream's SSH tunnel: not supported here.
    #[arg(long = "secure-comms", action = ArgAction::Set, num_args = 0..=1, default_value = "false", default_missing_value = "true", require_equals = true)]
    secure_comms: bool,
    /// Upstream's SSH tunnel inbounds: not supported here.
    #[arg(long = "secure-comms-inbounds", default_value = "")]
    secure_comms_inbounds: String,
    /// Upstream's SSH tunnel outbounds: not supported here.
    #[arg(long = "secure-comms-outbounds", default_value = "")]
    secure_comms_outbounds: String,
    /// Print the version and exit.
    #[arg(long, action = ArgAction::SetTrue)]
    version: bool,
    /// Log level (RUST_LOG overrides).
    #[arg(long = "log-level", default_value = "info")]
    log_level: String,
}

/// Go's flag package takes `-name`; clap takes `--name`. Single-dash long flags get a dash.
fn go_style(args: impl Iterator<Item = String>) -> Vec<String> {
    args.enumerate()
        .map(|(i, a)| {
            if i > 0 && a.len() > 2 && a.starts_with('-') && !a.starts_with("--") {
                format!("-{a}")
            } else {
                a
            }
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let flags = Flags::parse_from(go_style(std::env::args()));
    if flags.version {
        println!("agent-protocol-forwarder {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    peerpod_logging::init(&flags.log_level, peerpod_logging::Format::Text)
        .context("cannot set up logging")?;
    if flags.secure_comms
        || !flags.secure_comms_inbounds.is_empty()
        || !flags.secure_comms_outbounds.is_empty()
    {
        bail!(
            "-secure-comms (upstream's SSH tunnel) is not supported by this forwarder: use TLS (apf.json tls-server-cert, tls-server-key, tls-client-ca)"
        );
    }
    if !flags.host_interface.is_empty() {
        info!(interface = %flags.host_interface, "-host-interface is accepted and not needed: the VXLAN socket follows the route to the worker");
    }
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(run(flags))
}

async fn run(flags: Flags) -> anyhow::Result<()> {
    let options = FrontDoorOptions {
        config: flags.config.clone(),
        listen: flags.listen.clone(),
        pod_namespace: flags.pod_namespace.clone(),
        tls: TlsFlags {
            cert_file: flags.cert_file.clone(),
            key_file: flags.cert_key.clone(),
            ca_file: flags.ca_cert_file.clone(),
            skip_verify: flags.tls_skip_verify,
        },
        disable_tls: flags.disable_tls,
        imds_nat: flags.imds_nat,
    };
    // Configuration, TLS and the pod network first: nothing is served before the pod can
    // reach its network.
    let door = FrontDoor::prepare(options)
        .await
        .map_err(|e| anyhow::anyhow!(peerpod_text::error_chain(&e)))?;
    let served = serve(&flags, &door).await;
    door.teardown().await;
    served
}

async fn serve(flags: &Flags, door: &FrontDoor) -> anyhow::Result<()> {
    info!(socket = %flags.kata_agent_socket.display(), "waiting for the agent's socket");
    drop(connect_agent(&flags.kata_agent_socket, None).await?);
    let listener = door
        .bind()
        .await
        .map_err(|e| anyhow::anyhow!(peerpod_text::error_chain(&e)))?;
    info!("agent-protocol-forwarder serving");
    // Signal handlers first, so a stop right after READY is a clean one.
    let shutdown = shutdown_signal()?;
    // The unit is Type=notify: ready only now, with the pod network up and the port bound.
    notify("READY=1");
    let forwarder = Arc::new(Forwarder::new(
        door.rewriter(),
        flags.kata_agent_socket.clone(),
        AGENT_DIAL_TIMEOUT,
    ));
    door.serve(listener, forwarder, shutdown).await;
    notify("STOPPING=1");
    info!("shutting down");
    Ok(())
}

/// SIGTERM or SIGINT, with the handlers installed now.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
