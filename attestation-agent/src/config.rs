//! `aa.toml`, with upstream's keys, plus a `[peerpod]` section of our own.
//!
//! ```toml
//! [token_configs.kbs]
//! url = "https://kbs.example:8080"
//! cert = "-----BEGIN CERTIFICATE-----..."   # trust this CA (only) for the KBS
//! tee_key_algorithm = "ECDH-ES+A256KW-P256" # or "ECDH-ES+A256KW-P521", "RSA-OAEP-256"
//!
//! [token_configs.coco_as]
//! url = "http://as.example:8000"
//!
//! [eventlog_config]
//! init_pcr = 23              # upstream's default, 17, cannot be extended on Azure's vTPM
//! enable_eventlog = false
//!
//! [log]
//! level = "info"             # any tracing filter: "info,attestation_agent=debug", "off"
//!
//! [peerpod]                  # ours; every key optional
//! tpm = "device:/dev/tpmrm0"
//! imds_url = "http://169.254.169.254"
//! allow_sample = false       # true: outside a TEE, use the sample TEE (tests only)
//! insecure_http = false      # true: accept a plain-http:// KBS (tests only)
//! eventlog_path = "/run/attestation-agent/eventlog"
//! report_refresh_timeout_secs = 10
//! kbs_request_timeout_secs = 30
//! kbs_attempts = 3
//! token_refresh_margin_secs = 30
//! attestation_deadline_secs = 60  # one attestation, retries and evidence included
//! ```
//!
//! An empty file is valid. Unknown keys are reported as warnings naming them; a known key with a
//! bad value is an error naming it. Without `[token_configs.kbs]`, the KBS URL comes from
//! `AA_KBC_PARAMS` or the kernel command line's `agent.aa_kbc_params`, both `cc_kbc::<url>`.

use std::path::PathBuf;
use std::time::Duration;

use crate::kbs::KeyAlgorithm;

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
        path: String,
        /// Why.
        #[source]
        source: toml::de::Error,
    },
    /// A key has a value it cannot have.
    #[error("{key}: {detail}")]
    Value {
        /// The key, dotted.
        key: String,
        /// What is wrong.
        detail: String,
    },
}

/// The KBS token configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KbsSection {
    /// KBS URL.
    pub url: String,
    /// CA certificate (PEM) for HTTPS.
    pub cert: Option<String>,
    /// TEE key algorithm.
    pub tee_key_algorithm: KeyAlgorithm,
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct AaConfig {
    /// `[token_configs.kbs]`, or the kernel command line's KBS.
    pub kbs: Option<KbsSection>,
    /// `[token_configs.coco_as] url`.
    pub coco_as_url: Option<String>,
    /// `[eventlog_config] init_pcr`.
    pub init_pcr: u64,
    /// `[eventlog_config] enable_eventlog`.
    pub enable_eventlog: bool,
    /// `[log] level`.
    pub log_level: String,
    /// `[peerpod] tpm`.
    pub tpm: String,
    /// `[peerpod] imds_url`.
    pub imds_url: String,
    /// `[peerpod] tsm_root`.
    pub tsm_root: PathBuf,
    /// `[peerpod] allow_sample`: outside a TEE, use the sample TEE instead of failing.
    pub allow_sample: bool,
    /// `[peerpod] insecure_http`: accept a plain-`http://` KBS URL.
    pub insecure_http: bool,
    /// `[peerpod] eventlog_path`.
    pub eventlog_path: PathBuf,
    /// `[peerpod] report_refresh_timeout_secs`.
    pub report_refresh_timeout: Duration,
    /// `[peerpod] kbs_request_timeout_secs`.
    pub kbs_request_timeout: Duration,
    /// `[peerpod] kbs_attempts`.
    pub kbs_attempts: u32,
    /// `[peerpod] token_refresh_margin_secs`: re-attest this long before the token expires.
    pub token_refresh_margin: Duration,
    /// `[peerpod] attestation_deadline_secs`: the most one attestation may take (retries,
    /// back-off and evidence included), the most a caller waits for one, and the most
    /// `GetEvidence` waits for evidence.
    pub attestation_deadline: Duration,
    /// Unknown keys, for the caller to log.
    pub warnings: Vec<String>,
}

impl Default for AaConfig {
    fn default() -> Self {
        Self {
            kbs: None,
            coco_as_url: None,
            init_pcr: 23,
            enable_eventlog: false,
            log_level: "info".into(),
            tpm: peerpod_tpm::transport::Transport::DEFAULT.into(),
            imds_url: "http://169.254.169.254".into(),
            tsm_root: PathBuf::from(crate::attester::tsm_root()),
            allow_sample: false,
            insecure_http: false,
            eventlog_path: PathBuf::from("/run/attestation-agent/eventlog"),
            report_refresh_timeout: Duration::from_secs(10),
            kbs_request_timeout: Duration::from_secs(30),
            kbs_attempts: 3,
            token_refresh_margin: Duration::from_secs(30),
            attestation_deadline: Duration::from_secs(60),
            warnings: Vec::new(),
        }
    }
}

fn value_err(key: &str, detail: impl Into<String>) -> ConfigError {
    ConfigError::Value {
        key: key.to_string(),
        detail: detail.into(),
    }
}

fn string(key: &str, v: &toml::Value) -> Result<String, ConfigError> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| value_err(key, "must be a string"))
}

fn integer(key: &str, v: &toml::Value, max: i64) -> Result<u64, ConfigError> {
    v.as_integer()
        .filter(|n| (0..=max).contains(n))
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| value_err(key, format!("must be an integer from 0 to {max}")))
}

fn boolean(key: &str, v: &toml::Value) -> Result<bool, ConfigError> {
    v.as_bool()
        .ok_or_else(|| value_err(key, "must be true or false"))
}

fn table<'a>(key: &str, v: &'a toml::Value) -> Result<&'a toml::Table, ConfigError> {
    v.as_table()
        .ok_or_else(|| value_err(key, "must be a table"))
}

impl AaConfig {
    /// Parses `aa.toml` text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let root: toml::Table = toml::from_str(text).map_err(|source| ConfigError::Toml {
            path: "aa.toml".into(),
            source,
        })?;
        let mut c = AaConfig::default();
        let mut warnings = Vec::new();
        for (k, v) in &root {
            match k.as_str() {
                "token_configs" => {
                    for (tk, tv) in table("token_configs", v)? {
                        match tk.as_str() {
                            "kbs" => {
                                c.kbs =
                                    Some(parse_kbs(table("token_configs.kbs", tv)?, &mut warnings)?)
                            }
                            "coco_as" => {
                                for (ak, av) in table("token_configs.coco_as", tv)? {
                                    match ak.as_str() {
                                        "url" => {
                                            c.coco_as_url =
                                                Some(string("token_configs.coco_as.url", av)?)
                                        }
                                        other => {
                                            warnings.push(format!("token_configs.coco_as.{other}"))
                                        }
                                    }
                                }
                            }
                            other => warnings.push(format!("token_configs.{other}")),
                        }
                    }
                }
                "eventlog_config" => {
                    for (ek, ev) in table("eventlog_config", v)? {
                        match ek.as_str() {
                            "init_pcr" => c.init_pcr = integer("eventlog_config.init_pcr", ev, 23)?,
                            "enable_eventlog" => {
                                c.enable_eventlog = boolean("eventlog_config.enable_eventlog", ev)?
                            }
                            other => warnings.push(format!("eventlog_config.{other}")),
                        }
                    }
                }
                "log" => {
                    for (lk, lv) in table("log", v)? {
                        match lk.as_str() {
                            "level" => {
                                let level = string("log.level", lv)?;
                                // Any tracing filter, as upstream: a level, `off`, or directives
                                // such as `info,attestation_agent=debug`.
                                if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
                                    return Err(value_err(
                                        "log.level",
                                        format!(
                                            "{level:?} is not a tracing filter (a level such as \
                                             info, off, or directives like \
                                             info,attestation_agent=debug)"
                                        ),
                                    ));
                                }
                                c.log_level = level;
                            }
                            other => warnings.push(format!("log.{other}")),
                        }
                    }
                }
                "peerpod" => parse_peerpod(&mut c, table("peerpod", v)?, &mut warnings)?,
                other => warnings.push(other.to_string()),
            }
        }
        c.warnings = warnings
            .into_iter()
            .map(|k| {
                // Known keys we do not act on arrive as full sentences.
                if k.contains(' ') {
                    k
                } else {
                    format!("unknown key {k:?} ignored")
                }
            })
            .collect();
        Ok(c)
    }

    /// Reads `aa.toml`; with no path, the defaults.
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
                path: path.display().to_string(),
                source,
            },
            other => other,
        })
    }

    /// Fills the KBS URL from `AA_KBC_PARAMS` or the kernel command line when the file gave none.
    pub fn apply_kbc_params(&mut self, env: Option<&str>, cmdline: Option<&str>) {
        if self.kbs.is_some() {
            return;
        }
        let param = env.map(str::to_string).or_else(|| {
            cmdline?
                .split_whitespace()
                .find_map(|w| w.strip_prefix("agent.aa_kbc_params=").map(str::to_string))
        });
        let Some(param) = param else { return };
        match param.split_once("::") {
            Some(("cc_kbc", url)) if url.starts_with("http://") || url.starts_with("https://") => {
                self.kbs = Some(KbsSection {
                    url: url.to_string(),
                    cert: None,
                    tee_key_algorithm: KeyAlgorithm::default(),
                });
            }
            _ => self.warnings.push(format!(
                "aa_kbc_params {param:?} is not cc_kbc::<http(s) URL>; no KBS configured"
            )),
        }
    }
}

fn parse_kbs(t: &toml::Table, warnings: &mut Vec<String>) -> Result<KbsSection, ConfigError> {
    let mut url = None;
    let mut cert = None;
    let mut alg = KeyAlgorithm::default();
    for (k, v) in t {
        let key = format!("token_configs.kbs.{k}");
        match k.as_str() {
            "url" => url = Some(string(&key, v)?),
            "cert" => cert = Some(string(&key, v)?).filter(|s| !s.trim().is_empty()),
            "tee_key_algorithm" => {
                alg = match string(&key, v)?.as_str() {
                    "ECDH-ES+A256KW-P256" => KeyAlgorithm::EcP256,
                    "ECDH-ES+A256KW-P521" => KeyAlgorithm::EcP521,
                    "RSA-OAEP-256" => KeyAlgorithm::Rsa,
                    other => {
                        return Err(value_err(
                            &key,
                            format!(
                                "{other:?} is not ECDH-ES+A256KW-P256, ECDH-ES+A256KW-P521 or RSA-OAEP-256"
                            ),
                        ));
                    }
                }
            }
            "attestation_policy_selector" => {
                string(&key, v)?;
                warnings.push(format!(
                    "{key} is not supported and is ignored: the KBS's default policy applies"
                ));
            }
            other => warnings.push(format!("token_configs.kbs.{other}")),
        }
    }
    let url = url.ok_or_else(|| value_err("token_configs.kbs.url", "is required"))?;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(value_err(
            "token_configs.kbs.url",
            format!("{url:?} is not an http(s) URL"),
        ));
    }
    Ok(KbsSection {
        url,
        cert,
        tee_key_algorithm: alg,
    })
}

fn parse_peerpod(
    c: &mut AaConfig,
    t: &toml::Table,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    for (k, v) in t {
        let key = format!("peerpod.{k}");
        match k.as_str() {
            "tpm" => c.tpm = string(&key, v)?,
            "imds_url" => c.imds_url = string(&key, v)?,
            "tsm_root" => c.tsm_root = PathBuf::from(string(&key, v)?),
            "allow_sample" => c.allow_sample = boolean(&key, v)?,
            "insecure_http" => c.insecure_http = boolean(&key, v)?,
            "eventlog_path" => c.eventlog_path = PathBuf::from(string(&key, v)?),
            "report_refresh_timeout_secs" => {
                c.report_refresh_timeout = Duration::from_secs(integer(&key, v, 600)?.max(1))
            }
            "kbs_request_timeout_secs" => {
                c.kbs_request_timeout = Duration::from_secs(integer(&key, v, 600)?.max(1))
            }
            "kbs_attempts" => {
                c.kbs_attempts = u32::try_from(integer(&key, v, 10)?.max(1)).unwrap_or(3)
            }
            "token_refresh_margin_secs" => {
                c.token_refresh_margin = Duration::from_secs(integer(&key, v, 3600)?)
            }
            "attestation_deadline_secs" => {
                let secs = integer(&key, v, 3600)?;
                if secs == 0 {
                    return Err(value_err(&key, "must be an integer from 1 to 3600"));
                }
                c.attestation_deadline = Duration::from_secs(secs)
            }
            other => warnings.push(format!("peerpod.{other}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_full() {
        let c = AaConfig::parse("").expect("empty");
        assert_eq!(c.kbs, None);
        assert!(!c.allow_sample, "the sample TEE only when configured");
        assert!(!c.insecure_http, "plain HTTP only when configured");
        assert_eq!(c.init_pcr, 23);
        assert!(!c.enable_eventlog);
        assert_eq!(c.attestation_deadline, Duration::from_secs(60));
        let c = AaConfig::parse(
            "[token_configs.kbs]\nurl = \"https://kbs:8080\"\ncert = \"PEM\"\ntee_key_algorithm = \"RSA-OAEP-256\"\n\
             [token_configs.coco_as]\nurl = \"http://as\"\n[eventlog_config]\ninit_pcr = 17\nenable_eventlog = true\n\
             [log]\nlevel = \"DEBUG\"\n[peerpod]\ntpm = \"unix:/x\"\nallow_sample = false\nattestation_deadline_secs = 20\nfuture_key = 1\n[surprise]\n",
        )
        .expect("full");
        let kbs = c.kbs.expect("kbs");
        assert_eq!(kbs.url, "https://kbs:8080");
        assert_eq!(kbs.tee_key_algorithm, KeyAlgorithm::Rsa);
        assert_eq!(c.coco_as_url.as_deref(), Some("http://as"));
        assert_eq!((c.init_pcr, c.enable_eventlog), (17, true));
        assert_eq!(c.log_level, "DEBUG");
        assert_eq!(c.tpm, "unix:/x");
        assert!(!c.allow_sample);
        assert_eq!(c.attestation_deadline, Duration::from_secs(20));
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert!(c.warnings.iter().any(|w| w.contains("peerpod.future_key")));
        assert!(c.warnings.iter().any(|w| w.contains("surprise")));
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, key) in [
            (
                "[token_configs.kbs]\ncert = \"x\"\n",
                "token_configs.kbs.url",
            ),
            (
                "[token_configs.kbs]\nurl = \"kbs:8080\"\n",
                "token_configs.kbs.url",
            ),
            (
                "[token_configs.kbs]\nurl = \"http://k\"\ntee_key_algorithm = \"A128\"\n",
                "tee_key_algorithm",
            ),
            (
                "[eventlog_config]\ninit_pcr = 24\n",
                "eventlog_config.init_pcr",
            ),
            (
                "[eventlog_config]\nenable_eventlog = \"yes\"\n",
                "enable_eventlog",
            ),
            (
                "[log]\nlevel = \"info,attestation_agent=loud\"\n",
                "log.level",
            ),
            (
                "[peerpod]\ninsecure_http = \"yes\"\n",
                "peerpod.insecure_http",
            ),
            (
                "[peerpod]\nattestation_deadline_secs = 0\n",
                "peerpod.attestation_deadline_secs",
            ),
            (
                "[peerpod]\nattestation_deadline_secs = 3601\n",
                "peerpod.attestation_deadline_secs",
            ),
            ("token_configs = 3\n", "token_configs"),
        ] {
            let err = AaConfig::parse(text).expect_err(text).to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        assert!(matches!(
            AaConfig::parse("[[["),
            Err(ConfigError::Toml { .. })
        ));
    }

    #[test]
    fn log_level_is_any_tracing_filter() {
        for level in [
            "info",
            "OFF",
            "off",
            "info,attestation_agent=debug",
            "warn,kbs=trace",
        ] {
            let c = AaConfig::parse(&format!("[log]\nlevel = \"{level}\"\n")).expect(level);
            assert_eq!(c.log_level, level);
        }
    }

    #[test]
    fn kbc_params_fallback() {
        let mut c = AaConfig::default();
        c.apply_kbc_params(
            None,
            Some("quiet agent.aa_kbc_params=cc_kbc::http://10.0.0.1:8080 x"),
        );
        assert_eq!(c.kbs.expect("kbs").url, "http://10.0.0.1:8080");
        let mut c = AaConfig::default();
        c.apply_kbc_params(
            Some("cc_kbc::http://env:1"),
            Some("agent.aa_kbc_params=cc_kbc::http://cmd:2"),
        );
        assert_eq!(c.kbs.expect("kbs").url, "http://env:1");
        let mut c = AaConfig::default();
        c.apply_kbc_params(Some("offline_fs_kbc::null"), None);
        assert!(c.kbs.is_none());
        assert_eq!(c.warnings.len(), 1);
    }
}
