//! End-to-end test harness for peerpod-guest.
//!
//! - [`vm`]: a QEMU test VM (Debian's cloud kernel, an initramfs built around the agent under
//!   test) whose agent is reached over a forwarded TCP port: [`TestVm`], [`VmImage`],
//!   [`VmOptions`].
//! - [`requests`]: agent requests for busybox containers and small client helpers, shared by
//!   the tests that drive an agent.
//!
//! Still to come here: the simulated Azure vTPM (swtpm), the local Trustee-compatible KBS and the
//! registry fixtures. The policy crate's conformance tests live with that crate (`policy/tests/`).

pub mod requests;
pub mod vm;

pub use vm::{TestVm, VmError, VmImage, VmOptions};
