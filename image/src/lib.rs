//! OCI images for peer-pod VMs: the registry client and the pull pipeline the confidential
//! data hub's `PullImage` runs. The worker node never sees the image; every byte of it comes
//! from a registry the host can impersonate, so every byte is checked before it is used.
//!
//! - [`reference`](mod@reference): image references (`docker.io` and `library/` defaults, tags, digests).
//! - [`config`]: the `[image]` table of `cdh.toml` with image-rs's keys and defaults.
//! - [`auth`]: credentials from a containers `auth.json`; [`challenge`]: `WWW-Authenticate`.
//! - [`registries`]: `registries.conf` mirrors, remapping, blocking and insecure registries;
//!   short names (only those) resolved through `[aliases]` and the search list as
//!   `short-name-mode` allows.
//! - [`manifest`]: OCI and Docker v2 schema 2 manifests and indexes (the guest's platform is
//!   chosen), configurations, layer media types, and the size and count bounds.
//! - [`client`]: the HTTP client (rustls; extra roots; proxies) and per-repository sessions
//!   (Bearer tokens or Basic answered only for the registry's origin, redirects followed by
//!   hand with credentials for that origin only and never out of TLS, one retry budget per
//!   fetch, bounded replies).
//! - [`pull`]: [`Puller`] (its per-layer work in `layer_fetch`) — layers fetched
//!   concurrently, each in one pass: the blob is hashed
//!   as it streams, resumed with `Range` after a dropped connection, decompressed (gzip, zstd
//!   or none) and hashed again against its diff_id on its way into the layer store
//!   ([`stream`]); two pulls sharing a layer fetch it once. A layer the store has is reused
//!   only when its recorded origin (`origin`, under `work_dir/origins`) says this pull is
//!   entitled to it: the layer was fetched plain somewhere (public content), or this pull
//!   unwrapped the same key for the same encrypted blob; otherwise the pull downloads and
//!   verifies it. The root filesystem is mounted at `bundle/rootfs` (a layer repeated in an
//!   image is stacked once, at its topmost place; the container's `/` is 0755);
//!   [`Puller::release`] undoes it.
//! - [`budget`]: what a pull's layers may cost `work_dir` in bytes (`max_image_unpacked_bytes`)
//!   and inodes (`max_image_unpacked_inodes`), and what all the layers there may take
//!   (`max_layer_store_bytes`), charged member by member by the unpacker (a
//!   [`ChargeHook`]) before each is written; by default derived from `work_dir`'s filesystem
//!   (our keys; image-rs has none). A failed pull gives up the layers it installed
//!   ([`Layers::abandon`]) and collects them.
//! - Signatures: with `image_security_policy_uri` (or `image_security_policy`) set, the
//!   containers `policy.json` is enforced by `peerpod-image-signature` on the digest the
//!   reference resolved to, before any layer is fetched; keys come through [`Resources`].
//! - Encrypted layers (`+encrypted`, ocicrypt): the layer key is unwrapped by
//!   `peerpod-image-crypt` with a KEK fetched through [`Resources`] (the CDH: the KBS, after
//!   attestation) before the layer is downloaded, and the layer is decrypted as it streams; its
//!   HMAC is checked before the store sees the end of the tar.
//! - [`store`]: the [`Layers`] trait the puller writes into, and [`LayerDirStore`] over
//!   `peerpod-image-layer` (hostile-input-proof unpacking, overlay mounts, garbage collection);
//!   [`resources`]: `kbs://` and `file://` configuration files through the embedding program.
//!
//! Feature `fuzzing`: the `fuzzing` module, the fuzz target's entry point (`fuzz/` and the
//! in-tree mutation test enable it).
//!
//! Layers leave `work_dir` when containers are removed: the kata-agent unmounts a rootfs
//! itself, so [`Puller::collect`] forgets bundles whose overlay is gone from
//! `/proc/self/mountinfo` and deletes the layers no mounted bundle uses; every pull starts with
//! it and the CDH also runs it every 60 s (skipped while a pull is in flight).
//!
//! Not done: a rootfs detached with `umount -l` while still in use counts as unmounted (see
//! `docs/image.md`).

pub mod auth;
pub mod budget;
pub mod challenge;
pub mod client;
pub mod config;
pub mod digest;
pub mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod layer_fetch;
pub mod layer_store;
pub mod manifest;
mod origin;
pub mod pull;
pub mod reference;
pub mod registries;
pub mod resources;
pub mod store;
pub mod stream;
mod verify;

pub use config::ImageConfig;
pub use digest::Digest;
pub use error::ImageError;
pub use layer_store::LayerDirStore;
pub use peerpod_image_layer::{Charge, ChargeHook};
pub use pull::{PullOutcome, Puller};
pub use reference::Reference;
pub use resources::Resources;
pub use store::Layers;
