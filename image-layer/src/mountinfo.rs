//! Which overlay mounts exist, from `/proc/self/mountinfo` (the mount namespace of this
//! process), to tell a bundle whose root filesystem someone else unmounted.

use std::collections::HashSet;
use std::path::Path;

use crate::error::LayerError;

/// Where the kernel lists the mounts of this process's mount namespace.
pub(crate) const MOUNTINFO: &str = "/proc/self/mountinfo";

/// The mount points (decoded bytes) of every overlay mount listed in `text` (mountinfo format).
/// A line that is not mountinfo fails the whole answer: a caller deciding what is unmounted
/// must not guess.
pub(crate) fn overlay_mount_points(text: &[u8]) -> Result<HashSet<Vec<u8>>, LayerError> {
    let mut out = HashSet::new();
    for (n, line) in text.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let garbled = || {
            LayerError::InvalidArgument(format!(
                "line {} of {MOUNTINFO} is not in the mountinfo format",
                n + 1
            ))
        };
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        // id parent major:minor root mount-point options [optional...] - fstype source super
        let mount_point = fields.get(4).ok_or_else(garbled)?;
        let dash = fields
            .iter()
            .skip(6)
            .position(|f| *f == b"-")
            .ok_or_else(garbled)?
            + 6;
        let fstype = fields.get(dash + 1).ok_or_else(garbled)?;
        if *fstype == b"overlay" {
            out.insert(decode(mount_point).ok_or_else(garbled)?);
        }
    }
    Ok(out)
}

/// The overlay mount points of this process's mount namespace.
pub(crate) fn read_overlay_mount_points() -> Result<HashSet<Vec<u8>>, LayerError> {
    let text = std::fs::read(MOUNTINFO).map_err(|e| LayerError::io("read", MOUNTINFO, e))?;
    overlay_mount_points(&text)
}

/// Undoes the kernel's octal escapes of space, tab, newline and backslash (`\040`, `\011`,
/// `\012`, `\134`; any `\ooo` is accepted). `None` for a backslash not followed by three octal
/// digits.
fn decode(field: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' {
            let digits = field.get(i + 1..i + 4)?;
            let mut value: u32 = 0;
            for &d in digits {
                if !(b'0'..=b'7').contains(&d) {
                    return None;
                }
                value = value * 8 + u32::from(d - b'0');
            }
            out.push(u8::try_from(value).ok()?);
            i += 4;
        } else {
            out.push(field[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Whether `path` is the mount point of one of `mounts`, by its own name or by the name with
/// symbolic links resolved (the kernel lists the latter). A path that cannot be resolved for
/// any reason but not existing counts as mounted: keeping a bundle is always safe.
pub(crate) fn is_overlay_mount_point(mounts: &HashSet<Vec<u8>>, path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    if mounts.contains(path.as_os_str().as_bytes()) {
        return true;
    }
    match std::fs::canonicalize(path) {
        Ok(real) => mounts.contains(real.as_os_str().as_bytes()),
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_mount_points_decode_escapes_and_skip_other_filesystems() {
        let text = b"22 1 0:21 / /proc rw,nosuid shared:5 - proc proc rw\n\
            90 30 0:50 / /run/b\\040x\\012y/rootfs rw,relatime shared:40 master:1 - overlay overlay rw,lowerdir=/l\n\
            91 30 0:51 / /run/c\\134d/rootfs rw - overlay overlay rw\n\
            92 30 0:52 / /run/t rw - tmpfs tmpfs rw\n";
        let mounts = overlay_mount_points(text).expect("well-formed mountinfo");
        assert_eq!(mounts.len(), 2);
        assert!(mounts.contains(&b"/run/b x\ny/rootfs"[..]));
        assert!(mounts.contains(&b"/run/c\\d/rootfs"[..]));
    }

    #[test]
    fn garbled_mountinfo_is_an_error() {
        for bad in [
            &b"22 1 0:21 / /proc rw shared:5 proc proc rw\n"[..],
            b"short line\n",
            b"90 30 0:50 / /run/x\\04 rw - overlay overlay rw\n",
            b"90 30 0:50 / /run/x\\999 rw - overlay overlay rw\n",
            b"90 30 0:50 / /run/x rw -\n",
        ] {
            assert!(
                overlay_mount_points(bad).is_err(),
                "{:?}",
                bad.escape_ascii()
            );
        }
        assert!(overlay_mount_points(b"").expect("empty").is_empty());
    }

    #[test]
    fn the_mountinfo_of_this_process_parses() {
        read_overlay_mount_points().expect("/proc/self/mountinfo parses");
    }
}
