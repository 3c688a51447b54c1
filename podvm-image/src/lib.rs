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
//!   bound in; [`memory::guest_probe`] runs any such read-only probe.
//! - [`secure_boot`]: OVMF with Secure Boot on, and Debian's snakeoil test key that signs the
//!   tests' UKI.
//!
//! The end-to-end tests are in `tests/e2e.rs` (gated by `PEERPOD_PODVM_E2E=1`, see
//! docs/podvm-image.md): boot, mTLS, failure modes, the UKI, and in `tests/e2e/workload.rs` the
//! whole workload as the kata shim and cloud-api-adaptor drive it (guest pull with auth.json,
//! exec allowed and denied by the initdata policy, KBS secrets after attestation bound to the
//! initdata, a sealed value, encrypted scratch), and in `tests/e2e/secure_boot.rs` the signed
//! UKI under OVMF with Secure Boot on (and an altered or untrusted one refused).
//! `scripts/demo.sh` runs the workload test as its finale; the Check test also checks the
//! guest's DNS (resolv.conf from the DHCP lease, a name resolved in the guest).
//! `tests/resolv_conf.rs` runs the image's resolv.conf unit script against hostile leases;
//! `tests/azure_upload.rs` checks `azure-upload.sh`'s VHD check and dry run (custom UEFI keys
//! included); `tests/build_sh.rs` checks build.sh's refusal of bad signing keys. The boot
//! benchmark is `benches/boot.rs`. Not built yet: a KVM run (everything is measured under TCG:
//! KVM does not boot the kernel on this machine), and a harness that boots the VHD the way
//! Azure does (nothing here has run on Azure).

pub mod cidata;
pub mod client;
pub mod console;
mod error;
pub mod image;
pub mod memory;
pub mod pki;
pub mod secure_boot;
pub mod timeline;
pub mod vm;

pub use cidata::UserData;
pub use console::Console;
pub use error::PodvmError;
pub use image::PodvmImage;
pub use pki::PodPki;
pub use timeline::Timeline;
pub use vm::{PodVm, PodVmOptions};
