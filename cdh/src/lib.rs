//! The confidential data hub of peer-pod VMs: it hands secrets to the pod — KBS resources,
//! sealed secrets, keys for encrypted storage and image layers — without ever holding a TEE
//! key of its own.
//!
//! - [`config`]: `cdh.toml` with upstream's keys, passed as values (no environment variables).
//! - [`uri`]: `kbs://` resource URIs.
//! - [`kbc`]: where resources come from — the KBS with the attestation agent's cached token and
//!   TEE key ([`kbc::CcKbc`]: one attestation serves every fetch), or local files
//!   ([`kbc::OfflineFs`]); [`kbc::AaClient`] is the ttrpc connection to the agent.
//! - [`sealed`]: `sealed.` secrets (ES256 JWS; vault and envelope payloads), and making them.
//! - [`secure_mount`]: `block-device` volumes encrypted with LUKS2 through `cryptsetup`.
//! - [`scratch`]: whether what is mounted at `/run/kata-containers/image` is the encrypted
//!   scratch space (a dm-crypt device, from mountinfo and sysfs), before layers go there.
//! - [`hub`]: the operations over one key broker client; [`rpc`] serves them as upstream's
//!   ttrpc services and [`server`] runs that on the CDH socket.
//! - [`rest`]: the REST endpoint for containers (upstream's `api-server-rest`, a binary here too).
//! - [`error`]: one error type whose variants map to ttrpc status codes and cannot carry
//!   fetched bytes.
//!
//! Feature `fuzzing`: the `fuzzing` module, the fuzz targets' entry points (`fuzz/` and the
//! in-tree mutation test enable it; the binaries do not carry it).

pub mod config;
pub mod conn;
pub mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod hub;
pub mod kbc;
pub mod rest;
pub mod rpc;
pub mod scratch;
pub mod sealed;
pub mod secure_mount;
pub mod server;
pub mod uri;

pub use config::CdhConfig;
pub use error::CdhError;
pub use hub::Hub;
