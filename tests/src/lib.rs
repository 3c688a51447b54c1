//! End-to-end test harness for peerpod-guest.
//!
//! - [`vm`]: a QEMU test VM (Debian's cloud kernel, an initramfs built around the agent under
//!   test) whose agent is reached over a forwarded TCP port: [`TestVm`], [`VmImage`],
//!   [`VmOptions`].
//! - [`requests`]: agent requests for busybox containers and small client helpers, shared by
//!   the tests that drive an agent.
//!
//! - [`cvm`]: a simulated Azure confidential VM — swtpm as the vTPM behind a simulated paravisor
//!   that serves the HCL report, test AMD and Intel certificate chains, and the instance metadata
//!   service — usable from the host or as a QEMU guest's TPM.
//! - [`http`]: HTTP clients (rustls) for tests.
//! - [`bench`]: percentiles and milliseconds for the benchmarks.
//! - [`scratch`]: per-test scratch directories.
//! - [`shared_fixture`]: the shared fixtures, skipped loudly outside CI when absent.
//!
//! Still to come here: the registry fixtures. The policy crate's conformance tests live with that
//! crate (`policy/tests/`).

pub mod bench;
pub mod cvm;
pub mod http;
pub mod kbs;
pub mod mutate;
pub mod requests;
pub mod scratch;
pub mod shared_fixture;
pub mod vm;

pub use vm::{TestVm, VmError, VmImage, VmOptions};
