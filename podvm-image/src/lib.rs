//! The pod VM image's test harness.
//!
//! `make podvm` (`podvm-image/build.sh`) builds the image from Debian packages; this crate boots
//! it and drives it as the kata shim would:
//!
//! - [`image`]: the built image (`target/podvm-image/out`) and its facts (`image.env`).
//! - [`cidata`]: the user data cloud-api-adaptor sends (apf.json, initdata...) on a cidata ISO.
//! - [`pki`]: per-VM TLS certificates for 15150 from test CAs.
//! - [`vm`]: QEMU (TCG) with the simulated Azure SNP vTPM from `peerpod-tests`, 15150
//!   forwarded to the host, direct kernel boot with the image's dm-verity command line.
//! - [`console`]: the serial console with host-side timestamps.
//! - [`client`]: mTLS + ttrpc clients of 15150.
//! - [`timeline`]: boot markers and the firmware/kernel/userspace split.
//! - [`memory`]: the guest userspace's RSS/PSS, read by a container with the guest's `/proc`
//!   bound in.
//!
//! The end-to-end tests are in `tests/e2e.rs` (gated by `PEERPOD_PODVM_E2E=1`, see
//! docs/podvm-image.md); the boot benchmark in `benches/boot.rs`. Not built yet: guest-pulled
//! containers, exec allowed/denied by an initdata policy, KBS secrets after attestation, sealed
//! secrets, scratch space in the e2e, and the OVMF/UKI boot path in the harness (the UKI is
//! built but the harness boots the kernel directly).

pub mod cidata;
pub mod client;
pub mod console;
mod error;
pub mod image;
pub mod memory;
pub mod pki;
pub mod timeline;
pub mod vm;

pub use cidata::UserData;
pub use console::Console;
pub use error::PodvmError;
pub use image::PodvmImage;
pub use pki::PodPki;
pub use timeline::Timeline;
pub use vm::{PodVm, PodVmOptions};
