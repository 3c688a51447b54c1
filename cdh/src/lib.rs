//! The confidential data hub for peer-pod VMs: KBS resources, sealed secrets, secure storage.
//!
//! **Not built yet.** This crate holds no working code; there is deliberately no
//! `confidential-data-hub` binary until the CDH issue lands.
