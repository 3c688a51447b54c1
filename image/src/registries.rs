//! `registries.conf` (containers-registries.conf(5), version 2, the subset image-rs reads):
//! `unqualified-search-registries` and `[[registry]]` tables with `prefix`, `location`,
//! `insecure`, `blocked` and `[[registry.mirror]]` (`location`, `insecure`).
//!
//! [`RegistryConfig::sources`] turns a reference into the places to try, in order: the
//! mirrors of the most specific matching `[[registry]]`, then its `location` (or the reference
//! itself). A blocked match yields nothing and the pull is refused. Unlike image-rs, a prefix
//! matches only at the start of the reference (image-rs matches it anywhere in the text).

use serde::Deserialize;

use crate::reference::{DOCKER_HUB, Reference, valid_registry};

/// The largest `registries.conf` read.
pub const MAX_REGISTRIES_FILE: usize = 1 << 20;

/// One place to pull from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The reference there.
    pub reference: Reference,
    /// Plain HTTP (an `insecure` registry or mirror).
    pub insecure: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Mirror {
    location: String,
    #[serde(default)]
    insecure: bool,
    #[serde(default, rename = "pull-from-mirror")]
    _pull_from_mirror: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Registry {
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    location: String,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    blocked: bool,
    #[serde(default)]
    mirror: Vec<Mirror>,
    #[serde(default, rename = "mirror-by-digest-only")]
    mirror_by_digest_only: bool,
}

/// A parsed `registries.conf`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    #[serde(default = "default_search", rename = "unqualified-search-registries")]
    unqualified_search_registries: Vec<String>,
    #[serde(default)]
    registry: Vec<Registry>,
    #[serde(default, rename = "short-name-mode")]
    _short_name_mode: Option<String>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            unqualified_search_registries: default_search(),
            registry: Vec::new(),
            _short_name_mode: None,
        }
    }
}

fn default_search() -> Vec<String> {
    vec![DOCKER_HUB.to_string()]
}

/// Why a `registries.conf` or a pull through it is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("registries.conf: {0}")]
pub struct RegistriesError(pub String);

impl RegistryConfig {
    /// Parses and checks the file.
    pub fn parse(bytes: &[u8]) -> Result<Self, RegistriesError> {
        if bytes.len() > MAX_REGISTRIES_FILE {
            return Err(RegistriesError(format!(
                "larger than {MAX_REGISTRIES_FILE} bytes"
            )));
        }
        let text =
            std::str::from_utf8(bytes).map_err(|_| RegistriesError("not UTF-8".to_string()))?;
        let mut config: Self =
            toml::from_str(text).map_err(|e| RegistriesError(e.message().to_string()))?;
        for r in &mut config.registry {
            if r.prefix.is_empty() {
                if r.location.is_empty() {
                    return Err(RegistriesError(
                        "a [[registry]] has neither prefix nor location".to_string(),
                    ));
                }
                r.prefix = r.location.clone();
            }
            if r.prefix.starts_with("*.") && r.location.is_empty() && !r.blocked {
                return Err(RegistriesError(format!(
                    "[[registry]] prefix {:?}: a wildcard prefix needs a location",
                    r.prefix
                )));
            }
            if !r.location.is_empty() {
                check_location(&r.location)?;
            }
            for m in &r.mirror {
                check_location(&m.location)?;
            }
        }
        for s in &config.unqualified_search_registries {
            if !valid_registry(s) {
                return Err(RegistriesError(format!(
                    "unqualified-search-registries: {s:?} is not host[:port]"
                )));
            }
        }
        Ok(config)
    }

    /// Where to pull `reference` from, in order. Empty only when every candidate is blocked,
    /// which is an error naming the rule.
    pub fn sources(&self, reference: &Reference) -> Result<Vec<Source>, RegistriesError> {
        let candidates: Vec<Reference> = if reference.registry == DOCKER_HUB {
            self.unqualified_search_registries
                .iter()
                .map(|r| {
                    let repo = if r == DOCKER_HUB {
                        reference.repository.clone()
                    } else {
                        reference
                            .repository
                            .strip_prefix("library/")
                            .unwrap_or(&reference.repository)
                            .to_string()
                    };
                    reference.relocated(r, &repo)
                })
                .collect()
        } else {
            vec![reference.clone()]
        };
        let mut out = Vec::new();
        let mut blocked = Vec::new();
        for candidate in candidates {
            let name = format!("{}/{}", candidate.registry, candidate.repository);
            let rule = self
                .registry
                .iter()
                .filter_map(|r| prefix_match(&name, &r.prefix).map(|len| (len, r)))
                .max_by_key(|(len, _)| *len);
            let Some((len, rule)) = rule else {
                out.push(Source {
                    reference: candidate,
                    insecure: false,
                });
                continue;
            };
            if rule.blocked {
                blocked.push(rule.prefix.clone());
                continue;
            }
            let rest = &name[len..];
            if !(rule.mirror_by_digest_only && candidate.digest.is_none()) {
                for m in &rule.mirror {
                    out.push(Source {
                        reference: relocate(&candidate, &m.location, rest)?,
                        insecure: m.insecure,
                    });
                }
            }
            if rule.location.is_empty() {
                out.push(Source {
                    reference: candidate,
                    insecure: rule.insecure,
                });
            } else {
                out.push(Source {
                    reference: relocate(&candidate, &rule.location, rest)?,
                    insecure: rule.insecure,
                });
            }
        }
        if out.is_empty() {
            return Err(RegistriesError(format!(
                "{reference} is blocked by the [[registry]] rule with prefix {:?}",
                blocked.first().cloned().unwrap_or_default()
            )));
        }
        Ok(out)
    }
}

/// The matched length of `prefix` at the start of `name` (`registry/repository`), at a
/// component boundary; `*.host` matches the registry's host by suffix.
fn prefix_match(name: &str, prefix: &str) -> Option<usize> {
    if let Some(suffix) = prefix.strip_prefix('*') {
        // `*.example.com`: the registry part (up to the first '/') ends with `.example.com`.
        let registry = name.split('/').next().unwrap_or_default();
        let host = registry.split(':').next().unwrap_or_default();
        return (host.ends_with(suffix) && host.len() > suffix.len()).then_some(registry.len());
    }
    let rest = name.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(prefix.len())
}

fn relocate(
    candidate: &Reference,
    location: &str,
    rest: &str,
) -> Result<Reference, RegistriesError> {
    let joined = format!("{location}{rest}");
    let (registry, repository) = joined.split_once('/').ok_or_else(|| {
        RegistriesError(format!("{joined:?} has no repository after the registry"))
    })?;
    Ok(candidate.relocated(registry, repository))
}

fn check_location(location: &str) -> Result<(), RegistriesError> {
    let registry = location.split('/').next().unwrap_or_default();
    let path_ok = location
        .split('/')
        .skip(1)
        .all(|c| !c.is_empty() && c != "." && c != "..");
    if !valid_registry(registry) || !path_ok {
        return Err(RegistriesError(format!(
            "location {:?} is not host[:port][/path]",
            crate::digest::clipped(location)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONF: &str = r#"
unqualified-search-registries = ["docker.io", "example1.com"]

[[registry]]
prefix = "example.com/banned"
blocked = true

[[registry]]
prefix = "example.com/foo"
location = "internal.example.com/bar"

[[registry.mirror]]
location = "mirror0.local/mirror-for-foo"

[[registry.mirror]]
location = "mirror1.local:5000/mirrors/foo"
insecure = true

[[registry]]
location = "docker.io"

[[registry.mirror]]
location = "hub-mirror.local"

[[registry]]
prefix = "*.corp.io"
location = "proxy.corp.io"
"#;

    fn sources(r: &str) -> Result<Vec<String>, RegistriesError> {
        let c = RegistryConfig::parse(CONF.as_bytes())?;
        Ok(c.sources(&Reference::parse(r).expect("ref"))?
            .into_iter()
            .map(|s| format!("{}{}", s.reference, if s.insecure { " (http)" } else { "" }))
            .collect())
    }

    #[test]
    fn mirrors_remapping_blocking() {
        assert!(
            sources("example.com/banned/image:tag")
                .expect_err("blocked")
                .0
                .contains("example.com/banned")
        );
        assert_eq!(
            sources("example.com/banned-suffix/image:tag").expect("ok"),
            vec!["example.com/banned-suffix/image:tag"]
        );
        assert_eq!(
            sources("example.com/foo/image:t").expect("ok"),
            vec![
                "mirror0.local/mirror-for-foo/image:t",
                "mirror1.local:5000/mirrors/foo/image:t (http)",
                "internal.example.com/bar/image:t"
            ]
        );
        assert_eq!(
            sources("bar:tag").expect("ok"),
            vec![
                "hub-mirror.local/library/bar:tag",
                "docker.io/library/bar:tag",
                "example1.com/bar:tag"
            ]
        );
        assert_eq!(
            sources("a.corp.io/x/y:1").expect("ok"),
            vec!["proxy.corp.io/x/y:1"]
        );
        // Not a prefix at the start: image-rs would match this one.
        assert_eq!(
            sources("evil.io/example.com/foo/x").expect("ok"),
            vec!["evil.io/example.com/foo/x:latest"]
        );
    }

    #[test]
    fn bad_files_refused() {
        for bad in [
            "[[registry]]\ninsecure = true",
            "[[registry]]\nprefix = \"*.x.io\"",
            "[[registry]]\nprefix = \"x.io\"\nlocation = \"y.io/../z\"",
            "[[registry]]\nprefix = \"x.io\"\n[[registry.mirror]]\nlocation = \"\"",
            "unqualified-search-registries = [\"a b\"]",
            "[[registry]]\nprefix = \"x.io\"\nunknown = 1",
            "not toml",
        ] {
            assert!(RegistryConfig::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
