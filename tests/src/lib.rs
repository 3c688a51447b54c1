//! End-to-end test harness for peerpod-guest.
//!
//! **Not built yet.** It will hold the QEMU test VM, the simulated Azure vTPM (swtpm), the local
//! Trustee-compatible KBS and the registry fixtures that the other crates' tests use. The policy
//! crate's conformance tests live with that crate (`policy/tests/`).
