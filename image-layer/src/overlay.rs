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

/// The options string for `mount(2)`: `lowerdir=` takes the topmost layer first, so `lowers`
/// (bottom first) is reversed. `None` when it does not fit in a page.
pub(crate) fn options(lowers: &[PathBuf], upper: &Path, work: &Path) -> Option<CString> {
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
        return None;
    }
    CString::new(text).ok()
}

/// Mounts the overlay at `target`: with `mount(2)` when the options fit in a page (every
/// kernel), otherwise with the new mount API, one `lowerdir+` per layer (Linux 6.8 and later),
/// which has no such limit.
pub(crate) fn mount(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), LayerError> {
    for path in lowers.iter().map(PathBuf::as_path).chain([upper, work]) {
        check_option_path(path)?;
    }
    match options(lowers, upper, work) {
        Some(data) => rmount::mount("overlay", target, "overlay", MountFlags::empty(), Some(data.as_c_str()))
            .map_err(|e| LayerError::io("mount the overlay root filesystem at", show(target), e)),
        None => mount_layer_by_layer(lowers, upper, work, target).map_err(|e| match e {
            Errno::INVAL | Errno::NOSYS => LayerError::InvalidArgument(format!(
                "{} layers do not fit in one page of overlay mount options, and this kernel's overlayfs \
                 does not take them one by one (lowerdir+, Linux 6.8): use a shorter work directory",
                lowers.len()
            )),
            e => LayerError::io("mount the overlay root filesystem at", show(target), e),
        }),
    }
}

fn mount_layer_by_layer(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), Errno> {
    let fs = rmount::fsopen("overlay", rmount::FsOpenFlags::FSOPEN_CLOEXEC)?;
    // Topmost first, as in `lowerdir=`.
    for lower in lowers.iter().rev() {
        rmount::fsconfig_set_string(&fs, "lowerdir+", lower.as_path())?;
    }
    rmount::fsconfig_set_string(&fs, "upperdir", upper)?;
    rmount::fsconfig_set_string(&fs, "workdir", work)?;
    rmount::fsconfig_create(&fs)?;
    let mnt = rmount::fsmount(
        &fs,
        rmount::FsMountFlags::FSMOUNT_CLOEXEC,
        rmount::MountAttrFlags::empty(),
    )?;
    rmount::move_mount(
        &mnt,
        "",
        rustix::fs::CWD,
        target,
        rmount::MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
}

/// Unmounts `target`; not mounted (or missing) is success.
pub(crate) fn unmount(target: &Path) -> Result<(), LayerError> {
    match rmount::unmount(target, UnmountFlags::empty()) {
        Ok(()) | Err(Errno::INVAL | Errno::NOENT) => Ok(()),
        Err(e) => Err(LayerError::io("unmount", show(target), e)),
    }
}
