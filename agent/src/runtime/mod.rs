//! The container runtime: the sandbox, its containers and their processes.
//!
//! Containers are made by youki's `libcontainer` (see `docs/design/agent-runtime.md` for why and
//! how), always through the one-shot [`helper`] process, never inside the agent. The pieces:
//!
//! - [`Runtime`]: the facade the RPCs call — sandbox, create/start/exec/wait/signal/stdio/remove.
//! - [`spec`]: the request's protobuf OCI spec → `config.json`, with the agent's rewrites.
//! - [`storage`]: storages (tmpfs, directories, bind mounts) prepared before containers use them.
//! - [`io`]: the agent's ends of each process's stdio pipes.
//! - [`reaper`]: the one waiter for every child; exits land in per-process slots.
//!
//! The [`Runtime`]'s methods are split by stage: `sandbox` (CreateSandbox, DestroySandbox),
//! `create` (CreateContainer: bundle, spec rewrites), `lifecycle` (start, pause, update, stats,
//! OOM events), `process` (exec, wait, signal, stdio), `cleanup` (RemoveContainer); `spawn`
//! holds what create and exec share (stdio set-up and the helper call that starts a process).
//!
//! State lives in memory, one lock per concern; each container has a lifecycle lock so that
//! create, start, exec and remove of one container do not interleave, while different
//! containers proceed in parallel.

mod cgroups;
mod cleanup;
mod create;
mod executor;
pub mod helper;
mod io;
mod lifecycle;
mod process;
pub mod reaper;
mod resources;
mod sandbox;
mod spawn;
pub mod spec;
mod storage;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::AgentError;
pub use create::Reservation;
use helper::Helper;
use io::ProcessIo;
use peerpod_text::error_chain;
use reaper::{ExitSlot, Reaper};
pub(crate) use storage::release_bundle as release_pulled_bundle;

/// Where the runtime keeps its files, and how it starts helpers.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// State (libcontainer's root) and bundles live under this directory (on tmpfs).
    pub state_dir: PathBuf,
    /// The agent binary, re-executed as the runtime helper.
    pub helper_exe: PathBuf,
    /// The cgroup under which containers' cgroups are made.
    pub cgroup_parent: String,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/run/kata-agent"),
            helper_exe: PathBuf::from("/proc/self/exe"),
            cgroup_parent: "/kata-agent".to_owned(),
        }
    }
}

/// The sandbox (the pod), once CreateSandbox made it.
#[derive(Debug)]
struct Sandbox {
    id: String,
    storages: Vec<storage::Mounted>,
    /// Where the pinned IPC and UTS namespaces are (`ipc`, `uts`, and `pid` with a shared PID
    /// namespace), once made.
    namespaces: Option<PathBuf>,
    /// The pause process holding the shared PID namespace, if the sandbox has one.
    pause: Option<(i32, Arc<ExitSlot>)>,
}

/// A container's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Created,
    Running,
    Paused,
}

#[derive(Debug)]
struct Container {
    id: String,
    /// The container's process as configured (after the agent's rewrites): what its exec'd
    /// processes inherit.
    process: Option<oci_spec::runtime::Process>,
    bundle: PathBuf,
    /// The container's cgroup path (relative to each hierarchy's root).
    cgroup: PathBuf,
    /// Held across each lifecycle operation of this container.
    lifecycle: tokio::sync::Mutex<Status>,
    init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    storages: Vec<storage::Mounted>,
}

#[derive(Debug)]
struct Process {
    exec_id: String,
    pid: i32,
    exit: Arc<ExitSlot>,
    io: ProcessIo,
}

/// The sandbox's containers and processes.
#[derive(Debug)]
pub struct Runtime {
    config: RuntimeConfig,
    helper: Helper,
    reaper: Arc<Reaper>,
    sandbox: Mutex<Option<Sandbox>>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Ids of containers whose CreateContainer is in progress.
    creating: Mutex<HashSet<String>>,
    consoles: AtomicU64,
    /// Ids of containers in which the OOM killer struck, for GetOOMEvent.
    oom_tx: tokio::sync::mpsc::UnboundedSender<String>,
    oom_rx: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<String>>,
}

impl Runtime {
    /// A runtime whose children are reaped by `reaper`.
    pub fn new(config: RuntimeConfig, reaper: Arc<Reaper>) -> Self {
        let helper = Helper::new(config.helper_exe.clone(), Arc::clone(&reaper));
        let (oom_tx, oom_rx) = tokio::sync::mpsc::unbounded_channel();
        Self {
            config,
            helper,
            reaper,
            sandbox: Mutex::new(None),
            containers: Mutex::new(HashMap::new()),
            creating: Mutex::new(HashSet::new()),
            consoles: AtomicU64::new(0),
            oom_tx,
            oom_rx: tokio::sync::Mutex::new(oom_rx),
        }
    }

    fn root(&self) -> PathBuf {
        self.config.state_dir.join("runtime")
    }

    fn container(&self, id: &str) -> Result<Arc<Container>, AgentError> {
        self.containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
            .ok_or_else(|| AgentError::NotFound {
                what: format!("container {id:?}"),
            })
    }

    fn process(&self, container_id: &str, exec_id: &str) -> Result<Arc<Process>, AgentError> {
        let container = self.container(container_id)?;
        if exec_id.is_empty() || exec_id == container.init.exec_id {
            return Ok(Arc::clone(&container.init));
        }
        container
            .execs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(exec_id)
            .cloned()
            .ok_or_else(|| AgentError::NotFound {
                what: format!("process {exec_id:?} in container {container_id:?}"),
            })
    }
}

/// Container and exec ids become file names: keep them to a safe alphabet.
fn check_id(id: &str, field: &str) -> Result<(), AgentError> {
    if peerpod_text::is_safe_name(id) && id.len() <= 256 {
        Ok(())
    } else {
        Err(AgentError::InvalidArgument(format!(
            "{field} {id:?} must be 1-256 letters, digits, '-', '_' or '.', not starting with '.'"
        )))
    }
}
