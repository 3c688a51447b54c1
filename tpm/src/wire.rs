//! Big-endian marshalling with bounds checks.
//!
//! [`Writer`] builds TPM structures; [`Reader`] takes them apart and turns every short read into
//! [`Error::Truncated`] naming the field, so no TPM output can make a parser panic.

use crate::Error;

/// Appends big-endian TPM fields to a buffer.
#[derive(Debug, Default, Clone)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    /// Appends a big-endian `u16`.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Appends a big-endian `u32`.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Appends a big-endian `u64`.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Appends bytes as they are.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }

    /// Appends a `TPM2B` (a `u16` length, then the bytes).
    pub fn tpm2b(&mut self, what: &'static str, v: &[u8]) -> Result<&mut Self, Error> {
        let len = u16::try_from(v.len()).map_err(|_| Error::TooLarge {
            what,
            len: v.len(),
            max: usize::from(u16::MAX),
        })?;
        self.u16(len);
        self.buf.extend_from_slice(v);
        Ok(self)
    }

    /// The bytes written so far.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf
    }

    /// The finished buffer.
    pub fn into_vec(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads big-endian TPM fields from a slice, failing instead of panicking on short input.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    /// The offset of the next unread byte.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// How many bytes are left.
    pub fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, what: &'static str, n: usize) -> Result<&'a [u8], Error> {
        if self.remaining() < n {
            return Err(Error::Truncated {
                what,
                offset: self.pos,
                needed: n - self.remaining(),
            });
        }
        let out = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// Takes the next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], Error> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(what, N)?);
        Ok(out)
    }

    /// Reads a byte.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, Error> {
        Ok(self.array::<1>(what)?[0])
    }

    /// Reads a big-endian `u16`.
    pub fn u16(&mut self, what: &'static str) -> Result<u16, Error> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    /// Reads a big-endian `u32`.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, Error> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    /// Reads a big-endian `u64`.
    pub fn u64(&mut self, what: &'static str) -> Result<u64, Error> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    /// Reads a `TPM2B`: a `u16` length and that many bytes.
    pub fn tpm2b(&mut self, what: &'static str) -> Result<&'a [u8], Error> {
        let len = self.u16(what)?;
        self.take(what, usize::from(len))
    }

    /// The unread rest, consuming it.
    pub fn rest(&mut self) -> &'a [u8] {
        let out = &self.data[self.pos..];
        self.pos = self.data.len();
        out
    }

    /// Fails unless everything was read.
    pub fn finish(&self, what: &'static str) -> Result<(), Error> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(Error::Malformed {
                what,
                detail: format!("{} unexpected trailing bytes", self.remaining()),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let mut w = Writer::new();
        w.u16(0x8001).u32(7).u64(1);
        w.tpm2b("nonce", b"abc").expect("small");
        let bytes = w.into_vec();
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u16("tag").expect("tag"), 0x8001);
        assert_eq!(r.u32("size").expect("size"), 7);
        assert_eq!(r.u64("clock").expect("clock"), 1);
        assert_eq!(r.tpm2b("nonce").expect("nonce"), b"abc");
        r.finish("test").expect("all read");
        let err = Reader::new(&[0, 5, 1]).tpm2b("nonce").expect_err("short");
        assert_eq!(
            err.to_string(),
            "truncated TPM data: nonce needs 4 more bytes at offset 2"
        );
    }

    #[test]
    fn oversized_tpm2b_is_refused() {
        let big = vec![0u8; 70_000];
        let err = Writer::new()
            .tpm2b("data", &big)
            .map(|_| ())
            .expect_err("too big");
        assert!(matches!(err, Error::TooLarge { len: 70_000, .. }));
    }
}
