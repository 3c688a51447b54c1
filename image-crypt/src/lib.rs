//! Encrypted OCI layers (ocicrypt): layer key unwrapping through the KBS and streaming decryption.
//!
//! Not built yet: this crate is being written.
