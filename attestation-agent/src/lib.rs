//! The attestation agent for peer-pod VMs: TEE evidence, initdata binding, runtime measurements,
//! and attestation to Trustee's KBS.
//!
//! - [`attester`]: one attester per TEE behind [`attester::Attester`] — the Azure vTPM CVMs
//!   (`az-snp-vtpm`, `az-tdx-vtpm`: HCL report, report data through NV, waiting for the
//!   paravisor's refresh, TPM quote, VCEK or TD quote from IMDS), bare `snp`/`tdx` through
//!   configfs-tsm, and `sample`; [`attester::detect`] picks one in upstream's order.
//! - [`kbs`]: the KBS client (RCAR 0.4.0 on `peerpod-kbs-protocol`), caching the token and TEE
//!   key until shortly before expiry and sharing one attestation among concurrent callers.
//! - [`eventlog`]: runtime measurements as TCG2 AAEL records, extended into a register with a
//!   write-ahead record for crash safety.
//! - [`config`]: `aa.toml` with upstream's keys; [`tls`]: trusting a configured KBS certificate,
//!   self-signed ones included.
//! - [`api`]: the operations; [`rpc`] serves them over ttrpc as
//!   `attestation_agent.AttestationAgentService`, wire-compatible with guest-components'; and
//!   [`server`] runs that on the agent's socket.
//!
//! The `attestation-agent` binary wires these together with upstream's flags.

pub mod api;
pub mod attester;
pub mod config;
pub mod eventlog;
pub mod fuzzing;
pub mod kbs;
pub mod rpc;
pub mod server;
pub mod tls;

pub use api::{AaError, AttestationAgent, MeasurementResult};
pub use config::AaConfig;

/// Installs rustls's ring provider as the process default before any HTTP client is built
/// (reqwest is built without a provider of its own).
pub(crate) fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Another component may have installed one already; either is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// An HTTP client builder for `url` trusting the system's roots for `https`. For plain HTTP no
/// roots are loaded at all: a pod VM image may have none, and loading them would fail for a
/// client that never uses TLS. (A configured KBS certificate goes through [`tls`] instead.)
pub(crate) fn http_builder(url: &str) -> reqwest::ClientBuilder {
    install_crypto_provider();
    let builder = reqwest::Client::builder();
    if url.starts_with("https://") {
        builder
    } else {
        builder.tls_certs_only([])
    }
}

/// An error and its sources, `: `-separated.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
