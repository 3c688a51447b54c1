//! The front door on TCP 15150 served by the agent itself: the mode without an extra hop.
//!
//! The shim's connections are TLS-terminated here and their ttrpc requests go through the same
//! rewrites as behind `agent-protocol-forwarder` (the container joins the pod network
//! namespace, the sandbox loses its DNS) before the agent's services — and so the policy gate —
//! see them; one implementation, `peerpod-forwarder`'s ([`peerpod_forwarder::front_door`] for
//! `apf.json`, TLS and the pod network, [`peerpod_forwarder::dispatch`] for the connections).
//! Enabled by `kata-agent --front-door-config /run/peerpod/apf.json`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use peerpod_forwarder::dispatch::Dispatcher;
pub use peerpod_forwarder::front_door::{FrontDoor, FrontDoorError, FrontDoorOptions};
use tokio::net::TcpListener;

/// The front door, prepared (TLS configured, pod network up, port bound) before the agent
/// serves.
#[derive(Debug)]
pub struct Prepared {
    door: FrontDoor,
    listener: TcpListener,
}

/// Prepares the front door per `options`: nothing is bound unless the pod network is up.
pub async fn prepare(options: FrontDoorOptions) -> Result<Prepared, FrontDoorError> {
    let door = FrontDoor::prepare(options).await?;
    match door.bind().await {
        Ok(listener) => Ok(Prepared { door, listener }),
        Err(e) => {
            door.teardown().await;
            Err(e)
        }
    }
}

/// The options from the agent's flags.
pub fn options(
    config: PathBuf,
    listen: String,
    pod_namespace: PathBuf,
    imds_nat: bool,
    disable_tls: bool,
) -> FrontDoorOptions {
    FrontDoorOptions {
        config,
        listen,
        pod_namespace,
        imds_nat,
        disable_tls,
        ..FrontDoorOptions::default()
    }
}

/// A running front door.
pub(crate) struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<FrontDoor>,
}

impl Prepared {
    /// Serves `services` (the agent's, policy-gated) on the front door until [`Running::stop`].
    pub(crate) fn start(self, services: HashMap<String, ttrpc::r#async::Service>) -> Running {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let Prepared { door, listener } = self;
        let task = tokio::spawn(async move {
            let dispatcher = Arc::new(Dispatcher::new(door.rewriter(), services));
            door.serve(listener, dispatcher, async {
                let _ = stopped.await;
            })
            .await;
            door
        });
        Running { stop, task }
    }
}

impl Running {
    /// Stops accepting and tears the pod network down.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(door) => door.teardown().await,
            Err(e) => {
                tracing::error!(error = %e, "the front door task failed; the pod network is left as it is")
            }
        }
    }
}
