//! The test KBS's configuration file (TOML, our own format: the test KBS is not configured like
//! Trustee, it only speaks like it).
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! # tls_cert = "server.pem"          # HTTPS when both are set
//! # tls_key = "server-key.pem"
//! session_timeout_secs = 300
//! trustee_errors = "pinned"          # statuses of Trustee 33e1bc57 (PolicyDeny 401);
//!                                    # "newer": Trustee 079fcf84 (PolicyDeny 403)
//!
//! [admin]
//! mode = "ed25519"                   # "ed25519", "insecure" (anyone) or "deny"
//! public_key = "admin-pub.pem"
//!
//! [trust]
//! amd_chain = "amd-chain.pem"        # ASK then ARK, for az-snp-vtpm (its ARK names the
//!                                    # generation: ARK-Milan, ARK-Genoa, ARK-Turin)
//! # more_amd_chains = ["genoa.pem"]  # chains of further generations
//! intel_roots = ["intel-root.pem"]   # for az-tdx-vtpm
//!
//! [verifier]
//! require_user_data_binding = true
//! check_certificate_dates = true
//!
//! [policies]
//! attestation = "attestation.rego"   # default: the built-in appraisal policy
//! resource = "resource.rego"         # default: the built-in resource policy
//! reference_values = "reference-values.json"   # {"name": value, ...}
//!
//! [[resources]]
//! path = "default/key/pod-secret"
//! file = "secret.bin"                # or: value = "inline text"
//! ```
//!
//! Relative paths are relative to the configuration file's directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::server::{AdminAuth, KbsOptions, TlsFiles};
use super::verifier::{AmdAnchors, TrustAnchors, Verifier, VerifierOptions, x509};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default = "default_listen")]
    listen: String,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    #[serde(default = "default_timeout")]
    session_timeout_secs: u64,
    #[serde(default)]
    trustee_errors: Option<String>,
    #[serde(default)]
    admin: Admin,
    #[serde(default)]
    trust: Trust,
    #[serde(default)]
    verifier: VerifierSection,
    #[serde(default)]
    policies: Policies,
    #[serde(default)]
    resources: Vec<Resource>,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

fn default_timeout() -> u64 {
    300
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Admin {
    #[serde(default)]
    mode: Option<String>,
    public_key: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Trust {
    amd_chain: Option<PathBuf>,
    #[serde(default)]
    more_amd_chains: Vec<PathBuf>,
    #[serde(default)]
    intel_roots: Vec<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifierSection {
    #[serde(default = "yes")]
    require_user_data_binding: bool,
    #[serde(default = "yes")]
    check_certificate_dates: bool,
}

impl Default for VerifierSection {
    fn default() -> Self {
        Self {
            require_user_data_binding: true,
            check_certificate_dates: true,
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Policies {
    attestation: Option<PathBuf>,
    resource: Option<PathBuf>,
    reference_values: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Resource {
    path: String,
    file: Option<PathBuf>,
    value: Option<String>,
}

/// A loaded configuration.
#[derive(Debug)]
pub struct KbsConfig {
    /// Address to listen on.
    pub listen: String,
    /// HTTPS material, if configured.
    pub tls: Option<TlsFiles>,
    /// Everything else.
    pub options: KbsOptions,
}

fn read(base: &Path, path: &Path, what: &str) -> Result<String, String> {
    let full = base.join(path);
    std::fs::read_to_string(&full)
        .map_err(|e| format!("cannot read {what} {}: {e}", full.display()))
}

impl KbsConfig {
    /// Loads a configuration file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses a configuration; relative paths are resolved against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Self, String> {
        let f: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut anchors = TrustAnchors::default();
        for p in f.trust.amd_chain.iter().chain(&f.trust.more_amd_chains) {
            anchors.add_amd(AmdAnchors::from_pem(
                read(base, p, "AMD chain")?.as_bytes(),
            )?);
        }
        for p in &f.trust.intel_roots {
            anchors.intel_roots.push(x509::from_pem(
                "Intel root",
                read(base, p, "Intel root")?.as_bytes(),
            )?);
        }
        let mut options = KbsOptions::new(Verifier {
            anchors,
            options: VerifierOptions {
                require_user_data_binding: f.verifier.require_user_data_binding,
                check_certificate_dates: f.verifier.check_certificate_dates,
            },
        });
        options.session_timeout = Duration::from_secs(f.session_timeout_secs);
        options.trustee_errors = match f.trustee_errors.as_deref() {
            None | Some("pinned") => super::TrusteeErrors::Pinned,
            Some("newer") => super::TrusteeErrors::Newer,
            Some(other) => {
                return Err(format!(
                    "trustee_errors {other:?} is not one of \"pinned\", \"newer\""
                ));
            }
        };
        options.admin = match (f.admin.mode.as_deref(), &f.admin.public_key) {
            (Some("insecure"), _) => AdminAuth::InsecureAllowAll,
            (Some("deny") | None, None) => AdminAuth::DenyAll,
            (Some("ed25519") | None, Some(p)) => {
                AdminAuth::Ed25519PublicKey(read(base, p, "admin public key")?)
            }
            (Some("ed25519"), None) => return Err("admin mode \"ed25519\" needs public_key".into()),
            (Some(other), _) => {
                return Err(format!(
                    "admin mode {other:?} is not one of \"ed25519\", \"insecure\", \"deny\""
                ));
            }
        };
        if let Some(p) = &f.policies.attestation {
            options.attestation_policy = read(base, p, "attestation policy")?;
        }
        if let Some(p) = &f.policies.resource {
            options.resource_policy = read(base, p, "resource policy")?;
        }
        if let Some(p) = &f.policies.reference_values {
            options.reference_values = serde_json::from_str::<BTreeMap<String, Value>>(&read(
                base,
                p,
                "reference values",
            )?)
            .map_err(|e| format!("reference values: {e}"))?;
        }
        for r in &f.resources {
            let rp = peerpod_kbs_protocol::messages::ResourcePath::parse(&r.path)
                .map_err(|e| e.to_string())?;
            let data = match (&r.file, &r.value) {
                (Some(file), None) => {
                    let full = base.join(file);
                    std::fs::read(&full)
                        .map_err(|e| format!("cannot read resource {}: {e}", full.display()))?
                }
                (None, Some(v)) => v.clone().into_bytes(),
                _ => {
                    return Err(format!(
                        "resource {}: give exactly one of file, value",
                        r.path
                    ));
                }
            };
            options.resources.insert(rp.to_string(), data);
        }
        let tls = match (&f.tls_cert, &f.tls_key) {
            (Some(c), Some(k)) => Some(TlsFiles {
                cert_pem: read(base, c, "TLS certificate")?,
                key_pem: read(base, k, "TLS key")?,
            }),
            (None, None) => None,
            _ => return Err("set both tls_cert and tls_key, or neither".into()),
        };
        Ok(Self {
            listen: f.listen,
            tls,
            options,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_and_errors() {
        let c = KbsConfig::parse("", Path::new(".")).expect("empty config");
        assert_eq!(c.listen, "127.0.0.1:8080");
        assert!(matches!(c.options.admin, AdminAuth::DenyAll));
        let c = KbsConfig::parse(
            "[admin]\nmode = \"insecure\"\n[[resources]]\npath = \"a/b/c\"\nvalue = \"x\"\n",
            Path::new("."),
        )
        .expect("config");
        assert_eq!(c.options.resources["a/b/c"], b"x");
        assert_eq!(
            c.options.trustee_errors,
            super::super::TrusteeErrors::Pinned
        );
        let c = KbsConfig::parse("trustee_errors = \"newer\"\n", Path::new(".")).expect("newer");
        assert_eq!(c.options.trustee_errors, super::super::TrusteeErrors::Newer);
        for (bad, needle) in [
            ("trustee_errors = \"latest\"\n", "is not one of"),
            ("lisen = \"x\"", "unknown field"),
            ("[admin]\nmode = \"ed25519\"\n", "needs public_key"),
            ("[admin]\nmode = \"open\"\n", "is not one of"),
            (
                "[[resources]]\npath = \"../x/y\"\nvalue = \"x\"\n",
                "resource path",
            ),
            ("[[resources]]\npath = \"a/b/c\"\n", "exactly one of"),
            ("tls_cert = \"c.pem\"\n", "both tls_cert and tls_key"),
            (
                "[trust]\namd_chain = \"/nonexistent.pem\"\n",
                "cannot read AMD chain",
            ),
            (
                "[trust]\nmore_amd_chains = [\"/nonexistent-genoa.pem\"]\n",
                "cannot read AMD chain",
            ),
        ] {
            let err = KbsConfig::parse(bad, Path::new(".")).expect_err(bad);
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }
}
