//! `tcp-relay HOST:PORT`: joins its standard input and output to a TCP connection.
//!
//! QEMU's user network runs it once per guest connection to a `guestfwd` address (the guest's
//! socket is the relay's stdin and stdout), so a test VM can reach a server on the host's
//! loopback — the local KBS or the simulated IMDS — with every connection its own.

use std::fs::File;
use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsFd;
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(addr) = std::env::args().nth(1) else {
        eprintln!("usage: tcp-relay HOST:PORT");
        return ExitCode::from(2);
    };
    let stream = match TcpStream::connect(&addr) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tcp-relay: cannot connect to {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Unbuffered handles on fds 0 and 1 (std's stdout buffers by line).
    let files = std::io::stdin().as_fd().try_clone_to_owned().and_then(|i| {
        Ok((
            File::from(i),
            File::from(std::io::stdout().as_fd().try_clone_to_owned()?),
        ))
    });
    let (mut input, mut output) = match files {
        Ok(f) => f,
        Err(e) => {
            eprintln!("tcp-relay: standard input or output: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (mut up, mut down) = match stream.try_clone() {
        Ok(up) => (up, stream),
        Err(e) => {
            eprintln!("tcp-relay: {e}");
            return ExitCode::FAILURE;
        }
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut input, &mut up);
        let _ = up.shutdown(Shutdown::Write);
    });
    let _ = std::io::copy(&mut down, &mut output);
    let _ = output.flush();
    ExitCode::SUCCESS
}
