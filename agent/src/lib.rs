//! The Kata agent for peer-pod VMs.
//!
//! The agent serves the Kata agent API (`grpc.AgentService` and `grpc.Health` over ttrpc, wire
//! compatible with upstream Kata) on a unix, vsock or TCP address, and asks the agent policy
//! about every AgentService request before acting on it.
//!
//! How the parts fit:
//!
//! - [`config`]: `AgentConfig` from a TOML file, the kernel command line and the environment,
//!   with upstream's key names.
//! - [`server`]: the lifecycle — load the policy (from initdata or the policy file; failing
//!   closed), bind, serve, shut down within a bound.
//! - [`rpc`]: the service methods, each thin: policy gate, the work, error mapping.
//! - [`gate`]: the policy gate — requests as policy input (upstream's JSON shape), decisions off
//!   the I/O threads, denials as `PERMISSION_DENIED` with the policy's reason.
//! - [`error`]: `AgentError` and its mapping to ttrpc codes, in one place.
//!
//! Status: the API, configuration and policy gate work; sandbox, container, process, network
//! and storage RPCs are decided by the policy and then answered UNIMPLEMENTED until the
//! container runtime lands (see the README).

pub mod config;
pub mod error;
pub mod files;
pub mod gate;
pub mod guest;
pub mod network;
pub mod rpc;
pub mod runtime;
pub mod server;
mod sys;
