//! OCI image layers in the pod VM: hostile-input-proof unpacking, a store of unpacked layers
//! shared by diff ID, and overlayfs root filesystems over them.
//!
//! - [`unpack`] writes an uncompressed tar stream beneath a directory and nowhere else (see its
//!   documentation for what is refused), turning OCI whiteouts into overlayfs's form.
//! - [`LayerStore`] keeps each layer once under `<work_dir>/layers/<algorithm>/<hex>`,
//!   installed atomically from a stream ([`LayerStore::install`]), mounts a bundle's
//!   `rootfs` as an overlay of its layers with a private upper and work directory
//!   ([`LayerStore::mount_rootfs`]), forgets bundles whose overlay was unmounted by someone
//!   else, as the kata-agent does on container removal ([`LayerStore::reap_unmounted`], which
//!   reads `/proc/self/mountinfo`), and deletes layers no mounted bundle uses
//!   ([`LayerStore::gc`]).
//!
//! Inside: `entry` reads tar members (raw, with bounded PAX and GNU long-name records),
//! `unpack` applies them, `tree` and `fsops` hold the fd-relative filesystem work, `walk` the
//! depth-first walk with a bounded number of descriptors at any depth (used by `dirtimes`,
//! directory mtimes after an unpack, and `remove`, which deletes the store's trees and, through
//! [`remove_opened_tree`], the kata-agent's bundles: one removal walk for both), `store`,
//! `overlay` and `mountinfo` the layer store and its mounts.
//!
//! Everything here is blocking `std::io`; async callers run it on a blocking thread. The image
//! puller (`peerpod-image`) fetches, verifies and decompresses; this crate never sees
//! compressed or unverified bytes except through the reader it is handed, which it reads to
//! the end so the reader's own digest check can fail the install.
//!
//! What is refused, kept and limited, the store's layout and the differences from image-rs:
//! `docs/image-layer.md`.

mod digest;
mod dirtimes;
mod entry;
mod error;
mod fsops;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod mountinfo;
mod options;
mod overlay;
mod remove;
mod store;
mod tree;
mod unpack;
mod walk;

pub use error::LayerError;
pub use options::{Charge, ChargeHook, UnpackOptions, UnpackStats};
pub use remove::remove_opened_tree;
pub use store::{GcStats, INSTALL_GRACE, LayerStore, REAP_GRACE};
pub use unpack::unpack;
