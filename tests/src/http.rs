//! HTTP clients for tests (reqwest on rustls with the ring provider).

use std::sync::Once;
use std::time::Duration;

static PROVIDER: Once = Once::new();

/// Installs rustls's ring provider as the process default, once.
pub fn install_crypto_provider() {
    PROVIDER.call_once(|| {
        // Another component may have installed one already; either is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A client with a cookie store (as the guest's KBS client has) and a 30-second timeout.
pub fn client() -> reqwest::Client {
    builder().build().unwrap_or_else(|_| reqwest::Client::new())
}

/// A client builder with the defaults of [`client`].
pub fn builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
        .cookie_store(true)
        .timeout(Duration::from_secs(30))
}

/// A client that trusts only `ca_pem` for HTTPS.
pub fn client_trusting(ca_pem: &str) -> Result<reqwest::Client, reqwest::Error> {
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes())?;
    builder().tls_certs_only([ca]).build()
}
