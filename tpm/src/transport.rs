//! How command bytes reach a TPM.
//!
//! Two kinds of endpoint exist: the kernel's resource manager device (`/dev/tpmrm0`, or the raw
//! `/dev/tpm0`), which takes one whole command per `write` and returns one whole response per
//! `read`, and a stream socket speaking raw TPM commands (swtpm's data channel, the simulated
//! paravisor), where responses are delimited by their header's size field.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::Error;
use crate::frame::{HEADER_SIZE, MAX_FRAME_SIZE, any_frame_size, frame_size};

/// How long a socket read may wait for a TPM response before the command is abandoned.
pub const SOCKET_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection to a TPM.
#[derive(Debug)]
pub enum Transport {
    /// A character device: `/dev/tpmrm0` or `/dev/tpm0`.
    Device(File),
    /// A Unix stream socket with raw TPM commands.
    Unix(UnixStream),
    /// A TCP socket with raw TPM commands.
    Tcp(TcpStream),
}

impl Transport {
    /// The transport the attestation agent uses when nothing else is configured.
    pub const DEFAULT: &'static str = "device:/dev/tpmrm0";

    /// Opens a transport from a specification: `device:/dev/tpmrm0`, `unix:/run/tpm.sock`,
    /// `tcp:127.0.0.1:2321`, or a bare absolute path (a device).
    pub fn open(spec: &str) -> Result<Self, Error> {
        let (kind, target) = match spec.split_once(':') {
            Some((kind, target)) if !spec.starts_with('/') => (kind, target),
            _ if spec.starts_with('/') => ("device", spec),
            _ => {
                return Err(Error::InvalidTransport {
                    spec: spec.to_string(),
                    reason: "no kind given",
                });
            }
        };
        if target.is_empty() {
            return Err(Error::InvalidTransport {
                spec: spec.to_string(),
                reason: "empty target",
            });
        }
        let open_err = |source| Error::Open {
            target: target.to_string(),
            source,
        };
        match kind {
            "device" => Ok(Self::Device(
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(target)
                    .map_err(open_err)?,
            )),
            "unix" => {
                let s = UnixStream::connect(target).map_err(open_err)?;
                s.set_read_timeout(Some(SOCKET_TIMEOUT)).map_err(open_err)?;
                Ok(Self::Unix(s))
            }
            "tcp" => {
                let s = TcpStream::connect(target).map_err(open_err)?;
                s.set_read_timeout(Some(SOCKET_TIMEOUT)).map_err(open_err)?;
                s.set_nodelay(true).map_err(open_err)?;
                Ok(Self::Tcp(s))
            }
            _ => Err(Error::InvalidTransport {
                spec: spec.to_string(),
                reason: "unknown kind",
            }),
        }
    }

    /// Sends one command and returns its response.
    pub fn transact(&mut self, command: &[u8]) -> Result<Vec<u8>, Error> {
        match self {
            Self::Device(f) => device_transact(f, command),
            Self::Unix(s) => stream_transact(s, command),
            Self::Tcp(s) => stream_transact(s, command),
        }
    }
}

fn io(action: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { action, source }
}

fn device_transact(f: &mut File, command: &[u8]) -> Result<Vec<u8>, Error> {
    f.write_all(command).map_err(io("writing a command"))?;
    let mut buf = vec![0u8; MAX_FRAME_SIZE];
    let n = f.read(&mut buf).map_err(io("reading a response"))?;
    buf.truncate(n);
    let size = frame_size(&buf)?;
    if size != n {
        return Err(Error::Malformed {
            what: "TPM response",
            detail: format!("header says {size} bytes, device returned {n}"),
        });
    }
    Ok(buf)
}

/// Reads one TPM 2.0 frame (command or response) from a stream: the header, then the rest its
/// size field announces. Returns `None` on a clean end of stream before any byte.
pub fn read_frame(s: &mut impl Read) -> Result<Option<Vec<u8>>, Error> {
    read_frame_with(s, frame_size)
}

/// [`read_frame`] for a frame of any TPM family: only the size is checked. For relays (a vTPM
/// passes the TPM 1.2 commands UEFI firmware probes with, and their answers, through).
pub fn read_any_frame(s: &mut impl Read) -> Result<Option<Vec<u8>>, Error> {
    read_frame_with(s, any_frame_size)
}

fn read_frame_with(
    s: &mut impl Read,
    size_of: fn(&[u8]) -> Result<usize, Error>,
) -> Result<Option<Vec<u8>>, Error> {
    let mut header = [0u8; HEADER_SIZE];
    let mut got = 0;
    while got < HEADER_SIZE {
        let n = s
            .read(&mut header[got..])
            .map_err(io("reading a frame header"))?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(Error::Io {
                action: "reading a frame header",
                source: std::io::ErrorKind::UnexpectedEof.into(),
            });
        }
        got += n;
    }
    let size = size_of(&header)?;
    let mut frame = vec![0u8; size];
    frame[..HEADER_SIZE].copy_from_slice(&header);
    s.read_exact(&mut frame[HEADER_SIZE..])
        .map_err(io("reading a frame body"))?;
    Ok(Some(frame))
}

fn stream_transact(s: &mut (impl Read + Write), command: &[u8]) -> Result<Vec<u8>, Error> {
    s.write_all(command).map_err(io("writing a command"))?;
    read_frame(s)?.ok_or(Error::Io {
        action: "reading a response",
        source: std::io::ErrorKind::UnexpectedEof.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_checked() {
        for bad in ["", "tpm", "floppy:/dev/fd0", "unix:"] {
            let err = Transport::open(bad).expect_err(bad);
            assert!(
                matches!(err, Error::InvalidTransport { .. }),
                "{bad}: {err}"
            );
        }
        let err = Transport::open("/nonexistent/tpmrm0").expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/tpmrm0"), "{err}");
    }

    #[test]
    fn frames_are_read_whole_tpm2_only_unless_any_family_is_asked_for() {
        // A TPM 1.2 command (TPM_TAG_RQU_COMMAND, 12 bytes) and a TPM 2.0 one, back to back.
        let tpm12 = [0x00, 0xC1, 0, 0, 0, 12, 0, 0, 0, 0x65, 0, 0];
        let tpm2 = [0x80, 0x01, 0, 0, 0, 10, 0, 0, 1, 0x44];
        let both = [&tpm12[..], &tpm2[..]].concat();
        let mut input = &both[..];
        assert_eq!(
            read_any_frame(&mut input).expect("read"),
            Some(tpm12.to_vec())
        );
        assert_eq!(
            read_any_frame(&mut input).expect("read"),
            Some(tpm2.to_vec())
        );
        assert_eq!(read_any_frame(&mut input).expect("read"), None, "clean end");
        assert!(
            read_frame(&mut &tpm12[..]).is_err(),
            "a 1.2 tag is not TPM 2.0"
        );
        assert_eq!(
            read_frame(&mut &tpm2[..]).expect("read"),
            Some(tpm2.to_vec())
        );

        let short: &[u8] = &[0x80, 0x01, 0, 0];
        let tiny: &[u8] = &[0x00, 0xC1, 0, 0, 0, 4, 0, 0, 0, 0];
        let huge: &[u8] = &[0x00, 0xC1, 0, 0, 0x10, 0, 0, 0, 0, 0];
        let cut: &[u8] = &[0x00, 0xC1, 0, 0, 0, 12, 0, 0, 0, 0x65];
        for (bad, why) in [
            (short, "end inside the header"),
            (tiny, "size below the header"),
            (huge, "size above the largest frame"),
            (cut, "end inside the body"),
        ] {
            assert!(read_any_frame(&mut &bad[..]).is_err(), "{why}");
        }
    }
}
