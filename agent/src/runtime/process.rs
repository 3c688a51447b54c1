//! Processes: ExecProcess, WaitProcess, SignalProcess and each process's stdio.

use std::sync::{Arc, PoisonError};

use peerpod_protocols::kata::agent;

use super::helper::Request;
use super::reaper::Exit;
use super::spawn::Stdio;
use super::{Process, Runtime, Status, check_id, error_chain, io, spec};
use crate::error::AgentError;

impl Runtime {
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
        let process = spec::exec_process(&request.process, container.process.as_ref())
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

    /// WaitProcess: the process's exit status, once it has exited. As upstream, an exec'd
    /// process is then released: its stdin closed, its entry and its reaper slot dropped (its
    /// output pipes close once reads already in flight end); later requests naming it answer
    /// NOT_FOUND, and its exec id may be used again.
    pub async fn wait_process(&self, container_id: &str, exec_id: &str) -> Result<i32, AgentError> {
        let container = self.container(container_id)?;
        let process = self.process(container_id, exec_id)?;
        let exit: Exit = process.exit.wait().await;
        if !Arc::ptr_eq(&process, &container.init) {
            process.io.close_stdin().await;
            let removed = {
                let mut execs = container
                    .execs
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let ours = execs
                    .get(&process.exec_id)
                    .is_some_and(|p| Arc::ptr_eq(p, &process));
                ours && execs.remove(&process.exec_id).is_some()
            };
            if removed {
                self.reaper.forget(process.pid, &process.exit);
            }
        }
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
        self.reaper
            .signal(process.pid, &process.exit, signal)
            .map(drop)
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

fn io_error(e: io::IoError) -> AgentError {
    match e {
        io::IoError::Eof => AgentError::Eof,
        io::IoError::NoSuchStream(why) => AgentError::FailedPrecondition(why.to_owned()),
        io::IoError::Io(e) => AgentError::internal("stdio", e),
    }
}
