//! Per-VM TLS material for 15150, as cloud-api-adaptor makes it: a server certificate for the
//! pod VM (from a test CA) and a client CA whose certificate the shim side presents.

use std::sync::Arc;

use peerpod_tests::cvm::certs::TlsCa;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::PodvmError;

/// The server CA (with the pod VM's certificate) and the client CA (with the shim's).
pub struct PodPki {
    /// Signs the forwarder's certificate; the shim trusts it.
    pub server: TlsCa,
    /// Signs the shim's certificate; the forwarder requires it.
    pub client: TlsCa,
}

impl PodPki {
    /// Fresh CAs and certificates (the server's names include 127.0.0.1).
    pub fn generate() -> Result<Self, PodvmError> {
        let cert = |name: &str| {
            TlsCa::generate(&[name]).map_err(|e| PodvmError::Certificates(e.to_string()))
        };
        Ok(Self {
            server: cert("podvm")?,
            client: cert("shim")?,
        })
    }

    /// apf.json for the forwarder: its certificate and key, and the client CA.
    pub fn apf_json(&self) -> String {
        serde_json::json!({
            "tls-server-cert": self.server.cert_pem,
            "tls-server-key": self.server.key_pem,
            "tls-client-ca": self.client.ca_pem,
        })
        .to_string()
    }

    /// A client configuration trusting the server CA, with the shim's certificate when
    /// `with_identity`.
    pub fn client_config(
        &self,
        with_identity: bool,
    ) -> Result<Arc<rustls::ClientConfig>, PodvmError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tls = |e: &dyn std::fmt::Display| PodvmError::Tls(e.to_string());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.server.ca_pem.as_bytes()) {
            roots.add(c.map_err(|e| tls(&e))?).map_err(|e| tls(&e))?;
        }
        let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
        let config = if with_identity {
            let chain = CertificateDer::pem_slice_iter(self.client.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| tls(&e))?;
            let key = PrivateKeyDer::from_pem_slice(self.client.key_pem.as_bytes())
                .map_err(|e| tls(&e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls(&e))?
        } else {
            builder.with_no_client_auth()
        };
        Ok(Arc::new(config))
    }
}
