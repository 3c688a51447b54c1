//! OCI images for peer-pod VMs: pull, verify, decrypt and unpack container images in the guest.
//!
//! **Not built yet.** This crate holds no working code until the image issue lands.
