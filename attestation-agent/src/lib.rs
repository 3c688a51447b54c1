//! The attestation agent for peer-pod VMs: TEE evidence, initdata binding, KBS attestation.
//!
//! **Not built yet.** This crate holds no working code; there is deliberately no
//! `attestation-agent` binary until the attestation-agent issue lands. The initdata digests it
//! will bind are computed by `peerpod_policy::initdata`.
