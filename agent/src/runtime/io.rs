//! A process's standard streams, seen from the agent: pipes, or a pseudo-terminal.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
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
    /// The process has no such stream (stderr of a terminal, resize of a pipe).
    #[error("{0}")]
    NoSuchStream(&'static str),
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// The agent's ends of a process's stdin, stdout and stderr.
pub(crate) struct ProcessIo {
    stdin: Mutex<Option<Writer>>,
    stdout: Mutex<Option<Reader>>,
    stderr: Mutex<Option<Reader>>,
    /// The terminal's master side, for window resizes.
    terminal: Option<OwnedFd>,
}

impl std::fmt::Debug for ProcessIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessIo")
            .field("terminal", &self.terminal.is_some())
            .finish_non_exhaustive()
    }
}

/// The pipe ends that go to the new process.
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
    pub(crate) fn pipes() -> io::Result<(Self, ChildEnds)> {
        let flags = nix::fcntl::OFlag::O_CLOEXEC;
        let (stdin_read, stdin_write) = nix::unistd::pipe2(flags)?;
        let (stdout_read, stdout_write) = nix::unistd::pipe2(flags)?;
        let (stderr_read, stderr_write) = nix::unistd::pipe2(flags)?;
        let io = Self {
            stdin: Mutex::new(Some(Box::new(pipe::Sender::from_owned_fd(stdin_write)?))),
            stdout: Mutex::new(Some(Box::new(pipe::Receiver::from_owned_fd(stdout_read)?))),
            stderr: Mutex::new(Some(Box::new(pipe::Receiver::from_owned_fd(stderr_read)?))),
            terminal: None,
        };
        let ends = ChildEnds {
            stdin: stdin_read,
            stdout: stdout_write,
            stderr: stderr_write,
        };
        Ok((io, ends))
    }

    /// A terminal: stdout and stdin are its master side; there is no separate stderr.
    pub(crate) fn terminal(master: OwnedFd) -> io::Result<Self> {
        let reader = FdStream::new(master.try_clone()?)?;
        let writer = FdStream::new(master.try_clone()?)?;
        Ok(Self {
            stdin: Mutex::new(Some(Box::new(writer))),
            stdout: Mutex::new(Some(Box::new(reader))),
            stderr: Mutex::new(None),
            terminal: Some(master),
        })
    }

    /// Reads what is available, up to `len` bytes, waiting for at least one; `Eof` at the end.
    pub(crate) async fn read(&self, stderr: bool, len: usize) -> Result<Vec<u8>, IoError> {
        let stream = if stderr { &self.stderr } else { &self.stdout };
        let mut guard = stream.lock().await;
        let Some(reader) = guard.as_mut() else {
            return Err(IoError::Eof);
        };
        let mut buf = vec![0u8; len.clamp(1, MAX_READ)];
        let n = match reader.read(&mut buf).await {
            Ok(n) => n,
            // A terminal whose other side closed reads EIO: that is its end of file.
            Err(e) if e.raw_os_error() == Some(nix::libc::EIO) => 0,
            Err(e) => return Err(e.into()),
        };
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
        let Some(writer) = guard.as_mut() else {
            return Err(IoError::Eof);
        };
        writer.write_all(data).await?;
        Ok(data.len())
    }

    /// Closes stdin, so the process reads EOF (for a terminal: the agent stops writing).
    pub(crate) async fn close_stdin(&self) {
        self.stdin.lock().await.take();
    }

    /// Sets the terminal's window size.
    pub(crate) fn resize(&self, rows: u16, columns: u16) -> Result<(), IoError> {
        let Some(terminal) = &self.terminal else {
            return Err(IoError::NoSuchStream(
                "the process has no terminal to resize",
            ));
        };
        crate::sys::set_window_size(terminal.as_fd(), rows, columns)
            .map_err(|e| IoError::Io(e.into()))
    }
}

/// A non-blocking file descriptor (a terminal's master side) as an async stream.
struct FdStream {
    fd: AsyncFd<OwnedFd>,
}

impl FdStream {
    fn new(fd: OwnedFd) -> io::Result<Self> {
        let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
        Ok(Self {
            fd: crate::sys::async_fd(fd)?,
        })
    }
}

impl AsyncRead for FdStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard
                .try_io(|fd| nix::unistd::read(fd.get_ref(), unfilled).map_err(io::Error::from))
            {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for FdStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
