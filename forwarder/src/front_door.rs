//! The front door's start-up and shutdown, shared by both modes — the separate
//! `agent-protocol-forwarder` (relaying to the agent's socket) and the agent serving 15150
//! itself ([`crate::dispatch`]) — so both read `apf.json`, configure TLS, set up the pod network
//! and rewrite requests the same way:
//!
//! 1. [`FrontDoor::prepare`]: `apf.json` read and checked, the TLS configuration built (a bad
//!    certificate stops here), then the pod network set up (nothing is served without it);
//! 2. [`FrontDoor::bind`], then [`notify`] `READY=1` for systemd;
//! 3. [`FrontDoor::serve`] until shutdown, then [`FrontDoor::teardown`] of the pod network.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{error, info, warn};

use crate::config::{ApfConfig, ConfigError};
use crate::podnet::{PodNetwork, PodNetworkError};
use crate::rewrite::{RewriteOptions, Rewriter};
use crate::server::Connections;
use crate::tls::{TlsError, TlsFlags, server_config};

/// Why the front door could not open.
#[derive(Debug, thiserror::Error)]
pub enum FrontDoorError {
    /// `apf.json` is unusable.
    #[error("the front door configuration {path} is unusable")]
    Config {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: ConfigError,
    },
    /// TLS cannot be set up.
    #[error("TLS cannot be set up for the front door")]
    Tls(#[from] TlsError),
    /// The pod network cannot be set up.
    #[error("the pod network cannot be set up")]
    PodNetwork(#[from] PodNetworkError),
    /// The address cannot be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Upstream's flags that shape the front door (both modes take them).
#[derive(Debug, Clone)]
pub struct FrontDoorOptions {
    /// `apf.json` (`-config`).
    pub config: PathBuf,
    /// `-listen`.
    pub listen: String,
    /// `-pod-namespace`.
    pub pod_namespace: PathBuf,
    /// `-cert-file`, `-cert-key`, `-ca-cert-file`, `-tls-skip-verify`.
    pub tls: TlsFlags,
    /// `-disable-tls` (tests only).
    pub disable_tls: bool,
    /// `-imds-nat`.
    pub imds_nat: bool,
}

impl Default for FrontDoorOptions {
    fn default() -> Self {
        Self {
            config: PathBuf::from("/run/peerpod/apf.json"),
            listen: "0.0.0.0:15150".into(),
            pod_namespace: PathBuf::from(crate::rewrite::DEFAULT_POD_NETNS),
            tls: TlsFlags::default(),
            disable_tls: false,
            imds_nat: false,
        }
    }
}

/// A front door with its TLS configuration and its pod network up.
pub struct FrontDoor {
    options: FrontDoorOptions,
    tls: Option<TlsAcceptor>,
    network: Option<PodNetwork>,
}

impl std::fmt::Debug for FrontDoor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontDoor")
            .field("options", &self.options)
            .field("tls", &self.tls.is_some())
            .field("network", &self.network)
            .finish()
    }
}

impl FrontDoor {
    /// Reads `apf.json`, builds the TLS configuration and sets the pod network up.
    pub async fn prepare(options: FrontDoorOptions) -> Result<Self, FrontDoorError> {
        let config = ApfConfig::load(&options.config).map_err(|source| FrontDoorError::Config {
            path: options.config.display().to_string(),
            source,
        })?;
        let tls = if options.disable_tls {
            warn!("-disable-tls: the agent API is served in plain TCP (tests only)");
            None
        } else {
            Some(TlsAcceptor::from(Arc::new(server_config(
                &config.tls,
                &options.tls,
            )?)))
        };
        let network = match &config.pod_network {
            Some(net) => {
                let network = PodNetwork::new(net.clone(), options.pod_namespace.clone(), None)
                    .with_imds_nat(options.imds_nat);
                network.setup().await?;
                Some(network)
            }
            None => {
                warn!("apf.json has no pod-network: no tunnel is set up");
                None
            }
        };
        Ok(Self {
            options,
            tls,
            network,
        })
    }

    /// The rewrites for this pod (its network namespace).
    pub fn rewriter(&self) -> Rewriter {
        Rewriter::new(RewriteOptions {
            pod_netns: self.options.pod_namespace.display().to_string(),
            ..RewriteOptions::default()
        })
    }

    /// Binds the listen address.
    pub async fn bind(&self) -> Result<TcpListener, FrontDoorError> {
        let listener = TcpListener::bind(&self.options.listen)
            .await
            .map_err(|source| FrontDoorError::Bind {
                addr: self.options.listen.clone(),
                source,
            })?;
        info!(
            listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            tls = self.tls.is_some(),
            "front door serving"
        );
        Ok(listener)
    }

    /// Serves `listener` with `handler` until `shutdown` completes.
    pub async fn serve<C: Connections>(
        &self,
        listener: TcpListener,
        handler: Arc<C>,
        shutdown: impl Future<Output = ()>,
    ) {
        crate::server::serve(listener, self.tls.clone(), handler, shutdown).await;
    }

    /// From now on, runs `iptables` (the pod network's teardown) through `runner`: a process
    /// that becomes its children's reaper after [`FrontDoor::prepare`] must give one.
    pub fn set_command_runner(&mut self, runner: Arc<dyn crate::podnet::command::CommandRunner>) {
        if let Some(network) = &mut self.network {
            network.set_runner(runner);
        }
    }

    /// Tears the pod network down (logging what could not be removed).
    pub async fn teardown(self) {
        if let Some(network) = self.network
            && let Err(e) = network.teardown().await
        {
            error!(reason = %peerpod_text::error_chain(&e), "the pod network was not fully torn down");
        }
    }
}

/// Tells systemd `state` over `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket);
/// nothing when the variable is unset.
pub fn notify(state: &str) {
    use std::os::linux::net::SocketAddrExt as _;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let target = target.to_string_lossy().into_owned();
    let addr = match target.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(&target),
    };
    let sent = addr.and_then(|addr| {
        let socket = UnixDatagram::unbound()?;
        socket.send_to_addr(state.as_bytes(), &addr)
    });
    if let Err(e) = sent {
        warn!(socket = %target, error = %e, "cannot notify systemd");
    }
}
