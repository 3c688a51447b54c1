//! The attestation agent for peer-pod VMs: TEE evidence, initdata binding, runtime measurements,
//! and attestation to Trustee's KBS.
//!
//! - [`attester`]: one attester per TEE behind [`attester::Attester`] — the Azure vTPM CVMs
//!   (`az-snp-vtpm`, `az-tdx-vtpm`: HCL report, report data through NV, waiting for the
//!   paravisor's refresh, TPM quote, VCEK or TD quote from IMDS), bare `snp`/`tdx` through
//!   configfs-tsm, and `sample`; [`attester::detect`] picks one in upstream's order.
//! - [`kbs`]: the KBS client (RCAR 0.4.0 on `peerpod-kbs-protocol`, HTTP through
//!   `peerpod-kbs-client`), caching the token and TEE
//!   key until shortly before expiry and sharing one attestation, bounded by a deadline, and
//!   its outcome among concurrent callers.
//! - [`eventlog`]: runtime measurements as TCG2 AAEL records, extended into a register with a
//!   write-ahead record for crash safety.
//! - [`config`]: `aa.toml` with upstream's keys.
//! - [`api`]: the operations; [`rpc`] serves them over ttrpc as
//!   `attestation_agent.AttestationAgentService`, wire-compatible with guest-components'; and
//!   [`server`] runs that on the agent's socket.
//!
//! The `attestation-agent` binary wires these together with upstream's flags.
//!
//! Feature `fuzzing`: the `fuzzing` module, the fuzz targets' entry points (`fuzz/` and the
//! in-tree mutation test enable it; the binary does not carry it).

pub mod api;
pub mod attester;
pub mod config;
pub mod eventlog;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod kbs;
pub mod rpc;
pub mod server;

pub use api::{AaError, AttestationAgent, MeasurementResult};
pub use config::AaConfig;
