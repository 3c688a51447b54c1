//! Whether what is mounted at `/run/kata-containers/image` is the pod VM's encrypted scratch
//! space, before the layer store is put there.
//!
//! Provisioning (`process-user-data setup-scratch-storage`) mounts a LUKS2 volume there, opened
//! by `cryptsetup` as a device-mapper crypt device. Anything else at that path — a tmpfs, an
//! overlay, a bind mount of some directory, a plain disk — would put image layers somewhere
//! the user did not ask for (guest RAM or an unencrypted disk), so it is not adopted. The facts
//! come from the kernel, not from names anyone can choose: the mount's device number in
//! `/proc/self/mountinfo` must be a device-mapper device (`/sys/dev/block/MAJ:MIN` →
//! `dm-N`) whose uuid (`/sys/block/dm-N/dm/uuid`) is one `cryptsetup` gives a crypt mapping,
//! and the mount's source must name that same device (`/dev/mapper/<its name>` or
//! `/dev/dm-N`). A tmpfs mounted with the source `/dev/mapper/anything` has an anonymous
//! device number (`0:N`) and is refused.
//!
//! [`parse_mountinfo`] reads the kernel's format with its octal escapes and refuses a line it
//! cannot read whole; the text read is bounded ([`MAX_MOUNTINFO_BYTES`]).

use std::io::Read as _;
use std::path::{Path, PathBuf};

/// Where the kernel lists the mounts of this process's mount namespace.
pub const MOUNTINFO: &str = "/proc/self/mountinfo";
/// The most bytes of mountinfo read; a longer one is refused (no scratch space adopted).
pub const MAX_MOUNTINFO_BYTES: u64 = 4 << 20;
/// The device-mapper uuid prefixes `cryptsetup` gives crypt mappings (LUKS1, LUKS2, plain).
/// Not `CRYPT-SUBDEV-` (the dm-integrity device under an integrity-protected LUKS2 volume,
/// which holds ciphertext with tags, not a file system), `CRYPT-INTEGRITY-` or
/// `CRYPT-VERITY-` (not encryption).
pub const CRYPT_UUID_PREFIXES: &[&str] = &["CRYPT-LUKS2-", "CRYPT-LUKS1-", "CRYPT-PLAIN-"];
/// The most bytes read from one sysfs attribute.
const MAX_SYSFS_BYTES: u64 = 4096;

/// One line of mountinfo, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The device number of the mounted file system (`MAJ:MIN`).
    pub device: (u32, u32),
    /// The directory of that file system mounted here (`/` unless a bind mount of a part).
    pub root: Vec<u8>,
    /// Where it is mounted.
    pub mount_point: Vec<u8>,
    /// The file system type (`ext4`, `tmpfs`, ...).
    pub fstype: Vec<u8>,
    /// The mount source (a device path for disks; any text for virtual file systems).
    pub source: Vec<u8>,
}

/// Why mountinfo cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MountinfoError {
    /// A line is not in the mountinfo format.
    #[error("line {line} of mountinfo is not in the mountinfo format: {why}")]
    Garbled {
        /// The line number, from 1.
        line: usize,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The text is longer than [`MAX_MOUNTINFO_BYTES`].
    #[error("mountinfo is longer than {MAX_MOUNTINFO_BYTES} bytes")]
    TooLarge,
    /// It cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Every mount listed in `text` (mountinfo format), in the kernel's order. A line that is not
/// mountinfo fails the whole answer: a caller deciding where layers go must not guess.
pub fn parse_mountinfo(text: &[u8]) -> Result<Vec<MountEntry>, MountinfoError> {
    if text.len() as u64 > MAX_MOUNTINFO_BYTES {
        return Err(MountinfoError::TooLarge);
    }
    text.split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.is_empty())
        .map(|(n, line)| {
            parse_line(line).map_err(|why| MountinfoError::Garbled { line: n + 1, why })
        })
        .collect()
}

/// One line: `id parent MAJ:MIN root mount-point options [optional...] - fstype source super`.
fn parse_line(line: &[u8]) -> Result<MountEntry, &'static str> {
    let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    if fields.len() < 10 {
        return Err("fewer than 10 fields");
    }
    for id in &fields[..2] {
        number(id).ok_or("a mount id is not a number")?;
    }
    let (major, minor) = split_once(fields[2], b':').ok_or("no MAJ:MIN device number")?;
    let device = (
        number(major).ok_or("the major device number is not a number")?,
        number(minor).ok_or("the minor device number is not a number")?,
    );
    let root = absolute(fields[3]).ok_or("the root is not an absolute, escaped path")?;
    let mount_point =
        absolute(fields[4]).ok_or("the mount point is not an absolute, escaped path")?;
    // Optional fields (`shared:N`, `master:N`, ...) until a lone `-`; none of them is `-`.
    let dash = fields
        .iter()
        .skip(6)
        .position(|f| *f == b"-")
        .ok_or("no `-` separator")?
        + 6;
    let rest = &fields[dash + 1..];
    if rest.len() != 3 {
        return Err("not three fields after the `-` separator");
    }
    Ok(MountEntry {
        device,
        root,
        mount_point,
        fstype: decode(rest[0]).ok_or("the file system type is badly escaped")?,
        source: decode(rest[1]).ok_or("the mount source is badly escaped")?,
    })
}

fn split_once(field: &[u8], at: u8) -> Option<(&[u8], &[u8])> {
    let i = field.iter().position(|&b| b == at)?;
    Some((&field[..i], &field[i + 1..]))
}

fn number(field: &[u8]) -> Option<u32> {
    if field.is_empty() || !field.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(field).ok()?.parse().ok()
}

fn absolute(field: &[u8]) -> Option<Vec<u8>> {
    decode(field).filter(|p| p.first() == Some(&b'/'))
}

/// Undoes the kernel's octal escapes (`\040` space, `\011` tab, `\012` newline, `\134`
/// backslash; any `\ooo` below 256). `None` for a backslash not followed by three octal digits
/// or an escaped NUL (no path holds one).
fn decode(field: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while let Some(&b) = field.get(i) {
        if b == b'\\' {
            let mut value: u32 = 0;
            for &d in field.get(i + 1..i + 4)? {
                if !(b'0'..=b'7').contains(&d) {
                    return None;
                }
                value = value * 8 + u32::from(d - b'0');
            }
            out.push(u8::try_from(value).ok().filter(|&v| v != 0)?);
            i += 4;
        } else {
            out.push(b);
            i += 1;
        }
    }
    Some(out)
}

/// What is at the scratch space's mount point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The encrypted scratch space: a dm-crypt device's file system, mounted whole.
    Encrypted {
        /// The mount source (`/dev/mapper/<name>` or `/dev/dm-N`).
        source: String,
        /// Its device-mapper uuid.
        uuid: String,
    },
    /// Nothing is mounted there (no scratch space was asked for).
    NotMounted {
        /// What was looked for.
        why: String,
    },
    /// Something else is mounted there: not used.
    Refused {
        /// What is mounted (type, source, device number).
        found: String,
        /// Why it is not the encrypted scratch space.
        why: String,
    },
}

/// Where to look, so tests can point at a recorded mountinfo and sysfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScratchProbe {
    /// The scratch space's mount point.
    pub mount_point: PathBuf,
    /// The mountinfo file ([`MOUNTINFO`]).
    pub mountinfo: PathBuf,
    /// Where sysfs is mounted (`/sys`).
    pub sys: PathBuf,
}

impl Default for ScratchProbe {
    fn default() -> Self {
        Self {
            mount_point: PathBuf::from(crate::config::SCRATCH_WORK_DIR),
            mountinfo: PathBuf::from(MOUNTINFO),
            sys: PathBuf::from("/sys"),
        }
    }
}

impl ScratchProbe {
    /// The probe of `mount_point` with the live mountinfo and sysfs.
    pub fn at(mount_point: PathBuf) -> Self {
        Self {
            mount_point,
            ..Self::default()
        }
    }

    /// Looks at what is mounted at the mount point now.
    pub fn judge(&self) -> Verdict {
        use std::os::unix::ffi::OsStrExt as _;
        // The kernel lists the path with symbolic links resolved.
        let real = match std::fs::canonicalize(&self.mount_point) {
            Ok(real) => real,
            Err(e) => {
                return Verdict::NotMounted {
                    why: format!("{} cannot be resolved: {e}", self.mount_point.display()),
                };
            }
        };
        let mounts = match read_bounded(&self.mountinfo, MAX_MOUNTINFO_BYTES)
            .and_then(|text| parse_mountinfo(&text))
        {
            Ok(mounts) => mounts,
            Err(e) => {
                return Verdict::Refused {
                    found: format!("the mounts at {}", real.display()),
                    why: format!("they cannot be checked: {e}"),
                };
            }
        };
        judge(&mounts, real.as_os_str().as_bytes(), &self.sys)
    }
}

fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, MountinfoError> {
    let read = |source| MountinfoError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut text = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(limit + 1).read_to_end(&mut text))
        .map_err(read)?;
    if text.len() as u64 > limit {
        return Err(MountinfoError::TooLarge);
    }
    Ok(text)
}

/// The decision on recorded `mounts` for `mount_point` (resolved), with sysfs at `sys`.
pub fn judge(mounts: &[MountEntry], mount_point: &[u8], sys: &Path) -> Verdict {
    // The last mount at a path is the one on top, the one a path lookup reaches.
    let Some(m) = mounts.iter().rev().find(|m| m.mount_point == mount_point) else {
        return Verdict::NotMounted {
            why: format!(
                "nothing is mounted at {}",
                String::from_utf8_lossy(mount_point)
            ),
        };
    };
    let source = String::from_utf8_lossy(&m.source).into_owned();
    let found = format!(
        "{} from {source:?} (device {}:{})",
        String::from_utf8_lossy(&m.fstype),
        m.device.0,
        m.device.1
    );
    let refuse = |why: String| Verdict::Refused {
        found: found.clone(),
        why,
    };
    if m.root != b"/" {
        return refuse(format!(
            "a bind mount of {} inside that file system, not the whole of it",
            String::from_utf8_lossy(&m.root)
        ));
    }
    let named = if let Some(name) = source.strip_prefix("/dev/mapper/") {
        Named::Mapper(name)
    } else if let Some(n) = source.strip_prefix("/dev/dm-") {
        Named::Dm(n)
    } else {
        return refuse("the source is not /dev/mapper/<name> or /dev/dm-N".into());
    };
    // The device behind the mount, by its number: sysfs links it to its block device.
    let (major, minor) = m.device;
    let link = sys.join(format!("dev/block/{major}:{minor}"));
    let dm = match std::fs::read_link(&link) {
        Ok(target) => target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        Err(_) => {
            return refuse(format!(
                "device {major}:{minor} is no block device ({} is missing)",
                link.display()
            ));
        }
    };
    if !dm.starts_with("dm-") || dm.contains('/') {
        return refuse(format!(
            "device {major}:{minor} is {dm:?}, not a device-mapper device"
        ));
    }
    let block = sys.join("block").join(&dm);
    let attribute = |name: &str| {
        read_bounded(&block.join(name), MAX_SYSFS_BYTES)
            .ok()
            .map(|v| String::from_utf8_lossy(&v).trim_end().to_string())
    };
    if attribute("dev").as_deref() != Some(&format!("{major}:{minor}")) {
        return refuse(format!(
            "{} does not say {major}:{minor}",
            block.join("dev").display()
        ));
    }
    match named {
        Named::Dm(n) if format!("dm-{n}") != dm => {
            return refuse(format!("the source names dm-{n} but the device is {dm}"));
        }
        Named::Mapper(name) if attribute("dm/name").as_deref() != Some(name) => {
            return refuse(format!(
                "the source names {name:?} but device {dm} is {:?}",
                attribute("dm/name").unwrap_or_default()
            ));
        }
        _ => {}
    }
    let Some(uuid) = attribute("dm/uuid") else {
        return refuse(format!(
            "{} cannot be read",
            block.join("dm/uuid").display()
        ));
    };
    if !CRYPT_UUID_PREFIXES.iter().any(|p| uuid.starts_with(p)) {
        return refuse(format!(
            "device-mapper uuid {uuid:?} is not a dm-crypt mapping ({})",
            CRYPT_UUID_PREFIXES.join(", ")
        ));
    }
    Verdict::Encrypted { source, uuid }
}

/// Says where layers go when `cdh.toml` set no `[image] work_dir` (`verdict` is `None` when it
/// set one): a mount at the scratch space's place that is not the encrypted scratch space is
/// a warning naming what it is and why it is not used.
pub(crate) fn log_choice(verdict: Option<&Verdict>, work_dir: &Path, mount_point: &Path) {
    let work_dir = work_dir.display();
    let scratch = mount_point.display();
    match verdict {
        None => {}
        Some(Verdict::Encrypted { source, uuid }) => tracing::info!(
            %work_dir, %source, %uuid,
            "no [image] work_dir in cdh.toml: image layers go to the encrypted scratch space"
        ),
        Some(Verdict::NotMounted { why }) => tracing::info!(
            %work_dir, %scratch, %why,
            "no [image] work_dir in cdh.toml and no encrypted scratch space: image layers stay \
             in the default work_dir"
        ),
        Some(Verdict::Refused { found, why }) => tracing::warn!(
            %work_dir, %scratch, %found, %why,
            "the file system mounted at the scratch space's place is not the encrypted scratch \
             space (a dm-crypt device): image layers stay in the default work_dir; set [image] \
             work_dir in cdh.toml to choose one"
        ),
    }
}

enum Named<'a> {
    Mapper(&'a str),
    Dm(&'a str),
}

#[cfg(test)]
#[path = "scratch/tests.rs"]
mod tests;
