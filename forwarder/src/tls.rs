//! The TLS server of the front door: rustls with the ring provider, TLS 1.2 or newer, and a
//! client certificate required whenever a client CA is configured.
//!
//! `tls-min-version` and `tls-cipher-suites` take Go's names (`VersionTLS12`,
//! `TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256`), as cloud-api-adaptor passes the cluster's TLS
//! profile, and OpenSSL's names for the same suites (`ECDHE-ECDSA-AES128-GCM-SHA256`), as
//! OpenShift profiles write them. Versions below 1.2 are raised to 1.2 with a warning; suites
//! rustls does not implement (CBC, static RSA) are skipped with a warning. The listed TLS 1.2
//! suites are the only TLS 1.2 suites offered; TLS 1.3 suites are the listed ones, or all three
//! when none is listed (Go does not let TLS 1.3 suites be configured at all).

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{CipherSuite, ServerConfig, SupportedCipherSuite};
use tracing::warn;

use crate::config::TlsSettings;

/// Why no TLS server could be configured.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key is missing.
    #[error(
        "no {0}: set tls-server-cert and tls-server-key in apf.json (or -cert-file and \
         -cert-key), or run with -disable-tls for tests only"
    )]
    Missing(&'static str),
    /// A PEM document could not be read.
    #[error("the {what} is not valid PEM: {reason}")]
    Pem {
        /// Which document.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// A certificate file named by a flag could not be read.
    #[error("cannot read {path}")]
    File {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `tls-min-version` is not a version name.
    #[error("tls-min-version {0:?} is not a TLS version (VersionTLS12, VersionTLS13, 1.2 or 1.3)")]
    Version(String),
    /// None of `tls-cipher-suites` is one rustls provides.
    #[error(
        "none of tls-cipher-suites ({0}) is a suite this forwarder provides (ECDHE with AES-GCM \
         or ChaCha20-Poly1305, or the TLS 1.3 suites)"
    )]
    NoSuites(String),
    /// rustls refused the configuration.
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client CA could not be used to verify clients.
    #[error("the client CA cannot verify clients: {0}")]
    ClientVerifier(String),
}

/// Where the server's TLS material comes from: the flags' files first, else `apf.json`.
#[derive(Debug, Clone, Default)]
pub struct TlsFlags {
    /// `-cert-file`.
    pub cert_file: Option<String>,
    /// `-cert-key`.
    pub key_file: Option<String>,
    /// `-ca-cert-file`: the client CA.
    pub ca_file: Option<String>,
    /// `-tls-skip-verify`: do not ask for client certificates (tests only).
    pub skip_verify: bool,
}

fn read(path: &str) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::File {
        path: path.to_owned(),
        source,
    })
}

/// The minimum version `name` stands for: 12 or 13.
fn min_version(name: Option<&str>) -> Result<u8, TlsError> {
    match name.map(str::trim) {
        None | Some("") => Ok(12),
        Some("VersionTLS13" | "tls.VersionTLS13" | "1.3" | "tls1.3" | "TLSv1.3") => Ok(13),
        Some("VersionTLS12" | "tls.VersionTLS12" | "1.2" | "tls1.2" | "TLSv1.2") => Ok(12),
        Some(
            old @ ("VersionTLS10" | "VersionTLS11" | "tls.VersionTLS10" | "tls.VersionTLS11"
            | "1.0" | "1.1" | "tls1.0" | "tls1.1" | "TLSv1.0" | "TLSv1.1"),
        ) => {
            warn!(
                configured = old,
                "TLS below 1.2 is never offered; the minimum is TLS 1.2"
            );
            Ok(12)
        }
        Some(other) => Err(TlsError::Version(other.to_owned())),
    }
}

/// The rustls suite a Go or OpenSSL name stands for.
fn suite_of(name: &str) -> Option<CipherSuite> {
    use CipherSuite::*;
    Some(match name.trim() {
        "TLS_AES_128_GCM_SHA256" => TLS13_AES_128_GCM_SHA256,
        "TLS_AES_256_GCM_SHA384" => TLS13_AES_256_GCM_SHA384,
        "TLS_CHACHA20_POLY1305_SHA256" => TLS13_CHACHA20_POLY1305_SHA256,
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" | "ECDHE-ECDSA-AES128-GCM-SHA256" => {
            TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        }
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" | "ECDHE-ECDSA-AES256-GCM-SHA384" => {
            TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        }
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
        | "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305"
        | "ECDHE-ECDSA-CHACHA20-POLY1305" => TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" | "ECDHE-RSA-AES128-GCM-SHA256" => {
            TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        }
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" | "ECDHE-RSA-AES256-GCM-SHA384" => {
            TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
        }
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"
        | "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305"
        | "ECDHE-RSA-CHACHA20-POLY1305" => TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        _ => return None,
    })
}

/// The provider's suites as `names` select them (see the module's documentation).
fn select_suites(names: &[String]) -> Result<Vec<SupportedCipherSuite>, TlsError> {
    let all = rustls::crypto::ring::default_provider().cipher_suites;
    if names.is_empty() {
        return Ok(all);
    }
    let mut wanted = Vec::new();
    for name in names {
        match suite_of(name) {
            Some(s) => wanted.push(s),
            None => warn!(suite = %name, "tls-cipher-suites: not provided here, skipped"),
        }
    }
    if wanted.is_empty() {
        return Err(TlsError::NoSuites(names.join(", ")));
    }
    let any_tls13_listed = all
        .iter()
        .any(|s| s.tls13().is_some() && wanted.contains(&s.suite()));
    Ok(all
        .into_iter()
        .filter(|s| wanted.contains(&s.suite()) || (s.tls13().is_some() && !any_tls13_listed))
        .collect())
}

/// The rustls server configuration for `settings` (from `apf.json`) and `flags`.
pub fn server_config(settings: &TlsSettings, flags: &TlsFlags) -> Result<ServerConfig, TlsError> {
    let cert_pem = match &flags.cert_file {
        Some(path) => read(path)?,
        None => settings
            .server_cert
            .clone()
            .ok_or(TlsError::Missing("server certificate"))?,
    };
    let key_pem = match &flags.key_file {
        Some(path) => read(path)?,
        None => settings
            .server_key
            .clone()
            .ok_or(TlsError::Missing("server key"))?,
    };
    let ca_pem = match &flags.ca_file {
        Some(path) => Some(read(path)?),
        None => settings.client_ca.clone(),
    };

    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            what: "server certificate",
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what: "server certificate",
            reason: "no CERTIFICATE block".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Pem {
        what: "server key",
        reason: e.to_string(),
    })?;

    let min = min_version(settings.min_version.as_deref())?;
    let mut suites = select_suites(&settings.cipher_suites)?;
    let mut versions: Vec<&'static rustls::SupportedProtocolVersion> = Vec::new();
    if min <= 12 && suites.iter().any(|s| s.tls13().is_none()) {
        versions.push(&rustls::version::TLS12);
    }
    if suites.iter().any(|s| s.tls13().is_some()) {
        versions.push(&rustls::version::TLS13);
    }
    if min == 13 {
        suites.retain(|s| s.tls13().is_some());
    }
    if versions.is_empty() {
        return Err(TlsError::NoSuites(settings.cipher_suites.join(", ")));
    }
    let provider = Arc::new(CryptoProvider {
        cipher_suites: suites,
        ..rustls::crypto::ring::default_provider()
    });
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions)?;

    let builder = match (ca_pem, flags.skip_verify) {
        (Some(ca), false) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                let cert = cert.map_err(|e| TlsError::Pem {
                    what: "client CA",
                    reason: e.to_string(),
                })?;
                roots.add(cert).map_err(|e| TlsError::Pem {
                    what: "client CA",
                    reason: e.to_string(),
                })?;
            }
            if roots.is_empty() {
                return Err(TlsError::Pem {
                    what: "client CA",
                    reason: "no CERTIFICATE block".into(),
                });
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| TlsError::ClientVerifier(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        (_, true) => {
            warn!(
                "-tls-skip-verify: client certificates are not checked; any client may drive the agent (tests only)"
            );
            builder.with_no_client_auth()
        }
        (None, false) => {
            warn!(
                "no client CA (tls-client-ca or -ca-cert-file): any client that reaches the port may drive the agent"
            );
            builder.with_no_client_auth()
        }
    };
    Ok(builder.with_single_cert(certs, key)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_and_openssl_names_select_the_same_suites() -> Result<(), TlsError> {
        let go = select_suites(&["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".into()])?;
        let ossl = select_suites(&["ECDHE-ECDSA-AES128-GCM-SHA256".into()])?;
        let names = |v: &[SupportedCipherSuite]| v.iter().map(|s| s.suite()).collect::<Vec<_>>();
        assert_eq!(names(&go), names(&ossl));
        assert!(names(&go).contains(&CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256));
        assert!(!names(&go).contains(&CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256));
        // No TLS 1.3 suite listed: all three stay, as in Go.
        assert_eq!(go.iter().filter(|s| s.tls13().is_some()).count(), 3);
        Ok(())
    }

    #[test]
    fn unsupported_suites_alone_are_refused() {
        let err = select_suites(&["TLS_RSA_WITH_AES_128_CBC_SHA".into()]).expect_err("CBC only");
        assert!(
            err.to_string().contains("TLS_RSA_WITH_AES_128_CBC_SHA"),
            "{err}"
        );
    }

    #[test]
    fn versions_below_1_2_are_raised_and_unknown_refused() {
        assert_eq!(min_version(Some("VersionTLS10")).ok(), Some(12));
        assert_eq!(min_version(Some("VersionTLS13")).ok(), Some(13));
        assert_eq!(min_version(None).ok(), Some(12));
        assert!(min_version(Some("VersionSSL30")).is_err());
    }
}
