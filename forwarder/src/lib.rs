//! The pod VM's front door on TCP 15150 (`agent-protocol-forwarder`) and the pod network.
//!
//! The kata shim on the worker node reaches the agent of a peer-pod VM over TCP 15150, with
//! TLS and a client certificate. This crate is what listens there, as a drop-in for
//! cloud-api-adaptor's forwarder (same binary name, flags, `apf.json` keys and defaults):
//!
//! - [`config`]: `apf.json` (`/run/peerpod/apf.json`): TLS material and settings, and the pod
//!   network, checked strictly and bounded (it comes from the host).
//! - [`podnet`]: the pod network before anything is served: a VXLAN device towards the worker
//!   node moved into the pod's namespace (`/run/netns/podns`), MTU at most 1450, address, MAC,
//!   routes (gateway-less first), neighbours, NOTRACK rules for the tunnel port; torn down on
//!   exit; optionally the pod's NATed path to the IMDS (`169.254.169.254`) through the pod VM,
//!   as upstream's `setup-nat-for-imds`. Netlink through rtnetlink from threads inside the
//!   right namespace; the rules through Debian's `iptables`.
//! - [`tls`]: the rustls server configuration (ring, TLS 1.2 or newer, client certificate
//!   required when a client CA is configured, Go's version and suite names mapped).
//! - [`frame`]: ttrpc framing (10-byte header, 4 MiB payload bound) and a copy-free read of a
//!   request's service and method.
//! - [`rewrite`]: CreateContainer joins the pod network namespace (any network namespace the
//!   host named is replaced) and gets its missing bind-mount sources below
//!   `/run/kata-containers/`; CreateSandbox loses its DNS entries. Nothing else is decoded.
//! - [`proxy`]: one agent connection per client connection, whole frames relayed both ways
//!   so ttrpc's multiplexed streams pass through; refused requests answered on their stream;
//!   hostile framing ends the connection with a log line naming why.
//! - [`dispatch`]: the other mode, inside the agent (no extra hop): the same rewrites, then
//!   the agent's registered ttrpc services called directly, so the policy sees what it would
//!   see behind the separate forwarder.
//! - [`server`]: the TCP listener, bounded TLS handshakes, one task per connection, handed to
//!   either mode.
//! - [`front_door`]: start-up and shutdown shared by both modes: `apf.json`, TLS, the pod
//!   network, binding, systemd notification, teardown.
//!
//! The binary (`src/bin/agent-protocol-forwarder.rs`) reads the flags, sets up the pod
//! network, waits for the agent's socket, and only then binds the port. The agent's mode is
//! `kata-agent --front-door-config apf.json` (the agent crate's `front_door` module).
//!
//! Not built: upstream's secure-comms SSH tunnel (`-secure-comms`, `sc` in `apf.json`:
//! refused with a message), the `external-net-via-pod-vm` routing (refused), IPv6 VXLAN
//! remotes, and the cloud-volume (`cloud_volumes` annotation) mounting
//! upstream's interceptor does.

pub mod config;
pub mod dispatch;
pub mod frame;
pub mod front_door;
pub mod podnet;
pub mod proxy;
pub mod rewrite;
pub mod server;
pub mod tls;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
