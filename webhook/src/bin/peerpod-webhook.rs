//! `peerpod-webhook`: the peer-pods mutating admission webhook (see the library's docs).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use peerpod_webhook::mutate::MutationConfig;
use peerpod_webhook::review::Handler;
use peerpod_webhook::server::{DEFAULT_PORT, serve};
use peerpod_webhook::tls::{ReloadingCert, TlsOptions};

/// Peer-pods mutating admission webhook: AdmissionReview v1 on POST /mutate-v1-pod over HTTPS.
///
/// Environment: TARGET_RUNTIMECLASS (default kata-remote), POD_VM_EXTENDED_RESOURCE (default
/// kata.peerpods.io/vm), TLS_MIN_VERSION (VersionTLS12 or VersionTLS13), TLS_CIPHER_SUITES
/// (comma-separated Go names of TLS 1.2 suites).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)))]
    bind_address: SocketAddr,
    /// Directory holding the serving certificate and key (controller-runtime's default).
    #[arg(long, default_value = "/tmp/k8s-webhook-server/serving-certs")]
    cert_dir: PathBuf,
    /// Certificate chain file name in --cert-dir.
    #[arg(long, default_value = "tls.crt")]
    cert_name: String,
    /// Private key file name in --cert-dir.
    #[arg(long, default_value = "tls.key")]
    key_name: String,
    /// Seconds between checks of the certificate files for a new certificate.
    #[arg(long, default_value_t = 10)]
    cert_reload_seconds: u64,
    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    log_format: String,
    /// Log level (RUST_LOG overrides it).
    #[arg(long, default_value = "info")]
    log_level: String,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    peerpod_logging::init(&args.log_level, args.log_format.parse()?)?;
    let _ = rustls::crypto::ring::default_provider().install_default();

    let options = TlsOptions::parse(
        &env("TLS_MIN_VERSION").unwrap_or_default(),
        &env("TLS_CIPHER_SUITES").unwrap_or_default(),
    )?;
    let cert_path = args.cert_dir.join(&args.cert_name);
    let key_path = args.cert_dir.join(&args.key_name);
    let cert = ReloadingCert::load(&cert_path, &key_path)
        .context("cannot load the serving certificate (mount the webhook's TLS Secret there)")?;
    let _reloader = cert.spawn_reloader(Duration::from_secs(args.cert_reload_seconds.max(1)));
    let tls = Arc::new(options.server_config(cert)?);

    let config = MutationConfig::from_lookup(env);
    let listener = tokio::net::TcpListener::bind(args.bind_address)
        .await
        .with_context(|| format!("cannot listen on {}", args.bind_address))?;
    tracing::info!(
        address = %args.bind_address,
        runtime_class = %config.runtime_class,
        resource = %config.vm_resource,
        "peer-pods webhook serving"
    );
    serve(listener, tls, Handler::Mutate(config), shutdown_signal()).await;
    tracing::info!("shutting down");
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
