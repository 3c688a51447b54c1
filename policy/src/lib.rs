//! Initdata and the agent policy engine for peer-pod VMs.
//!
//! Two concerns live here, both free of I/O and of global state:
//!
//! - [`initdata`]: the TOML document that carries `policy.rego`, `aa.toml` and `cdh.toml` into
//!   the pod VM. [`initdata::InitData`] parses and validates it, decodes and encodes the annotation
//!   form (gzip + base64, with a bound on decompression), computes its [`initdata::Digest`], and
//!   derives what each platform measures: Azure vTPM PCR 8, SEV-SNP HOSTDATA, TDX MRCONFIGID.
//!   [`initdata::InitData::check`] tells whether a document is ready for a pod.
//! - [`engine`]: [`AgentPolicy`] compiles a Rego policy (on regorus) and decides every agent
//!   request against `data.agent_policy.<EntryPoint>`, carrying genpolicy's state across requests
//!   and failing closed on anything unexpected. [`Decision`] says what was decided and why.
//!
//! The `initdata` binary on top of this crate encodes, decodes, digests, checks and evaluates.
//!
//! ```no_run
//! use peerpod_policy::{AgentPolicy, initdata::InitData};
//!
//! let doc = InitData::from_annotation("H4sI...", peerpod_policy::initdata::DEFAULT_DECODE_LIMIT)?;
//! println!("PCR 8: {}", hex::encode(doc.digest().azure_vtpm_pcr8()));
//! let policy = AgentPolicy::load(doc.policy().unwrap_or_default())?;
//! let decision = policy.decide("ExecProcessRequest", &serde_json::json!({"container_id": "c1"}));
//! if !decision.is_allowed() {
//!     eprintln!("{}", decision.denial_message());
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod engine;
pub mod initdata;

pub use engine::{AgentPolicy, Decision, Denial, PolicyError, SetPolicyError, Verdict};

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod differential;
