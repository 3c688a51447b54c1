//! One tar member as the unpacker sees it: the header merged with the PAX and GNU long-name
//! records before it, its name split into checked components.
//!
//! The tar crate is used in raw mode, so every extension record is read here with a size bound
//! (its own processing would read a GNU long name of any size into memory).

use crate::error::LayerError;
use crate::options::UnpackOptions;

/// What a member makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Dir,
    Symlink,
    Hardlink,
    Char,
    Block,
    Fifo,
}

/// The extension records that describe the next member.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    pub(crate) long_name: Option<Vec<u8>>,
    pub(crate) long_link: Option<Vec<u8>>,
    pub(crate) pax: Option<Vec<u8>>,
}

impl Pending {
    pub(crate) fn is_empty(&self) -> bool {
        self.long_name.is_none() && self.long_link.is_none() && self.pax.is_none()
    }
}

/// A member's metadata, extension records applied.
#[derive(Debug)]
pub(crate) struct Meta {
    pub(crate) kind: Kind,
    /// The name as archived (for messages and whiteout detection).
    pub(crate) name: Vec<u8>,
    pub(crate) link: Vec<u8>,
    pub(crate) size: u64,
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) mtime_sec: i64,
    pub(crate) mtime_nsec: u32,
    pub(crate) dev_major: u32,
    pub(crate) dev_minor: u32,
    pub(crate) xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

fn malformed(entry: u64, reason: impl Into<String>) -> LayerError {
    LayerError::Malformed {
        entry,
        reason: reason.into(),
    }
}

fn archive(entry: u64) -> impl FnOnce(std::io::Error) -> LayerError {
    move |source| LayerError::Archive { entry, source }
}

/// Builds a member's metadata from its raw header and the extension records before it.
pub(crate) fn meta(
    header: &tar::Header,
    pending: Pending,
    index: u64,
    opts: &UnpackOptions,
) -> Result<Meta, LayerError> {
    let mut name = match pending.long_name {
        Some(n) => trim_nul(n),
        None => header.path_bytes().into_owned(),
    };
    let mut link = match pending.long_link {
        Some(l) => trim_nul(l),
        None => header
            .link_name_bytes()
            .map(|l| l.into_owned())
            .unwrap_or_default(),
    };
    let size = header.entry_size().map_err(archive(index))?;
    let mode = header.mode().map_err(archive(index))? & 0o7777;
    let mut uid = header.uid().map_err(archive(index))?;
    let mut gid = header.gid().map_err(archive(index))?;
    let mut mtime_sec = i64::try_from(header.mtime().map_err(archive(index))?)
        .map_err(|_| malformed(index, "mtime out of range"))?;
    let mut mtime_nsec = 0;
    let mut xattrs = Vec::new();
    let mut xattr_bytes = 0usize;
    if let Some(pax) = pending.pax.as_deref() {
        for ext in tar::PaxExtensions::new(pax) {
            let ext = ext.map_err(|_| malformed(index, "unparsable PAX extended header record"))?;
            let key = ext.key_bytes();
            let value = ext.value_bytes();
            match key {
                b"path" => name = value.to_vec(),
                b"linkpath" => link = value.to_vec(),
                b"uid" => {
                    uid = pax_number(value)
                        .ok_or_else(|| malformed(index, "PAX uid is not a number"))?
                }
                b"gid" => {
                    gid = pax_number(value)
                        .ok_or_else(|| malformed(index, "PAX gid is not a number"))?
                }
                b"size" => {
                    // Raw-mode parsing skips data by the header's size field: a PAX size that
                    // disagrees would desynchronise us from other readers of the archive.
                    let pax_size = pax_number(value)
                        .ok_or_else(|| malformed(index, "PAX size is not a number"))?;
                    if pax_size != size {
                        return Err(malformed(
                            index,
                            format!(
                                "PAX size {pax_size} differs from the header's size {size} (members over 8 GiB are not supported)"
                            ),
                        ));
                    }
                }
                b"mtime" => {
                    (mtime_sec, mtime_nsec) = pax_time(value)
                        .ok_or_else(|| malformed(index, "PAX mtime is not a decimal time"))?;
                }
                _ if key.starts_with(b"GNU.sparse.") => {
                    return Err(LayerError::refused(
                        &name,
                        "sparse files are not supported in image layers",
                    ));
                }
                _ => {
                    if let Some(xname) = key.strip_prefix(b"SCHILY.xattr.") {
                        xattr_bytes = xattr_bytes.saturating_add(xname.len() + value.len());
                        if xattr_bytes > opts.max_xattr_bytes {
                            return Err(LayerError::Limit {
                                what: "extended attribute bytes of one entry",
                                limit: opts.max_xattr_bytes as u64,
                                field: "max_xattr_bytes",
                            });
                        }
                        if xname.is_empty() || xname.contains(&0) {
                            return Err(LayerError::refused(
                                &name,
                                "extended attribute with an empty name or a NUL byte",
                            ));
                        }
                        xattrs.push((xname.to_vec(), value.to_vec()));
                    }
                    // Other records (atime, ctime, uname, gname, comment, charset, vendor
                    // extensions) do not change what is written.
                }
            }
        }
    }
    let uid = u32::try_from(uid).ok().filter(|u| *u != u32::MAX);
    let gid = u32::try_from(gid).ok().filter(|g| *g != u32::MAX);
    let (Some(uid), Some(gid)) = (uid, gid) else {
        return Err(LayerError::refused(&name, "owner or group ID out of range"));
    };
    let kind = match header.entry_type() {
        tar::EntryType::Regular | tar::EntryType::Continuous => {
            // Pre-POSIX archives mark directories by a trailing slash on a regular member.
            if name.ends_with(b"/") && header.entry_type() == tar::EntryType::Regular && size == 0 {
                Kind::Dir
            } else {
                Kind::File
            }
        }
        tar::EntryType::Directory => Kind::Dir,
        tar::EntryType::Symlink => Kind::Symlink,
        tar::EntryType::Link => Kind::Hardlink,
        tar::EntryType::Char => Kind::Char,
        tar::EntryType::Block => Kind::Block,
        tar::EntryType::Fifo => Kind::Fifo,
        tar::EntryType::GNUSparse => {
            return Err(LayerError::refused(
                &name,
                "sparse files are not supported in image layers",
            ));
        }
        other => {
            return Err(LayerError::refused(
                &name,
                format!(
                    "unsupported tar entry type {:?}",
                    char::from(other.as_byte()).escape_default().to_string()
                ),
            ));
        }
    };
    let (dev_major, dev_minor) = if matches!(kind, Kind::Char | Kind::Block) {
        (
            header.device_major().map_err(archive(index))?.unwrap_or(0),
            header.device_minor().map_err(archive(index))?.unwrap_or(0),
        )
    } else {
        (0, 0)
    };
    if name.len() > opts.max_path_bytes || link.len() > opts.max_path_bytes {
        return Err(LayerError::Limit {
            what: "entry name or link target length in bytes",
            limit: opts.max_path_bytes as u64,
            field: "max_path_bytes",
        });
    }
    Ok(Meta {
        kind,
        name,
        link,
        size,
        mode,
        uid,
        gid,
        mtime_sec,
        mtime_nsec,
        dev_major,
        dev_minor,
        xattrs,
    })
}

/// GNU long names end with a NUL.
fn trim_nul(mut bytes: Vec<u8>) -> Vec<u8> {
    if let Some(end) = bytes.iter().position(|b| *b == 0) {
        bytes.truncate(end);
    }
    bytes
}

fn pax_number(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// A PAX time: `[-]seconds[.fraction]`.
fn pax_time(value: &[u8]) -> Option<(i64, u32)> {
    let text = std::str::from_utf8(value).ok()?;
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let secs: i64 = secs.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut nanos = 0u32;
    for (i, digit) in frac.bytes().take(9).enumerate() {
        nanos += u32::from(digit - b'0') * 10u32.pow(8 - i as u32);
    }
    if secs < 0 && nanos > 0 {
        // -1.25 is 1.25 s before the epoch: -2 s + 0.75 s.
        return Some((secs - 1, 1_000_000_000 - nanos));
    }
    Some((secs, nanos))
}

/// The components of a member name (or hard link target), checked: no `..`, no NUL, each at
/// most `NAME_MAX`; `.` and empty components dropped, so an absolute name is anchored at the
/// layer's root as GNU tar, containerd and image-rs do. An empty list is the root (`./`).
pub(crate) fn components(name: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name.contains(&0) {
        return Err("NUL byte in name");
    }
    let mut out = Vec::new();
    for part in name.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("`..` path component"),
            _ if part.len() > 255 => return Err("path component longer than 255 bytes"),
            _ => out.push(part),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_refuse_escapes() {
        assert_eq!(components(b"./a//b/./c/"), Ok(vec![&b"a"[..], b"b", b"c"]));
        assert_eq!(components(b"./"), Ok(vec![]));
        assert!(components(b"../x").is_err());
        assert!(components(b"a/../../x").is_err());
        assert_eq!(
            components(b"/etc//passwd"),
            Ok(vec![&b"etc"[..], b"passwd"])
        );
        assert_eq!(components(b"/"), Ok(vec![]));
        assert!(components(b"").is_err());
        assert!(components(b"a\0b").is_err());
        assert!(components(&[b'a'; 256]).is_err());
    }

    #[test]
    fn pax_times() {
        assert_eq!(pax_time(b"1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(
            pax_time(b"1700000000.5"),
            Some((1_700_000_000, 500_000_000))
        );
        assert_eq!(pax_time(b"1.123456789123"), Some((1, 123_456_789)));
        assert_eq!(pax_time(b"-1.25"), Some((-2, 750_000_000)));
        assert_eq!(pax_time(b"x"), None);
        assert_eq!(pax_time(b"1.2x"), None);
    }
}
