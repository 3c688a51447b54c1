//! Where each installed layer's content came from, recorded next to the layer store under
//! `<work_dir>/origins/`, one small file per diff_id.
//!
//! The store shares layers by diff_id, so a layer decrypted for one image would otherwise be
//! handed to any other image that names the same diff_id, with no key. A layer fetched plain
//! is public content and may be reused by anyone; a layer that exists only because it was
//! decrypted is reused only by a pull that has the same encrypted blob and unwrapped the same
//! key for it (see [`Origins::key_check`]). Any other pull downloads and verifies the layer itself
//! (and so proves it can produce the content) before it mounts the shared copy. A layer
//! without a readable record (older stores, a crash between install and record) counts as
//! unknown and is verified again.
//!
//! Records also carry the layer's unpacked size, which the store-wide limit adds up.

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hmac::{Hmac, KeyInit as _, Mac as _};
use peerpod_image_crypt::{LayerDecryptor, LayerKey};
use sha2::Sha256;
use zeroize::{Zeroize as _, Zeroizing};

use crate::digest::Digest;

/// Largest record read back; a bigger file is garbage (treated as unknown).
const MAX_RECORD: u64 = 4096;
/// The file of the store's key-check secret, in the records directory.
const SECRET: &str = "key-check-secret";
/// Most encrypted origins remembered per layer (the oldest are forgotten: a pull that needed
/// one of them verifies the layer again).
const MAX_ENCRYPTED_ORIGINS: usize = 8;

/// How one copy of a layer's content was obtained and verified.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Downloaded unencrypted: public content.
    Plain,
    /// Decrypted from the blob `blob` with the key whose [`Origins::key_check`] is `key`.
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

/// The records of a work directory.
pub(crate) struct Origins {
    dir: PathBuf,
    counter: AtomicU64,
    /// The key-check secret, once read or made.
    secret: Mutex<Option<Zeroizing<[u8; 32]>>>,
}

impl Origins {
    /// The records under `<work_dir>/origins` (created, mode 0700, when first written).
    pub(crate) fn new(work_dir: &Path) -> Self {
        Self {
            dir: work_dir.join("origins"),
            counter: AtomicU64::new(0),
            secret: Mutex::new(None),
        }
    }

    /// A value that identifies an unwrapped layer key (and its nonce) in this store without
    /// revealing anything about it: HMAC-SHA256, under the store's secret ([`Self::secret`]),
    /// of the first 32 bytes of the key's AES-CTR keystream. Two pulls into one store get the
    /// same value exactly when they unwrapped the same key and nonce; a record copied from
    /// another store (another secret) matches nothing. Without a usable secret the value is
    /// random: it matches no record, so the layer is verified, never wrongly reused.
    pub(crate) fn key_check(&self, key: &LayerKey) -> [u8; 32] {
        let mut stream = [0u8; 32];
        LayerDecryptor::new(key).update(&mut stream);
        let check = self.check_stream(&stream);
        stream.zeroize();
        check
    }

    fn check_stream(&self, stream: &[u8; 32]) -> [u8; 32] {
        let secret = match self.secret() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, dir = %self.dir.display(), "no key-check secret: decrypted layers are verified, not reused");
                let mut random = [0u8; 32];
                if getrandom::fill(&mut random).is_err() {
                    // No randomness either: a value no record holds (all ones is never stored
                    // by a working store, whose values are HMAC outputs).
                    random = [0xff; 32];
                }
                return random;
            }
        };
        let Ok(mut mac) = <Hmac<Sha256>>::new_from_slice(&*secret) else {
            return [0xff; 32];
        };
        mac.update(b"peerpod-image layer key check v2\0");
        mac.update(stream);
        mac.finalize().into_bytes().into()
    }

    /// The store's key-check secret: 32 random bytes in `origins/key-check-secret` (mode
    /// 0600 in the 0700 directory), made on first use atomically (written to a temporary file,
    /// then hard-linked into place: of two pulls racing, both use the first one linked).
    fn secret(&self) -> io::Result<Zeroizing<[u8; 32]>> {
        let mut cached = self
            .secret
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(s) = cached.as_ref() {
            return Ok(s.clone());
        }
        self.make_dir()?;
        let path = self.dir.join(SECRET);
        let secret = match read_secret(&path) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut fresh = Zeroizing::new([0u8; 32]);
                getrandom::fill(&mut fresh[..]).map_err(|e| io::Error::other(e.to_string()))?;
                let tmp = self.tmp_path(SECRET);
                let made = (|| {
                    let mut f = fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&tmp)?;
                    f.write_all(&fresh[..])?;
                    f.sync_all()?;
                    fs::hard_link(&tmp, &path)
                })();
                let _ = fs::remove_file(&tmp);
                match made {
                    Ok(()) => fresh,
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read_secret(&path)?,
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        *cached = Some(secret.clone());
        Ok(secret)
    }

    fn make_dir(&self) -> io::Result<()> {
        match fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
        {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn tmp_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!(
            ".tmp-{name}-{}.{}",
            std::process::id(),
            self.counter.fetch_add(1, Ordering::Relaxed)
        ))
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
        self.make_dir()?;
        let target = self.path(diff_id);
        let tmp = self.tmp_path(diff_id.hex());
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
            let keep = name == SECRET
                || name
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

/// Reads a key-check secret: a regular file (not followed if a link) of exactly 32 bytes,
/// readable by its owner only.
fn read_secret(path: &Path) -> io::Result<Zeroizing<[u8; 32]>> {
    use std::io::Read as _;
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() || meta.len() != 32 || meta.mode() & 0o077 != 0 {
        return Err(io::Error::other(format!(
            "{} is not a 32-byte file readable by its owner only",
            path.display()
        )));
    }
    let mut secret = Zeroizing::new([0u8; 32]);
    f.read_exact(&mut secret[..])?;
    Ok(secret)
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

    /// The check is keyed by a secret per store: one store gives a key the same value every
    /// time (a second `Origins` on it too), another store another value, so a record made in
    /// (or copied from) another store is not accepted; the secret is 0600 in the 0700
    /// directory, and pruning keeps it.
    #[test]
    fn key_checks_are_keyed_by_a_per_store_secret() {
        use std::os::unix::fs::PermissionsExt as _;
        let base = std::env::temp_dir().join(format!("peerpod-keycheck-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let (a, b) = (Origins::new(&base.join("a")), Origins::new(&base.join("b")));
        let stream = [42u8; 32];
        let in_a = a.check_stream(&stream);
        assert_eq!(in_a, a.check_stream(&stream));
        assert_eq!(in_a, Origins::new(&base.join("a")).check_stream(&stream));
        assert_ne!(in_a, a.check_stream(&[43u8; 32]));
        let in_b = b.check_stream(&stream);
        assert_ne!(in_a, in_b, "another store's secret");
        let unkeyed: [u8; 32] = <Sha256 as sha2::Digest>::digest(stream).into();
        assert_ne!(in_a, unkeyed);
        let record = Record {
            bytes: Some(1),
            origins: vec![Origin::Encrypted {
                blob: Digest::of(b"blob"),
                key: in_b,
            }],
        };
        let d = Digest::of(b"layer");
        a.write(&d, &record).expect("written");
        let read = a.read(&d).expect("read");
        assert!(!read.permits(&Origin::Encrypted {
            blob: Digest::of(b"blob"),
            key: in_a,
        }));
        let secret = base.join("a/origins").join(SECRET);
        let mode = |p: &Path| fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&secret), 0o600);
        assert_eq!(mode(&base.join("a/origins")), 0o700);
        a.prune(|_| false).expect("pruned");
        assert!(secret.exists(), "the secret outlives the records");
        assert_eq!(
            fs::read_dir(base.join("a/origins")).expect("dir").count(),
            1,
            "no temporary file left"
        );
        // A secret someone else can read is refused: the check is then random (no reuse).
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o644)).expect("chmod");
        let c = Origins::new(&base.join("a"));
        assert_ne!(c.check_stream(&stream), c.check_stream(&stream));
        let _ = fs::remove_dir_all(&base);
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
