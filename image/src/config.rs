//! The `[image]` table of `cdh.toml`, with image-rs's keys and defaults, plus the knobs of this
//! puller that upstream has no key for (set by the embedding program, not read from the file).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Where layers and per-image state live by default (the CDH's, a tmpfs in the pod VM).
pub const DEFAULT_WORK_DIR: &str = "/run/image-rs";
/// Layers fetched at once per image by default (image-rs's default).
pub const DEFAULT_MAX_CONCURRENT_LAYER_DOWNLOADS: usize = 3;
/// The most layers fetched at once, whatever the configuration says.
pub const MAX_CONCURRENT_LAYER_DOWNLOADS: usize = 32;
/// Upstream's environment variable that overrides `authenticated_registry_credentials_uri`.
pub const CREDENTIALS_ENV: &str = "CDH_DEFAULT_IMAGE_AUTHENTICATED_REGISTRY_CREDENTIALS";

/// `[image] image_pull_proxy`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Proxy for `https://` registries.
    #[serde(default)]
    pub https_proxy: Option<String>,
    /// Proxy for `http://` registries.
    #[serde(default)]
    pub http_proxy: Option<String>,
    /// Hosts reached directly (comma-separated, curl's `NO_PROXY` form).
    #[serde(default)]
    pub no_proxy: Option<String>,
}

/// The image configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ImageConfig {
    /// Layer store and state directory.
    #[serde(default = "default_work_dir")]
    pub work_dir: PathBuf,
    /// `kbs:///…` or `file://…` of a containers `policy.json`; none: no signature policy.
    #[serde(default)]
    pub image_security_policy_uri: Option<String>,
    /// The policy inline (the URI wins when both are set).
    #[serde(default)]
    pub image_security_policy: Option<String>,
    /// `kbs:///…` or `file://…` of the sigstore (lookaside) configuration.
    #[serde(default)]
    pub sigstore_config_uri: Option<String>,
    /// The sigstore configuration inline.
    #[serde(default)]
    pub sigstore_config: Option<String>,
    /// `kbs:///…` or `file://…` of a containers `auth.json`.
    #[serde(default)]
    pub authenticated_registry_credentials_uri: Option<String>,
    /// `kbs:///…` or `file://…` of a `registries.conf` (mirrors, remapping, blocking, insecure).
    #[serde(default)]
    pub registry_configuration_uri: Option<String>,
    /// Layers fetched at once per image.
    #[serde(default = "default_concurrency")]
    pub max_concurrent_layer_downloads_per_image: usize,
    /// Proxies for registry traffic.
    #[serde(default)]
    pub image_pull_proxy: Option<ProxyConfig>,
    /// PEM certificates trusted for registries besides the system's roots.
    #[serde(default)]
    pub extra_root_certificates: Vec<String>,
    /// Retry an unauthorized pull without credentials.
    #[serde(default)]
    pub anonymous_fallback_on_unauthorized: bool,
    /// Not an upstream key: the most uncompressed bytes one pull may read from its layers;
    /// none: 3/4 of the space free in `work_dir`'s filesystem when the pull starts.
    #[serde(default)]
    pub max_image_unpacked_bytes: Option<u64>,
    /// Not an upstream key: the most unpacked bytes of layers in `work_dir`; none: 3/4 of the
    /// size of `work_dir`'s filesystem.
    #[serde(default)]
    pub max_layer_store_bytes: Option<u64>,
    /// Not an upstream key: the most files, directories, links and device nodes one pull may
    /// make in `work_dir`; none: 3/4 of the inodes free in `work_dir`'s filesystem when the
    /// pull starts.
    #[serde(default)]
    pub max_image_unpacked_inodes: Option<u64>,
    /// Not an upstream key (never read from the file): the transfer tuning.
    #[serde(skip)]
    pub transfer: Transfer,
}

/// How transfers are bounded and retried (no upstream keys; defaults suit a pod VM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// Connecting to a registry.
    pub connect_timeout: Duration,
    /// Between two reads of a reply: a registry that stalls longer is dropped and retried.
    pub read_timeout: Duration,
    /// Attempts per request (the first included); a blob resumes where it stopped.
    pub attempts: u32,
    /// Wait before the second attempt; doubled each time.
    pub backoff: Duration,
}

impl Default for Transfer {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            attempts: 4,
            backoff: Duration::from_millis(500),
        }
    }
}

fn default_work_dir() -> PathBuf {
    PathBuf::from(DEFAULT_WORK_DIR)
}

fn default_concurrency() -> usize {
    DEFAULT_MAX_CONCURRENT_LAYER_DOWNLOADS
}

impl Default for ImageConfig {
    fn default() -> Self {
        Self {
            work_dir: default_work_dir(),
            image_security_policy_uri: None,
            image_security_policy: None,
            sigstore_config_uri: None,
            sigstore_config: None,
            authenticated_registry_credentials_uri: None,
            registry_configuration_uri: None,
            max_concurrent_layer_downloads_per_image: DEFAULT_MAX_CONCURRENT_LAYER_DOWNLOADS,
            image_pull_proxy: None,
            extra_root_certificates: Vec::new(),
            anonymous_fallback_on_unauthorized: false,
            max_image_unpacked_bytes: None,
            max_layer_store_bytes: None,
            max_image_unpacked_inodes: None,
            transfer: Transfer::default(),
        }
    }
}

/// The keys of `[image]` this crate reads; others are reported by [`ImageConfig::from_table`].
pub const KNOWN_KEYS: &[&str] = &[
    "work_dir",
    "image_security_policy_uri",
    "image_security_policy",
    "sigstore_config_uri",
    "sigstore_config",
    "authenticated_registry_credentials_uri",
    "registry_configuration_uri",
    "max_concurrent_layer_downloads_per_image",
    "image_pull_proxy",
    "extra_root_certificates",
    "anonymous_fallback_on_unauthorized",
    "max_image_unpacked_bytes",
    "max_layer_store_bytes",
    "max_image_unpacked_inodes",
];

/// Why `[image]` cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("[image]: {0}")]
pub struct ConfigError(String);

/// The TOML type of `v`, as an error message says it.
fn type_name(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(i) if *i < 0 => "a negative integer",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date-time",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

/// `v` shortened for an error message (a file's value, never a secret, but maybe long).
fn shown(v: &toml::Value) -> String {
    let text = v.to_string();
    match text.char_indices().nth(64) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text,
    }
}

/// Refuses a value of the wrong TOML type for `key` naming the key, the type found and the
/// form accepted (serde's own message names neither the key nor the form).
fn check_type(key: &str, v: &toml::Value) -> Result<(), ConfigError> {
    let accepted = match key {
        "max_image_unpacked_bytes" | "max_layer_store_bytes" => {
            if matches!(v, toml::Value::Integer(i) if *i >= 0) {
                return Ok(());
            }
            "a whole number of bytes above 0 without quotes or units, e.g. 1073741824 for 1 GiB \
             (leave it out for the default derived from work_dir's filesystem)"
        }
        "max_image_unpacked_inodes" => {
            if matches!(v, toml::Value::Integer(i) if *i >= 0) {
                return Ok(());
            }
            "a whole number of inodes above 0 without quotes, e.g. 500000 (leave it out for \
             the default derived from work_dir's filesystem)"
        }
        "max_concurrent_layer_downloads_per_image" => {
            if matches!(v, toml::Value::Integer(i) if *i >= 0) {
                return Ok(());
            }
            "a whole number from 1 to 32 without quotes"
        }
        "anonymous_fallback_on_unauthorized" => {
            if v.is_bool() {
                return Ok(());
            }
            "true or false without quotes"
        }
        "extra_root_certificates" => {
            if v.as_array()
                .is_some_and(|a| a.iter().all(toml::Value::is_str))
            {
                return Ok(());
            }
            "an array of PEM strings, e.g. [\"-----BEGIN CERTIFICATE-----...\"]"
        }
        "image_pull_proxy" => {
            if v.is_table() {
                return Ok(());
            }
            "a table with https_proxy, http_proxy and no_proxy strings"
        }
        "work_dir" => {
            if v.is_str() {
                return Ok(());
            }
            "an absolute path in quotes, e.g. \"/run/image-rs\""
        }
        _ => {
            if v.is_str() {
                return Ok(());
            }
            "a string in quotes"
        }
    };
    Err(ConfigError(format!(
        "{key} = {}: {} where {key} takes {accepted}",
        shown(v),
        type_name(v)
    )))
}

impl ImageConfig {
    /// Reads `[image]` (a TOML table): the configuration and the keys it does not know.
    pub fn from_table(table: &toml::Table) -> Result<(Self, Vec<String>), ConfigError> {
        let mut known = toml::Table::new();
        let mut unknown = Vec::new();
        for (k, v) in table {
            if KNOWN_KEYS.contains(&k.as_str()) {
                check_type(k, v)?;
                known.insert(k.clone(), v.clone());
            } else {
                unknown.push(k.clone());
            }
        }
        let config: Self = known
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError(e.message().to_string()))?;
        config.check()?;
        Ok((config, unknown))
    }

    /// Applies upstream's `CDH_DEFAULT_IMAGE_AUTHENTICATED_REGISTRY_CREDENTIALS` (it wins over
    /// the file, as upstream's does). `value` is the variable's value, passed in by the binary.
    pub fn with_credentials_env(mut self, value: Option<String>) -> Self {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            self.authenticated_registry_credentials_uri = Some(v);
        }
        self
    }

    fn check(&self) -> Result<(), ConfigError> {
        let n = self.max_concurrent_layer_downloads_per_image;
        if n == 0 || n > MAX_CONCURRENT_LAYER_DOWNLOADS {
            return Err(ConfigError(format!(
                "max_concurrent_layer_downloads_per_image = {n}: expected 1 to \
                 {MAX_CONCURRENT_LAYER_DOWNLOADS}"
            )));
        }
        for (key, value) in [
            ("max_image_unpacked_bytes", self.max_image_unpacked_bytes),
            ("max_layer_store_bytes", self.max_layer_store_bytes),
            ("max_image_unpacked_inodes", self.max_image_unpacked_inodes),
        ] {
            if value == Some(0) {
                return Err(ConfigError(format!(
                    "{key} = 0: expected a number above 0 (leave it out for the default \
                     derived from work_dir's filesystem)"
                )));
            }
        }
        if !self.work_dir.is_absolute() {
            return Err(ConfigError(format!(
                "work_dir = {:?}: expected an absolute path",
                self.work_dir
            )));
        }
        for (key, uri) in [
            ("image_security_policy_uri", &self.image_security_policy_uri),
            ("sigstore_config_uri", &self.sigstore_config_uri),
            (
                "authenticated_registry_credentials_uri",
                &self.authenticated_registry_credentials_uri,
            ),
            (
                "registry_configuration_uri",
                &self.registry_configuration_uri,
            ),
        ] {
            if let Some(u) = uri
                && !(u.starts_with("kbs://") || u.starts_with("file://"))
            {
                return Err(ConfigError(format!(
                    "{key} = {:?}: expected kbs:///<repo>/<type>/<tag> or file:///<path>",
                    crate::digest::clipped(u)
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_keys_and_defaults() {
        let table: toml::Table = toml::from_str(
            r#"
            work_dir = "/run/x"
            authenticated_registry_credentials_uri = "kbs:///default/credential/test"
            max_concurrent_layer_downloads_per_image = 5
            max_image_unpacked_bytes = 1073741824
            extra_root_certificates = ["-----BEGIN CERTIFICATE-----"]
            default_snapshot = "overlay"
            [image_pull_proxy]
            https_proxy = "http://proxy:3128"
            no_proxy = "localhost"
            "#,
        )
        .expect("toml");
        let (c, unknown) = ImageConfig::from_table(&table).expect("valid");
        assert_eq!(unknown, vec!["default_snapshot".to_string()]);
        assert_eq!(c.work_dir, PathBuf::from("/run/x"));
        assert_eq!(c.max_concurrent_layer_downloads_per_image, 5);
        assert_eq!(c.max_image_unpacked_bytes, Some(1 << 30));
        assert_eq!(c.max_layer_store_bytes, None);
        assert_eq!(
            c.image_pull_proxy
                .as_ref()
                .and_then(|p| p.https_proxy.clone()),
            Some("http://proxy:3128".into())
        );
        let c = c.with_credentials_env(Some("file:///run/peerpod/auth.json".into()));
        assert_eq!(
            c.authenticated_registry_credentials_uri.as_deref(),
            Some("file:///run/peerpod/auth.json")
        );
        let (d, _) = ImageConfig::from_table(&toml::Table::new()).expect("empty");
        assert_eq!(d, ImageConfig::default());
        assert_eq!(d.work_dir, PathBuf::from(DEFAULT_WORK_DIR));
    }

    #[test]
    fn bad_values_named() {
        for (text, key) in [
            (
                "max_concurrent_layer_downloads_per_image = 0",
                "max_concurrent",
            ),
            (
                "max_concurrent_layer_downloads_per_image = 1000",
                "max_concurrent",
            ),
            ("work_dir = \"relative\"", "work_dir"),
            ("max_image_unpacked_bytes = 0", "max_image_unpacked_bytes"),
            ("max_layer_store_bytes = 0", "max_layer_store_bytes"),
            ("max_image_unpacked_inodes = 0", "max_image_unpacked_inodes"),
            ("max_layer_store_bytes = -1", "max_layer_store_bytes"),
            (
                "registry_configuration_uri = \"http://x\"",
                "registry_configuration_uri",
            ),
            (
                "extra_root_certificates = \"x\"",
                "extra_root_certificates = \"x\": a string",
            ),
        ] {
            let table: toml::Table = toml::from_str(text).expect("toml");
            let e = ImageConfig::from_table(&table).expect_err(text).to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    /// A limit of the wrong type names the key, the type found and the form accepted.
    #[test]
    fn wrong_typed_limits_name_the_key_the_type_and_the_accepted_form() {
        for (text, says) in [
            (
                "max_image_unpacked_bytes = \"1G\"",
                "max_image_unpacked_bytes = \"1G\": a string where max_image_unpacked_bytes \
                 takes a whole number of bytes above 0 without quotes or units, e.g. 1073741824",
            ),
            (
                "max_layer_store_bytes = -1",
                "max_layer_store_bytes = -1: a negative integer where max_layer_store_bytes \
                 takes a whole number of bytes above 0",
            ),
            (
                "max_image_unpacked_inodes = 1.5",
                "max_image_unpacked_inodes = 1.5: a float where max_image_unpacked_inodes \
                 takes a whole number of inodes above 0 without quotes, e.g. 500000",
            ),
            (
                "max_image_unpacked_bytes = true",
                "max_image_unpacked_bytes = true: a boolean where",
            ),
            (
                "max_layer_store_bytes = [1]",
                "max_layer_store_bytes = [1]: an array where",
            ),
            (
                "max_concurrent_layer_downloads_per_image = \"3\"",
                "max_concurrent_layer_downloads_per_image = \"3\": a string where",
            ),
            (
                "work_dir = 3",
                "work_dir = 3: an integer where work_dir takes an absolute path",
            ),
            (
                "anonymous_fallback_on_unauthorized = \"yes\"",
                "a string where anonymous_fallback_on_unauthorized takes true or false",
            ),
            (
                "extra_root_certificates = [1]",
                "extra_root_certificates = [1]: an array where",
            ),
            (
                "image_pull_proxy = \"x\"",
                "image_pull_proxy = \"x\": a string where",
            ),
            (
                "sigstore_config_uri = 1",
                "sigstore_config_uri = 1: an integer where",
            ),
        ] {
            let table: toml::Table = toml::from_str(text).expect("toml");
            let e = ImageConfig::from_table(&table).expect_err(text).to_string();
            assert!(e.starts_with("[image]: "), "{text}: {e}");
            assert!(e.contains(says), "{text}: {e}");
        }
        // A long value is shortened.
        let long = format!("max_layer_store_bytes = \"{}\"", "9".repeat(5000));
        let table: toml::Table = toml::from_str(&long).expect("toml");
        let e = ImageConfig::from_table(&table)
            .expect_err("long")
            .to_string();
        assert!(e.len() < 400 && e.contains("999...: a string"), "{e}");
        // The right types still parse, at the edges too.
        let table: toml::Table = toml::from_str(
            "max_image_unpacked_bytes = 1\nmax_layer_store_bytes = 9223372036854775807\n\
             max_image_unpacked_inodes = 1\n",
        )
        .expect("toml");
        let (c, _) = ImageConfig::from_table(&table).expect("valid");
        assert_eq!(c.max_layer_store_bytes, Some(i64::MAX as u64));
    }
}
