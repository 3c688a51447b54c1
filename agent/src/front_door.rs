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
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use peerpod_forwarder::dispatch::Dispatcher;
pub use peerpod_forwarder::front_door::{FrontDoor, FrontDoorError, FrontDoorOptions};
use peerpod_forwarder::podnet::command::CommandRunner;
use tokio::net::TcpListener;

use crate::runtime::reaper::{Exit, Reaper};

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

/// Runs a command and waits for it through the agent's reaper: the agent reaps every child, so
/// `Command::output`'s own wait would find none.
#[derive(Debug)]
struct ReaperRunner(Arc<Reaper>);

impl CommandRunner for ReaperRunner {
    fn output(&self, command: &mut Command) -> std::io::Result<Output> {
        use std::io::Read as _;
        use std::os::unix::process::ExitStatusExt as _;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let pid = i32::try_from(child.id()).map_err(std::io::Error::other)?;
        let slot = self.0.register(pid);
        let mut stderr = child.stderr.take();
        let stderr_reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(s) = stderr.as_mut() {
                let _ = s.read_to_end(&mut buf);
            }
            buf
        });
        let mut stdout = Vec::new();
        if let Some(mut s) = child.stdout.take() {
            s.read_to_end(&mut stdout)?;
        }
        let stderr = stderr_reader.join().unwrap_or_default();
        // Called from a namespace worker thread, never from the agent's runtime threads.
        let exit = futures::executor::block_on(slot.wait());
        self.0.forget(pid, &slot);
        let status = match exit {
            Exit::Code(code) => std::process::ExitStatus::from_raw(code << 8),
            Exit::Signal(signal) => std::process::ExitStatus::from_raw(signal),
        };
        Ok(Output {
            status,
            stdout,
            stderr,
        })
    }
}

/// The front door through the agent's life: whatever state it is in when the agent stops,
/// on success or on any error, [`Door::close`] tears the pod network down.
pub(crate) enum Door {
    /// No front door (or already closed).
    Closed,
    /// Prepared, not serving yet.
    Prepared(Box<Prepared>),
    /// Serving.
    Running(Running),
}

impl Door {
    /// Whether the door is prepared and not yet serving.
    pub(crate) fn is_prepared(&self) -> bool {
        matches!(self, Self::Prepared(_))
    }

    /// Whether the door serves.
    pub(crate) fn is_running(&self) -> bool {
        matches!(self, Self::Running(_))
    }

    /// Starts a prepared door (see [`Prepared::start`]); otherwise does nothing.
    pub(crate) fn start(
        &mut self,
        services: HashMap<String, ttrpc::r#async::Service>,
        reaper: Arc<Reaper>,
    ) {
        if let Self::Prepared(prepared) = std::mem::replace(self, Self::Closed) {
            *self = Self::Running((*prepared).start(services, reaper));
        }
    }

    /// Stops serving if it serves and tears the pod network down; harmless when closed.
    pub(crate) async fn close(&mut self) {
        match std::mem::replace(self, Self::Closed) {
            Self::Closed => {}
            Self::Prepared(prepared) => {
                let Prepared { door, listener } = *prepared;
                drop(listener);
                door.teardown().await;
            }
            Self::Running(running) => running.stop().await,
        }
    }
}

impl From<Option<Prepared>> for Door {
    fn from(prepared: Option<Prepared>) -> Self {
        prepared.map_or(Self::Closed, |p| Self::Prepared(Box::new(p)))
    }
}

/// A running front door.
pub(crate) struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<FrontDoor>,
}

impl Prepared {
    /// Serves `services` (the agent's, policy-gated) on the front door until [`Running::stop`];
    /// from now on the pod network runs `iptables` through `reaper`, the agent's only waiter.
    pub(crate) fn start(
        self,
        services: HashMap<String, ttrpc::r#async::Service>,
        reaper: Arc<Reaper>,
    ) -> Running {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let Prepared { mut door, listener } = self;
        door.set_command_runner(Arc::new(ReaperRunner(reaper)));
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
