//! The pod VM's front door on TCP 15150 (agent-protocol-forwarder) and the pod network.
//!
//! Not built yet: this crate is being written.
