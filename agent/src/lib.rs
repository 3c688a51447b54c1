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
//! - [`runtime`]: sandbox, containers and processes on youki's libcontainer; [`network`]:
//!   interfaces, routes and neighbours over rtnetlink.
//! - [`front_door`]: optionally, the pod VM's front door on TCP 15150 (TLS, the forwarder's
//!   request rewrites before the policy) served by the agent itself, without the separate
//!   forwarder's extra hop.
//! - [`cdh`]: the confidential data hub client that unseals `sealed.` environment values in
//!   CreateContainer and asks it to pull images; [`guest_pull`]: the `image_guest_pull`
//!   storage, whose bundles under `/run/kata-containers` are removed with their containers
//!   ([`tree`]: removal that follows no symlink, enters no mount and holds a bounded number of
//!   descriptors: the top opened by the agent, the walk below it image-layer's).
//!
//! RPCs not built yet (volumes, hotplug, swap, iptables) are decided by the policy and then
//! answered UNIMPLEMENTED (see the README).

pub mod cdh;
pub mod config;
pub mod error;
pub mod files;
pub mod front_door;
pub mod gate;
pub mod guest;
pub mod guest_pull;
pub mod network;
pub mod rpc;
pub mod runtime;
#[cfg(test)]
mod scratch;
pub mod server;
mod sys;
pub mod tree;
