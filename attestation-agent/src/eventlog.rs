//! Runtime measurements: an event log of AAEL entries, each extended into a measurement register.
//!
//! Entries are TCG2 crypto-agile event records (`EV_EVENT_TAG` with tagged-event ID `AAEL`),
//! little-endian: PCR index, event type 6, one SHA-256 digest, event size, then the tagged event
//! — ID `0x4141454C`, data size, and the AAEL text `<Domain> <Operation> <Content>`. The digest
//! is SHA-256 of the tagged event; that digest is what the register is extended with. As in
//! upstream's log there is no INIT record: a verifier replays each register from its reset value.
//! Unlike upstream, each record names the register it was extended into.
//!
//! Crash safety: before extending, a write-ahead record is written — the log's length, the
//! register's value before and after, and the entry. Then the register is extended, the entry
//! appended, and the write-ahead record removed. A leftover record (a crash in between) is
//! resolved at start and before each new entry: if the register holds the "after" value, the
//! entry is (re-)appended at the recorded length; if it holds the "before" value, the extension
//! is completed first; anything else means the log and the register disagree, which is an error.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::attester::{AttestError, Attester, Measured};

/// `EV_EVENT_TAG`.
pub const EV_EVENT_TAG: u32 = 6;
/// The tagged-event ID of AAEL entries: `"AAEL"`.
pub const AAEL_TAG: u32 = 0x4141_454C;
/// TPM algorithm ID of SHA-256.
const ALG_SHA256: u16 = 0x000B;

/// Why a runtime measurement failed.
#[derive(Debug, thiserror::Error)]
pub enum EventLogError {
    /// A field of the entry is not acceptable.
    #[error("invalid runtime measurement: {0}")]
    Invalid(String),
    /// The log file could not be used.
    #[error("event log {action} {path}")]
    Io {
        /// What we were doing.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The log is damaged.
    #[error("the event log {path} is corrupt at byte {offset}: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where.
        offset: usize,
        /// What.
        detail: String,
    },
    /// The register's value is not what the log replays to.
    #[error("register {register} is {actual} but the event log replays to {expected}")]
    Mismatch {
        /// The register.
        register: u32,
        /// Its value.
        actual: String,
        /// What the log says.
        expected: String,
    },
    /// The TEE failed.
    #[error(transparent)]
    Tee(#[from] AttestError),
}

/// One event record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The register.
    pub register: u32,
    /// The AAEL text.
    pub text: String,
}

impl Entry {
    fn tagged_event(&self) -> Vec<u8> {
        let text = self.text.as_bytes();
        let mut e = Vec::with_capacity(8 + text.len());
        e.extend_from_slice(&AAEL_TAG.to_le_bytes());
        e.extend_from_slice(&(text.len() as u32).to_le_bytes());
        e.extend_from_slice(text);
        e
    }

    /// SHA-256 of the tagged event: what the register is extended with.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.tagged_event()).into()
    }

    /// The TCG2 record.
    pub fn to_bytes(&self) -> Vec<u8> {
        let event = self.tagged_event();
        let mut b = Vec::with_capacity(50 + event.len());
        b.extend_from_slice(&self.register.to_le_bytes());
        b.extend_from_slice(&EV_EVENT_TAG.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&ALG_SHA256.to_le_bytes());
        b.extend_from_slice(&self.digest());
        b.extend_from_slice(&(event.len() as u32).to_le_bytes());
        b.extend_from_slice(&event);
        b
    }
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Parses a log (or a write-ahead record) into entries, checking each digest.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Vec<Entry>, EventLogError> {
    let corrupt = |offset: usize, detail: &str| EventLogError::Corrupt {
        path: path.to_path_buf(),
        offset,
        detail: detail.to_string(),
    };
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let header = (|| {
            let register = le_u32(bytes, at)?;
            let kind = le_u32(bytes, at + 4)?;
            let count = le_u32(bytes, at + 8)?;
            let alg = bytes
                .get(at + 12..at + 14)
                .map(|s| u16::from_le_bytes([s[0], s[1]]))?;
            let digest = bytes.get(at + 14..at + 46)?;
            let size = le_u32(bytes, at + 46)? as usize;
            Some((register, kind, count, alg, digest, size))
        })();
        let Some((register, kind, count, alg, digest, size)) = header else {
            return Err(corrupt(at, "truncated record header"));
        };
        if kind != EV_EVENT_TAG || count != 1 || alg != ALG_SHA256 {
            return Err(corrupt(
                at,
                "not an AAEL record (type 6, one SHA-256 digest)",
            ));
        }
        let event = bytes
            .get(at + 50..at + 50 + size)
            .ok_or_else(|| corrupt(at, "truncated event"))?;
        if le_u32(event, 0) != Some(AAEL_TAG)
            || le_u32(event, 4).map(|n| n as usize + 8) != Some(size)
        {
            return Err(corrupt(at, "not an AAEL tagged event"));
        }
        let text =
            String::from_utf8(event[8..].to_vec()).map_err(|_| corrupt(at, "text is not UTF-8"))?;
        let entry = Entry { register, text };
        if entry.digest()[..] != digest[..] {
            return Err(corrupt(at, "digest does not match the event"));
        }
        out.push(entry);
        at += 50 + size;
    }
    Ok(out)
}

/// The value a register reaches from `initial` by replaying the log's entries for it.
pub fn replay(entries: &[Entry], register: u32, initial: [u8; 32]) -> [u8; 32] {
    entries
        .iter()
        .filter(|e| e.register == register)
        .fold(initial, |value, e| extend_value(&value, &e.digest()))
}

/// SHA-256 PCR extension: `SHA-256(value ‖ digest)`.
pub fn extend_value(value: &[u8], digest: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(value);
    h.update(digest);
    h.finalize().into()
}

/// A write-ahead record: the log's length, the register before and after, the entry.
struct Pending {
    offset: u64,
    before: [u8; 32],
    after: [u8; 32],
    entry: Entry,
}

impl Pending {
    fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&self.offset.to_le_bytes());
        b.extend_from_slice(&self.before);
        b.extend_from_slice(&self.after);
        b.extend_from_slice(&self.entry.to_bytes());
        b
    }

    fn parse(path: &Path, b: &[u8]) -> Option<Self> {
        let offset = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
        let before = b.get(8..40)?.try_into().ok()?;
        let after = b.get(40..72)?.try_into().ok()?;
        let mut entries = parse(path, b.get(72..)?).ok()?;
        if entries.len() != 1 {
            return None;
        }
        Some(Self {
            offset,
            before,
            after,
            entry: entries.pop()?,
        })
    }
}

/// The event log of one agent.
pub struct EventLog {
    path: PathBuf,
    pending: PathBuf,
    lock: tokio::sync::Mutex<()>,
}

fn check_field(name: &str, value: &str, spaces_allowed: bool) -> Result<(), EventLogError> {
    if value.is_empty()
        || value.contains(['\n', '\r', '\0'])
        || (!spaces_allowed && value.contains(char::is_whitespace))
    {
        return Err(EventLogError::Invalid(format!(
            "{name} {value:?} must be non-empty, on one line{}",
            if spaces_allowed {
                ""
            } else {
                ", without spaces"
            }
        )));
    }
    Ok(())
}

impl EventLog {
    /// The log at `path` (its write-ahead record beside it, `<path>.pending`).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let mut pending = path.clone().into_os_string();
        pending.push(".pending");
        Self {
            path,
            pending: PathBuf::from(pending),
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(
        &self,
        action: &'static str,
        path: &Path,
    ) -> impl FnOnce(std::io::Error) -> EventLogError {
        let path = path.to_path_buf();
        move |source| EventLogError::Io {
            action,
            path,
            source,
        }
    }

    fn read(&self) -> Result<Vec<Entry>, EventLogError> {
        match std::fs::read(&self.path) {
            Ok(b) => parse(&self.path, &b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(self.io("cannot read", &self.path)(e)),
        }
    }

    /// All entries.
    pub fn entries(&self) -> Result<Vec<Entry>, EventLogError> {
        self.read()
    }

    fn append(&self, entries: &[Entry]) -> Result<(), EventLogError> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(self.io("cannot create the directory of", &self.path))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(self.io("cannot open", &self.path))?;
        for e in entries {
            f.write_all(&e.to_bytes())
                .map_err(self.io("cannot append to", &self.path))?;
        }
        f.sync_data().map_err(self.io("cannot sync", &self.path))
    }

    /// Resolves a write-ahead record left by a crash (see the module documentation).
    pub async fn recover(&self, tee: &dyn Attester) -> Result<(), EventLogError> {
        let _g = self.lock.lock().await;
        self.recover_locked(tee).await
    }

    async fn recover_locked(&self, tee: &dyn Attester) -> Result<(), EventLogError> {
        let bytes = match std::fs::read(&self.pending) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.io("cannot read", &self.pending)(e)),
        };
        let Some(p) = Pending::parse(&self.pending, &bytes) else {
            // Torn while being written: the register was not extended yet.
            tracing::warn!(path = %self.pending.display(), "dropping a torn write-ahead record");
            return std::fs::remove_file(&self.pending)
                .map_err(self.io("cannot remove", &self.pending));
        };
        let register = p.entry.register;
        let actual = tee.register(u64::from(register)).await?;
        if actual == p.before {
            tracing::warn!(
                register,
                "completing a runtime measurement interrupted before its extension"
            );
            tee.extend(u64::from(register), &p.entry.digest()).await?;
        } else if actual != p.after {
            return Err(EventLogError::Mismatch {
                register,
                actual: hex::encode(&actual),
                expected: hex::encode(p.after),
            });
        } else {
            tracing::warn!(
                register,
                "logging a runtime measurement interrupted after its extension"
            );
        }
        self.truncate(p.offset)?;
        self.append(std::slice::from_ref(&p.entry))?;
        std::fs::remove_file(&self.pending).map_err(self.io("cannot remove", &self.pending))
    }

    fn truncate(&self, len: u64) -> Result<(), EventLogError> {
        match std::fs::OpenOptions::new().write(true).open(&self.path) {
            Ok(f) => f
                .set_len(len)
                .map_err(self.io("cannot truncate", &self.path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && len == 0 => Ok(()),
            Err(e) => Err(self.io("cannot open", &self.path)(e)),
        }
    }

    /// Records `<domain> <operation> <content>` and extends `register` with its digest.
    pub async fn measure(
        &self,
        tee: &dyn Attester,
        register: u32,
        domain: &str,
        operation: &str,
        content: &str,
    ) -> Result<Measured, EventLogError> {
        check_field("domain", domain, false)?;
        check_field("operation", operation, false)?;
        check_field("content", content, true)?;
        let _g = self.lock.lock().await;
        self.recover_locked(tee).await?;
        let entry = Entry {
            register,
            text: format!("{domain} {operation} {content}"),
        };
        let before: [u8; 32] = match tee.register(u64::from(register)).await {
            Ok(v) => v
                .try_into()
                .map_err(|_| EventLogError::Invalid("the register is not 32 bytes".into()))?,
            Err(AttestError::NotSupported(_)) => return Ok(Measured::NotSupported),
            Err(e) => return Err(e.into()),
        };
        let offset = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        let pending = Pending {
            offset,
            before,
            after: extend_value(&before, &entry.digest()),
            entry,
        };
        if let Some(dir) = self.pending.parent() {
            std::fs::create_dir_all(dir)
                .map_err(self.io("cannot create the directory of", &self.pending))?;
        }
        {
            let mut f = std::fs::File::create(&self.pending)
                .map_err(self.io("cannot create", &self.pending))?;
            f.write_all(&pending.to_bytes())
                .map_err(self.io("cannot write", &self.pending))?;
            f.sync_data()
                .map_err(self.io("cannot sync", &self.pending))?;
        }
        let measured = tee
            .extend(u64::from(register), &pending.entry.digest())
            .await?;
        if measured == Measured::NotSupported {
            let _ = std::fs::remove_file(&self.pending);
            return Ok(measured);
        }
        self.append(std::slice::from_ref(&pending.entry))?;
        std::fs::remove_file(&self.pending).map_err(self.io("cannot remove", &self.pending))?;
        Ok(measured)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use async_trait::async_trait;
    use peerpod_tests::scratch::ScratchDir;
    use serde_json::Value;

    use super::*;

    /// Registers in memory; `supported = false` behaves like a TEE without them.
    struct Registers {
        values: Mutex<HashMap<u64, [u8; 32]>>,
        supported: bool,
    }

    impl Registers {
        fn new() -> Self {
            Self {
                values: Mutex::new(HashMap::new()),
                supported: true,
            }
        }

        fn get(&self, index: u64) -> [u8; 32] {
            self.values
                .lock()
                .expect("lock")
                .get(&index)
                .copied()
                .unwrap_or([0; 32])
        }

        fn set(&self, index: u64, value: [u8; 32]) {
            self.values.lock().expect("lock").insert(index, value);
        }
    }

    #[async_trait]
    impl Attester for Registers {
        fn tee(&self) -> &'static str {
            "test"
        }
        async fn evidence(&self, _: &[u8]) -> Result<Value, AttestError> {
            Err(AttestError::NotSupported("evidence"))
        }
        async fn bind_init_data(&self, _: &[u8]) -> Result<(), AttestError> {
            Ok(())
        }
        async fn extend(&self, index: u64, digest: &[u8]) -> Result<Measured, AttestError> {
            if !self.supported {
                return Ok(Measured::NotSupported);
            }
            self.set(index, extend_value(&self.get(index), digest));
            Ok(Measured::Extended)
        }
        async fn register(&self, index: u64) -> Result<Vec<u8>, AttestError> {
            if !self.supported {
                return Err(AttestError::NotSupported("registers"));
            }
            Ok(self.get(index).to_vec())
        }
    }

    fn log_in(dir: &ScratchDir) -> EventLog {
        EventLog::new(dir.path().join("log/aael.bin"))
    }

    fn assert_replays(log: &EventLog, tee: &Registers, registers: &[u32]) {
        let entries = log.entries().expect("log parses");
        for &r in registers {
            assert_eq!(
                replay(&entries, r, [0; 32]),
                tee.get(u64::from(r)),
                "register {r} replays from the log"
            );
        }
    }

    /// Writes the record `measure` writes before extending, as a crash would leave it.
    fn leave_pending(log: &EventLog, tee: &Registers, register: u32, text: &str) -> Entry {
        let entry = Entry {
            register,
            text: text.into(),
        };
        let before = tee.get(u64::from(register));
        let p = Pending {
            offset: std::fs::metadata(log.path()).map(|m| m.len()).unwrap_or(0),
            before,
            after: extend_value(&before, &entry.digest()),
            entry: entry.clone(),
        };
        if let Some(parent) = log.pending.parent() {
            std::fs::create_dir_all(parent).expect("log directory");
        }
        std::fs::write(&log.pending, p.to_bytes()).expect("pending");
        entry
    }

    #[tokio::test]
    async fn measurements_replay_to_the_registers() {
        let dir = ScratchDir::new("aael-replay").expect("scratch");
        let (log, tee) = (log_in(&dir), Registers::new());
        log.measure(
            &tee,
            23,
            "github.com",
            "pull-image",
            "docker.io/library/busybox@sha256:00",
        )
        .await
        .expect("measure");
        log.measure(&tee, 23, "example.org", "mount", "volume with spaces")
            .await
            .expect("measure");
        log.measure(&tee, 16, "example.org", "other", "register")
            .await
            .expect("measure");
        let entries = log.entries().expect("parse");
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[1].text, "example.org mount volume with spaces");
        assert_ne!(tee.get(23), [0; 32]);
        assert_replays(&log, &tee, &[16, 23]);
        assert!(!log.pending.exists(), "no write-ahead record is left");
    }

    #[tokio::test]
    async fn a_crash_before_the_extension_is_completed_at_start() {
        let dir = ScratchDir::new("aael-before").expect("scratch");
        let (log, tee) = (log_in(&dir), Registers::new());
        log.measure(&tee, 23, "d", "first", "entry")
            .await
            .expect("measure");
        let entry = leave_pending(&log, &tee, 23, "d second entry");
        log.recover(&tee).await.expect("recover");
        assert_eq!(log.entries().expect("parse").last(), Some(&entry));
        assert_replays(&log, &tee, &[23]);
        assert!(!log.pending.exists());
    }

    #[tokio::test]
    async fn a_crash_after_the_extension_is_logged_before_the_next_entry() {
        let dir = ScratchDir::new("aael-after").expect("scratch");
        let (log, tee) = (log_in(&dir), Registers::new());
        log.measure(&tee, 23, "d", "first", "entry")
            .await
            .expect("measure");
        let entry = leave_pending(&log, &tee, 23, "d second entry");
        tee.extend(23, &entry.digest()).await.expect("extend");
        // Half of the record made it to the log before the crash.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(log.path())
            .expect("log");
        f.write_all(&entry.to_bytes()[..20]).expect("torn append");
        drop(f);
        assert!(matches!(log.entries(), Err(EventLogError::Corrupt { .. })));
        // The next measurement resolves the record first.
        log.measure(&tee, 23, "d", "third", "entry")
            .await
            .expect("measure");
        let texts: Vec<String> = log
            .entries()
            .expect("parse")
            .into_iter()
            .map(|e| e.text)
            .collect();
        assert_eq!(texts, ["d first entry", "d second entry", "d third entry"]);
        assert_replays(&log, &tee, &[23]);
    }

    #[tokio::test]
    async fn a_register_changed_behind_the_logs_back_is_an_error() {
        let dir = ScratchDir::new("aael-mismatch").expect("scratch");
        let (log, tee) = (log_in(&dir), Registers::new());
        leave_pending(&log, &tee, 23, "d an entry");
        tee.set(23, [7; 32]);
        let err = log.recover(&tee).await.expect_err("mismatch");
        assert!(
            matches!(err, EventLogError::Mismatch { register: 23, .. }),
            "{err}"
        );
        assert!(log.pending.exists(), "the evidence of the mismatch is kept");
    }

    #[tokio::test]
    async fn a_torn_write_ahead_record_is_dropped() {
        let dir = ScratchDir::new("aael-torn").expect("scratch");
        let (log, tee) = (log_in(&dir), Registers::new());
        log.measure(&tee, 23, "d", "first", "entry")
            .await
            .expect("measure");
        let value = tee.get(23);
        std::fs::write(&log.pending, [1, 2, 3]).expect("torn record");
        log.recover(&tee).await.expect("recover");
        assert!(!log.pending.exists());
        assert_eq!(tee.get(23), value, "nothing was extended");
        assert_eq!(log.entries().expect("parse").len(), 1);
    }

    #[tokio::test]
    async fn bad_fields_and_missing_registers() {
        let dir = ScratchDir::new("aael-fields").expect("scratch");
        let (log, tee) = (log_in(&dir), Registers::new());
        for (domain, operation, content) in [
            ("two words", "op", "c"),
            ("d", "", "c"),
            ("d", "op", "line\nbreak"),
            ("d", "op", ""),
        ] {
            let err = log
                .measure(&tee, 23, domain, operation, content)
                .await
                .expect_err("refused");
            assert!(matches!(err, EventLogError::Invalid(_)), "{err}");
        }
        assert!(!log.path().exists(), "nothing was logged");
        let none = Registers {
            supported: false,
            ..Registers::new()
        };
        let m = log
            .measure(&none, 23, "d", "op", "c")
            .await
            .expect("measure");
        assert_eq!(m, Measured::NotSupported);
        assert!(!log.path().exists() && !log.pending.exists());
    }

    #[test]
    fn a_damaged_log_names_the_offset() {
        let e = Entry {
            register: 23,
            text: "d op c".into(),
        };
        let mut bytes = [e.to_bytes(), e.to_bytes()].concat();
        let first = e.to_bytes().len();
        bytes[first + 20] ^= 1;
        match parse(Path::new("log"), &bytes) {
            Err(EventLogError::Corrupt { offset, detail, .. }) => {
                assert_eq!(offset, first);
                assert!(detail.contains("digest"), "{detail}");
            }
            other => panic!("damaged digest accepted: {other:?}"),
        }
        bytes[first + 20] ^= 1;
        bytes[first + 4] = 7;
        assert!(parse(Path::new("log"), &bytes).is_err(), "wrong event type");
        assert_eq!(
            parse(Path::new("log"), &bytes[..first]).expect("one").len(),
            1
        );
    }
}
