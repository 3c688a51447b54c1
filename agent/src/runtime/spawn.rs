//! Starting a container's or an exec's process: its stdio (pipes or a terminal) and the helper
//! call that makes it.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Runtime;
use super::helper::{Answer, Request};
use super::io::ProcessIo;
use crate::error::AgentError;

/// How a new process's stdio is set up: pipes, or a terminal whose master the process's
/// runtime sends back over a console socket.
pub(super) enum Stdio {
    Pipes(ProcessIo, Vec<OwnedFd>),
    Terminal(ConsoleSocket),
}

/// A listening socket libcontainer connects to, to hand over a terminal's master side.
pub(super) struct ConsoleSocket {
    pub(super) path: PathBuf,
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
    /// Stdio for a new process: a terminal if its spec asks for one, else pipes.
    pub(super) fn stdio(&self, terminal: bool) -> Result<Stdio, AgentError> {
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
    pub(super) async fn spawn_with(
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
}
