//! Pod VM provisioning from user data: the `process-user-data` binary of a peer-pod VM.
//!
//! At boot, `process-user-data provision-files` reads the user data the cloud-api-adaptor set
//! for the VM ([`source`]: the cidata file `/media/cidata/user-data` if present, else Azure
//! IMDS, retried until `-t`), parses it as a strict cloud-config document with only
//! `write_files` ([`userdata`]), keeps the entries whose path is one of the allow-listed files
//! in `/run/peerpod` ([`files`]), turns the pod's initdata into `aa.toml`, `cdh.toml`,
//! `policy.rego`, `initdata.digest` and `initdata.toml` after the policy crate has checked it
//! ([`initdata`]), and only then writes everything, atomically and readable by root only
//! ([`provision`]). A refused initdata writes nothing and exits non-zero, so the services
//! ordered after it (`podvm/` in the repository) never start. PCR 8 is not touched here: the
//! attestation agent binds the initdata digest, once.
//!
//! `process-user-data setup-scratch-storage` ([`scratch`]) turns the trusted-store disk into a
//! LUKS2 volume with a random key mounted at `/run/kata-containers/image` when user data asked
//! for scratch space, using the confidential data hub's secure-mount code.
//!
//! `azure-ready` ([`azure_ready`]) reports the VM Ready to the Azure WireServer at boot, on
//! Azure only (`azure-ready.service`), as a VM without the Azure Linux agent must.
//!
//! Feature `fuzzing`: [`fuzzing`], the entry points of the `provision_user_data` and
//! `azure_goal_state` fuzz targets.

pub mod azure_ready;
pub mod files;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod initdata;
pub mod provision;
pub mod scratch;
pub mod source;
pub mod userdata;

pub use provision::{ProvisionError, ProvisionOptions, Report, provision};
