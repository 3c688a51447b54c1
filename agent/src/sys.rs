//! The agent's unsafe code, all of it: taking ownership of file descriptors received over unix
//! sockets, and the terminal window-size ioctl. Everything else in the crate is safe Rust.
#![allow(unsafe_code)]

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// The most descriptors one message may carry.
pub(crate) const MAX_FDS: usize = 4;

/// Sends `data` and `fds` in one message.
pub(crate) fn send_with_fds(
    socket: BorrowedFd<'_>,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
) -> nix::Result<()> {
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let control = if raw.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(&raw)]
    };
    loop {
        match sendmsg::<()>(
            socket.as_raw_fd(),
            &[IoSlice::new(data)],
            &control,
            MsgFlags::empty(),
            None,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            result => return result.map(|_| ()),
        }
    }
}

/// Receives one message into `buf` with the descriptors it carries (close-on-exec). Returns the
/// number of bytes; 0 means the peer closed the socket.
pub(crate) fn recv_with_fds(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
) -> nix::Result<(usize, Vec<OwnedFd>)> {
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    // Signals (the agent gets SIGCHLD often) interrupt the call; that is no reason to give up.
    let message = loop {
        match recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            result => break result?,
        }
    };
    let mut fds = Vec::new();
    for control in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = control {
            for fd in received {
                // SAFETY: the kernel has just installed these descriptors in this process for
                // this message; nothing else refers to them, so we take sole ownership.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Ok((message.bytes, fds))
}

nix::ioctl_write_ptr_bad!(tiocswinsz, nix::libc::TIOCSWINSZ, nix::pty::Winsize);

/// Sets a terminal's window size.
pub(crate) fn set_window_size(
    terminal: BorrowedFd<'_>,
    rows: u16,
    columns: u16,
) -> nix::Result<()> {
    let size = nix::pty::Winsize {
        ws_row: rows,
        ws_col: columns,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which is valid for the call; the
    // descriptor is borrowed, so it is open.
    unsafe { tiocswinsz(terminal.as_raw_fd(), &size) }?;
    Ok(())
}

/// Registers an owned descriptor with the async reactor.
pub(crate) fn async_fd(fd: OwnedFd) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: `OwnedFd` is a valid open descriptor that the `AsyncFd` owns from here on; its
    // `as_raw_fd` always returns that same descriptor, and only dropping the `AsyncFd` closes it.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(std::io::Error::from)
}

/// Forks the calling process.
///
/// Only the runtime helper calls this, and it is single-threaded (no runtime, no thread pools),
/// so the child may run ordinary Rust code.
pub(crate) fn fork_single_threaded() -> nix::Result<nix::unistd::ForkResult> {
    // SAFETY: the caller is a single-threaded process, so no other thread can hold a lock (such
    // as the allocator's) that the child would find taken.
    unsafe { nix::unistd::fork() }
}
