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
pub mod helper;
mod io;
pub mod reaper;
pub mod spec;
mod storage;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use oci_spec::runtime::{LinuxNamespaceType, Spec};
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
}

/// A container's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Created,
    Running,
}

#[derive(Debug)]
struct Container {
    id: String,
    bundle: PathBuf,
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
}

impl Runtime {
    /// A runtime whose children are reaped by `reaper`.
    pub fn new(config: RuntimeConfig, reaper: Arc<Reaper>) -> Self {
        let helper = Helper::new(config.helper_exe.clone(), Arc::clone(&reaper));
        Self {
            config,
            helper,
            reaper,
            sandbox: Mutex::new(None),
            containers: Mutex::new(HashMap::new()),
        }
    }

    fn root(&self) -> PathBuf {
        self.config.state_dir.join("runtime")
    }

    /// CreateSandbox: records the sandbox and prepares its storages.
    pub fn create_sandbox(&self, request: &agent::CreateSandboxRequest) -> Result<(), AgentError> {
        let mut sandbox = self.sandbox.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = sandbox.as_ref() {
            return Err(AgentError::AlreadyExists {
                what: format!("sandbox {:?}", existing.id),
            });
        }
        let mut storages = Vec::new();
        for s in &request.storages {
            match storage::prepare(s) {
                Ok(mounted) => storages.push(mounted),
                Err(e) => {
                    storages.iter().for_each(storage::Mounted::release);
                    return Err(e);
                }
            }
        }
        *sandbox = Some(Sandbox {
            id: request.sandbox_id.clone(),
            storages,
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
        if let Some(sandbox) = self
            .sandbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            sandbox.storages.iter().for_each(storage::Mounted::release);
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
        if spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false)
        {
            return Err(AgentError::FailedPrecondition(
                "containers with a terminal are not supported yet".to_owned(),
            ));
        }

        let mut storages = Vec::new();
        for s in &request.storages {
            match storage::prepare(s) {
                Ok(mounted) => storages.push(mounted),
                Err(e) => {
                    storages.iter().for_each(storage::Mounted::release);
                    return Err(e);
                }
            }
        }
        let result = self.create_prepared(&id, &request.exec_id, &mut spec).await;
        match result {
            Ok((bundle, init)) => {
                let container = Arc::new(Container {
                    id: id.clone(),
                    bundle,
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
        let bundle = self.config.state_dir.join("bundles").join(id);
        std::fs::create_dir_all(&bundle)
            .map_err(|e| AgentError::internal(format!("cannot create {}", bundle.display()), e))?;
        spec.save(bundle.join("config.json"))
            .map_err(|e| AgentError::internal("cannot write the container's config.json", e))?;

        let (io, ends) =
            ProcessIo::pipes().map_err(|e| AgentError::internal("cannot create stdio pipes", e))?;
        let request = Request::Create {
            id: id.to_owned(),
            root: self.root(),
            bundle: bundle.clone(),
            console_socket: None,
        };
        let pid = match self.helper.call(request, ends.into_vec()).await {
            Ok(Answer::Pid { pid }) => pid,
            Ok(other) => {
                let _ = std::fs::remove_dir_all(&bundle);
                return Err(AgentError::internal(
                    "create container",
                    format!("unexpected answer {other:?}"),
                ));
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&bundle);
                return Err(AgentError::internal(
                    format!("cannot create container {id:?}"),
                    e,
                ));
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
        if let Some(linux) = spec.linux_mut() {
            let sandbox = self
                .sandbox
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .map(|s| s.id.clone())
                .unwrap_or_else(|| "no-sandbox".to_owned());
            let sandbox = self.sandbox_cgroup(&sandbox);
            linux.set_cgroups_path(Some(PathBuf::from(format!("{sandbox}/{id}"))));
            if let Some(namespaces) = linux.namespaces_mut() {
                namespaces.retain(|n| n.typ() != LinuxNamespaceType::Network);
            }
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
                "container {:?} is not running",
                container.id
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
        if process.terminal().unwrap_or(false) {
            return Err(AgentError::FailedPrecondition(
                "processes with a terminal are not supported yet".to_owned(),
            ));
        }
        let file = container
            .bundle
            .join(format!("exec-{}.json", request.exec_id));
        let json =
            serde_json::to_vec(&process).map_err(|e| AgentError::internal("encode process", e))?;
        std::fs::write(&file, json)
            .map_err(|e| AgentError::internal(format!("cannot write {}", file.display()), e))?;

        let (io, ends) =
            ProcessIo::pipes().map_err(|e| AgentError::internal("cannot create stdio pipes", e))?;
        let call = Request::Exec {
            id: container.id.clone(),
            root: self.root(),
            process: file.clone(),
            console_socket: None,
        };
        let answer = self.helper.call(call, ends.into_vec()).await;
        let _ = std::fs::remove_file(&file);
        let pid = match answer {
            Ok(Answer::Pid { pid }) => pid,
            Ok(other) => {
                return Err(AgentError::internal(
                    "exec",
                    format!("unexpected answer {other:?}"),
                ));
            }
            Err(e) => {
                return Err(AgentError::internal(
                    format!("cannot run a process in container {:?}", container.id),
                    e,
                ));
            }
        };
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

    /// SignalProcess: one process.
    pub fn signal_process(
        &self,
        container_id: &str,
        exec_id: &str,
        signal: u32,
    ) -> Result<(), AgentError> {
        let process = self.process(container_id, exec_id)?;
        let signal = i32::try_from(signal)
            .ok()
            .and_then(|s| nix::sys::signal::Signal::try_from(s).ok())
            .ok_or_else(|| AgentError::InvalidArgument(format!("{signal} is not a signal")))?;
        if process.exit.exit().is_some() {
            // Already gone: nothing to signal, and the pid may belong to someone else now.
            return Ok(());
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

fn io_error(e: io::IoError) -> AgentError {
    match e {
        io::IoError::Eof => AgentError::Eof,
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
