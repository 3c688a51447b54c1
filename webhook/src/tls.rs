//! The webhook's TLS: `TLS_MIN_VERSION` and `TLS_CIPHER_SUITES` (Go's names, as upstream's
//! `--tls-min-version`/`--tls-cipher-suites` take them), and a serving certificate read from
//! files and swapped in when the files change.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::SupportedCipherSuite;
use rustls::crypto::CryptoProvider;
use rustls::crypto::ring::cipher_suite as suites;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// A bad `TLS_MIN_VERSION`/`TLS_CIPHER_SUITES`, or serving certificate.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// TLS 1.0 and 1.1 are refused, as upstream refuses them.
    #[error(
        "TLS_MIN_VERSION={0}: TLS 1.0 and 1.1 are not supported, use VersionTLS12 or VersionTLS13"
    )]
    TooOld(String),
    /// Not a version name.
    #[error("TLS_MIN_VERSION={0:?} is not one of VersionTLS12, VersionTLS13")]
    Version(String),
    /// Cipher suites with a TLS 1.3 minimum (upstream refuses this combination too).
    #[error(
        "TLS_CIPHER_SUITES may not be set when TLS_MIN_VERSION is VersionTLS13: TLS 1.3 cipher \
         suites are not configurable"
    )]
    SuitesWithTls13,
    /// A suite name this server does not implement.
    #[error(
        "TLS_CIPHER_SUITES: {0:?} is not offered by this server; it implements {names}",
        names = SUITE_NAMES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
    )]
    Suite(String),
    /// Suites given, but none of them is a TLS 1.2 suite while TLS 1.2 is allowed.
    #[error("TLS_CIPHER_SUITES names no TLS 1.2 suite")]
    NoTls12Suite,
    /// A certificate or key file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A certificate or key file is not the PEM expected.
    #[error("{path} holds no usable {what} (PEM expected)")]
    Pem {
        /// The file.
        path: PathBuf,
        /// `certificate` or `private key`.
        what: &'static str,
    },
    /// The key does not match the certificate, or is of an unsupported type.
    #[error("the key in {key} does not fit the certificate in {cert}")]
    Key {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// rustls refused the configuration (a bug).
    #[error("the TLS configuration was refused")]
    Config(#[source] rustls::Error),
}

/// Go's names of the suites rustls implements (Go's older ChaCha20 names too).
const SUITE_NAMES: &[(&str, SupportedCipherSuite)] = &[
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        suites::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        suites::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        suites::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
        suites::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        suites::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        suites::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        suites::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
        suites::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    // TLS 1.3 names: Go accepts and ignores them; so do we (all TLS 1.3 suites stay on).
    ("TLS_AES_128_GCM_SHA256", suites::TLS13_AES_128_GCM_SHA256),
    ("TLS_AES_256_GCM_SHA384", suites::TLS13_AES_256_GCM_SHA384),
    (
        "TLS_CHACHA20_POLY1305_SHA256",
        suites::TLS13_CHACHA20_POLY1305_SHA256,
    ),
];

const TLS13_SUITES: &[SupportedCipherSuite] = &[
    suites::TLS13_AES_256_GCM_SHA384,
    suites::TLS13_AES_128_GCM_SHA256,
    suites::TLS13_CHACHA20_POLY1305_SHA256,
];

/// The TLS versions and suites the server offers.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// Whether TLS 1.2 is offered (TLS 1.3 always is).
    pub tls12: bool,
    /// The TLS 1.2 suites offered, in preference order; `None`: all of them.
    pub tls12_suites: Option<Vec<SupportedCipherSuite>>,
}

impl Default for TlsOptions {
    fn default() -> Self {
        Self {
            tls12: true,
            tls12_suites: None,
        }
    }
}

impl TlsOptions {
    /// Parses `TLS_MIN_VERSION` (`VersionTLS12`, `VersionTLS13`; empty: TLS 1.2) and
    /// `TLS_CIPHER_SUITES` (comma-separated Go names; empty: all), as upstream does.
    pub fn parse(min_version: &str, cipher_suites: &str) -> Result<Self, TlsError> {
        let min_version = min_version.trim();
        let names: Vec<&str> = cipher_suites
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let tls12 = match min_version {
            "" | "VersionTLS12" => true,
            "VersionTLS13" => false,
            "VersionTLS10" | "VersionTLS11" => {
                return Err(TlsError::TooOld(min_version.to_owned()));
            }
            other => return Err(TlsError::Version(other.chars().take(64).collect())),
        };
        if names.is_empty() {
            return Ok(Self {
                tls12,
                tls12_suites: None,
            });
        }
        if !tls12 {
            return Err(TlsError::SuitesWithTls13);
        }
        let mut chosen: Vec<SupportedCipherSuite> = Vec::new();
        for name in names {
            let suite = SUITE_NAMES
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, s)| *s)
                .ok_or_else(|| TlsError::Suite(name.chars().take(64).collect()))?;
            if suite.tls13().is_none() && !chosen.contains(&suite) {
                chosen.push(suite);
            }
        }
        if chosen.is_empty() {
            return Err(TlsError::NoTls12Suite);
        }
        Ok(Self {
            tls12,
            tls12_suites: Some(chosen),
        })
    }

    /// A rustls server configuration offering these versions and suites, serving the
    /// certificate `resolver` holds, with ALPN `http/1.1`.
    pub fn server_config(
        &self,
        resolver: Arc<dyn ResolvesServerCert>,
    ) -> Result<rustls::ServerConfig, TlsError> {
        let mut cipher_suites = TLS13_SUITES.to_vec();
        if self.tls12 {
            match &self.tls12_suites {
                Some(list) => cipher_suites.extend(list.iter().copied()),
                None => cipher_suites.extend(
                    rustls::crypto::ring::ALL_CIPHER_SUITES
                        .iter()
                        .filter(|s| s.tls13().is_none())
                        .copied(),
                ),
            }
        }
        let provider = CryptoProvider {
            cipher_suites,
            ..rustls::crypto::ring::default_provider()
        };
        let versions: &[&rustls::SupportedProtocolVersion] = if self.tls12 {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13]
        };
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(versions)
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// The serving certificate, read from two PEM files and re-read when their contents change.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl ReloadingCert {
    /// Loads `cert_path` (the chain, leaf first) and `key_path` (PKCS#8, PKCS#1 or SEC1).
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<Self>, TlsError> {
        let (cert_pem, key_pem) = read_pair(cert_path, key_path)?;
        let key = certified_key(cert_path, key_path, &cert_pem, &key_pem)?;
        Ok(Arc::new(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current: RwLock::new(Loaded {
                key,
                cert_pem,
                key_pem,
            }),
        }))
    }

    /// Re-reads the files; swaps the certificate in when they changed and hold a good pair.
    /// `Ok(true)`: a new certificate is served. On an error the old one stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let (cert_pem, key_pem) = read_pair(&self.cert_path, &self.key_path)?;
        {
            let current = self.current.read().unwrap_or_else(|p| p.into_inner());
            if current.cert_pem == cert_pem && current.key_pem == key_pem {
                return Ok(false);
            }
        }
        let key = certified_key(&self.cert_path, &self.key_path, &cert_pem, &key_pem)?;
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        *current = Loaded {
            key,
            cert_pem,
            key_pem,
        };
        Ok(true)
    }

    /// Re-reads the files every `interval` for as long as the returned task runs. Kubernetes
    /// updates a mounted Secret by swapping a symlink, so the contents are compared rather than
    /// watched through inotify.
    pub fn spawn_reloader(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let this = Arc::clone(&this);
                match tokio::task::spawn_blocking(move || this.reload()).await {
                    Ok(Ok(true)) => tracing::info!("serving certificate reloaded"),
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => tracing::warn!(
                        error = %crate::error_chain(&e),
                        "serving certificate not reloaded; the previous one stays in use"
                    ),
                    Err(e) => tracing::warn!(error = %e, "certificate reload task failed"),
                }
            }
        })
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        Some(Arc::clone(&current.key))
    }
}

fn read_pair(cert_path: &Path, key_path: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
    };
    Ok((read(cert_path)?, read(key_path)?))
}

fn certified_key(
    cert_path: &Path,
    key_path: &Path,
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::Pem {
            path: cert_path.to_owned(),
            what: "certificate",
        })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            path: cert_path.to_owned(),
            what: "certificate",
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| TlsError::Pem {
        path: key_path.to_owned(),
        what: "private key",
    })?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider)
        .map(Arc::new)
        .map_err(|source| TlsError::Key {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
            source,
        })
}
