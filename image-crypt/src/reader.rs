//! AES-256-CTR-HMAC-SHA256 decryption while a layer streams.
//!
//! The ciphertext is AES-256 in counter mode (the whole 16-byte block as a big-endian counter,
//! starting at the options' `nonce`), and the HMAC-SHA256 under the same key is over the whole
//! ciphertext, so it can only be checked once the last byte has gone by.

use std::io::Read;

use aes::Aes256;
use ctr::cipher::{KeyIvInit as _, StreamCipher as _};
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;

use crate::error::CryptError;
use crate::key::LayerKey;
use crate::options::Tag;

type Cipher = ctr::Ctr128BE<Aes256>;

/// The decryption state of one layer, without I/O: [`update`](Self::update) each chunk in
/// order, then [`finish`](Self::finish). For callers that stream asynchronously; others use
/// [`decrypting_reader`].
pub struct LayerDecryptor {
    cipher: Cipher,
    mac: Hmac<Sha256>,
    expected: Tag,
    kid: String,
}

impl std::fmt::Debug for LayerDecryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerDecryptor")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl LayerDecryptor {
    /// A decryptor at the start of the layer.
    pub fn new(key: &LayerKey) -> Self {
        Self {
            cipher: Cipher::new((&*key.symkey).into(), (&key.nonce).into()),
            mac: <Hmac<Sha256>>::new_from_slice(&*key.symkey)
                .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length")),
            expected: key.hmac,
            kid: key.kid.clone(),
        }
    }

    /// Decrypts the next chunk of ciphertext in place.
    pub fn update(&mut self, chunk: &mut [u8]) {
        self.mac.update(chunk);
        self.cipher.apply_keystream(chunk);
    }

    /// Checks the HMAC of everything given to [`update`](Self::update). An error means the
    /// plaintext produced so far must be thrown away.
    pub fn finish(self) -> Result<(), CryptError> {
        self.mac
            .verify_slice(&self.expected)
            .map_err(|_| CryptError::Authentication { kid: self.kid })
    }
}

/// A reader of the plaintext of an encrypted layer; see [`decrypting_reader`].
#[derive(Debug)]
pub struct DecryptingReader<R> {
    inner: R,
    state: State,
}

#[derive(Debug)]
enum State {
    Reading(Box<LayerDecryptor>),
    Verified,
    Failed(String),
}

/// Decrypts the layer that `inner` yields, as it is read.
///
/// The HMAC is checked when `inner` reaches its end: a mismatch is an [`std::io::Error`] of
/// kind `InvalidData` (wrapping [`CryptError::Authentication`]) from that read and every later
/// one, and success is the usual `Ok(0)`. Plaintext returned before the end is not
/// authenticated yet: a caller must discard everything it read (and undo what it did with it,
/// as the layer store does by aborting the install) when any read fails. Errors of `inner` are
/// passed on as they are.
pub fn decrypting_reader<R: Read>(inner: R, key: &LayerKey) -> DecryptingReader<R> {
    DecryptingReader {
        inner,
        state: State::Reading(Box::new(LayerDecryptor::new(key))),
    }
}

impl<R> DecryptingReader<R> {
    /// The reader it decrypts.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for DecryptingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let decryptor = match &mut self.state {
            State::Reading(d) => d,
            State::Verified => return Ok(0),
            State::Failed(kid) => {
                return Err(CryptError::Authentication { kid: kid.clone() }.into());
            }
        };
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n > 0 {
            decryptor.update(&mut buf[..n]);
            return Ok(n);
        }
        let State::Reading(d) = std::mem::replace(&mut self.state, State::Verified) else {
            unreachable!("matched above")
        };
        let kid = d.kid.clone();
        match d.finish() {
            Ok(()) => Ok(0),
            Err(e) => {
                self.state = State::Failed(kid);
                Err(e.into())
            }
        }
    }
}
