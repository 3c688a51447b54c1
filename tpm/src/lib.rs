//! A small TPM 2.0 command layer for the attestation agent and the test world.
//!
//! The pod VM needs about a dozen TPM commands: read the Azure HCL report from NV, write report
//! data, quote PCRs with the attestation key, read and extend PCRs. The test world needs a few
//! more to provision a simulated vTPM (create and persist keys, define NV indices) and, for its
//! simulated paravisor, to *answer* commands as well as send them. This crate does exactly that,
//! in pure Rust, with no C TPM stack:
//!
//! - [`wire`]: big-endian [`wire::Writer`] and a bounds-checked [`wire::Reader`]; every parse of
//!   TPM output goes through it and fails with [`Error::Truncated`] or [`Error::Malformed`]
//!   instead of panicking.
//! - [`types`]: the structures we read and write ([`types::Public`], [`types::NvPublic`],
//!   [`types::Attest`], [`types::PcrSelection`], [`types::RsaSignature`]) and TPM constants.
//! - [`frame`]: command and response framing — [`frame::CommandBuilder`] and
//!   [`frame::Response`] for clients, [`frame::ParsedCommand`] and [`frame::ResponseBuilder`] for
//!   a component that answers commands (the simulated paravisor).
//! - [`transport`]: how bytes reach a TPM — the kernel resource manager (`/dev/tpmrm0`) or a
//!   socket speaking raw TPM commands (swtpm, the simulated paravisor).
//! - [`Tpm`]: the typed commands on top.
//!
//! Only password authorization (`TPM_RS_PW`) is supported: it is what the Azure vTPM's owner and
//! NV authorizations use in practice, and the paths that need HMAC or policy sessions are not
//! ours.
//!
//! ```no_run
//! use peerpod_tpm::{Tpm, transport::Transport};
//!
//! let mut tpm = Tpm::new(Transport::open("device:/dev/tpmrm0")?);
//! let report = tpm.nv_read_all(peerpod_tpm::AZURE_HCL_REPORT_INDEX)?;
//! println!("HCL report: {} bytes", report.len());
//! # Ok::<(), peerpod_tpm::Error>(())
//! ```

mod commands;
mod error;
pub mod frame;
pub mod transport;
pub mod types;
pub mod wire;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;

pub use commands::{PcrBank, Quote, Tpm};
pub use error::{Error, ResponseCode};

/// NV index of the Azure HCL ("attestation") report.
pub const AZURE_HCL_REPORT_INDEX: u32 = 0x0140_0001;
/// NV index the guest writes its report data (up to 64 bytes) to before a report refresh.
pub const AZURE_REPORT_DATA_INDEX: u32 = 0x0140_0002;
/// Persistent handle of the Azure vTPM attestation key (RSA-2048, restricted signing).
pub const AZURE_AK_HANDLE: u32 = 0x8100_0003;
