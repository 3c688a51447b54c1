//! Encrypted scratch space: when user data wrote `/run/peerpod/scratch-space.marker`, the
//! trusted-store disk (`/dev/disk/by-label/trusted_store`) becomes a LUKS2 volume with a fresh
//! random key that is never stored, formatted ext4 and mounted at `/run/kata-containers/image`
//! (where the agent keeps pulled images) before the agent starts.
//!
//! The LUKS work is the CDH's secure-mount code (`confidential_data_hub::secure_mount`):
//! `cryptsetup` gets the key on its standard input; the LUKS header is detached into memory
//! (`/run`), so the disk holds nothing but ciphertext; dm-integrity (HMAC-SHA256) is on by
//! default, as upstream's script has it, formatted without the initial wipe (the secure
//! mount writes the sectors `mkfs.ext4` reads first), so the set-up does not grow with the
//! disk.

use std::os::unix::fs::FileTypeExt as _;
use std::path::{Path, PathBuf};

use confidential_data_hub::secure_mount::{self, BlockDevice, KeySource};

use crate::files::Outputs;

/// The marker's name in `/run/peerpod`.
pub const MARKER: &str = "scratch-space.marker";
/// Upstream's trusted-store disk.
pub const TRUSTED_STORE: &str = "/dev/disk/by-label/trusted_store";
/// Upstream's mount point.
pub const MOUNT_POINT: &str = "/run/kata-containers/image";
/// Where the detached LUKS header lives (tmpfs).
pub const HEADER_DIR: &str = "/run/scratch-storage";
/// The device-mapper name.
pub const MAPPER_NAME: &str = "encrypted_scratch";

/// What to set up.
#[derive(Debug, Clone)]
pub struct ScratchOptions {
    /// The root prefix the marker is looked for under.
    pub root: PathBuf,
    /// The block device (default: [`TRUSTED_STORE`] resolved).
    pub device: PathBuf,
    /// Where to mount it.
    pub mount_point: PathBuf,
    /// Where the detached header goes.
    pub header_dir: PathBuf,
    /// dm-integrity under the encryption.
    pub integrity: bool,
    /// The device-mapper name.
    pub mapper_name: String,
}

impl Default for ScratchOptions {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/"),
            device: PathBuf::from(TRUSTED_STORE),
            mount_point: PathBuf::from(MOUNT_POINT),
            header_dir: PathBuf::from(HEADER_DIR),
            integrity: true,
            mapper_name: MAPPER_NAME.into(),
        }
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScratchOutcome {
    /// No marker: nothing to do.
    NotRequested,
    /// Mounted.
    Mounted {
        /// The block device used.
        device: PathBuf,
    },
}

/// Why the scratch space could not be set up (the agent must not start then).
#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    /// The device is missing or not a block device.
    #[error(
        "scratch space requested but {path} {reason}: attach the trusted-store disk (label \
         trusted_store) to the pod VM or do not request scratch space"
    )]
    Device {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// LUKS, mkfs or mount failed.
    #[error("cannot set up the encrypted scratch space on {device}")]
    Luks {
        /// The device.
        device: PathBuf,
        /// The cause.
        #[source]
        source: Box<confidential_data_hub::CdhError>,
    },
}

fn block_device(path: &Path) -> Result<PathBuf, ScratchError> {
    let err = |reason| ScratchError::Device {
        path: path.to_path_buf(),
        reason,
    };
    let real = std::fs::canonicalize(path).map_err(|_| err("does not exist"))?;
    let meta = std::fs::metadata(&real).map_err(|_| err("cannot be read"))?;
    if !meta.file_type().is_block_device() {
        return Err(err("is not a block device"));
    }
    Ok(real)
}

/// `mkfs.ext4 -E` for the scratch space. The journal is never zeroed: the volume's key dies
/// with the VM, so it is never opened again and a clean journal is never read. With
/// dm-integrity (formatted without the wipe) the inode tables are written by `mkfs.ext4`
/// (the secure mount's default), so nothing reads a sector that has no valid tag yet;
/// without it the kernel may initialise them later.
fn mkfs_extended(integrity: bool) -> &'static str {
    if integrity {
        "lazy_journal_init=1"
    } else {
        "lazy_itable_init=1,lazy_journal_init=1"
    }
}

/// Sets up the scratch space if the marker is there.
pub async fn setup(options: &ScratchOptions) -> Result<ScratchOutcome, ScratchError> {
    let marker = Outputs::new(&options.root).path(MARKER);
    if std::fs::symlink_metadata(&marker).is_err() {
        tracing::info!(marker = %marker.display(), "no scratch space requested");
        return Ok(ScratchOutcome::NotRequested);
    }
    let device = block_device(&options.device)?;
    let dev = BlockDevice {
        device: device.clone(),
        format: true,
        file_system: true,
        mkfs_opts: vec!["-E".into(), mkfs_extended(options.integrity).into()],
        key: KeySource::Random,
        integrity: options.integrity,
        mapper_name: options.mapper_name.clone(),
    };
    let luks = |source| ScratchError::Luks {
        device: device.clone(),
        source: Box::new(source),
    };
    // Zeroized when dropped at the end of this function; never written anywhere.
    let key = secure_mount::random_key().map_err(luks)?;
    secure_mount::mount(&dev, &key, &options.mount_point, &options.header_dir)
        .await
        .map_err(luks)?;
    tracing::info!(
        device = %device.display(),
        mount_point = %options.mount_point.display(),
        integrity = options.integrity,
        "encrypted scratch space mounted"
    );
    Ok(ScratchOutcome::Mounted { device })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_integrity_mkfs_writes_the_inode_tables() {
        // Unwiped dm-integrity: nothing may read an inode table the kernel would zero later.
        assert!(!mkfs_extended(true).contains("lazy_itable_init"));
        assert!(mkfs_extended(true).contains("lazy_journal_init=1"));
        assert!(mkfs_extended(false).contains("lazy_itable_init=1"));
    }

    #[tokio::test]
    async fn no_marker_does_nothing() -> Result<(), ScratchError> {
        let root = std::env::temp_dir().join(format!("pp-scratch-none-{}", std::process::id()));
        let options = ScratchOptions {
            root: root.clone(),
            device: PathBuf::from("/nonexistent"),
            ..ScratchOptions::default()
        };
        assert_eq!(setup(&options).await?, ScratchOutcome::NotRequested);
        Ok(())
    }

    #[tokio::test]
    async fn marker_without_a_block_device_fails() {
        let root = std::env::temp_dir().join(format!("pp-scratch-dev-{}", std::process::id()));
        let out = Outputs::new(&root);
        out.prepare().expect("temp dir");
        out.write(MARKER, b"", 0o600).expect("marker");
        for device in ["/nonexistent", "/dev/null", "/etc/hostname"] {
            let options = ScratchOptions {
                root: root.clone(),
                device: PathBuf::from(device),
                ..ScratchOptions::default()
            };
            assert!(
                matches!(setup(&options).await, Err(ScratchError::Device { .. })),
                "{device}"
            );
        }
        let _ = std::fs::remove_dir_all(&root);
    }
}
