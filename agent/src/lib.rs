//! The Kata agent for peer-pod VMs: the Kata agent ttrpc API, containers, and the policy gate.
//!
//! **Not built yet.** This crate holds no working code; there is deliberately no `kata-agent`
//! binary until the agent issue lands. The policy engine it will use lives in `peerpod-policy`.
