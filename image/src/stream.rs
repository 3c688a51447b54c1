//! The blocking half of a layer's single pass: bytes arrive from the download task over a
//! bounded channel ([`ChannelReader`]), are decompressed, and are hashed on their way into the
//! layer store ([`TarReader`]), which sees EOF only once both the blob digest (checked by the
//! download task) and the diff_id (checked here) are right. Any other end is an I/O error, so
//! the store never commits an unverified layer.

use std::io::{self, Read};

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use crate::digest::Digest;
use crate::manifest::Compression;

/// What the download task sends.
#[derive(Debug)]
pub enum Chunk {
    /// The next bytes of the blob.
    Data(Bytes),
    /// The whole blob arrived and matches its digest.
    Verified,
}

/// Reads the blob from the channel; EOF only after [`Chunk::Verified`].
pub struct ChannelReader {
    rx: mpsc::Receiver<Chunk>,
    current: Bytes,
    verified: bool,
}

impl ChannelReader {
    /// Reads from `rx`.
    pub fn new(rx: mpsc::Receiver<Chunk>) -> Self {
        Self {
            rx,
            current: Bytes::new(),
            verified: false,
        }
    }

    /// Reads and drops the rest of the blob, so its digest is known (a decompressor may stop
    /// before the end of its input).
    fn drain(&mut self) -> io::Result<()> {
        let mut sink = [0u8; 8192];
        while self.read(&mut sink)? > 0 {}
        Ok(())
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            if self.verified {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Chunk::Data(b)) => self.current = b,
                Some(Chunk::Verified) => self.verified = true,
                None => {
                    return Err(io::Error::other(
                        "the layer download stopped before the blob was verified",
                    ));
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

enum Decoder {
    Plain(ChannelReader),
    Gzip(Box<flate2::read::MultiGzDecoder<ChannelReader>>),
    Zstd(Box<ruzstd::decoding::StreamingDecoder<ChannelReader, ruzstd::decoding::FrameDecoder>>),
}

impl Decoder {
    fn inner(&mut self) -> &mut ChannelReader {
        match self {
            Self::Plain(r) => r,
            Self::Gzip(d) => d.get_mut(),
            Self::Zstd(d) => d.get_mut(),
        }
    }
}

impl Read for Decoder {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(r) => r.read(buf),
            Self::Gzip(d) => d.read(buf),
            Self::Zstd(d) => d.read(buf),
        }
    }
}

/// The diff_id did not match: the layer store gets this as an I/O error's inner error.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the uncompressed layer's digest {actual} is not its diff_id {expected}")]
pub struct DiffIdMismatch {
    /// The configuration's diff_id.
    pub expected: Digest,
    /// What the tar hashed to.
    pub actual: Digest,
}

/// The uncompressed tar, hashed as it is read; EOF only when it matches the diff_id.
pub struct TarReader {
    decoder: Decoder,
    hasher: Sha256,
    expected: Digest,
    done: bool,
    /// Uncompressed bytes read so far.
    pub bytes: u64,
    /// Set when the tar did not match the diff_id (the read that found it failed).
    pub mismatch: Option<DiffIdMismatch>,
}

impl TarReader {
    /// The tar inside the blob `inner` carries, compressed as `compression`.
    pub fn new(
        inner: ChannelReader,
        compression: Compression,
        diff_id: Digest,
    ) -> io::Result<Self> {
        let decoder = match compression {
            Compression::None => Decoder::Plain(inner),
            Compression::Gzip => Decoder::Gzip(Box::new(flate2::read::MultiGzDecoder::new(inner))),
            Compression::Zstd => Decoder::Zstd(Box::new(
                ruzstd::decoding::StreamingDecoder::new(inner).map_err(|e| {
                    io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}"))
                })?,
            )),
        };
        Ok(Self {
            decoder,
            hasher: Sha256::new(),
            expected: diff_id,
            done: false,
            bytes: 0,
            mismatch: None,
        })
    }

    /// Reads to the end (what a store that stops at the tar's end-of-archive blocks leaves),
    /// verifying both digests. The pipeline calls it after the store returns.
    pub fn finish(&mut self) -> io::Result<()> {
        let mut sink = vec![0u8; 64 << 10];
        while self.read(&mut sink)? > 0 {}
        Ok(())
    }
}

impl Read for TarReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        let n = self.decoder.read(buf)?;
        if n > 0 {
            self.hasher.update(&buf[..n]);
            self.bytes += n as u64;
            return Ok(n);
        }
        // End of the tar: the blob's remaining bytes must still arrive and verify.
        self.decoder.inner().drain()?;
        let actual = Digest::from_hasher(std::mem::take(&mut self.hasher));
        if actual != self.expected {
            let mismatch = DiffIdMismatch {
                expected: self.expected.clone(),
                actual,
            };
            let e = io::Error::new(io::ErrorKind::InvalidData, mismatch.to_string());
            self.mismatch = Some(mismatch);
            return Err(e);
        }
        self.done = true;
        Ok(0)
    }
}
