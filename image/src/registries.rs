//! `registries.conf` (containers-registries.conf(5), version 2, the subset image-rs reads and
//! the short-name rules): `unqualified-search-registries`, `short-name-mode`, `[aliases]` and
//! `[[registry]]` tables with `prefix`, `location`, `insecure`, `blocked`,
//! `mirror-by-digest-only` and `[[registry.mirror]]` (`location`, `insecure`,
//! `pull-from-mirror`: a `digest-only` mirror never serves a pull by tag, a `tag-only` one never
//! a pull by digest; image-rs ignores the key).
//!
//! [`RegistryConfig::sources`] turns a reference into the places to try, in order. Only a short
//! name (no registry component: `busybox`, `team/app`) is resolved: through its `[aliases]`
//! entry, else through the search registries as `short-name-mode` allows (a process with no
//! terminal cannot prompt, so `enforcing` with more than one search registry is refused). A
//! fully qualified reference, `docker.io/...` included, is never searched elsewhere. Each
//! candidate then gets the mirrors of the most specific matching `[[registry]]` and its
//! `location` (or the reference itself). A blocked match yields nothing and the pull is
//! refused. Unlike image-rs, a prefix matches only at the start of the reference (image-rs
//! matches it anywhere in the text), and image-rs sends `docker.io/...` through the search list.

use std::collections::BTreeMap;

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
    /// The image this source serves, fully qualified: what the signature policy must judge.
    /// The reference itself when it was fully qualified; for a short name the alias target or
    /// search candidate it resolved to (`example1.com/busybox`, never Docker Hub's name for an
    /// image another registry serves); mirrors and `location` remapping keep it (they are
    /// other places for the same image).
    pub logical: Reference,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Mirror {
    location: String,
    #[serde(default)]
    insecure: bool,
    /// `all` (unset or empty), `digest-only` or `tag-only`.
    #[serde(default, rename = "pull-from-mirror")]
    pull_from_mirror: Option<String>,
}

impl Mirror {
    /// Whether this mirror serves a pull by digest (`true`) or by tag (`false`).
    fn serves(&self, by_digest: bool) -> bool {
        match self.pull_from_mirror.as_deref().unwrap_or_default() {
            "digest-only" => by_digest,
            "tag-only" => !by_digest,
            _ => true,
        }
    }
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

/// `short-name-mode`: how a short name without an alias uses the search registries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShortNameMode {
    /// More than one search registry is ambiguous: refused (there is no terminal to prompt).
    Enforcing,
    /// Every search registry, in order (containers/image's default without a terminal).
    #[default]
    Permissive,
    /// Every search registry, in order.
    Disabled,
}

impl ShortNameMode {
    fn parse(text: &str) -> Result<Self, RegistriesError> {
        match text {
            "enforcing" => Ok(Self::Enforcing),
            // Unset or empty is permissive, as containers/image.
            "" | "permissive" => Ok(Self::Permissive),
            "disabled" => Ok(Self::Disabled),
            other => Err(RegistriesError(format!(
                "short-name-mode {:?} is not \"enforcing\", \"permissive\" or \"disabled\"",
                crate::digest::clipped(other)
            ))),
        }
    }
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
    short_name_mode_text: Option<String>,
    /// Short name → fully qualified name, both without tag or digest.
    #[serde(default, rename = "aliases")]
    alias_text: BTreeMap<String, String>,
    #[serde(skip)]
    short_name_mode: ShortNameMode,
    #[serde(skip)]
    aliases: BTreeMap<String, Reference>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            unqualified_search_registries: default_search(),
            registry: Vec::new(),
            short_name_mode_text: None,
            alias_text: BTreeMap::new(),
            short_name_mode: ShortNameMode::default(),
            aliases: BTreeMap::new(),
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
                match m.pull_from_mirror.as_deref() {
                    None => {}
                    Some(_) if r.mirror_by_digest_only => {
                        return Err(RegistriesError(format!(
                            "[[registry]] prefix {:?}: mirror-by-digest-only and a mirror's \
                             pull-from-mirror cannot both be set; use pull-from-mirror = \
                             \"digest-only\" on each mirror",
                            crate::digest::clipped(&r.prefix)
                        )));
                    }
                    Some("" | "all" | "digest-only" | "tag-only") => {}
                    Some(other) => {
                        return Err(RegistriesError(format!(
                            "[[registry.mirror]] {:?}: pull-from-mirror {:?} is not \"all\", \
                             \"digest-only\" or \"tag-only\"",
                            crate::digest::clipped(&m.location),
                            crate::digest::clipped(other)
                        )));
                    }
                }
            }
        }
        for s in &config.unqualified_search_registries {
            if !valid_registry(s) {
                return Err(RegistriesError(format!(
                    "unqualified-search-registries: {:?} is not host[:port]",
                    crate::digest::clipped(s)
                )));
            }
        }
        config.short_name_mode =
            ShortNameMode::parse(config.short_name_mode_text.as_deref().unwrap_or_default())?;
        for (name, value) in &config.alias_text {
            let target = parse_alias(name, value)?;
            config.aliases.insert(name.clone(), target);
        }
        Ok(config)
    }

    /// The `short-name-mode` in force.
    pub fn short_name_mode(&self) -> ShortNameMode {
        self.short_name_mode
    }

    /// The fully qualified references a reference stands for: itself when it is fully
    /// qualified; for a short name its alias, else the search registries `short-name-mode`
    /// allows.
    fn candidates(&self, reference: &Reference) -> Result<Vec<Reference>, RegistriesError> {
        let Some(short) = &reference.short_name else {
            return Ok(vec![reference.clone()]);
        };
        if let Some(target) = self.aliases.get(short) {
            return Ok(vec![
                reference.relocated(&target.registry, &target.repository),
            ]);
        }
        let search = &self.unqualified_search_registries;
        if search.is_empty() {
            return Err(RegistriesError(format!(
                "{:?} is a short name with no [aliases] entry and unqualified-search-registries \
                 is empty: fully qualify the image (registry/repository:tag)",
                crate::digest::clipped(short)
            )));
        }
        if search.len() > 1 && self.short_name_mode == ShortNameMode::Enforcing {
            return Err(RegistriesError(format!(
                "{:?} is a short name and short-name-mode = \"enforcing\" with {} \
                 unqualified-search-registries ({}) is ambiguous (there is no terminal to \
                 choose): fully qualify the image (for example {}/{}), add an [aliases] entry \
                 for it, or set short-name-mode = \"permissive\"",
                crate::digest::clipped(short),
                search.len(),
                search.join(", "),
                search[0],
                crate::digest::clipped(short),
            )));
        }
        Ok(search
            .iter()
            .map(|r| {
                // Docker Hub keeps its `library/` namespace; another registry gets the name
                // as written.
                let repo = if r == DOCKER_HUB {
                    reference.repository.as_str()
                } else {
                    short.as_str()
                };
                reference.relocated(r, repo)
            })
            .collect())
    }

    /// Where to pull `reference` from, in order. Empty only when every candidate is blocked,
    /// which is an error naming the rule.
    pub fn sources(&self, reference: &Reference) -> Result<Vec<Source>, RegistriesError> {
        let candidates = self.candidates(reference)?;
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
                    logical: candidate.clone(),
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
            let by_digest = candidate.digest.is_some();
            if by_digest || !rule.mirror_by_digest_only {
                for m in rule.mirror.iter().filter(|m| m.serves(by_digest)) {
                    out.push(Source {
                        reference: relocate(&candidate, &m.location, rest)?,
                        insecure: m.insecure,
                        logical: candidate.clone(),
                    });
                }
            }
            if rule.location.is_empty() {
                out.push(Source {
                    logical: candidate.clone(),
                    reference: candidate,
                    insecure: rule.insecure,
                });
            } else {
                out.push(Source {
                    reference: relocate(&candidate, &rule.location, rest)?,
                    insecure: rule.insecure,
                    logical: candidate,
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

/// An `[aliases]` entry: a short name without tag or digest → a fully qualified name without
/// tag or digest.
fn parse_alias(name: &str, value: &str) -> Result<Reference, RegistriesError> {
    let bad = |what: &str| {
        RegistriesError(format!(
            "[aliases] {:?} = {:?}: {what}",
            crate::digest::clipped(name),
            crate::digest::clipped(value)
        ))
    };
    let untagged =
        |t: &str| !t.contains('@') && !t.rsplit('/').next().unwrap_or_default().contains(':');
    let short = Reference::parse(name).map_err(|_| bad("the name is not an image name"))?;
    if short.short_name.as_deref() != Some(name) || !untagged(name) {
        return Err(bad(
            "the name must be a short name (no registry, tag or digest)",
        ));
    }
    let target = Reference::parse(value).map_err(|_| bad("the value is not an image name"))?;
    if target.short_name.is_some() || !untagged(value) {
        return Err(bad(
            "the value must be fully qualified (registry/repository) without tag or digest",
        ));
    }
    Ok(target)
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
    fn only_short_names_use_the_search_list() {
        // Fully qualified, Docker Hub's included: never another registry.
        assert_eq!(
            sources("docker.io/library/bar:tag").expect("ok"),
            vec![
                "hub-mirror.local/library/bar:tag",
                "docker.io/library/bar:tag"
            ]
        );
        assert_eq!(
            sources("docker.io/team/app:v1").expect("ok"),
            vec!["hub-mirror.local/team/app:v1", "docker.io/team/app:v1"]
        );
        assert_eq!(
            sources("quay.io/team/app:v1").expect("ok"),
            vec!["quay.io/team/app:v1"]
        );
        // A short name with a namespace keeps it on another registry.
        assert_eq!(
            sources("team/app:v1").expect("ok"),
            vec![
                "hub-mirror.local/team/app:v1",
                "docker.io/team/app:v1",
                "example1.com/team/app:v1"
            ]
        );
    }

    fn resolve(conf: &str, r: &str) -> Result<Vec<String>, RegistriesError> {
        let c = RegistryConfig::parse(conf.as_bytes())?;
        Ok(c.sources(&Reference::parse(r).expect("ref"))?
            .into_iter()
            .map(|s| s.reference.to_string())
            .collect())
    }

    #[test]
    fn each_source_names_the_image_it_serves() {
        let c = RegistryConfig::parse(CONF.as_bytes()).expect("valid");
        let logical = |r: &str| -> Vec<(String, String)> {
            c.sources(&Reference::parse(r).expect("ref"))
                .expect("sources")
                .into_iter()
                .map(|s| (s.reference.to_string(), s.logical.to_string()))
                .collect()
        };
        // A short name found on a search registry is that registry's image, not Docker Hub's.
        assert_eq!(
            logical("bar:tag"),
            vec![
                (
                    "hub-mirror.local/library/bar:tag".into(),
                    "docker.io/library/bar:tag".into()
                ),
                (
                    "docker.io/library/bar:tag".into(),
                    "docker.io/library/bar:tag".into()
                ),
                ("example1.com/bar:tag".into(), "example1.com/bar:tag".into()),
            ]
        );
        // Mirrors and remapping serve the name the user gave.
        for (_, l) in logical("example.com/foo/image:t") {
            assert_eq!(l, "example.com/foo/image:t");
        }
        for (_, l) in logical("quay.io/a/b:c") {
            assert_eq!(l, "quay.io/a/b:c");
        }
    }

    #[test]
    fn mirrors_serve_only_the_pulls_their_pull_from_mirror_allows() {
        let conf = "[[registry]]\nprefix = \"quay.io/a\"\nlocation = \"quay.io/a\"\n\
                    [[registry.mirror]]\nlocation = \"digests.local/a\"\npull-from-mirror = \"digest-only\"\n\
                    [[registry.mirror]]\nlocation = \"tags.local/a\"\npull-from-mirror = \"tag-only\"\n\
                    [[registry.mirror]]\nlocation = \"all.local/a\"\npull-from-mirror = \"all\"\n\
                    [[registry.mirror]]\nlocation = \"default.local/a\"\n";
        // A mirror trusted with digests only never answers a tag.
        assert_eq!(
            resolve(conf, "quay.io/a/app:v1").expect("ok"),
            vec![
                "tags.local/a/app:v1",
                "all.local/a/app:v1",
                "default.local/a/app:v1",
                "quay.io/a/app:v1"
            ]
        );
        let d = format!("sha256:{}", "2".repeat(64));
        assert_eq!(
            resolve(conf, &format!("quay.io/a/app@{d}")).expect("ok"),
            vec![
                format!("digests.local/a/app@{d}"),
                format!("all.local/a/app@{d}"),
                format!("default.local/a/app@{d}"),
                format!("quay.io/a/app@{d}")
            ]
        );
        for bad in [
            "[[registry]]\nlocation = \"q.io\"\n[[registry.mirror]]\nlocation = \"m.io\"\npull-from-mirror = \"sometimes\"",
            "[[registry]]\nlocation = \"q.io\"\nmirror-by-digest-only = true\n[[registry.mirror]]\nlocation = \"m.io\"\npull-from-mirror = \"all\"",
            "[[registry]]\nlocation = \"q.io\"\npull-from-mirror = \"all\"",
        ] {
            assert!(RegistryConfig::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn short_name_modes_and_aliases() {
        let two = "unqualified-search-registries = [\"a.io\", \"b.io:5000\"]\n";
        // Unset and permissive: every search registry in order; disabled likewise.
        for mode in [
            "",
            "short-name-mode = \"\"\n",
            "short-name-mode = \"permissive\"\n",
            "short-name-mode = \"disabled\"\n",
        ] {
            assert_eq!(
                resolve(&format!("{two}{mode}"), "app:v1").expect("ok"),
                vec!["a.io/app:v1", "b.io:5000/app:v1"],
                "{mode}"
            );
        }
        let enforcing = format!("{two}short-name-mode = \"enforcing\"\n");
        let e = resolve(&enforcing, "app:v1").expect_err("ambiguous").0;
        assert!(e.contains("fully qualify the image"), "{e}");
        assert!(e.contains("a.io/app"), "{e}");
        // Enforcing: one search registry is not ambiguous; a qualified name is not searched.
        assert_eq!(
            resolve(
                "unqualified-search-registries = [\"a.io\"]\nshort-name-mode = \"enforcing\"\n",
                "app:v1"
            )
            .expect("ok"),
            vec!["a.io/app:v1"]
        );
        assert_eq!(
            resolve(&enforcing, "b.io:5000/app:v1").expect("ok"),
            vec!["b.io:5000/app:v1"]
        );
        // An alias wins over the search list, in every mode; tag and digest carried over.
        let aliased = format!(
            "{enforcing}[aliases]\n\"app\" = \"quay.io/team/app\"\n\"hub\" = \"docker.io/hub\"\n"
        );
        assert_eq!(
            resolve(&aliased, "app:v1").expect("ok"),
            vec!["quay.io/team/app:v1"]
        );
        let d = format!("sha256:{}", "1".repeat(64));
        assert_eq!(
            resolve(&aliased, &format!("app@{d}")).expect("ok"),
            vec![format!("quay.io/team/app@{d}")]
        );
        assert_eq!(
            resolve(&aliased, "hub").expect("ok"),
            vec!["docker.io/library/hub:latest"]
        );
        // No alias and no search registries: refused with the fix.
        let e = resolve("unqualified-search-registries = []\n", "app")
            .expect_err("nowhere")
            .0;
        assert!(e.contains("fully qualify"), "{e}");
        assert_eq!(
            resolve("unqualified-search-registries = []\n", "quay.io/a/app").expect("ok"),
            vec!["quay.io/a/app:latest"]
        );
    }

    #[test]
    fn bad_files_refused() {
        for bad in [
            "short-name-mode = \"strict\"",
            "short-name-mode = 1",
            "[aliases]\n\"quay.io/app\" = \"quay.io/team/app\"",
            "[aliases]\n\"app:v1\" = \"quay.io/team/app\"",
            "[aliases]\n\"app\" = \"team/app\"",
            "[aliases]\n\"app\" = \"quay.io/team/app:v1\"",
            "[aliases]\n\"app\" = \"quay.io/../app\"",
            "[aliases]\n\"App\" = \"quay.io/app\"",
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
