//! What an unpack may do and how much, and what it did.

use std::sync::Arc;

/// What one member will cost the filesystem it is unpacked to, charged through
/// [`UnpackOptions::charge`] before the member is written.
///
/// Tar bytes are a poor measure of that: an empty file, directory or link takes 512 bytes of
/// tar but an inode (about a kilobyte of kernel memory on tmpfs), a 1-byte file a whole block,
/// and extended attributes are kernel memory a tmpfs's `size=` does not count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Charge {
    /// The data rounded up to whole blocks (`f_bsize` of the destination's filesystem), one
    /// more block per inode or directory entry made, and the bytes of the extended attributes
    /// (names and values) set.
    pub bytes: u64,
    /// Inodes made (0 for a hard link, an opaque marker or the layer root).
    pub inodes: u64,
}

/// The function [`unpack`](crate::unpack) calls with each member's [`Charge`]; an `Err` stops
/// the unpack before the member is written ([`LayerError::Charge`](crate::LayerError::Charge)
/// carries the reason).
#[derive(Clone)]
pub struct ChargeHook(Arc<dyn Fn(Charge) -> Result<(), String> + Send + Sync>);

impl ChargeHook {
    /// A hook calling `f`.
    pub fn new(f: impl Fn(Charge) -> Result<(), String> + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    pub(crate) fn call(&self, charge: Charge) -> Result<(), String> {
        (self.0)(charge)
    }
}

impl std::fmt::Debug for ChargeHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChargeHook")
    }
}

/// Two hooks are equal when they are the same function (clones of one hook).
impl PartialEq for ChargeHook {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for ChargeHook {}

/// Limits and choices for [`unpack`](crate::unpack) and [`LayerStore::install`](crate::LayerStore::install).
///
/// The defaults fit a real-world image layer in a pod VM: device nodes refused, ownership kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackOptions {
    /// Most tar headers read (extension headers included). Default 1,000,000.
    pub max_entries: u64,
    /// Most bytes of entry data in the archive (file contents and metadata records), and of
    /// padding after the end-of-archive marker. Default 32 GiB.
    pub max_total_bytes: u64,
    /// Longest entry name or link target in bytes. Default 4096 (Linux `PATH_MAX`).
    pub max_path_bytes: usize,
    /// Most path components in an entry name, which is how deep a layer's tree can go.
    /// Default 512: far deeper than any real image, and shallow enough that a walk holding one
    /// descriptor per level (`std::fs::remove_dir_all`, most recursive copies) stays under
    /// half of the usual 1024-descriptor limit. `max_path_bytes` alone allows 2048.
    pub max_depth: usize,
    /// Most bytes of extended attributes (names and values) on one entry. Default 64 KiB
    /// (Linux's largest single value).
    pub max_xattr_bytes: usize,
    /// Largest PAX extended header or GNU long name/link record, read into memory.
    /// Default 1 MiB.
    pub max_metadata_bytes: u64,
    /// Create character and block device entries (never in a normal image). Default `false`:
    /// a layer with a device node is refused. Overlay whiteouts are made either way.
    pub allow_devices: bool,
    /// Give entries the owner and group recorded in the archive (needs `CAP_CHOWN`). Default
    /// `true`. With `false` everything belongs to the unpacking user, and the setuid (setgid)
    /// bit is kept only where the archive's owner (group) is the one the entry got, as
    /// libarchive does: a setuid program of another user must not become the unpacking
    /// user's (root's, in the pod VM).
    pub keep_ownership: bool,
    /// Called with what each member will cost before it is written (see [`Charge`]); its
    /// refusal stops the unpack. Default `None`: nothing charged.
    pub charge: Option<ChargeHook>,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        Self {
            max_entries: 1_000_000,
            max_total_bytes: 32 << 30,
            max_path_bytes: 4096,
            max_depth: 512,
            max_xattr_bytes: 64 << 10,
            max_metadata_bytes: 1 << 20,
            allow_devices: false,
            keep_ownership: true,
            charge: None,
        }
    }
}

/// What an unpack wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UnpackStats {
    /// Entries applied (extension headers not counted).
    pub entries: u64,
    /// Bytes of regular file contents written.
    pub bytes: u64,
    /// Regular files written.
    pub files: u64,
    /// Directories created or updated.
    pub dirs: u64,
    /// Symbolic links made.
    pub symlinks: u64,
    /// Hard links made.
    pub hardlinks: u64,
    /// Device nodes and FIFOs made.
    pub special: u64,
    /// Overlay whiteouts made from `.wh.<name>` entries.
    pub whiteouts: u64,
    /// Directories marked opaque from `.wh..wh..opq` entries.
    pub opaque_dirs: u64,
    /// Extended attributes not applied: overlayfs's own (`trusted.overlay.*`,
    /// `user.overlay.*`, which a layer must not forge) and those the filesystem does not
    /// support.
    pub xattrs_dropped: u64,
    /// Directories created, mode 0755 and owned by root, because a member's parent was not in
    /// the archive. In an overlay they hide the attributes of the same directory in lower
    /// layers (as with Docker's overlay2 driver; containerd copies them from the lower layers).
    pub implicit_dirs: u64,
    /// Bytes read after the end-of-archive marker.
    pub trailing_bytes: u64,
}
