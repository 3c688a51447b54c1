//! A local KBS that behaves like Trustee on the wire.

pub mod appraisal;
pub mod client;
pub mod config;
mod error;
pub mod server;
mod tls;
pub mod verifier;

pub use error::{KbsError, TrusteeErrors};
pub use server::{AdminAuth, KbsOptions, KbsStats, RunningKbs, TlsFiles};
