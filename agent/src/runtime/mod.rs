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
//! State lives in memory, one lock per concern; each container has a lifecycle lock so that
//! create, start, exec and remove of one container do not interleave, while different
//! containers proceed in parallel.

mod cgroups;
mod executor;
pub mod helper;
mod io;
pub mod reaper;
mod resources;
pub mod spec;
mod storage;

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType, Spec};
use peerpod_protocols::kata::agent;

use crate::error::AgentError;
use helper::{Answer, Helper, Request};
use io::ProcessIo;
use reaper::{Exit, ExitSlot, Reaper};

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
    consoles: AtomicU64,
    /// Ids of containers in which the OOM killer struck, for GetOOMEvent.
    oom_tx: tokio::sync::mpsc::UnboundedSender<String>,
    oom_rx: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<String>>,
}

/// How a new process's stdio is set up: pipes, or a terminal whose master the process's
/// runtime sends back over a console socket.
enum Stdio {
    Pipes(ProcessIo, Vec<OwnedFd>),
    Terminal(ConsoleSocket),
}

/// A listening socket libcontainer connects to, to hand over a terminal's master side.
struct ConsoleSocket {
    path: PathBuf,
    listener: std::os::unix::net::UnixListener,
}

impl ConsoleSocket {
    /// Accepts the runtime's connection and takes the terminal master it sends.
    async fn receive(self) -> Result<OwnedFd, AgentError> {
        let path = self.path.clone();
        let received = tokio::task::spawn_blocking(move || -> std::io::Result<OwnedFd> {
            self.listener.set_nonblocking(true)?;
            let deadline = Instant::now() + Duration::from_secs(10);
            let stream = loop {
                match self.listener.accept() {
                    Ok((stream, _)) => break stream,
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            && Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => return Err(e),
                }
            };
            stream.set_nonblocking(false)?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut buf = [0u8; 4096];
            let (_, fds) = crate::sys::recv_with_fds(stream.as_fd(), &mut buf)?;
            fds.into_iter()
                .next()
                .ok_or_else(|| std::io::Error::other("the console socket carried no terminal"))
        })
        .await
        .map_err(|e| AgentError::internal("console socket", e))?;
        let _ = std::fs::remove_file(&path);
        received.map_err(|e| AgentError::internal("cannot receive the process's terminal", e))
    }
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
            consoles: AtomicU64::new(0),
            oom_tx,
            oom_rx: tokio::sync::Mutex::new(oom_rx),
        }
    }

    /// Stdio for a new process: a terminal if its spec asks for one, else pipes.
    fn stdio(&self, terminal: bool) -> Result<Stdio, AgentError> {
        if terminal {
            let dir = self.config.state_dir.join("tty");
            std::fs::create_dir_all(&dir)
                .map_err(|e| AgentError::internal(format!("cannot create {}", dir.display()), e))?;
            let path = dir.join(format!(
                "{}.sock",
                self.consoles.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_file(&path);
            let listener = std::os::unix::net::UnixListener::bind(&path).map_err(|e| {
                AgentError::internal(format!("cannot listen on {}", path.display()), e)
            })?;
            return Ok(Stdio::Terminal(ConsoleSocket { path, listener }));
        }
        let (io, ends) =
            ProcessIo::pipes().map_err(|e| AgentError::internal("cannot create stdio pipes", e))?;
        Ok(Stdio::Pipes(io, ends.into_vec()))
    }

    /// Calls the helper with the stdio set up, and returns the new process's pid and streams.
    /// `what` names the operation in errors.
    async fn spawn_with(
        &self,
        request: Request,
        stdio: Stdio,
        what: &str,
    ) -> Result<(i32, ProcessIo), AgentError> {
        let (fds, console, pipes) = match stdio {
            Stdio::Pipes(io, fds) => (fds, None, Some(io)),
            Stdio::Terminal(console) => (Vec::new(), Some(console), None),
        };
        let answer = self.helper.call(request, fds).await;
        let pid = match answer {
            Ok(Answer::Pid { pid }) => Ok(pid),
            Ok(other) => Err(AgentError::internal(
                what,
                format!("unexpected helper answer {other:?}"),
            )),
            Err(e) => Err(AgentError::internal(what, e)),
        };
        let pid = match pid {
            Ok(pid) => pid,
            Err(e) => {
                if let Some(console) = &console {
                    let _ = std::fs::remove_file(&console.path);
                }
                return Err(e);
            }
        };
        let io = match (pipes, console) {
            (Some(io), _) => io,
            (None, Some(console)) => {
                let master = console.receive().await?;
                ProcessIo::terminal(master)
                    .map_err(|e| AgentError::internal("cannot set up the terminal", e))?
            }
            (None, None) => {
                return Err(AgentError::internal(what, "no stdio was set up"));
            }
        };
        Ok((pid, io))
    }

    fn root(&self) -> PathBuf {
        self.config.state_dir.join("runtime")
    }

    /// CreateSandbox: prepares the sandbox's storages and the IPC and UTS namespaces its
    /// containers share (with the sandbox's hostname).
    pub async fn create_sandbox(
        &self,
        request: &agent::CreateSandboxRequest,
    ) -> Result<(), AgentError> {
        if let Some(existing) = self
            .sandbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            return Err(AgentError::AlreadyExists {
                what: format!("sandbox {:?}", existing.id),
            });
        }
        check_id(&request.sandbox_id, "sandbox_id").or_else(|e| {
            if request.sandbox_id.is_empty() {
                Ok(())
            } else {
                Err(e)
            }
        })?;
        let storages = storage::prepare_all(&request.storages)?;
        let dir = self.config.state_dir.join("sandbox-ns");
        let made = self
            .helper
            .call(
                Request::SandboxNamespaces {
                    dir: dir.clone(),
                    hostname: request.hostname.clone(),
                    pid: request.sandbox_pidns,
                },
                Vec::new(),
            )
            .await;
        let pause = match made {
            Ok(Answer::Pid { pid }) => Some((pid, self.reaper.register(pid))),
            Ok(_) => None,
            Err(e) => {
                storages.iter().for_each(storage::Mounted::release);
                release_namespaces(&dir);
                return Err(AgentError::internal(
                    "cannot create the sandbox's namespaces",
                    e,
                ));
            }
        };
        let mut sandbox = self.sandbox.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = sandbox.as_ref() {
            storages.iter().for_each(storage::Mounted::release);
            return Err(AgentError::AlreadyExists {
                what: format!("sandbox {:?}", existing.id),
            });
        }
        *sandbox = Some(Sandbox {
            id: request.sandbox_id.clone(),
            storages,
            namespaces: Some(dir),
            pause,
        });
        Ok(())
    }

    /// DestroySandbox: removes every container, then the sandbox's storages.
    pub async fn destroy_sandbox(&self) -> Result<(), AgentError> {
        let ids: Vec<String> = self
            .containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        for id in ids {
            self.remove_container(&id, Duration::from_secs(10)).await?;
        }
        let sandbox = self
            .sandbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(sandbox) = sandbox {
            if let Some((pid, exit)) = &sandbox.pause {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let _ = tokio::time::timeout(Duration::from_secs(5), exit.wait()).await;
                self.reaper.forget(*pid);
            }
            sandbox.storages.iter().for_each(storage::Mounted::release);
            if let Some(dir) = &sandbox.namespaces {
                release_namespaces(dir);
            }
            cgroups::remove(&self.sandbox_cgroup(&sandbox.id));
        }
        Ok(())
    }

    /// At agent shutdown: destroys the sandbox, then removes the agent's own cgroup parent.
    pub async fn shutdown(&self) -> Result<(), AgentError> {
        let result = self.destroy_sandbox().await;
        cgroups::remove(&self.config.cgroup_parent);
        result
    }

    fn sandbox_cgroup(&self, sandbox: &str) -> String {
        format!(
            "{}/{sandbox}",
            self.config.cgroup_parent.trim_end_matches('/')
        )
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

    /// CreateContainer: storages, bundle, and a created container whose process waits for
    /// StartContainer.
    pub async fn create_container(
        &self,
        request: &agent::CreateContainerRequest,
    ) -> Result<(), AgentError> {
        let id = request.container_id.clone();
        check_id(&id, "container_id")?;
        if self.container(&id).is_ok() {
            return Err(AgentError::AlreadyExists {
                what: format!("container {id:?}"),
            });
        }
        let mut spec = spec::oci_spec(&request.OCI)
            .map_err(|e| AgentError::InvalidArgument(error_chain(&e)))?;

        let storages = storage::prepare_all(&request.storages)?;
        let result = self.create_prepared(&id, &request.exec_id, &mut spec).await;
        match result {
            Ok((bundle, init)) => {
                let cgroup = spec
                    .linux()
                    .as_ref()
                    .and_then(|l| l.cgroups_path().clone())
                    .unwrap_or_default();
                let container = Arc::new(Container {
                    id: id.clone(),
                    bundle,
                    cgroup,
                    lifecycle: tokio::sync::Mutex::new(Status::Created),
                    init,
                    execs: Mutex::new(HashMap::new()),
                    storages,
                });
                self.containers
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(id, container);
                Ok(())
            }
            Err(e) => {
                storages.iter().for_each(storage::Mounted::release);
                Err(e)
            }
        }
    }

    async fn create_prepared(
        &self,
        id: &str,
        exec_id: &str,
        spec: &mut Spec,
    ) -> Result<(PathBuf, Arc<Process>), AgentError> {
        let root_path = spec
            .root()
            .as_ref()
            .map(|r| r.path().clone())
            .ok_or_else(|| AgentError::InvalidArgument("the OCI spec has no root".to_owned()))?;
        if !root_path.is_dir() {
            return Err(AgentError::FailedPrecondition(format!(
                "the container's root filesystem {} does not exist; prepare it with a storage",
                root_path.display()
            )));
        }
        self.rewrite(id, spec);
        apply_network_sysctls(spec)?;
        let bundle = self.config.state_dir.join("bundles").join(id);
        std::fs::create_dir_all(&bundle)
            .map_err(|e| AgentError::internal(format!("cannot create {}", bundle.display()), e))?;
        spec.save(bundle.join("config.json"))
            .map_err(|e| AgentError::internal("cannot write the container's config.json", e))?;

        let terminal = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        let stdio = match self.stdio(terminal) {
            Ok(stdio) => stdio,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&bundle);
                return Err(e);
            }
        };
        let request = Request::Create {
            id: id.to_owned(),
            root: self.root(),
            bundle: bundle.clone(),
            console_socket: match &stdio {
                Stdio::Terminal(console) => Some(console.path.clone()),
                Stdio::Pipes(..) => None,
            },
        };
        let (pid, io) = match self
            .spawn_with(request, stdio, &format!("cannot create container {id:?}"))
            .await
        {
            Ok(spawned) => spawned,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&bundle);
                return Err(e);
            }
        };
        tracing::debug!(container = %id, pid, "container created");
        let process = Arc::new(Process {
            exec_id: exec_id.to_owned(),
            pid,
            exit: self.reaper.register(pid),
            io,
        });
        Ok((bundle, process))
    }

    /// The agent's rewrites of a container spec: its cgroup under the agent's, and the network
    /// namespace shared with the agent (the sandbox's).
    fn rewrite(&self, id: &str, spec: &mut Spec) {
        let (sandbox, shared, shared_pid) = self
            .sandbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|s| (s.id.clone(), s.namespaces.clone(), s.pause.is_some()))
            .unwrap_or_else(|| ("no-sandbox".to_owned(), None, false));
        let sandbox = if sandbox.is_empty() {
            "sandbox".to_owned()
        } else {
            sandbox
        };
        if let Some(linux) = spec.linux_mut() {
            let sandbox = self.sandbox_cgroup(&sandbox);
            linux.set_cgroups_path(Some(PathBuf::from(format!("{sandbox}/{id}"))));
            // Whatever the spec lists, as upstream: the network namespace is the sandbox's (the
            // agent's own), IPC and UTS are the sandbox's, PID is the sandbox's when it shares
            // one and the container's own otherwise, mount is always the container's own. Other
            // kinds (user, cgroup, time) stay as the spec has them.
            let mut namespaces: Vec<LinuxNamespace> = linux
                .namespaces()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .filter(|n| {
                    !matches!(
                        n.typ(),
                        LinuxNamespaceType::Network
                            | LinuxNamespaceType::Ipc
                            | LinuxNamespaceType::Uts
                            | LinuxNamespaceType::Pid
                            | LinuxNamespaceType::Mount
                    )
                })
                .collect();
            let joined = |kind: &str| shared.as_ref().map(|dir| dir.join(kind));
            let pid = if shared_pid { joined("pid") } else { None };
            // The agent's own network namespace, named by path: the container joins it, and the
            // runtime then accepts the pod's network sysctls.
            let network = PathBuf::from(format!("/proc/{}/ns/net", std::process::id()));
            for (typ, path) in [
                (LinuxNamespaceType::Network, Some(network)),
                (LinuxNamespaceType::Mount, None),
                (LinuxNamespaceType::Pid, pid),
                (LinuxNamespaceType::Ipc, joined("ipc")),
                (LinuxNamespaceType::Uts, joined("uts")),
            ] {
                let mut namespace = LinuxNamespace::default();
                namespace.set_typ(typ);
                namespace.set_path(path);
                namespaces.push(namespace);
            }
            linux.set_namespaces(Some(namespaces));
        }
        // A joined UTS namespace already has the sandbox's hostname.
        if shared.is_some() {
            spec.set_hostname(None);
        }
    }

    /// StartContainer: lets the created container's process run.
    pub async fn start_container(&self, id: &str) -> Result<(), AgentError> {
        let container = self.container(id)?;
        let mut status = container.lifecycle.lock().await;
        if *status != Status::Created {
            return Err(AgentError::FailedPrecondition(format!(
                "container {id:?} was already started"
            )));
        }
        self.helper
            .call(
                Request::Start {
                    id: id.to_owned(),
                    root: self.root(),
                },
                Vec::new(),
            )
            .await
            .map_err(|e| AgentError::internal(format!("cannot start container {id:?}"), e))?;
        *status = Status::Running;
        self.watch_oom(&container);
        Ok(())
    }

    /// Polls the container's OOM-kill counter while the container exists; each new kill is an
    /// event for GetOOMEvent. (Polling every second works the same on cgroup v1 and v2.)
    fn watch_oom(&self, container: &Arc<Container>) {
        let files = oom_counter_files(&container.cgroup);
        if files.is_empty() {
            return;
        }
        let weak = Arc::downgrade(container);
        let tx = self.oom_tx.clone();
        tokio::spawn(async move {
            // The cgroup was made with the container: every kill in it counts, even one that
            // happened before this task first looked.
            let mut seen = 0;
            loop {
                let Some(container) = weak.upgrade() else {
                    break;
                };
                let exited = container.init.exit.exit().is_some();
                let now = read_oom_kills(&files);
                if now > seen {
                    tracing::warn!(container = %container.id, kills = now - seen, "out-of-memory kill in container");
                    if tx.send(container.id.clone()).is_err() {
                        break;
                    }
                }
                seen = now;
                // One last look after the init exits, since the kill may be what ended it.
                if exited {
                    break;
                }
                drop(container);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// GetOOMEvent: waits for the next OOM kill in any container and names the container.
    pub async fn next_oom_event(&self) -> Result<String, AgentError> {
        self.oom_rx
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| AgentError::FailedPrecondition("the agent is shutting down".to_owned()))
    }

    /// StatsContainer: the container's cgroup statistics and the guest's network counters.
    pub async fn stats_container(
        &self,
        id: &str,
    ) -> Result<agent::StatsContainerResponse, AgentError> {
        let container = self.container(id)?;
        let cgroup = container.cgroup.clone();
        let id = container.id.clone();
        let pid = container.init.pid;
        tokio::task::spawn_blocking(move || {
            let mut reply = agent::StatsContainerResponse::new();
            reply.cgroup_stats = protobuf::MessageField::some(resources::stats(&cgroup, &id)?);
            reply.network_stats = network_stats(pid);
            Ok(reply)
        })
        .await
        .map_err(|e| AgentError::internal("stats", e))?
    }

    /// UpdateContainer: new resource limits for a running container.
    pub async fn update_container(
        &self,
        request: &agent::UpdateContainerRequest,
    ) -> Result<(), AgentError> {
        let container = self.container(&request.container_id)?;
        let limits = spec::oci_resources(&request.resources)
            .map_err(|e| AgentError::InvalidArgument(error_chain(&e)))?;
        let _status = container.lifecycle.lock().await;
        let cgroup = container.cgroup.clone();
        let id = container.id.clone();
        tokio::task::spawn_blocking(move || resources::update(&cgroup, &id, &limits))
            .await
            .map_err(|e| AgentError::internal("update", e))?
    }

    /// PauseContainer / ResumeContainer: freezes or thaws every process of the container.
    pub async fn pause_container(&self, id: &str, pause: bool) -> Result<(), AgentError> {
        let container = self.container(id)?;
        let mut status = container.lifecycle.lock().await;
        let (from, to) = if pause {
            (Status::Running, Status::Paused)
        } else {
            (Status::Paused, Status::Running)
        };
        if *status != from {
            let state = if pause { "running" } else { "paused" };
            return Err(AgentError::FailedPrecondition(format!(
                "container {id:?} is not {state}"
            )));
        }
        let request = if pause {
            Request::Pause {
                id: id.to_owned(),
                root: self.root(),
            }
        } else {
            Request::Resume {
                id: id.to_owned(),
                root: self.root(),
            }
        };
        let verb = if pause { "pause" } else { "resume" };
        self.helper
            .call(request, Vec::new())
            .await
            .map_err(|e| AgentError::internal(format!("cannot {verb} container {id:?}"), e))?;
        *status = to;
        Ok(())
    }

    /// ExecProcess: runs a new process in a running container.
    pub async fn exec_process(
        &self,
        request: &agent::ExecProcessRequest,
    ) -> Result<(), AgentError> {
        let container = self.container(&request.container_id)?;
        check_id(&request.exec_id, "exec_id")?;
        let status = container.lifecycle.lock().await;
        if *status != Status::Running {
            return Err(AgentError::FailedPrecondition(format!(
                "container {:?} is not running{}",
                container.id,
                if *status == Status::Paused {
                    " (it is paused)"
                } else {
                    ""
                }
            )));
        }
        if container
            .execs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&request.exec_id)
        {
            return Err(AgentError::AlreadyExists {
                what: format!(
                    "process {:?} in container {:?}",
                    request.exec_id, container.id
                ),
            });
        }
        let process = spec::oci_process(&request.process)
            .map_err(|e| AgentError::InvalidArgument(error_chain(&e)))?;
        let terminal = process.terminal().unwrap_or(false);
        let file = container
            .bundle
            .join(format!("exec-{}.json", request.exec_id));
        let json =
            serde_json::to_vec(&process).map_err(|e| AgentError::internal("encode process", e))?;
        std::fs::write(&file, json)
            .map_err(|e| AgentError::internal(format!("cannot write {}", file.display()), e))?;

        let stdio = self.stdio(terminal)?;
        let call = Request::Exec {
            id: container.id.clone(),
            root: self.root(),
            bundle: container.bundle.clone(),
            process: file.clone(),
            console_socket: match &stdio {
                Stdio::Terminal(console) => Some(console.path.clone()),
                Stdio::Pipes(..) => None,
            },
        };
        let what = format!("cannot run a process in container {:?}", container.id);
        let spawned = self.spawn_with(call, stdio, &what).await;
        let _ = std::fs::remove_file(&file);
        let (pid, io) = spawned?;
        tracing::debug!(container = %container.id, exec = %request.exec_id, pid, "process started");
        let process = Arc::new(Process {
            exec_id: request.exec_id.clone(),
            pid,
            exit: self.reaper.register(pid),
            io,
        });
        container
            .execs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(request.exec_id.clone(), process);
        Ok(())
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

    /// WaitProcess: the process's exit status, once it has exited.
    pub async fn wait_process(&self, container_id: &str, exec_id: &str) -> Result<i32, AgentError> {
        let process = self.process(container_id, exec_id)?;
        let exit: Exit = process.exit.wait().await;
        Ok(exit.status())
    }

    /// SignalProcess: with an empty exec id, every process of the container; else that one
    /// process. As upstream, SIGTERM to a container's init that does not handle SIGTERM (pid 1
    /// of its namespace ignores unhandled signals) becomes SIGKILL, so stopping a pod works.
    pub async fn signal_process(
        &self,
        container_id: &str,
        exec_id: &str,
        signal: u32,
    ) -> Result<(), AgentError> {
        let process = self.process(container_id, exec_id)?;
        let mut signal = i32::try_from(signal)
            .ok()
            .and_then(|s| nix::sys::signal::Signal::try_from(s).ok())
            .ok_or_else(|| AgentError::InvalidArgument(format!("{signal} is not a signal")))?;
        if process.exit.exit().is_some() {
            // Already gone: nothing to signal, and the pid may belong to someone else now.
            return Ok(());
        }
        let container = self.container(container_id)?;
        let is_init = Arc::ptr_eq(&process, &container.init);
        if is_init
            && signal == nix::sys::signal::Signal::SIGTERM
            && !handles_signal(process.pid, 15)
        {
            signal = nix::sys::signal::Signal::SIGKILL;
        }
        if exec_id.is_empty() {
            let kill = Request::Kill {
                id: container.id.clone(),
                root: self.root(),
                signal: signal as i32,
                all: true,
            };
            match self.helper.call(kill, Vec::new()).await {
                Ok(_) => return Ok(()),
                // The processes may have exited meanwhile; fall back to the init alone.
                Err(e) => {
                    tracing::debug!(container = %container.id, error = %e, "signalling all processes failed")
                }
            }
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(process.pid), signal)
            .or_else(|e| {
                if e == nix::errno::Errno::ESRCH {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(|e| AgentError::internal(format!("cannot signal process {}", process.pid), e))
    }

    /// ReadStdout / ReadStderr.
    pub async fn read_stream(
        &self,
        container_id: &str,
        exec_id: &str,
        stderr: bool,
        len: usize,
    ) -> Result<Vec<u8>, AgentError> {
        let process = self.process(container_id, exec_id)?;
        process.io.read(stderr, len).await.map_err(io_error)
    }

    /// WriteStdin.
    pub async fn write_stdin(
        &self,
        container_id: &str,
        exec_id: &str,
        data: &[u8],
    ) -> Result<usize, AgentError> {
        let process = self.process(container_id, exec_id)?;
        process.io.write(data).await.map_err(io_error)
    }

    /// TtyWinResize.
    pub fn resize_terminal(
        &self,
        container_id: &str,
        exec_id: &str,
        rows: u32,
        columns: u32,
    ) -> Result<(), AgentError> {
        let process = self.process(container_id, exec_id)?;
        let rows = u16::try_from(rows)
            .map_err(|_| AgentError::InvalidArgument(format!("{rows} rows is too many")))?;
        let columns = u16::try_from(columns)
            .map_err(|_| AgentError::InvalidArgument(format!("{columns} columns is too many")))?;
        process.io.resize(rows, columns).map_err(io_error)
    }

    /// CloseStdin.
    pub async fn close_stdin(&self, container_id: &str, exec_id: &str) -> Result<(), AgentError> {
        let process = self.process(container_id, exec_id)?;
        process.io.close_stdin().await;
        Ok(())
    }

    /// RemoveContainer: kills every process, waits for them, deletes the container's cgroup
    /// and state, releases its storages and bundle. A zero timeout waits as long as it takes.
    pub async fn remove_container(&self, id: &str, timeout: Duration) -> Result<(), AgentError> {
        let container = self.container(id)?;
        let removal = self.remove_inner(&container);
        if timeout.is_zero() {
            removal.await?;
        } else {
            tokio::time::timeout(timeout, removal).await.map_err(|_| {
                AgentError::internal(
                    format!("cannot remove container {id:?}"),
                    format!("its processes did not exit within {timeout:?}"),
                )
            })??;
        }
        self.containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
        Ok(())
    }

    async fn remove_inner(&self, container: &Container) -> Result<(), AgentError> {
        let _status = container.lifecycle.lock().await;
        let id = container.id.clone();
        if container.init.exit.exit().is_none() {
            let kill = Request::Kill {
                id: id.clone(),
                root: self.root(),
                signal: nix::sys::signal::Signal::SIGKILL as i32,
                all: true,
            };
            if let Err(e) = self.helper.call(kill, Vec::new()).await {
                // The init may have exited meanwhile; killing it directly is the fallback.
                tracing::debug!(container = %id, error = %e, "kill through libcontainer failed");
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(container.init.pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        container.init.exit.wait().await;
        let execs: Vec<Arc<Process>> = container
            .execs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        for process in execs {
            process.exit.wait().await;
            self.reaper.forget(process.pid);
        }
        self.reaper.forget(container.init.pid);
        let delete = Request::Delete {
            id: id.clone(),
            root: self.root(),
            force: true,
        };
        self.helper
            .call(delete, Vec::new())
            .await
            .map_err(|e| AgentError::internal(format!("cannot delete container {id:?}"), e))?;
        container
            .storages
            .iter()
            .for_each(storage::Mounted::release);
        let _ = std::fs::remove_dir_all(&container.bundle);
        Ok(())
    }
}

/// Takes the network sysctls (`net.*`) out of the spec and sets them in the agent's network
/// namespace, which the container joins: it is the pod's, and Kubernetes' network sysctls are
/// per pod. (libcontainer refuses network sysctls for a container joining its caller's network
/// namespace, as runc does, so the agent applies them itself.)
fn apply_network_sysctls(spec: &mut Spec) -> Result<(), AgentError> {
    let Some(linux) = spec.linux_mut() else {
        return Ok(());
    };
    let Some(sysctls) = linux.sysctl().clone() else {
        return Ok(());
    };
    let (network, other): (HashMap<String, String>, HashMap<String, String>) = sysctls
        .into_iter()
        .partition(|(key, _)| key.replace('/', ".").starts_with("net."));
    for (key, value) in &network {
        let name = key.replace('/', ".");
        let valid = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            && !name.contains("..")
            && !value.contains('\n');
        if !valid {
            return Err(AgentError::InvalidArgument(format!(
                "invalid sysctl {key:?} = {value:?}"
            )));
        }
        let path = PathBuf::from("/proc/sys").join(name.replace('.', "/"));
        std::fs::write(&path, value).map_err(|e| {
            AgentError::internal(format!("cannot set the sysctl {name} to {value:?}"), e)
        })?;
    }
    linux.set_sysctl((!other.is_empty()).then_some(other));
    Ok(())
}

/// Unmounts and removes the pinned sandbox namespaces.
fn release_namespaces(dir: &std::path::Path) {
    for kind in ["ipc", "uts", "pid"] {
        let target = dir.join(kind);
        let _ = nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&target);
    }
    let _ = std::fs::remove_dir(dir);
}

/// The files that count OOM kills in a cgroup: `memory.events` (v2) or `memory.oom_control`
/// (v1), whichever exist.
fn oom_counter_files(cgroup: &std::path::Path) -> Vec<PathBuf> {
    let relative = cgroup.strip_prefix("/").unwrap_or(cgroup);
    [
        PathBuf::from("/sys/fs/cgroup")
            .join(relative)
            .join("memory.events"),
        PathBuf::from("/sys/fs/cgroup/memory")
            .join(relative)
            .join("memory.oom_control"),
    ]
    .into_iter()
    .filter(|p| p.exists())
    .collect()
}

fn read_oom_kills(files: &[PathBuf]) -> u64 {
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| {
                    l.strip_prefix("oom_kill ")
                        .and_then(|n| n.trim().parse::<u64>().ok())
                })
                .collect::<Vec<_>>()
        })
        .sum()
}

/// Whether a process has a handler for `signal` (the `SigCgt` mask of `/proc/<pid>/status`).
fn handles_signal(pid: i32, signal: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (signal - 1)) != 0)
}

/// Interface counters as the container's init sees them (`/proc/<pid>/net/dev`).
fn network_stats(pid: i32) -> Vec<agent::NetworkStats> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/dev")) else {
        return Vec::new();
    };
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let n: Vec<u64> = counters
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            if n.len() < 12 {
                return None;
            }
            let mut stats = agent::NetworkStats::new();
            stats.name = name.trim().to_owned();
            stats.rx_bytes = n[0];
            stats.rx_packets = n[1];
            stats.rx_errors = n[2];
            stats.rx_dropped = n[3];
            stats.tx_bytes = n[8];
            stats.tx_packets = n[9];
            stats.tx_errors = n[10];
            stats.tx_dropped = n[11];
            Some(stats)
        })
        .collect()
}

fn io_error(e: io::IoError) -> AgentError {
    match e {
        io::IoError::Eof => AgentError::Eof,
        io::IoError::NoSuchStream(why) => AgentError::FailedPrecondition(why.to_owned()),
        io::IoError::Io(e) => AgentError::internal("stdio", e),
    }
}

/// Container and exec ids become file names: keep them to a safe alphabet.
fn check_id(id: &str, field: &str) -> Result<(), AgentError> {
    let ok = !id.is_empty()
        && id.len() <= 256
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !id.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(AgentError::InvalidArgument(format!(
            "{field} {id:?} must be 1-256 letters, digits, '-', '_' or '.', not starting with '.'"
        )))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
