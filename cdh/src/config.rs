//! `cdh.toml`, with upstream's keys:
//!
//! ```toml
//! socket = "unix:///run/confidential-containers/cdh.sock"
//! skip_sealed_secret_verification = false
//!
//! [kbc]
//! name = "cc_kbc"                 # or offline_fs_kbc
//! url = "https://kbs.example:8080"
//! kbs_cert = "<PEM>"              # optional: the only certificate trusted for the KBS
//!
//! [aa]
//! aa_socket = "unix:///run/confidential-containers/attestation-agent/attestation-agent.sock"
//!
//! [[credentials]]                 # fetched at start and written, mode 0600
//! resource_uri = "kbs:///default/credential/registry"
//! path = "/run/confidential-containers/cdh/kbs/registry-auth.json"
//!
//! [image]                         # image pulls (PullImage), image-rs's keys:
//! work_dir = "/run/image-rs"
//! authenticated_registry_credentials_uri = "kbs:///default/credential/registry"  # auth.json
//! registry_configuration_uri = "file:///etc/containers/registries.conf"
//! image_security_policy_uri = "kbs:///default/security-policy/test"            # policy.json
//! sigstore_config_uri = "kbs:///default/sigstore-config/test"
//! max_concurrent_layer_downloads_per_image = 3
//! extra_root_certificates = ["<PEM>"]
//! [image.image_pull_proxy]
//! https_proxy = "http://proxy:3128"
//! no_proxy = "10.0.0.0/8"
//! [log]
//! level = "info"
//!
//! [peerpod]                       # ours; every key optional
//! credentials_root = "/run/confidential-containers/cdh"
//! sealed_secret_key_dir = "/run/confidential-containers/cdh/sealed-secret"
//! sealed_secret_verification_keys = ["kbs:///default/sealed-secret-keys/"]  # default: none
//! insecure_http = false           # true: accept a plain-http:// KBS (tests only)
//! luks_header_dir = "/run/confidential-containers/cdh/luks-headers"
//! offline_fs_kbc_files = ["/etc/aa-offline_fs_kbc-keys.json", "/etc/aa-offline_fs_kbc-resources.json"]
//! request_timeout_secs = 30       # each request to the KBS or the attestation agent
//! kbs_timeout_secs = 90           # one resource fetch, with at most one attestation
//! initdata = "/run/peerpod/initdata.toml"   # sent in the CDH's /attest; default: none
//! require_pull_measurement = false  # true: a pulled image the attestation agent cannot record
//!                                   # in its event log is refused (upstream: used anyway)
//! ```
//!
//! A missing file, or a file without `[kbc]`, takes the KBS from `AA_KBC_PARAMS` or the kernel
//! command line's `agent.aa_kbc_params=` (`cc_kbc::<url>`), as upstream does. Values are passed
//! to the parts that use them; nothing is passed through process environment variables.
//! Unknown keys are warnings that name the key; a known key with a bad value is an error that
//! names it.

use std::path::PathBuf;
use std::time::Duration;

use peerpod_kbs_protocol::messages::ResourcePath;

use crate::uri::ResourceUri;

/// The default socket.
pub const DEFAULT_SOCKET: &str = "unix:///run/confidential-containers/cdh.sock";
/// The attestation agent's default socket.
pub const DEFAULT_AA_SOCKET: &str =
    "unix:///run/confidential-containers/attestation-agent/attestation-agent.sock";
/// Where credentials may be written, and where KMS-style files live.
pub const DEFAULT_CREDENTIALS_ROOT: &str = "/run/confidential-containers/cdh";

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("{path} is not valid TOML")]
    Toml {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: toml::de::Error,
    },
    /// A key has an unusable value.
    #[error("{key}: {reason}")]
    Value {
        /// The key, dotted.
        key: String,
        /// What is wrong and what is expected.
        reason: String,
    },
}

fn bad(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Value {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// Which key broker client serves resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kbc {
    /// `cc_kbc`: the KBS at `url`, with the attestation agent's token.
    CcKbc {
        /// Base URL.
        url: String,
        /// PEM certificate to trust instead of the system's roots.
        cert: Option<String>,
    },
    /// `offline_fs_kbc`: resources from local JSON files.
    OfflineFs,
}

/// One `[[credentials]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// Where the resource comes from.
    pub resource_uri: ResourceUri,
    /// Where it is written.
    pub path: PathBuf,
}

/// KBS resources a sealed secret may name as its verification key (`kid`): one resource
/// (`kbs:///<repo>/<type>/<tag>`) or every resource under a prefix ending in `/`
/// (`kbs:///<repo>/` or `kbs:///<repo>/<type>/`). The host part and query are ignored, as they
/// are for fetches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPattern {
    segments: Vec<String>,
    prefix: bool,
}

impl KeyPattern {
    /// Parses a pattern; `None` when it is neither a resource URI nor a prefix of one.
    pub fn parse(text: &str) -> Option<Self> {
        let rest = text.strip_prefix("kbs://")?;
        let (_, path) = rest.split_once('/')?;
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        let prefix = path.ends_with('/');
        let segments: Vec<String> = path
            .trim_end_matches('/')
            .split('/')
            .map(str::to_string)
            .collect();
        let complete = match (prefix, segments.len()) {
            (false, 3) => segments.join("/"),
            // Padded to a whole path so the protocol's own rule checks each segment.
            (true, 1..=2) => {
                let mut padded = segments.clone();
                padded.resize(3, "x".to_string());
                padded.join("/")
            }
            _ => return None,
        };
        ResourcePath::parse(&complete).ok()?;
        Some(Self { segments, prefix })
    }

    /// Whether `uri` is this resource, or under this prefix.
    pub fn matches(&self, uri: &ResourceUri) -> bool {
        let path = uri.path.to_string();
        let have: Vec<&str> = path.split('/').collect();
        if self.prefix {
            have.len() > self.segments.len() && self.segments.iter().zip(&have).all(|(a, b)| a == b)
        } else {
            have.len() == self.segments.len()
                && self.segments.iter().zip(&have).all(|(a, b)| a == b)
        }
    }
}

/// The CDH's configuration.
#[derive(Debug, Clone)]
pub struct CdhConfig {
    /// ttrpc listen address.
    pub socket: String,
    /// The key broker client; `None` when neither the file nor the fallback names one.
    pub kbc: Option<Kbc>,
    /// The attestation agent's socket.
    pub aa_socket: String,
    /// Credentials to fetch at start.
    pub credentials: Vec<Credential>,
    /// Accept sealed secrets without checking their signature.
    pub skip_sealed_secret_verification: bool,
    /// `[image]`: image pulls.
    pub image: peerpod_image::ImageConfig,
    /// Whether the file set `[image] work_dir` (else [`CdhConfig::use_scratch_work_dir`] may
    /// choose the encrypted scratch space).
    pub work_dir_configured: bool,
    /// Log level.
    pub log_level: String,
    /// Credentials must be written under this directory.
    pub credentials_root: PathBuf,
    /// Where sealed-secret verification keys named by a plain `kid` live.
    pub sealed_secret_key_dir: PathBuf,
    /// The KBS resources a sealed secret's `kid` may name (default: none).
    pub sealed_secret_verification_keys: Vec<KeyPattern>,
    /// Accept a plain-`http://` KBS URL.
    pub insecure_http: bool,
    /// Where detached LUKS headers are kept.
    pub luks_header_dir: PathBuf,
    /// The `offline_fs_kbc` files.
    pub offline_fs_kbc_files: Vec<PathBuf>,
    /// Timeout of each request to the KBS or the attestation agent.
    pub request_timeout: Duration,
    /// Timeout of one resource fetch from the KBS, with the (at most one) attestation it needs.
    pub kbs_timeout: Duration,
    /// The initdata document the CDH sends in its `/attest` (the one the TEE was bound to).
    pub initdata: Option<PathBuf>,
    /// Refuse a pulled image that the attestation agent cannot record in its event log (no
    /// agent, event log off, no runtime measurement on the platform) instead of warning.
    pub require_pull_measurement: bool,
    /// Warnings about the file (unknown keys), for the log.
    pub warnings: Vec<String>,
}

impl Default for CdhConfig {
    fn default() -> Self {
        Self {
            socket: DEFAULT_SOCKET.into(),
            kbc: None,
            aa_socket: DEFAULT_AA_SOCKET.into(),
            credentials: Vec::new(),
            skip_sealed_secret_verification: false,
            image: peerpod_image::ImageConfig::default(),
            work_dir_configured: false,
            log_level: "info".into(),
            credentials_root: PathBuf::from(DEFAULT_CREDENTIALS_ROOT),
            sealed_secret_key_dir: PathBuf::from(DEFAULT_CREDENTIALS_ROOT).join("sealed-secret"),
            sealed_secret_verification_keys: Vec::new(),
            insecure_http: false,
            luks_header_dir: PathBuf::from(DEFAULT_CREDENTIALS_ROOT).join("luks-headers"),
            offline_fs_kbc_files: vec![
                PathBuf::from("/etc/aa-offline_fs_kbc-keys.json"),
                PathBuf::from("/etc/aa-offline_fs_kbc-resources.json"),
            ],
            request_timeout: Duration::from_secs(30),
            kbs_timeout: Duration::from_secs(90),
            initdata: None,
            require_pull_measurement: false,
            warnings: Vec::new(),
        }
    }
}

fn string(key: &str, v: &toml::Value) -> Result<String, ConfigError> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| bad(key, "must be a string"))
}

fn table<'a>(key: &str, v: &'a toml::Value) -> Result<&'a toml::Table, ConfigError> {
    v.as_table().ok_or_else(|| bad(key, "must be a table"))
}

fn http_url(key: &str, url: String) -> Result<String, ConfigError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(url)
    } else {
        Err(bad(
            key,
            format!("{url:?} must start with http:// or https://"),
        ))
    }
}

/// Where the pod VM's encrypted scratch space is mounted (provisioning's `scratch` mount
/// point, upstream kata's image work directory for guest pulls).
pub const SCRATCH_WORK_DIR: &str = "/run/kata-containers/image";

impl CdhConfig {
    /// Reads `cdh.toml`; with no path, the defaults.
    pub fn load(path: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Toml { source, .. } => ConfigError::Toml {
                path: path.to_path_buf(),
                source,
            },
            other => other,
        })
    }

    /// With no `[image] work_dir` in the file, layers go to the encrypted scratch space when
    /// `probe` finds it mounted (a dm-crypt device's file system, see [`crate::scratch`])
    /// rather than to the default `/run/image-rs`, which is guest memory: a large image would
    /// otherwise fill RAM and never use the scratch disk. An explicit `work_dir` (one a measured
    /// initdata set, say) is never overridden and nothing is looked at: `None`. Otherwise what
    /// the probe found; the work directory changed only when that is
    /// [`Verdict::Encrypted`](crate::scratch::Verdict::Encrypted).
    pub fn use_scratch_work_dir(
        &mut self,
        probe: &crate::scratch::ScratchProbe,
    ) -> Option<crate::scratch::Verdict> {
        if self.work_dir_configured {
            return None;
        }
        let verdict = probe.judge();
        if let crate::scratch::Verdict::Encrypted { .. } = verdict {
            self.image.work_dir = probe.mount_point.clone();
        }
        Some(verdict)
    }

    /// Parses `cdh.toml` text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let root: toml::Table = toml::from_str(text).map_err(|source| ConfigError::Toml {
            path: "cdh.toml".into(),
            source,
        })?;
        let mut c = Self::default();
        let mut unknown = Vec::new();
        for (k, v) in &root {
            match k.as_str() {
                "socket" => {
                    c.socket = string("socket", v)?;
                    if !c.socket.starts_with("unix:///") {
                        return Err(bad("socket", "must be unix:///<absolute path>"));
                    }
                }
                "skip_sealed_secret_verification" => {
                    c.skip_sealed_secret_verification =
                        v.as_bool().ok_or_else(|| bad(k, "must be true or false"))?;
                }
                "kbc" => c.kbc = Some(parse_kbc(table(k, v)?, &mut unknown)?),
                "aa" => {
                    for (ak, av) in table(k, v)? {
                        match ak.as_str() {
                            "aa_socket" => c.aa_socket = string("aa.aa_socket", av)?,
                            other => unknown.push(format!("aa.{other}")),
                        }
                    }
                }
                "credentials" => {
                    let list = v
                        .as_array()
                        .ok_or_else(|| bad(k, "must be an array of tables ([[credentials]])"))?;
                    for (i, item) in list.iter().enumerate() {
                        c.credentials
                            .push(parse_credential(i, table("credentials", item)?)?);
                    }
                }
                "image" => {
                    c.work_dir_configured = table(k, v)?.contains_key("work_dir");
                    let (image, unknown_keys) =
                        peerpod_image::ImageConfig::from_table(table(k, v)?)
                            .map_err(|e| bad("image", e.to_string()))?;
                    c.image = image;
                    unknown.extend(unknown_keys.into_iter().map(|u| format!("image.{u}")));
                }
                "log" => {
                    for (lk, lv) in table(k, v)? {
                        match lk.as_str() {
                            "level" => c.log_level = string("log.level", lv)?.to_lowercase(),
                            other => unknown.push(format!("log.{other}")),
                        }
                    }
                }
                "peerpod" => parse_peerpod(&mut c, table(k, v)?, &mut unknown)?,
                other => unknown.push(other.to_string()),
            }
        }
        c.warnings = unknown
            .into_iter()
            .map(|k| format!("unknown key {k:?} ignored"))
            .collect();
        Ok(c)
    }

    /// Without `[kbc]`, takes the KBS from `AA_KBC_PARAMS` (`env`) or the kernel command line's
    /// `agent.aa_kbc_params=`: `cc_kbc::<url>` or `offline_fs_kbc::`.
    pub fn apply_kbc_params(&mut self, env: Option<&str>, cmdline: Option<&str>) {
        if self.kbc.is_some() {
            return;
        }
        let Some(param) = env.map(str::to_string).or_else(|| {
            cmdline?
                .split_whitespace()
                .find_map(|w| w.strip_prefix("agent.aa_kbc_params="))
                .map(str::to_string)
        }) else {
            return;
        };
        match param.split_once("::") {
            Some(("cc_kbc", url)) if url.starts_with("http://") || url.starts_with("https://") => {
                self.kbc = Some(Kbc::CcKbc {
                    url: url.to_string(),
                    cert: None,
                });
            }
            Some(("offline_fs_kbc", _)) => self.kbc = Some(Kbc::OfflineFs),
            _ => self.warnings.push(format!(
                "aa_kbc_params {param:?} is not cc_kbc::<http(s) URL> or offline_fs_kbc::; no KBS configured"
            )),
        }
    }
}

fn parse_kbc(t: &toml::Table, unknown: &mut Vec<String>) -> Result<Kbc, ConfigError> {
    let mut name = None;
    let mut url = None;
    let mut cert = None;
    for (k, v) in t {
        match k.as_str() {
            "name" => name = Some(string("kbc.name", v)?),
            "url" => url = Some(string("kbc.url", v)?),
            "kbs_cert" => cert = Some(string("kbc.kbs_cert", v)?).filter(|s| !s.trim().is_empty()),
            other => unknown.push(format!("kbc.{other}")),
        }
    }
    match name.as_deref() {
        // As upstream, a missing or empty URL fails only when a resource is fetched.
        Some("cc_kbc") => Ok(Kbc::CcKbc {
            url: match url.unwrap_or_default() {
                u if u.is_empty() => u,
                u => http_url("kbc.url", u)?,
            },
            cert,
        }),
        Some("offline_fs_kbc") => Ok(Kbc::OfflineFs),
        Some(other) => Err(bad(
            "kbc.name",
            format!("{other:?} is not supported: use cc_kbc or offline_fs_kbc"),
        )),
        None => Err(bad("kbc.name", "is required: cc_kbc or offline_fs_kbc")),
    }
}

fn parse_credential(i: usize, t: &toml::Table) -> Result<Credential, ConfigError> {
    let key = |k: &str| format!("credentials[{i}].{k}");
    let uri = t
        .get("resource_uri")
        .ok_or_else(|| bad(&key("resource_uri"), "is required"))?;
    let path = t
        .get("path")
        .ok_or_else(|| bad(&key("path"), "is required"))?;
    let resource_uri = ResourceUri::parse(&string(&key("resource_uri"), uri)?)
        .map_err(|e| bad(&key("resource_uri"), e.to_string()))?;
    Ok(Credential {
        resource_uri,
        path: PathBuf::from(string(&key("path"), path)?),
    })
}

fn parse_peerpod(
    c: &mut CdhConfig,
    t: &toml::Table,
    unknown: &mut Vec<String>,
) -> Result<(), ConfigError> {
    for (k, v) in t {
        let key = format!("peerpod.{k}");
        match k.as_str() {
            "credentials_root" => c.credentials_root = PathBuf::from(string(&key, v)?),
            "sealed_secret_key_dir" => c.sealed_secret_key_dir = PathBuf::from(string(&key, v)?),
            "luks_header_dir" => c.luks_header_dir = PathBuf::from(string(&key, v)?),
            "initdata" => c.initdata = Some(PathBuf::from(string(&key, v)?)),
            "insecure_http" => {
                c.insecure_http = v
                    .as_bool()
                    .ok_or_else(|| bad(&key, "must be true or false"))?;
            }
            "require_pull_measurement" => {
                c.require_pull_measurement = v
                    .as_bool()
                    .ok_or_else(|| bad(&key, "must be true or false"))?;
            }
            "sealed_secret_verification_keys" => {
                let list = v
                    .as_array()
                    .ok_or_else(|| bad(&key, "must be a list of kbs:// URIs or prefixes"))?;
                c.sealed_secret_verification_keys = list
                    .iter()
                    .map(|p| {
                        let text = string(&key, p)?;
                        KeyPattern::parse(&text).ok_or_else(|| {
                            bad(
                                &key,
                                format!(
                                    "{text:?} is not kbs:///<repo>/<type>/<tag>, kbs:///<repo>/<type>/ \
                                     or kbs:///<repo>/"
                                ),
                            )
                        })
                    })
                    .collect::<Result<_, _>>()?;
            }
            "offline_fs_kbc_files" => {
                let list = v
                    .as_array()
                    .ok_or_else(|| bad(&key, "must be a list of paths"))?;
                c.offline_fs_kbc_files = list
                    .iter()
                    .map(|p| string(&key, p).map(PathBuf::from))
                    .collect::<Result<_, _>>()?;
            }
            "request_timeout_secs" => {
                let secs = v
                    .as_integer()
                    .filter(|s| (1..=600).contains(s))
                    .ok_or_else(|| bad(&key, "must be an integer from 1 to 600"))?;
                c.request_timeout = Duration::from_secs(secs.unsigned_abs());
            }
            "kbs_timeout_secs" => {
                let secs = v
                    .as_integer()
                    .filter(|s| (1..=600).contains(s))
                    .ok_or_else(|| bad(&key, "must be an integer from 1 to 600"))?;
                c.kbs_timeout = Duration::from_secs(secs.unsigned_abs());
            }
            other => unknown.push(format!("peerpod.{other}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_keys_and_ours() {
        let c = CdhConfig::parse(
            "socket = \"unix:///tmp/cdh.sock\"\nskip_sealed_secret_verification = true\n\
             [kbc]\nname = \"cc_kbc\"\nurl = \"https://kbs:8080\"\nkbs_cert = \"\"\n\
             [aa]\naa_socket = \"unix:///tmp/aa.sock\"\n\
             [[credentials]]\nresource_uri = \"kbs:///default/cred/a\"\npath = \"/run/x/a\"\n\
             [image]\nmax_concurrent_layer_downloads_per_image = 5\nsnapshotter = \"x\"\n[log]\nlevel = \"DEBUG\"\n\
             [peerpod]\nrequest_timeout_secs = 5\nkbs_timeout_secs = 7\nfuture = 1\n\
             require_pull_measurement = true\n[later]\nx = 1\n",
        )
        .expect("parses");
        assert_eq!(c.socket, "unix:///tmp/cdh.sock");
        assert!(c.skip_sealed_secret_verification);
        assert_eq!(
            c.kbc,
            Some(Kbc::CcKbc {
                url: "https://kbs:8080".into(),
                cert: None
            })
        );
        assert_eq!(c.aa_socket, "unix:///tmp/aa.sock");
        assert_eq!(c.credentials[0].path, PathBuf::from("/run/x/a"));
        assert_eq!(c.image.max_concurrent_layer_downloads_per_image, 5);
        assert_eq!(c.image.work_dir, PathBuf::from("/run/image-rs"));
        assert_eq!(c.log_level, "debug");
        assert_eq!(c.request_timeout, Duration::from_secs(5));
        assert_eq!(c.kbs_timeout, Duration::from_secs(7));
        assert_eq!(c.initdata, None);
        assert!(c.require_pull_measurement);
        assert!(!CdhConfig::default().require_pull_measurement);
        assert_eq!(
            c.warnings,
            [
                "unknown key \"image.snapshotter\" ignored",
                "unknown key \"later\" ignored",
                "unknown key \"peerpod.future\" ignored"
            ]
        );
    }

    #[test]
    fn bad_image_values_are_named() {
        for (text, want) in [
            (
                "[image]\nmax_concurrent_layer_downloads_per_image = 0",
                "max_concurrent",
            ),
            ("[image]\nwork_dir = 3", "image"),
            (
                "[image]\nregistry_configuration_uri = \"https://x\"",
                "registry_configuration_uri",
            ),
        ] {
            let e = CdhConfig::parse(text).expect_err(text).to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn empty_file_and_fallback() {
        let mut c = CdhConfig::parse("").expect("empty");
        assert_eq!(c.socket, DEFAULT_SOCKET);
        assert!(c.kbc.is_none());
        c.apply_kbc_params(
            None,
            Some("quiet agent.aa_kbc_params=cc_kbc::http://10.0.0.1:8080"),
        );
        assert_eq!(
            c.kbc,
            Some(Kbc::CcKbc {
                url: "http://10.0.0.1:8080".into(),
                cert: None
            })
        );
        let mut c = CdhConfig::default();
        c.apply_kbc_params(Some("sample_kbc::x"), None);
        assert!(c.kbc.is_none());
        assert_eq!(c.warnings.len(), 1);
    }

    #[test]
    fn an_empty_kbs_url_is_accepted_until_used() {
        for text in [
            "[kbc]\nname = \"cc_kbc\"",
            "[kbc]\nname = \"cc_kbc\"\nurl = \"\"",
        ] {
            let c = CdhConfig::parse(text).expect(text);
            assert_eq!(
                c.kbc,
                Some(Kbc::CcKbc {
                    url: String::new(),
                    cert: None
                })
            );
        }
    }

    #[test]
    fn verification_key_patterns() {
        let c = CdhConfig::parse(
            "[peerpod]\nsealed_secret_verification_keys = [\"kbs:///default/sign/\", \
             \"kbs://host/other/jwk/one\", \"kbs:///whole/\"]\ninsecure_http = true\n",
        )
        .expect("parses");
        assert!(c.insecure_http);
        let allowed = |uri: &str| {
            let uri = ResourceUri::parse(uri).expect(uri);
            c.sealed_secret_verification_keys
                .iter()
                .any(|p| p.matches(&uri))
        };
        for ok in [
            "kbs:///default/sign/jwk",
            "kbs://any/default/sign/other",
            "kbs:///other/jwk/one",
            "kbs:///whole/a/b",
        ] {
            assert!(allowed(ok), "{ok}");
        }
        for no in [
            "kbs:///default/key/db",
            "kbs:///default/signx/jwk",
            "kbs:///other/jwk/two",
            "kbs:///wholesale/a/b",
        ] {
            assert!(!allowed(no), "{no}");
        }
        assert!(
            CdhConfig::default()
                .sealed_secret_verification_keys
                .is_empty()
        );
        for bad in [
            "kbs:///",
            "kbs:///a/b",
            "kbs:///a/../",
            "http:///a/b/c",
            "kbs:///a/b/c/",
        ] {
            assert!(KeyPattern::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        for (text, key) in [
            ("socket = \"/tmp/x\"", "socket"),
            ("[kbc]\nname = \"sev\"", "kbc.name"),
            ("[kbc]\nname = \"cc_kbc\"\nurl = \"kbs:8080\"", "kbc.url"),
            (
                "[[credentials]]\npath = \"/x\"",
                "credentials[0].resource_uri",
            ),
            (
                "[[credentials]]\nresource_uri = \"kbs:///a/b\"\npath = \"/x\"",
                "credentials[0].resource_uri",
            ),
            (
                "[peerpod]\nrequest_timeout_secs = 0",
                "peerpod.request_timeout_secs",
            ),
            (
                "[peerpod]\nkbs_timeout_secs = 601",
                "peerpod.kbs_timeout_secs",
            ),
            ("[peerpod]\ninsecure_http = 1", "peerpod.insecure_http"),
            (
                "[peerpod]\nsealed_secret_verification_keys = [\"kbs:///a/b\"]",
                "peerpod.sealed_secret_verification_keys",
            ),
        ] {
            let err = CdhConfig::parse(text).expect_err(text).to_string();
            assert!(err.starts_with(key), "{text}: {err}");
        }
    }

    /// A wrong-typed `[image]` limit is an error naming the key, the type found and the form
    /// accepted (TOML's own "expected u64" named none of them).
    #[test]
    fn wrong_typed_image_limits_name_the_key() {
        for (text, says) in [
            (
                "[image]\nmax_image_unpacked_bytes = \"1G\"",
                "max_image_unpacked_bytes = \"1G\": a string where max_image_unpacked_bytes takes \
                 a whole number of bytes above 0 without quotes or units",
            ),
            (
                "[image]\nmax_layer_store_bytes = -1",
                "max_layer_store_bytes = -1: a negative integer where max_layer_store_bytes takes \
                 a whole number of bytes",
            ),
            (
                "[image]\nmax_image_unpacked_inodes = 1.5",
                "max_image_unpacked_inodes = 1.5: a float where max_image_unpacked_inodes takes \
                 a whole number of inodes",
            ),
        ] {
            let err = CdhConfig::parse(text).expect_err(text).to_string();
            assert!(err.starts_with("image"), "{text}: {err}");
            assert!(err.contains(says), "{text}: {err}");
            assert!(!err.contains("expected u64"), "{text}: {err}");
        }
    }

    /// The scratch space is looked at only when the file has no `work_dir`; it is chosen only
    /// when it is the encrypted one (a recorded mountinfo and sysfs here; a tmpfs is not).
    #[test]
    fn layers_go_to_the_encrypted_scratch_space_unless_work_dir_is_set() {
        let dir = peerpod_tests::scratch::ScratchDir::new("cdh-config-scratch").expect("temp");
        let scratch = dir.path().join("image");
        std::fs::create_dir_all(&scratch).expect("scratch dir");
        let real = std::fs::canonicalize(&scratch).expect("resolved");
        let block = dir.path().join("sys/block/dm-0");
        std::fs::create_dir_all(block.join("dm")).expect("sysfs");
        std::fs::write(block.join("dev"), "253:0\n").expect("dev");
        std::fs::write(block.join("dm/name"), "scratch\n").expect("name");
        std::fs::write(block.join("dm/uuid"), "CRYPT-LUKS2-00-scratch\n").expect("uuid");
        std::fs::create_dir_all(dir.path().join("sys/dev/block")).expect("sysfs");
        std::os::unix::fs::symlink("../../block/dm-0", dir.path().join("sys/dev/block/253:0"))
            .expect("link");
        let mountinfo = dir.path().join("mountinfo");
        let probe = crate::scratch::ScratchProbe {
            mount_point: scratch.clone(),
            mountinfo: mountinfo.clone(),
            sys: dir.path().join("sys"),
        };
        let record = |device: &str, fstype: &str| {
            let line = format!(
                "9 1 {device} / {} rw - {fstype} /dev/mapper/scratch rw\n",
                real.display()
            );
            std::fs::write(&mountinfo, line).expect("mountinfo");
        };
        record("0:44", "tmpfs");
        let mut c = CdhConfig::parse("[image]\nmax_concurrent_layer_downloads_per_image = 2\n")
            .expect("parse");
        assert!(matches!(
            c.use_scratch_work_dir(&probe),
            Some(crate::scratch::Verdict::Refused { .. })
        ));
        assert_eq!(c.image.work_dir, PathBuf::from("/run/image-rs"));

        record("253:0", "ext4");
        assert!(matches!(
            c.use_scratch_work_dir(&probe),
            Some(crate::scratch::Verdict::Encrypted { .. })
        ));
        assert_eq!(c.image.work_dir, scratch);
        let mut explicit =
            CdhConfig::parse("[image]\nwork_dir = \"/run/measured\"\n").expect("parse");
        assert_eq!(
            explicit.use_scratch_work_dir(&probe),
            None,
            "never overridden"
        );
        assert_eq!(explicit.image.work_dir, PathBuf::from("/run/measured"));
        let mut none = CdhConfig::parse("").expect("parse");
        assert!(none.use_scratch_work_dir(&probe).is_some());
        assert_eq!(none.image.work_dir, scratch);
    }
}
