//! The runtime helper: a one-shot process that makes one libcontainer call for the agent.
//!
//! libcontainer forks with `clone3` and keeps running Rust in the child, changes the working
//! directory and the dumpable flag of the calling process, and writes its `oom_score_adj`. None of
//! that is safe in the agent's multi-threaded async process, so each container operation runs in
//! a fresh process: the agent binary re-executed with [`HELPER_ARG`], single-threaded, which
//! receives one request (JSON, plus stdio descriptors) on a `SOCK_SEQPACKET` socket on its
//! standard input, answers, and exits. It creates containers and exec'd processes as *siblings*
//! of itself, so they are the agent's children and the agent's reaper sees their exits.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::executor;
use super::reaper::Reaper;
use crate::sys;

/// The first argument that turns the agent binary into the runtime helper.
pub const HELPER_ARG: &str = "__runtime-helper";

/// How long the agent waits for the helper's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// The largest request or answer.
const MAX_MESSAGE: usize = 64 * 1024;

/// One operation for the helper.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Request {
    /// Create a container from `bundle/config.json`; its init waits to be started.
    Create {
        id: String,
        root: PathBuf,
        bundle: PathBuf,
        console_socket: Option<PathBuf>,
    },
    /// Let a created container's init run its process.
    Start { id: String, root: PathBuf },
    /// Run the process described by the OCI `process` JSON file in a running container, under
    /// the seccomp profile of the container's `bundle/config.json`.
    Exec {
        id: String,
        root: PathBuf,
        bundle: PathBuf,
        process: PathBuf,
        console_socket: Option<PathBuf>,
    },
    /// Signal the container's init, or every process in it.
    Kill {
        id: String,
        root: PathBuf,
        signal: i32,
        all: bool,
    },
    /// Freeze every process of the container.
    Pause { id: String, root: PathBuf },
    /// Thaw them.
    Resume { id: String, root: PathBuf },
    /// Remove the container's cgroup and state.
    Delete {
        id: String,
        root: PathBuf,
        force: bool,
    },
    /// Make the sandbox's IPC and UTS namespaces (with `hostname`), kept alive by bind mounts
    /// on `dir/ipc` and `dir/uts` for containers to join.
    SandboxNamespaces {
        dir: PathBuf,
        hostname: String,
        /// Also a PID namespace, held by a pause process, pinned on `dir/pid`.
        pid: bool,
    },
}

/// The helper's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub(crate) enum Answer {
    /// The new process's pid (create, exec).
    Pid { pid: i32 },
    /// Done.
    Done,
    /// libcontainer's error, as text.
    Failed { error: String },
}

/// Why a helper call failed.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    /// The helper could not be started or talked to.
    #[error("cannot run the runtime helper: {0}")]
    Launch(String),
    /// The helper died or hung without answering.
    #[error("the runtime helper did not answer{}", stderr_suffix(.stderr))]
    NoAnswer {
        /// What the helper wrote to its standard error.
        stderr: String,
    },
    /// The operation failed; the text is libcontainer's.
    #[error("{0}")]
    Failed(String),
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", stderr.trim())
    }
}

/// Starts helpers and talks to them.
#[derive(Debug, Clone)]
pub(crate) struct Helper {
    exe: PathBuf,
    reaper: Arc<Reaper>,
}

impl Helper {
    pub(crate) fn new(exe: PathBuf, reaper: Arc<Reaper>) -> Self {
        Self { exe, reaper }
    }

    /// Runs one request in a fresh helper, passing `fds` along (the helper gets its own copies;
    /// the agent's are closed when this returns).
    pub(crate) async fn call(
        &self,
        request: Request,
        fds: Vec<OwnedFd>,
    ) -> Result<Answer, HelperError> {
        let exe = self.exe.clone();
        let reaper = Arc::clone(&self.reaper);
        let (answer, pid, slot, stderr) =
            tokio::task::spawn_blocking(move || exchange(&exe, &reaper, &request, fds))
                .await
                .map_err(|e| HelperError::Launch(e.to_string()))??;
        // The helper exits right after answering; wait so its stderr is complete and it is gone.
        // Then its slot goes (a helper that has not exited by then leaves its status with the
        // reaper's unclaimed exits, which expire).
        let _ = tokio::time::timeout(Duration::from_secs(10), slot.wait()).await;
        self.reaper.forget(pid, &slot);
        let stderr = read_all(stderr).await;
        if !stderr.trim().is_empty() {
            tracing::debug!(helper_stderr = %stderr.trim(), "runtime helper output");
        }
        match answer {
            Some(Answer::Failed { error }) => Err(HelperError::Failed(error)),
            Some(answer) => Ok(answer),
            None => Err(HelperError::NoAnswer { stderr }),
        }
    }
}

type Exchanged = (Option<Answer>, i32, Arc<super::reaper::ExitSlot>, OwnedFd);

/// The blocking part: spawn, send, receive.
fn exchange(
    exe: &std::path::Path,
    reaper: &Reaper,
    request: &Request,
    fds: Vec<OwnedFd>,
) -> Result<Exchanged, HelperError> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    let launch =
        |what: &str, e: &dyn std::fmt::Display| HelperError::Launch(format!("{what}: {e}"));

    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| launch("socketpair", &e))?;
    let (stderr_read, stderr_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| launch("pipe", &e))?;
    let timeout =
        nix::sys::time::TimeVal::new(i64::try_from(ANSWER_TIMEOUT.as_secs()).unwrap_or(120), 0);
    nix::sys::socket::setsockopt(&ours, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)
        .map_err(|e| launch("socket timeout", &e))?;

    let child = Command::new(exe)
        .arg(HELPER_ARG)
        .env_clear()
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr_write))
        .spawn()
        .map_err(|e| launch(&format!("spawn {}", exe.display()), &e))?;
    // The reaper owns the wait; `child` is dropped without waiting.
    let pid = i32::try_from(child.id()).map_err(|e| launch("pid", &e))?;
    let slot = reaper.register(pid);
    drop(child);

    let message = serde_json::to_vec(request).map_err(|e| launch("encode", &e))?;
    let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
    let sent = sys::send_with_fds(ours.as_fd(), &message, &borrowed);
    drop(borrowed);
    drop(fds);
    if let Err(e) = sent {
        let _ = reaper.signal(pid, &slot, nix::sys::signal::Signal::SIGKILL);
        reaper.forget(pid, &slot);
        return Err(launch("send the request", &e));
    }

    let mut buf = vec![0u8; MAX_MESSAGE];
    let answer = match sys::recv_with_fds(ours.as_fd(), &mut buf) {
        Ok((0, _)) => None,
        Ok((n, _)) => serde_json::from_slice(&buf[..n]).ok(),
        Err(e) => {
            tracing::warn!(error = %e, "no answer from the runtime helper; killing it");
            let _ = reaper.signal(pid, &slot, nix::sys::signal::Signal::SIGKILL);
            None
        }
    };
    Ok((answer, pid, slot, stderr_read))
}

async fn read_all(fd: OwnedFd) -> String {
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut text = String::new();
        let _ = std::fs::File::from(fd)
            .take(MAX_MESSAGE as u64)
            .read_to_string(&mut text);
        text
    })
    .await
    .unwrap_or_default()
}

/// The helper process: answer one request on standard input, then exit.
pub fn helper_main() -> ! {
    // The container must not inherit the agent's OOM score unless its spec sets one.
    let _ = std::fs::write("/proc/self/oom_score_adj", "0");
    let socket = std::io::stdin();
    let mut buf = vec![0u8; MAX_MESSAGE];
    let (n, fds) = match sys::recv_with_fds(socket.as_fd(), &mut buf) {
        Ok(received) => received,
        Err(e) => {
            eprintln!("runtime helper: cannot read the request: {e}");
            std::process::exit(2);
        }
    };
    let answer = match serde_json::from_slice::<Request>(&buf[..n]) {
        Ok(request) => match perform(request, fds) {
            Ok(answer) => answer,
            Err(error) => Answer::Failed { error },
        },
        Err(e) => Answer::Failed {
            error: format!("malformed helper request: {e}"),
        },
    };
    let message = serde_json::to_vec(&answer).unwrap_or_default();
    if let Err(e) = sys::send_with_fds(socket.as_fd(), &message, &[]) {
        eprintln!("runtime helper: cannot answer: {e}");
        std::process::exit(2);
    }
    std::process::exit(0)
}

fn perform(request: Request, fds: Vec<OwnedFd>) -> Result<Answer, String> {
    use libcontainer::container::Container;
    use libcontainer::container::builder::ContainerBuilder;
    use libcontainer::syscall::syscall::SyscallType;

    let text = |e: libcontainer::error::LibcontainerError| peerpod_text::error_chain(&e);
    let with_stdio = |mut builder: ContainerBuilder, fds: Vec<OwnedFd>| {
        let mut fds = fds.into_iter();
        if let (Some(stdin), Some(stdout), Some(stderr)) = (fds.next(), fds.next(), fds.next()) {
            builder = builder
                .with_stdin(stdin)
                .with_stdout(stdout)
                .with_stderr(stderr);
        }
        builder
    };
    let load = |root: &std::path::Path, id: &str| Container::load(root.join(id)).map_err(text);

    match request {
        Request::Create {
            id,
            root,
            bundle,
            console_socket,
        } => {
            let builder = ContainerBuilder::new(id, SyscallType::default())
                .with_root_path(root)
                .map_err(text)?
                .with_console_socket(console_socket)
                .with_executor(executor::AgentExecutor { seccomp: None });
            let container = with_stdio(builder, fds)
                .validate_id()
                .map_err(text)?
                .as_init(bundle)
                .with_systemd(false)
                .as_sibling(true)
                .with_detach(true)
                .build()
                .map_err(text)?;
            let pid = container.pid().ok_or("the container has no init process")?;
            Ok(Answer::Pid { pid: pid.as_raw() })
        }
        Request::Start { id, root } => {
            load(&root, &id)?.start().map_err(text)?;
            Ok(Answer::Done)
        }
        Request::Exec {
            id,
            root,
            bundle,
            process,
            console_socket,
        } => {
            // libcontainer does not give exec'd processes the container's seccomp profile;
            // the executor applies it just before exec.
            let seccomp = oci_spec::runtime::Spec::load(bundle.join("config.json"))
                .map_err(|e| format!("cannot read the container's config.json: {e}"))?
                .linux()
                .as_ref()
                .and_then(|l| l.seccomp().clone());
            let builder = ContainerBuilder::new(id, SyscallType::default())
                .with_root_path(root)
                .map_err(text)?
                .with_console_socket(console_socket)
                .with_executor(executor::AgentExecutor { seccomp });
            let pid = with_stdio(builder, fds)
                .as_tenant()
                .with_process(Some(process))
                .as_sibling(true)
                .with_detach(true)
                .build()
                .map_err(text)?;
            Ok(Answer::Pid { pid: pid.as_raw() })
        }
        Request::Kill {
            id,
            root,
            signal,
            all,
        } => {
            let signal =
                libcontainer::signal::Signal::try_from(signal).map_err(|e| e.to_string())?;
            load(&root, &id)?.kill(signal, all).map_err(text)?;
            Ok(Answer::Done)
        }
        Request::Pause { id, root } => {
            load(&root, &id)?.pause().map_err(text)?;
            Ok(Answer::Done)
        }
        Request::Resume { id, root } => {
            load(&root, &id)?.resume().map_err(text)?;
            Ok(Answer::Done)
        }
        Request::Delete { id, root, force } => {
            load(&root, &id)?.delete(force).map_err(text)?;
            Ok(Answer::Done)
        }
        Request::SandboxNamespaces { dir, hostname, pid } => {
            sandbox_namespaces(&dir, &hostname)?;
            if pid {
                let pause = sandbox_pid_namespace(&dir)?;
                return Ok(Answer::Pid { pid: pause });
            }
            Ok(Answer::Done)
        }
    }
}

/// A new PID namespace whose init is a pause process (it only reaps), pinned on `dir/pid`.
/// Returns the pause process's pid; once this helper exits, the agent adopts it.
fn sandbox_pid_namespace(dir: &std::path::Path) -> Result<i32, String> {
    use nix::sched::{CloneFlags, unshare};
    use nix::unistd::ForkResult;
    unshare(CloneFlags::CLONE_NEWPID)
        .map_err(|e| format!("cannot create the sandbox PID namespace: {e}"))?;
    match sys::fork_single_threaded()
        .map_err(|e| format!("cannot start the sandbox's pause process: {e}"))?
    {
        ForkResult::Child => pause_forever(),
        ForkResult::Parent { child } => {
            let target = dir.join("pid");
            std::fs::File::create(&target)
                .map_err(|e| format!("cannot create {}: {e}", target.display()))?;
            let source = format!("/proc/{child}/ns/pid");
            nix::mount::mount(
                Some(source.as_str()),
                &target,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| format!("cannot pin the PID namespace on {}: {e}", target.display()))?;
            Ok(child.as_raw())
        }
    }
}

/// The sandbox's PID 1: holds the namespace open and reaps orphans until it is killed.
fn pause_forever() -> ! {
    // Let go of the helper's standard descriptors (its request socket and stderr pipe), which
    // the agent waits on for end-of-file; the helper holds no others.
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = nix::unistd::dup2_stdin(&null);
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stderr(&null);
    }
    loop {
        nix::unistd::pause();
        while let Ok(status) = nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(-1),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        ) {
            if status == nix::sys::wait::WaitStatus::StillAlive {
                break;
            }
        }
    }
}

/// New IPC and UTS namespaces for this (single-threaded, short-lived) process, pinned by bind
/// mounts so they outlive it.
fn sandbox_namespaces(dir: &std::path::Path, hostname: &str) -> Result<(), String> {
    use nix::mount::{MsFlags, mount};
    use nix::sched::{CloneFlags, unshare};
    unshare(CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS)
        .map_err(|e| format!("cannot create the sandbox namespaces: {e}"))?;
    if !hostname.is_empty() {
        nix::unistd::sethostname(hostname)
            .map_err(|e| format!("cannot set the hostname {hostname:?}: {e}"))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    for kind in ["ipc", "uts"] {
        let target = dir.join(kind);
        std::fs::File::create(&target)
            .map_err(|e| format!("cannot create {}: {e}", target.display()))?;
        let source = format!("/proc/self/ns/{kind}");
        mount(
            Some(source.as_str()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| {
            format!(
                "cannot pin the {kind} namespace on {}: {e}",
                target.display()
            )
        })?;
    }
    Ok(())
}
