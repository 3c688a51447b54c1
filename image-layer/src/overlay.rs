//! overlayfs mounts of a bundle's root filesystem.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::io::Errno;
use rustix::mount::{self as rmount, MountFlags, UnmountFlags};

use crate::error::{LayerError, show};

/// The kernel copies at most one page of mount options.
const MAX_OPTIONS: usize = 4095;

/// overlayfs splits its options on `,` and lower directories on `:`, and `\` escapes: paths
/// of ours that go into the options must have none of them.
pub(crate) fn check_option_path(path: &Path) -> Result<(), LayerError> {
    let bytes = path.as_os_str().as_bytes();
    if bytes
        .iter()
        .any(|b| matches!(b, b',' | b':' | b'\\' | b'\n' | 0))
    {
        return Err(LayerError::InvalidArgument(format!(
            "the path {} contains a character overlayfs options cannot carry (`,` `:` `\\` or a newline)",
            show(path)
        )));
    }
    Ok(())
}

/// The options string: `lowerdir=` takes the topmost layer first, so `lowers` (bottom first)
/// is reversed.
pub(crate) fn options(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
) -> Result<CString, LayerError> {
    let mut text = b"lowerdir=".to_vec();
    for (i, lower) in lowers.iter().rev().enumerate() {
        if i > 0 {
            text.push(b':');
        }
        text.extend_from_slice(lower.as_os_str().as_bytes());
    }
    text.extend_from_slice(b",upperdir=");
    text.extend_from_slice(upper.as_os_str().as_bytes());
    text.extend_from_slice(b",workdir=");
    text.extend_from_slice(work.as_os_str().as_bytes());
    if text.len() > MAX_OPTIONS {
        return Err(LayerError::InvalidArgument(format!(
            "{} layers make {} bytes of overlay mount options, over the kernel's {MAX_OPTIONS}: use a shorter work directory",
            lowers.len(),
            text.len()
        )));
    }
    CString::new(text)
        .map_err(|_| LayerError::InvalidArgument("NUL byte in an overlay path".into()))
}

pub(crate) fn mount(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), LayerError> {
    for path in lowers.iter().map(PathBuf::as_path).chain([upper, work]) {
        check_option_path(path)?;
    }
    let data = options(lowers, upper, work)?;
    rmount::mount(
        "overlay",
        target,
        "overlay",
        MountFlags::empty(),
        Some(data.as_c_str()),
    )
    .map_err(|e| LayerError::io("mount the overlay root filesystem at", show(target), e))
}

/// Unmounts `target`; not mounted (or missing) is success.
pub(crate) fn unmount(target: &Path) -> Result<(), LayerError> {
    match rmount::unmount(target, UnmountFlags::empty()) {
        Ok(()) | Err(Errno::INVAL | Errno::NOENT) => Ok(()),
        Err(e) => Err(LayerError::io("unmount", show(target), e)),
    }
}
