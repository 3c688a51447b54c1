//! Where each installed layer's content came from, recorded next to the layer store under
//! `<work_dir>/origins/`, one small file per diff_id.
//!
//! The store shares layers by diff_id, so a layer decrypted for one image would otherwise be
//! handed to any other image that names the same diff_id, with no key. A layer fetched plain
//! is public content and may be reused by anyone; a layer that exists only because it was
//! decrypted is reused only by a pull that has the same encrypted blob and unwrapped the same
//! key for it (see [`key_check`]). Any other pull downloads and verifies the layer itself
//! (and so proves it can produce the content) before it mounts the shared copy. A layer
//! without a readable record (older stores, a crash between install and record) counts as
//! unknown and is verified again.
//!
//! Records also carry the layer's unpacked size, which the store-wide limit adds up.

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use peerpod_image_crypt::{LayerDecryptor, LayerKey};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroize as _;

use crate::digest::Digest;

/// Largest record read back; a bigger file is garbage (treated as unknown).
const MAX_RECORD: u64 = 4096;
/// Most encrypted origins remembered per layer (the oldest are forgotten: a pull that needed
/// one of them verifies the layer again).
const MAX_ENCRYPTED_ORIGINS: usize = 8;

/// How one copy of a layer's content was obtained and verified.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Downloaded unencrypted: public content.
    Plain,
    /// Decrypted from the blob `blob` with the key whose [`key_check`] is `key`.
    Encrypted {
        /// The encrypted blob's digest.
        blob: Digest,
        /// The check value of the unwrapped key.
        key: [u8; 32],
    },
}

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Plain => f.write_str("Plain"),
            Self::Encrypted { blob, .. } => write!(f, "Encrypted({blob})"),
        }
    }
}

/// What is known about an installed layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Record {
    /// Uncompressed tar bytes, when known.
    pub(crate) bytes: Option<u64>,
    /// `[Plain]`, or the encrypted origins (newest last).
    pub(crate) origins: Vec<Origin>,
}

impl Record {
    /// Whether a pull that obtained `origin` for this layer may use the installed copy
    /// without verifying it: the content is public, or this pull holds the very blob and key
    /// the installed copy was decrypted from.
    pub(crate) fn permits(&self, origin: &Origin) -> bool {
        self.origins
            .iter()
            .any(|o| *o == Origin::Plain || o == origin)
    }

    /// Adds an origin this pull proved (plain makes the others moot).
    pub(crate) fn add(&mut self, origin: Origin) {
        if origin == Origin::Plain {
            self.origins = vec![Origin::Plain];
            return;
        }
        if self.origins.contains(&Origin::Plain) || self.origins.contains(&origin) {
            return;
        }
        self.origins.push(origin);
        let excess = self.origins.len().saturating_sub(MAX_ENCRYPTED_ORIGINS);
        self.origins.drain(..excess);
    }

    fn to_text(&self) -> String {
        let mut out = String::new();
        if let Some(n) = self.bytes {
            out.push_str(&format!("bytes {n}\n"));
        }
        for o in &self.origins {
            match o {
                Origin::Plain => out.push_str("plain\n"),
                Origin::Encrypted { blob, key } => {
                    out.push_str(&format!("encrypted {blob} {}\n", hex::encode(key)));
                }
            }
        }
        out
    }

    fn parse(text: &str) -> Option<Self> {
        let mut record = Self::default();
        for line in text.lines() {
            let mut words = line.split(' ');
            match (words.next(), words.next(), words.next(), words.next()) {
                (Some("bytes"), Some(n), None, None) => record.bytes = Some(n.parse().ok()?),
                (Some("plain"), None, None, None) => record.origins.push(Origin::Plain),
                (Some("encrypted"), Some(blob), Some(key), None) => {
                    let blob = Digest::parse(blob).ok()?;
                    let key: [u8; 32] = hex::decode(key).ok()?.try_into().ok()?;
                    record.origins.push(Origin::Encrypted { blob, key });
                }
                _ => return None,
            }
        }
        Some(record)
    }
}

/// A value that identifies an unwrapped layer key (and its nonce) without revealing it: the
/// SHA-256, under a label of ours, of the first 32 bytes of the key's AES-CTR keystream. Two
/// pulls get the same value exactly when they unwrapped the same key and nonce.
pub(crate) fn key_check(key: &LayerKey) -> [u8; 32] {
    let mut stream = [0u8; 32];
    LayerDecryptor::new(key).update(&mut stream);
    let mut h = Sha256::new();
    h.update(b"peerpod-image layer key check v1\0");
    h.update(stream);
    stream.zeroize();
    h.finalize().into()
}

/// The records of a work directory.
pub(crate) struct Origins {
    dir: PathBuf,
    counter: AtomicU64,
}

impl Origins {
    /// The records under `<work_dir>/origins` (created, mode 0700, when first written).
    pub(crate) fn new(work_dir: &Path) -> Self {
        Self {
            dir: work_dir.join("origins"),
            counter: AtomicU64::new(0),
        }
    }

    fn path(&self, diff_id: &Digest) -> PathBuf {
        self.dir.join(format!("sha256-{}", diff_id.hex()))
    }

    /// The record of `diff_id`; `None` when there is none or it cannot be read or parsed.
    pub(crate) fn read(&self, diff_id: &Digest) -> Option<Record> {
        let path = self.path(diff_id);
        let meta = fs::symlink_metadata(&path).ok()?;
        if !meta.is_file() || meta.len() > MAX_RECORD {
            return None;
        }
        Record::parse(&fs::read_to_string(path).ok()?)
    }

    /// Writes the record of `diff_id` atomically (a temporary file, fsync, rename).
    pub(crate) fn write(&self, diff_id: &Digest, record: &Record) -> io::Result<()> {
        match fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
        {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let target = self.path(diff_id);
        let tmp = self.dir.join(format!(
            ".tmp-{}-{}.{}",
            diff_id.hex(),
            std::process::id(),
            self.counter.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(record.to_text().as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &target)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Removes the records of layers `installed` says are gone, and stale temporary files.
    pub(crate) fn prune(&self, installed: impl Fn(&Digest) -> bool) -> io::Result<()> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let keep = name
                .strip_prefix("sha256-")
                .and_then(|hex| Digest::parse(&format!("sha256:{hex}")).ok())
                .is_some_and(|d| installed(&d));
            if !keep {
                fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }

    /// The unpacked bytes of the layers `installed` says are there, as their records give them.
    pub(crate) fn total_bytes(&self, installed: impl Fn(&Digest) -> bool) -> u64 {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return 0;
        };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let hex = name.to_str()?.strip_prefix("sha256-")?.to_string();
                let d = Digest::parse(&format!("sha256:{hex}")).ok()?;
                if !installed(&d) {
                    return None;
                }
                self.read(&d)?.bytes
            })
            .fold(0u64, u64::saturating_add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(n: u8) -> Origin {
        Origin::Encrypted {
            blob: Digest::of(&[n]),
            key: [n; 32],
        }
    }

    #[test]
    fn records_round_trip_and_garbage_is_unknown() {
        let dir = std::env::temp_dir().join(format!("peerpod-origins-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let o = Origins::new(&dir);
        let d = Digest::of(b"layer");
        assert_eq!(o.read(&d), None, "no record: unknown");
        let mut r = Record {
            bytes: Some(42),
            origins: vec![enc(1)],
        };
        r.add(enc(2));
        o.write(&d, &r).expect("written");
        assert_eq!(o.read(&d), Some(r.clone()));
        assert!(r.permits(&enc(1)) && r.permits(&enc(2)));
        assert!(!r.permits(&enc(3)), "another key or blob");
        assert!(!r.permits(&Origin::Plain), "a plain pull must verify");
        assert_eq!(o.total_bytes(|_| true), 42);
        assert_eq!(o.total_bytes(|_| false), 0);
        fs::write(o.path(&d), "plain\nbytes x\n").expect("garbage");
        assert_eq!(o.read(&d), None, "garbage: unknown");
        fs::write(o.path(&d), "plain\nsomething else\n").expect("garbage");
        assert_eq!(o.read(&d), None);
        o.prune(|_| false).expect("pruned");
        assert_eq!(fs::read_dir(dir.join("origins")).expect("dir").count(), 0);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn plain_wins_and_encrypted_origins_are_bounded() {
        let mut r = Record::default();
        for n in 0..20 {
            r.add(enc(n));
        }
        assert_eq!(r.origins.len(), MAX_ENCRYPTED_ORIGINS);
        assert!(r.permits(&enc(19)) && !r.permits(&enc(0)));
        r.add(Origin::Plain);
        assert_eq!(r.origins, vec![Origin::Plain]);
        assert!(r.permits(&enc(0)), "public content: anyone may reuse it");
        r.add(enc(1));
        assert_eq!(r.origins, vec![Origin::Plain]);
    }
}
