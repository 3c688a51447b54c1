//! ttrpc framing: a 10-byte header — payload length (u32, big-endian), stream id (u32,
//! big-endian), message type (u8), flags (u8) — then the payload, at most 4 MiB as ttrpc
//! allows. Requests (type 1) carry a protobuf `ttrpc.Request`: service (field 1), method
//! (field 2), payload (field 3), timeout (field 4), metadata (field 5).
//!
//! The forwarder reads whole frames so that it can rewrite two requests and answer a request
//! it refuses on its own stream; it never buffers more than one frame per direction.

use tokio::io::{AsyncRead, AsyncReadExt as _};

/// Header length.
pub const HEADER_LEN: usize = 10;
/// ttrpc's largest payload.
pub const MAX_PAYLOAD: u32 = 4 << 20;
/// A request.
pub const TYPE_REQUEST: u8 = 1;
/// A response.
pub const TYPE_RESPONSE: u8 = 2;
/// Stream data.
pub const TYPE_DATA: u8 = 3;

/// A frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Payload length.
    pub length: u32,
    /// Stream id.
    pub stream_id: u32,
    /// Message type.
    pub kind: u8,
    /// Flags.
    pub flags: u8,
}

impl Header {
    /// Reads a header from its 10 bytes.
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Self {
        Self {
            length: u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            stream_id: u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
            kind: bytes[8],
            flags: bytes[9],
        }
    }

    /// The header's 10 bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..4].copy_from_slice(&self.length.to_be_bytes());
        out[4..8].copy_from_slice(&self.stream_id.to_be_bytes());
        out[8] = self.kind;
        out[9] = self.flags;
        out
    }
}

/// Why a stream of frames cannot be read further.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A frame announces more than ttrpc's limit.
    #[error(
        "a frame of {length} bytes on stream {stream_id} is over ttrpc's {MAX_PAYLOAD}-byte limit"
    )]
    TooLarge {
        /// Stream id.
        stream_id: u32,
        /// Announced length.
        length: u32,
    },
    /// A frame has a message type ttrpc does not define: not ttrpc, or out of step.
    #[error(
        "a frame on stream {stream_id} has message type {kind}, which ttrpc does not define (not \
         ttrpc, or garbage)"
    )]
    UnknownType {
        /// Stream id.
        stream_id: u32,
        /// The type byte.
        kind: u8,
    },
    /// The peer closed the connection in the middle of a frame.
    #[error("the connection ended in the middle of a frame")]
    Truncated,
    /// Reading failed.
    #[error("read failed")]
    Io(#[source] std::io::Error),
}

/// Checks a header against ttrpc's limits.
pub fn check(header: &Header) -> Result<(), FrameError> {
    if header.length > MAX_PAYLOAD {
        return Err(FrameError::TooLarge {
            stream_id: header.stream_id,
            length: header.length,
        });
    }
    if !matches!(header.kind, TYPE_REQUEST | TYPE_RESPONSE | TYPE_DATA) {
        return Err(FrameError::UnknownType {
            stream_id: header.stream_id,
            kind: header.kind,
        });
    }
    Ok(())
}

/// Reads the next frame into `payload` (replacing its contents). `Ok(None)`: the peer closed
/// the connection between frames. The header is checked before any of the payload is read.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    payload: &mut Vec<u8>,
) -> Result<Option<Header>, FrameError> {
    let mut raw = [0u8; HEADER_LEN];
    let mut filled = 0;
    while filled < HEADER_LEN {
        let n = reader
            .read(&mut raw[filled..])
            .await
            .map_err(FrameError::Io)?;
        if n == 0 {
            return if filled == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        filled += n;
    }
    let header = Header::parse(&raw);
    check(&header)?;
    payload.clear();
    payload.resize(header.length as usize, 0);
    reader.read_exact(payload).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io(e)
        }
    })?;
    Ok(Some(header))
}

/// Why a request's method could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the request is not a protobuf ttrpc.Request: {0}")]
pub struct ScanError(pub &'static str);

fn varint(data: &[u8], pos: &mut usize) -> Result<u64, ScanError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *data.get(*pos).ok_or(ScanError("truncated varint"))?;
        *pos += 1;
        value |= u64::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(ScanError("varint over 10 bytes"))
}

/// The service and method a `ttrpc.Request` names, read without copying its payload. The last
/// occurrence of a field wins, as protobuf decoders do.
pub fn request_method(data: &[u8]) -> Result<(&[u8], &[u8]), ScanError> {
    let mut pos = 0;
    let (mut service, mut method): (&[u8], &[u8]) = (&[], &[]);
    while pos < data.len() {
        let tag = varint(data, &mut pos)?;
        let (field, wire) = (tag >> 3, tag & 7);
        if field == 0 {
            return Err(ScanError("field number 0"));
        }
        match wire {
            0 => {
                varint(data, &mut pos)?;
            }
            1 => pos = pos.checked_add(8).ok_or(ScanError("overflow"))?,
            2 => {
                let len = usize::try_from(varint(data, &mut pos)?)
                    .map_err(|_| ScanError("length overflow"))?;
                let end = pos.checked_add(len).ok_or(ScanError("length overflow"))?;
                let value = data.get(pos..end).ok_or(ScanError("field past the end"))?;
                match field {
                    1 => service = value,
                    2 => method = value,
                    _ => {}
                }
                pos = end;
            }
            5 => pos = pos.checked_add(4).ok_or(ScanError("overflow"))?,
            _ => return Err(ScanError("unsupported wire type")),
        }
        if pos > data.len() {
            return Err(ScanError("field past the end"));
        }
    }
    Ok((service, method))
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::Message as _;

    #[test]
    fn header_round_trips() {
        let h = Header {
            length: 0x0102_0304,
            stream_id: 7,
            kind: TYPE_REQUEST,
            flags: 4,
        };
        assert_eq!(Header::parse(&h.encode()), h);
        assert_eq!(h.encode(), [1, 2, 3, 4, 0, 0, 0, 7, 1, 4]);
    }

    #[test]
    fn method_scan_agrees_with_the_decoder() -> Result<(), Box<dyn std::error::Error>> {
        let mut req = ttrpc::Request::new();
        req.service = "grpc.AgentService".into();
        req.method = "CreateContainer".into();
        req.payload = vec![0xFF; 300];
        req.timeout_nano = 5;
        let bytes = req.write_to_bytes()?;
        let (s, m) = request_method(&bytes)?;
        assert_eq!((s, m), (&b"grpc.AgentService"[..], &b"CreateContainer"[..]));
        Ok(())
    }

    #[test]
    fn truncated_and_bad_wire_types_are_refused() {
        assert!(request_method(&[0x0A, 0x05, b'a']).is_err());
        assert!(request_method(&[0x0B]).is_err());
        assert!(request_method(&[0x00, 0x01]).is_err());
        assert!(
            request_method(&[
                0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01
            ])
            .is_err()
        );
    }

    #[tokio::test]
    async fn oversized_and_unknown_frames_are_refused_before_their_payload() {
        let mut buf = Vec::new();
        let big = Header {
            length: MAX_PAYLOAD + 1,
            stream_id: 3,
            kind: 1,
            flags: 0,
        }
        .encode();
        let err = read_frame(&mut &big[..], &mut buf)
            .await
            .expect_err("too large");
        assert!(
            matches!(err, FrameError::TooLarge { stream_id: 3, .. }),
            "{err}"
        );
        assert!(
            buf.capacity() < 1024,
            "nothing was allocated for the payload"
        );
        let junk = *b"GET / HTTP";
        let err = read_frame(&mut &junk[..], &mut buf)
            .await
            .expect_err("junk");
        assert!(
            err.to_string().contains("too large")
                || matches!(
                    err,
                    FrameError::TooLarge { .. } | FrameError::UnknownType { .. }
                ),
            "{err}"
        );
        let short = [0u8, 0, 0, 5, 0, 0, 0, 1, 1, 0, 1, 2];
        let err = read_frame(&mut &short[..], &mut buf)
            .await
            .expect_err("short");
        assert!(matches!(err, FrameError::Truncated), "{err}");
    }
}
