//! The agent's configuration: a TOML file, kernel command line `agent.*` options, environment.
//!
//! Keys and option names are upstream Kata's, so an existing `agent-config.toml` (peer pods use
//! `server_addr`, `guest_components_procs`, `image_registry_auth`, ...) works unchanged.
//! Precedence, as upstream: with `--config FILE`, the file and then the environment; otherwise
//! the kernel command line (which may name a file with `agent.config_file`, read first) and then
//! the environment. Keys upstream knows but this agent does not act on are accepted and noted;
//! unknown keys are warnings naming the key. A known key with a value of the wrong type is an
//! error: the agent does not start on a configuration it cannot read.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the agent listens when nothing says otherwise (upstream's default: any CID, port 1024).
pub const DEFAULT_SERVER_ADDR: &str = "vsock://-1:1024";

/// The policy file used when neither configuration nor initdata names one.
pub const DEFAULT_POLICY_FILE: &str = "/etc/kata-opa/default-policy.rego";

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read the agent configuration file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is not TOML.
    #[error("the agent configuration file {path} is not valid TOML")]
    Toml {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: toml::de::Error,
    },
    /// A value does not fit its key.
    #[error("{origin}: `{key}` must be {expected}, got {found}")]
    Value {
        /// Where the value came from (a file, the kernel command line, an environment variable).
        origin: String,
        /// The key.
        key: String,
        /// What the key takes.
        expected: &'static str,
        /// What was found.
        found: String,
    },
}

/// A listening address, as `server_addr` spells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAddr {
    /// `unix://PATH` (a path-based unix socket; `unix://@NAME` for the abstract namespace).
    Unix(String),
    /// `vsock://CID:PORT` (CID -1 means any).
    Vsock(String),
    /// `tcp://HOST:PORT`.
    Tcp(String),
}

impl ServerAddr {
    /// Parses `unix://...`, `vsock://CID:PORT` or `tcp://HOST:PORT`.
    pub fn parse(text: &str) -> Option<Self> {
        if let Some(path) = text.strip_prefix("unix://") {
            return (!path.is_empty()).then(|| Self::Unix(path.to_owned()));
        }
        if let Some(rest) = text.strip_prefix("vsock://") {
            let (cid, port) = rest.split_once(':')?;
            cid.parse::<i64>().ok()?;
            port.parse::<u32>().ok()?;
            return Some(Self::Vsock(rest.to_owned()));
        }
        if let Some(rest) = text.strip_prefix("tcp://") {
            let (host, port) = rest.rsplit_once(':')?;
            port.parse::<u16>().ok()?;
            return (!host.is_empty()).then(|| Self::Tcp(rest.to_owned()));
        }
        None
    }

    /// The address in ttrpc's `scheme://` form.
    pub fn to_uri(&self) -> String {
        match self {
            Self::Unix(p) => format!("unix://{p}"),
            Self::Vsock(a) => format!("vsock://{a}"),
            Self::Tcp(a) => format!("tcp://{a}"),
        }
    }

    /// The socket file a unix address creates (none for the abstract namespace).
    pub fn unix_path(&self) -> Option<&Path> {
        match self {
            Self::Unix(p) if !p.starts_with('@') => Some(Path::new(p)),
            _ => None,
        }
    }
}

impl std::fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_uri())
    }
}

/// Which guest components the agent starts as its children (`guest_components_procs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GuestComponentsProcs {
    /// None: they run as services of their own (peer pods do this).
    None,
    /// The attestation agent.
    AttestationAgent,
    /// The confidential data hub (and the attestation agent it needs).
    ConfidentialDataHub,
    /// The REST API server (and both of the above): upstream's default.
    #[default]
    ApiServerRest,
}

impl GuestComponentsProcs {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "none" => Self::None,
            "attestation-agent" => Self::AttestationAgent,
            "confidential-data-hub" => Self::ConfidentialDataHub,
            "api-server-rest" => Self::ApiServerRest,
            _ => return None,
        })
    }
}

/// The agent's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// Where the ttrpc server listens.
    pub server_addr: ServerAddr,
    /// The log level (`trace`, `debug`, `info`, `warn`, `error`; logrus names accepted).
    pub log_level: tracing::Level,
    /// The agent policy file, when set explicitly.
    pub policy_file: Option<PathBuf>,
    /// A decoded initdata TOML document; when present, its `policy.rego` is the policy.
    /// (A peerpod-guest key: upstream reads initdata through other means.)
    pub initdata_file: Option<PathBuf>,
    /// Which guest components the agent starts.
    pub guest_components_procs: GuestComponentsProcs,
    /// Registry credentials for guest image pulls (kept for the image work).
    pub image_registry_auth: Option<String>,
    /// Whether image signatures are verified (kept for the image work).
    pub enable_signature_verification: bool,
    /// The image signature policy file (kept for the image work).
    pub image_policy_file: Option<String>,
    /// Timeout for calls to the confidential data hub.
    pub cdh_api_timeout: Duration,
    /// The confidential data hub's socket (a peerpod-guest key; upstream's is fixed).
    pub cdh_socket: String,
    /// Timeout of one guest image pull (`PullImage` to the CDH); upstream's default 1200 s.
    pub image_pull_timeout: Duration,
    /// HTTPS proxy for guest pulls.
    pub https_proxy: Option<String>,
    /// Hosts that bypass the proxy.
    pub no_proxy: Option<String>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            server_addr: ServerAddr::Vsock("-1:1024".to_owned()),
            log_level: tracing::Level::INFO,
            policy_file: None,
            initdata_file: None,
            guest_components_procs: GuestComponentsProcs::default(),
            image_registry_auth: None,
            enable_signature_verification: false,
            image_policy_file: None,
            cdh_api_timeout: Duration::from_secs(50),
            cdh_socket: crate::cdh::DEFAULT_CDH_SOCKET.to_owned(),
            image_pull_timeout: Duration::from_secs(1200),
            https_proxy: None,
            no_proxy: None,
        }
    }
}

/// Something worth logging about the configuration once logging is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigNote {
    /// A key nobody knows: probably a typo.
    UnknownKey {
        /// Where it was found.
        origin: String,
        /// The key.
        key: String,
    },
    /// A key upstream knows that this agent does not act on.
    Ignored {
        /// Where it was found.
        origin: String,
        /// The key.
        key: String,
    },
}

impl std::fmt::Display for ConfigNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnknownKey { origin, key } => {
                write!(
                    f,
                    "{origin}: unknown key `{key}` ignored (check its spelling)"
                )
            }
            Self::Ignored { origin, key } => write!(
                f,
                "{origin}: `{key}` is an upstream Kata setting peerpod-guest does not use; ignored"
            ),
        }
    }
}

/// Where the configuration comes from. The environment is a function so that callers (and
/// tests) decide what it holds.
pub struct Sources<'a> {
    /// The file given with `--config`.
    pub config_file: Option<&'a Path>,
    /// The kernel command line (the contents of `/proc/cmdline`).
    pub cmdline: Option<&'a str>,
    /// Looks up an environment variable.
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

/// Upstream keys this agent accepts without acting on them.
const IGNORED_KEYS: &[&str] = &[
    "debug_console",
    "dev_mode",
    "hotplug_timeout",
    "cdi_timeout",
    "debug_console_vport",
    "log_vport",
    "container_pipe_size",
    "passfd_listener_port",
    "unified_cgroup_hierarchy",
    "tracing",
    "guest_components_rest_api",
    "secure_storage_integrity",
];

impl AgentConfig {
    /// Reads the configuration from its sources, with the notes to log once logging is up.
    pub fn load(sources: &Sources<'_>) -> Result<(Self, Vec<ConfigNote>), ConfigError> {
        let mut config = Self::default();
        let mut notes = Vec::new();
        match (sources.config_file, sources.cmdline) {
            (Some(file), _) => config.apply_file(file, &mut notes)?,
            (None, Some(cmdline)) => {
                if let Some(file) = cmdline_value(cmdline, "agent.config_file") {
                    config.apply_file(Path::new(&file), &mut notes)?;
                }
                config.apply_cmdline(cmdline, &mut notes)?;
            }
            (None, None) => {}
        }
        config.apply_env(sources.env)?;
        Ok((config, notes))
    }

    /// Parses a configuration file's text (for `--config`).
    pub fn from_toml(text: &str, origin: &str) -> Result<(Self, Vec<ConfigNote>), ConfigError> {
        let mut config = Self::default();
        let mut notes = Vec::new();
        let table: toml::Table = text.parse().map_err(|source| ConfigError::Toml {
            path: PathBuf::from(origin),
            source,
        })?;
        config.apply_table(&table, origin, &mut notes)?;
        Ok((config, notes))
    }

    fn apply_file(&mut self, path: &Path, notes: &mut Vec<ConfigNote>) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let table: toml::Table = text.parse().map_err(|source| ConfigError::Toml {
            path: path.to_owned(),
            source,
        })?;
        self.apply_table(&table, &path.display().to_string(), notes)
    }

    fn apply_table(
        &mut self,
        table: &toml::Table,
        origin: &str,
        notes: &mut Vec<ConfigNote>,
    ) -> Result<(), ConfigError> {
        for (key, value) in table {
            if let (
                timeout @ ("cdh_api_timeout" | "image_pull_timeout"),
                toml::Value::Table(duration),
            ) = (key.as_str(), value)
            {
                // Upstream's agent reads these keys as a serde Duration: `{ secs = N, nanos = M }`.
                let parsed = duration_table(duration).ok_or_else(|| ConfigError::Value {
                    origin: origin.to_owned(),
                    key: key.clone(),
                    expected: DURATION_FORMS,
                    found: value.to_string(),
                })?;
                if timeout == "cdh_api_timeout" {
                    self.cdh_api_timeout = parsed;
                } else {
                    self.image_pull_timeout = parsed;
                }
                continue;
            }
            let text = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => other.to_string(),
            };
            if !self.set(key, &text, origin)? {
                if IGNORED_KEYS.contains(&key.as_str()) || key.starts_with("mem_agent_") {
                    notes.push(ConfigNote::Ignored {
                        origin: origin.to_owned(),
                        key: key.clone(),
                    });
                } else {
                    notes.push(ConfigNote::UnknownKey {
                        origin: origin.to_owned(),
                        key: key.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    fn apply_cmdline(
        &mut self,
        cmdline: &str,
        notes: &mut Vec<ConfigNote>,
    ) -> Result<(), ConfigError> {
        const ORIGIN: &str = "kernel command line";
        for token in cmdline.split_ascii_whitespace() {
            let Some(option) = token.strip_prefix("agent.") else {
                continue;
            };
            let (name, value) = option.split_once('=').unwrap_or((option, "true"));
            let key = match name {
                "log" => "log_level",
                "devmode" => "dev_mode",
                "trace" => "tracing",
                "config_file" => continue,
                other => other,
            };
            if !self.set(key, value, ORIGIN)? {
                if IGNORED_KEYS.contains(&key) || key.starts_with("mem_agent_") {
                    notes.push(ConfigNote::Ignored {
                        origin: ORIGIN.to_owned(),
                        key: format!("agent.{name}"),
                    });
                } else {
                    notes.push(ConfigNote::UnknownKey {
                        origin: ORIGIN.to_owned(),
                        key: format!("agent.{name}"),
                    });
                }
            }
        }
        Ok(())
    }

    fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        for (variable, key) in [
            ("KATA_AGENT_SERVER_ADDR", "server_addr"),
            ("KATA_AGENT_LOG_LEVEL", "log_level"),
            ("KATA_AGENT_POLICY_FILE", "policy_file"),
            ("KATA_AGENT_INITDATA_FILE", "initdata_file"),
        ] {
            if let Some(value) = env(variable) {
                self.set(key, &value, &format!("environment variable {variable}"))?;
            }
        }
        Ok(())
    }

    /// Sets one key; `Ok(false)` when the key is not one this agent acts on.
    fn set(&mut self, key: &str, value: &str, origin: &str) -> Result<bool, ConfigError> {
        let bad = |expected| ConfigError::Value {
            origin: origin.to_owned(),
            key: key.to_owned(),
            expected,
            found: format!("{value:?}"),
        };
        match key {
            "server_addr" => {
                self.server_addr = ServerAddr::parse(value)
                    .ok_or_else(|| bad("unix://PATH, vsock://CID:PORT or tcp://HOST:PORT"))?;
            }
            "log_level" => {
                self.log_level = parse_level(value)
                    .ok_or_else(|| bad("one of trace, debug, info, warn, error"))?;
            }
            "policy_file" => self.policy_file = non_empty(value).map(PathBuf::from),
            "initdata_file" => self.initdata_file = non_empty(value).map(PathBuf::from),
            "guest_components_procs" => {
                self.guest_components_procs = GuestComponentsProcs::parse(value).ok_or_else(|| {
                    bad("one of none, attestation-agent, confidential-data-hub, api-server-rest")
                })?;
            }
            "image_registry_auth" => self.image_registry_auth = non_empty(value).map(str::to_owned),
            "enable_signature_verification" => {
                self.enable_signature_verification =
                    parse_bool(value).ok_or_else(|| bad("true or false"))?;
            }
            "image_policy_file" => self.image_policy_file = non_empty(value).map(str::to_owned),
            "cdh_api_timeout" => {
                self.cdh_api_timeout = parse_seconds(value).ok_or_else(|| bad(DURATION_FORMS))?;
            }
            "image_pull_timeout" => {
                self.image_pull_timeout =
                    parse_seconds(value).ok_or_else(|| bad(DURATION_FORMS))?;
            }
            "cdh_socket" => {
                if !value.starts_with("unix:///") {
                    return Err(bad("unix:///<absolute path>"));
                }
                self.cdh_socket = value.to_owned();
            }
            "https_proxy" => self.https_proxy = non_empty(value).map(str::to_owned),
            "no_proxy" => self.no_proxy = non_empty(value).map(str::to_owned),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The policy file in force when no initdata carries one.
    pub fn effective_policy_file(&self) -> &Path {
        self.policy_file
            .as_deref()
            .unwrap_or(Path::new(DEFAULT_POLICY_FILE))
    }
}

fn cmdline_value(cmdline: &str, name: &str) -> Option<String> {
    cmdline
        .split_ascii_whitespace()
        .find_map(|t| t.strip_prefix(name)?.strip_prefix('=').map(str::to_owned))
}

fn non_empty(value: &str) -> Option<&str> {
    (!value.is_empty()).then_some(value)
}

fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// What a duration key (`cdh_api_timeout`) takes.
const DURATION_FORMS: &str = "a number of seconds or { secs = N, nanos = M }";

fn parse_seconds(value: &str) -> Option<Duration> {
    value.parse::<u64>().ok().map(Duration::from_secs)
}

/// A duration in serde's form for `std::time::Duration`, as upstream's TOML carries it:
/// `{ secs = N, nanos = M }` (`nanos` below one second; a missing `nanos` is 0).
fn duration_table(table: &toml::Table) -> Option<Duration> {
    if table.keys().any(|k| k != "secs" && k != "nanos") {
        return None;
    }
    let secs = u64::try_from(table.get("secs")?.as_integer()?).ok()?;
    let nanos = match table.get("nanos") {
        Some(value) => u32::try_from(value.as_integer()?)
            .ok()
            .filter(|n| *n < 1_000_000_000)?,
        None => 0,
    };
    Some(Duration::new(secs, nanos))
}

/// Log levels by their upstream (logrus) names.
fn parse_level(value: &str) -> Option<tracing::Level> {
    Some(match value {
        "trace" => tracing::Level::TRACE,
        "debug" => tracing::Level::DEBUG,
        "info" => tracing::Level::INFO,
        "warn" | "warning" => tracing::Level::WARN,
        "error" | "critical" | "fatal" | "panic" => tracing::Level::ERROR,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn peer_pods_agent_config_is_read() {
        let (config, notes) = AgentConfig::from_toml(
            "server_addr = 'unix:///run/kata-containers/agent.sock'\n\
             guest_components_procs = 'none'\n\
             image_registry_auth = 'file:///run/peerpod/auth.json'\n\
             enable_signature_verification = true\n\
             log_level = 'debug'\n",
            "agent-config.toml",
        )
        .expect("valid");
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(
            config.server_addr,
            ServerAddr::Unix("/run/kata-containers/agent.sock".to_owned())
        );
        assert_eq!(config.guest_components_procs, GuestComponentsProcs::None);
        assert_eq!(config.log_level, tracing::Level::DEBUG);
        assert!(config.enable_signature_verification);
        assert_eq!(
            config.effective_policy_file(),
            Path::new(DEFAULT_POLICY_FILE)
        );
    }

    #[test]
    fn unknown_and_ignored_keys_are_noted_and_bad_values_refused() {
        let (_, notes) = AgentConfig::from_toml("sever_addr = 'x'\ndev_mode = true\n", "f.toml")
            .expect("parses");
        assert_eq!(notes.len(), 2);
        assert_eq!(
            notes[0].to_string(),
            "f.toml: `dev_mode` is an upstream Kata setting peerpod-guest does not use; ignored"
        );
        assert_eq!(
            notes[1].to_string(),
            "f.toml: unknown key `sever_addr` ignored (check its spelling)"
        );
        let err =
            AgentConfig::from_toml("server_addr = 'http://x'\n", "f.toml").expect_err("bad addr");
        assert_eq!(
            err.to_string(),
            "f.toml: `server_addr` must be unix://PATH, vsock://CID:PORT or tcp://HOST:PORT, got \"http://x\""
        );
        assert!(AgentConfig::from_toml("log_level = 'loud'\n", "f").is_err());
    }

    #[test]
    fn cmdline_then_environment() {
        let env = |name: &str| (name == "KATA_AGENT_LOG_LEVEL").then(|| "warn".to_owned());
        let sources = Sources {
            config_file: None,
            cmdline: Some(
                "console=ttyS0 agent.log=debug agent.server_addr=tcp://0.0.0.0:15150 agent.bogus=1 quiet",
            ),
            env: &env,
        };
        let (config, notes) = AgentConfig::load(&sources).expect("valid");
        assert_eq!(
            config.server_addr,
            ServerAddr::Tcp("0.0.0.0:15150".to_owned())
        );
        assert_eq!(
            config.log_level,
            tracing::Level::WARN,
            "the environment wins"
        );
        assert_eq!(
            notes,
            vec![ConfigNote::UnknownKey {
                origin: "kernel command line".into(),
                key: "agent.bogus".into()
            }]
        );
    }

    #[test]
    fn environment_overrides_the_file() {
        let scratch = crate::scratch::Scratch::new("agent-config", "env");
        let dir = scratch.path();
        let file = dir.join("agent.toml");
        std::fs::write(
            &file,
            "server_addr = 'vsock://3:1024'\npolicy_file = '/p.rego'\n",
        )
        .expect("write");
        let env = |name: &str| (name == "KATA_AGENT_POLICY_FILE").then(|| "/env.rego".to_owned());
        let sources = Sources {
            config_file: Some(&file),
            cmdline: Some("agent.log=debug"),
            env: &env,
        };
        let (config, _) = AgentConfig::load(&sources).expect("valid");
        assert_eq!(config.server_addr, ServerAddr::Vsock("3:1024".to_owned()));
        assert_eq!(config.policy_file.as_deref(), Some(Path::new("/env.rego")));
        assert_eq!(
            config.log_level,
            tracing::Level::INFO,
            "the command line is not read with --config"
        );
        let sources = Sources {
            config_file: Some(&dir.join("missing.toml")),
            cmdline: None,
            env: &no_env,
        };
        assert!(
            AgentConfig::load(&sources)
                .expect_err("missing")
                .to_string()
                .contains("missing.toml")
        );
    }

    #[test]
    fn image_pull_timeout_in_both_forms_and_on_the_command_line() {
        let timeout = |text: &str| {
            AgentConfig::from_toml(text, "f.toml").map(|(config, _)| config.image_pull_timeout)
        };
        assert_eq!(
            AgentConfig::default().image_pull_timeout,
            Duration::from_secs(1200)
        );
        assert_eq!(
            timeout("image_pull_timeout = 90\n").expect("integer"),
            Duration::from_secs(90)
        );
        assert_eq!(
            timeout("image_pull_timeout = { secs = 30, nanos = 0 }\n").expect("duration"),
            Duration::from_secs(30)
        );
        assert!(timeout("image_pull_timeout = 'soon'\n").is_err());
        let env = |_: &str| None;
        let sources = Sources {
            config_file: None,
            cmdline: Some("quiet agent.image_pull_timeout=45"),
            env: &env,
        };
        let (config, _) = AgentConfig::load(&sources).expect("cmdline");
        assert_eq!(config.image_pull_timeout, Duration::from_secs(45));
    }

    #[test]
    fn cdh_api_timeout_takes_seconds_and_upstreams_duration_form() {
        let timeout = |text: &str| {
            AgentConfig::from_toml(text, "f.toml").map(|(config, _)| config.cdh_api_timeout)
        };
        assert_eq!(
            timeout("cdh_api_timeout = 30\n").expect("integer"),
            Duration::from_secs(30)
        );
        assert_eq!(
            timeout("cdh_api_timeout = { secs = 30, nanos = 500 }\n").expect("duration"),
            Duration::new(30, 500)
        );
        assert_eq!(
            timeout("[cdh_api_timeout]\nsecs = 7\nnanos = 0\n").expect("table"),
            Duration::from_secs(7)
        );
        assert_eq!(
            timeout("cdh_api_timeout = { secs = 9 }\n").expect("no nanos"),
            Duration::from_secs(9)
        );
        for bad in [
            "cdh_api_timeout = { secs = -1, nanos = 0 }\n",
            "cdh_api_timeout = { secs = 1, nanos = 1000000000 }\n",
            "cdh_api_timeout = { seconds = 1 }\n",
            "cdh_api_timeout = { secs = '1' }\n",
            "cdh_api_timeout = 'soon'\n",
            "cdh_api_timeout = -3\n",
        ] {
            let err = timeout(bad).expect_err(bad);
            assert!(err.to_string().contains("{ secs = N, nanos = M }"), "{err}");
        }
        let env = |_: &str| None;
        let sources = Sources {
            config_file: None,
            cmdline: Some("agent.cdh_api_timeout=50"),
            env: &env,
        };
        let (config, _) = AgentConfig::load(&sources).expect("cmdline");
        assert_eq!(config.cdh_api_timeout, Duration::from_secs(50));
    }

    #[test]
    fn server_addresses() {
        assert_eq!(
            ServerAddr::parse("vsock://-1:1024"),
            Some(ServerAddr::Vsock("-1:1024".into()))
        );
        assert_eq!(
            ServerAddr::parse("tcp://[::1]:15150"),
            Some(ServerAddr::Tcp("[::1]:15150".into()))
        );
        assert_eq!(
            ServerAddr::parse("unix://@abstract").and_then(|a| a.unix_path().map(Path::to_owned)),
            None
        );
        for bad in [
            "unix://",
            "vsock://x:1",
            "vsock://3",
            "tcp://:1",
            "tcp://h:99999",
            "udp://x",
        ] {
            assert_eq!(ServerAddr::parse(bad), None, "{bad}");
        }
    }
}
