//! [`Layers`] over `peerpod-image-layer`'s [`LayerStore`]: hostile-input-proof unpacking into
//! `<work_dir>/layers`, overlay root filesystems, garbage collection of unmounted layers.

use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use peerpod_image_layer::{ChargeHook, LayerStore, UnpackOptions};

use crate::digest::Digest;
use crate::store::Layers;

/// The layer store of a work directory.
pub struct LayerDirStore {
    store: LayerStore,
    options: UnpackOptions,
}

impl LayerDirStore {
    /// Opens (creating) the store under `work_dir`, unpacking with `options`.
    pub fn open(work_dir: &Path, options: UnpackOptions) -> io::Result<Self> {
        let store = LayerStore::open(work_dir).map_err(to_io)?;
        Ok(Self { store, options })
    }

    /// The store itself.
    pub fn inner(&self) -> &LayerStore {
        &self.store
    }
}

fn to_io(e: peerpod_image_layer::LayerError) -> io::Error {
    io::Error::other(peerpod_text::error_chain(&e))
}

impl Layers for LayerDirStore {
    fn contains(&self, diff_id: &Digest) -> bool {
        self.store.contains(&diff_id.to_string())
    }

    fn install(&self, diff_id: &Digest, tar: &mut dyn Read, charge: ChargeHook) -> io::Result<()> {
        let options = UnpackOptions {
            charge: Some(charge),
            ..self.options.clone()
        };
        self.store
            .install(&diff_id.to_string(), tar, &options)
            .map(|_| ())
            .map_err(to_io)
    }

    fn installed(&self) -> Vec<Digest> {
        match self.store.installed() {
            Ok(ids) => ids.iter().filter_map(|d| Digest::parse(d).ok()).collect(),
            Err(e) => {
                tracing::warn!(error = %peerpod_text::error_chain(&e), "cannot list the installed layers");
                Vec::new()
            }
        }
    }

    fn usage(&self, diff_id: &Digest) -> Option<u64> {
        self.store
            .usage(&diff_id.to_string())
            .inspect_err(|e| tracing::warn!(error = %peerpod_text::error_chain(e), %diff_id, "cannot measure a layer"))
            .ok()
            .flatten()
    }

    fn abandon(&self, diff_ids: &[Digest]) {
        let ids: Vec<String> = diff_ids.iter().map(Digest::to_string).collect();
        self.store.abandon(&ids);
    }

    fn mount_rootfs(&self, diff_ids: &[Digest], bundle: &Path) -> io::Result<()> {
        let ids: Vec<String> = crate::pull::mount_order(diff_ids)
            .iter()
            .map(Digest::to_string)
            .collect();
        let rootfs = self.store.mount_rootfs(&ids, bundle).map_err(to_io)?;
        // The container's `/` is the overlay's upper root, made under the CDH's umask: give it
        // the mode every container runtime gives it, whatever that umask is.
        if let Err(e) = std::fs::set_permissions(&rootfs, std::fs::Permissions::from_mode(0o755)) {
            let _ = self.store.unmount_rootfs(bundle);
            return Err(io::Error::new(
                e.kind(),
                format!("cannot set the mode of {} to 0755: {e}", rootfs.display()),
            ));
        }
        Ok(())
    }

    fn unmount_rootfs(&self, bundle: &Path) -> io::Result<()> {
        self.store.unmount_rootfs(bundle).map_err(to_io)
    }

    fn reap_unmounted(&self) -> io::Result<usize> {
        self.store.reap_unmounted().map_err(to_io)
    }

    fn gc(&self) -> io::Result<()> {
        let stats = self.store.gc().map_err(to_io)?;
        tracing::debug!(
            removed = stats.removed,
            kept = stats.kept,
            "layers collected"
        );
        Ok(())
    }
}
