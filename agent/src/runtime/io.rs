//! A process's standard streams, seen from the agent: pipes the agent reads and writes.

use std::os::fd::OwnedFd;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::Mutex;

/// The largest read one ReadStdout/ReadStderr returns.
const MAX_READ: usize = 1024 * 1024;

/// Why a stream operation failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IoError {
    /// The stream has ended (or stdin was closed).
    #[error("EOF")]
    Eof,
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The agent's ends of a process's stdin, stdout and stderr.
#[derive(Debug)]
pub(crate) struct ProcessIo {
    stdin: Mutex<Option<pipe::Sender>>,
    stdout: Mutex<Option<pipe::Receiver>>,
    stderr: Mutex<Option<pipe::Receiver>>,
}

/// The ends that go to the new process.
pub(crate) struct ChildEnds {
    pub(crate) stdin: OwnedFd,
    pub(crate) stdout: OwnedFd,
    pub(crate) stderr: OwnedFd,
}

impl ChildEnds {
    /// In the order the runtime helper expects them.
    pub(crate) fn into_vec(self) -> Vec<OwnedFd> {
        vec![self.stdin, self.stdout, self.stderr]
    }
}

impl ProcessIo {
    /// Three pipes; the agent's ends are close-on-exec, so no other child inherits them.
    pub(crate) fn pipes() -> std::io::Result<(Self, ChildEnds)> {
        let flags = nix::fcntl::OFlag::O_CLOEXEC;
        let (stdin_read, stdin_write) = nix::unistd::pipe2(flags)?;
        let (stdout_read, stdout_write) = nix::unistd::pipe2(flags)?;
        let (stderr_read, stderr_write) = nix::unistd::pipe2(flags)?;
        let io = Self {
            stdin: Mutex::new(Some(pipe::Sender::from_owned_fd(stdin_write)?)),
            stdout: Mutex::new(Some(pipe::Receiver::from_owned_fd(stdout_read)?)),
            stderr: Mutex::new(Some(pipe::Receiver::from_owned_fd(stderr_read)?)),
        };
        let ends = ChildEnds {
            stdin: stdin_read,
            stdout: stdout_write,
            stderr: stderr_write,
        };
        Ok((io, ends))
    }

    /// Reads what is available, up to `len` bytes, waiting for at least one; `Eof` at the end.
    pub(crate) async fn read(&self, stderr: bool, len: usize) -> Result<Vec<u8>, IoError> {
        let stream = if stderr { &self.stderr } else { &self.stdout };
        let mut guard = stream.lock().await;
        let Some(receiver) = guard.as_mut() else {
            return Err(IoError::Eof);
        };
        let mut buf = vec![0u8; len.clamp(1, MAX_READ)];
        let n = receiver.read(&mut buf).await?;
        if n == 0 {
            *guard = None;
            return Err(IoError::Eof);
        }
        buf.truncate(n);
        Ok(buf)
    }

    /// Writes all of `data` to stdin.
    pub(crate) async fn write(&self, data: &[u8]) -> Result<usize, IoError> {
        let mut guard = self.stdin.lock().await;
        let Some(sender) = guard.as_mut() else {
            return Err(IoError::Eof);
        };
        sender.write_all(data).await?;
        Ok(data.len())
    }

    /// Closes stdin, so the process reads EOF.
    pub(crate) async fn close_stdin(&self) {
        self.stdin.lock().await.take();
    }
}
