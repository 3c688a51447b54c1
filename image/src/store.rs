//! What the puller needs from a layer store, as a trait so the pipeline is independent of how
//! layers are unpacked and mounted. [`crate::LayerDirStore`] implements it over
//! `peerpod-image-layer`; tests may implement it too.

use std::io::{self, Read};
use std::path::Path;

use peerpod_image_layer::ChargeHook;

use crate::digest::Digest;

/// A store of unpacked layers, shared by diff_id.
pub trait Layers: Send + Sync + 'static {
    /// Whether the layer is already unpacked.
    fn contains(&self, diff_id: &Digest) -> bool;
    /// Unpacks the tar read from `tar` as `diff_id`, calling `charge` with what each member
    /// costs before writing it (its refusal fails the install). Must read `tar` to EOF before
    /// making the layer visible: the reader verifies both digests only there, and a failed
    /// read means the layer must be discarded.
    fn install(&self, diff_id: &Digest, tar: &mut dyn Read, charge: ChargeHook) -> io::Result<()>;
    /// Layers a failed pull installed: no bundle will mount them for that pull, so the next
    /// [`Layers::gc`] may remove them unless a bundle uses them. The default does nothing.
    fn abandon(&self, _diff_ids: &[Digest]) {}
    /// Mounts the layers (lowest first) as `bundle/rootfs`.
    fn mount_rootfs(&self, diff_ids: &[Digest], bundle: &Path) -> io::Result<()>;
    /// Unmounts `bundle/rootfs`.
    fn unmount_rootfs(&self, bundle: &Path) -> io::Result<()>;
    /// Removes the layers no mounted bundle uses.
    fn gc(&self) -> io::Result<()>;
    /// The installed layers. The default lists none (only origin records are then counted
    /// for `max_layer_store_bytes`).
    fn installed(&self) -> Vec<Digest> {
        Vec::new()
    }
    /// What an installed layer takes in `work_dir`, measured; `None` when unknown. For layers
    /// whose origin record (which carries the size) could not be written.
    fn usage(&self, _diff_id: &Digest) -> Option<u64> {
        None
    }
    /// Forgets the bundles whose `rootfs` someone else unmounted, so [`Layers::gc`] may remove
    /// their layers; answers how many. The default forgets none.
    fn reap_unmounted(&self) -> io::Result<usize> {
        Ok(0)
    }
}
