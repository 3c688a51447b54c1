//! Image references as container tools write them: `[registry[:port]/]repository[:tag][@digest]`.
//!
//! Without a registry the reference is Docker Hub's (`docker.io`), and a one-component
//! repository there is under `library/` (`busybox` → `docker.io/library/busybox:latest`).
//! Without a tag or digest the tag is `latest`. The grammar is the distribution project's:
//! lowercase repository components separated by `.`, `_`, `__` or dashes, tags of at most 128
//! word characters, dots and dashes, and only `sha256` digests (the ones we can check).

use std::fmt;

use crate::digest::{Digest, clipped};

/// Docker Hub's name in references.
pub const DOCKER_HUB: &str = "docker.io";
/// The host Docker Hub's registry API is served from.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// The longest reference accepted (the distribution project's name limit is 255).
pub const MAX_REFERENCE_LEN: usize = 512;

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]`, `docker.io` for Docker Hub.
    pub registry: String,
    /// The repository path (`library/busybox`).
    pub repository: String,
    /// The tag, when given (or `latest` when neither tag nor digest is).
    pub tag: Option<String>,
    /// The digest, when given; it wins over the tag.
    pub digest: Option<Digest>,
    /// A short name: the name as written (without tag or digest) when the reference has no
    /// registry component (`busybox`, `team/app`). Only a short name may be resolved through
    /// `registries.conf`'s `[aliases]` and `unqualified-search-registries`; `None` for a fully
    /// qualified reference (`docker.io/library/busybox`, `quay.io/a/b`, `localhost/x`).
    pub short_name: Option<String>,
}

/// Why a reference is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("image reference {reference:?}: {reason}")]
pub struct ReferenceError {
    /// The reference (printable, clipped).
    pub reference: String,
    /// What is wrong, and the expected form.
    pub reason: String,
}

impl Reference {
    /// Parses `text` (a leading `docker://` is accepted and ignored).
    pub fn parse(text: &str) -> Result<Self, ReferenceError> {
        let bad = |reason: String| ReferenceError {
            reference: clipped(text),
            reason,
        };
        if text.len() > MAX_REFERENCE_LEN {
            return Err(bad(format!("longer than {MAX_REFERENCE_LEN} bytes")));
        }
        let body = text.strip_prefix("docker://").unwrap_or(text);
        if body.is_empty() {
            return Err(bad("empty".into()));
        }
        if !body.is_ascii() || body.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(bad("not printable ASCII without spaces".into()));
        }
        let (name, digest) = match body.split_once('@') {
            Some((name, d)) => (
                name,
                Some(Digest::parse(d).map_err(|e| bad(e.reason.to_string()))?),
            ),
            None => (body, None),
        };
        // The tag is after a ':' in the last path component (a ':' before a '/' is a port).
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
            None => (name, None),
        };
        if let Some(tag) = tag
            && !valid_tag(tag)
        {
            return Err(bad(
                "a tag is 1-128 letters, digits, '_', '.' or '-', not starting with '.' or '-'"
                    .into(),
            ));
        }
        // containers/image's rule: the first component names a registry when it has a '.' or
        // a ':' or is `localhost`; otherwise the whole name is a short name.
        let (registry, repository, short_name) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string(), None)
            }
            _ => (
                DOCKER_HUB.to_string(),
                name.to_string(),
                Some(name.to_string()),
            ),
        };
        if !valid_registry(&registry) {
            return Err(bad(format!(
                "registry {registry:?} is not host[:port] (letters, digits, '.', '-', a port of \
                 digits)"
            )));
        }
        let registry = if registry == "index.docker.io" {
            DOCKER_HUB.to_string()
        } else {
            registry
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if repository.len() > 255 || !repository.split('/').all(valid_component) {
            return Err(bad(
                "a repository is '/'-separated lowercase components of letters and digits \
                 joined by '.', '_', '__' or dashes"
                    .into(),
            ));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some("latest".to_string()),
            (None, Some(_)) => None,
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
            short_name,
        })
    }

    /// What the manifest is fetched by: the digest when there is one, else the tag.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// The host the registry API is reached at (`registry-1.docker.io` for Docker Hub).
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// The same reference at another registry and repository (mirrors, remapping, search);
    /// the result is fully qualified.
    pub fn relocated(&self, registry: &str, repository: &str) -> Self {
        Self {
            registry: registry.to_string(),
            repository: repository.to_string(),
            tag: self.tag.clone(),
            digest: self.digest.clone(),
            short_name: None,
        }
    }

    /// The same reference, fully qualified (what it prints as, parsed again).
    pub fn qualified(&self) -> Self {
        Self {
            short_name: None,
            ..self.clone()
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    (1..=128).contains(&b.len())
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

pub(crate) fn valid_registry(registry: &str) -> bool {
    let (host, port) = match registry.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (registry, None),
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|c| c.is_ascii_digit()));
    host_ok && port_ok
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|s| s == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> String {
        Reference::parse(text)
            .map(|r| r.to_string())
            .unwrap_or_else(|e| format!("ERR {e}"))
    }

    #[test]
    fn docker_hub_defaults() {
        assert_eq!(parsed("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(parsed("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(parsed("foo/bar"), "docker.io/foo/bar:latest");
        assert_eq!(
            parsed("docker.io/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            parsed("index.docker.io/library/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            parsed("docker://busybox"),
            "docker.io/library/busybox:latest"
        );
        let r = Reference::parse("busybox").expect("valid");
        assert_eq!(r.api_host(), "registry-1.docker.io");
    }

    #[test]
    fn short_names_are_told_from_qualified_ones() {
        let short = |t: &str| Reference::parse(t).expect("valid").short_name;
        assert_eq!(short("busybox"), Some("busybox".into()));
        assert_eq!(short("busybox:1.36"), Some("busybox".into()));
        assert_eq!(short("docker://team/app:v1"), Some("team/app".into()));
        assert_eq!(
            short(&format!("team/app@sha256:{}", "0".repeat(64))),
            Some("team/app".into())
        );
        for qualified in [
            "docker.io/library/busybox",
            "docker.io/busybox",
            "index.docker.io/library/busybox",
            "quay.io/a/b",
            "localhost/a",
            "localhost:5000/a",
            "127.0.0.1:5000/a/b",
            "host:5000/a",
        ] {
            assert_eq!(short(qualified), None, "{qualified}");
        }
        let r = Reference::parse("busybox").expect("valid");
        assert_eq!(
            r.qualified(),
            Reference::parse(&r.to_string()).expect("printed")
        );
    }

    #[test]
    fn registries_ports_tags_digests() {
        let d = format!("sha256:{}", "0".repeat(64));
        assert_eq!(parsed("localhost:5000/a/b:v1"), "localhost:5000/a/b:v1");
        assert_eq!(parsed("localhost/a"), "localhost/a:latest");
        assert_eq!(parsed("quay.io/x/y:1.0-rc_2"), "quay.io/x/y:1.0-rc_2");
        assert_eq!(
            parsed(&format!("quay.io/x/y@{d}")),
            format!("quay.io/x/y@{d}")
        );
        assert_eq!(
            parsed(&format!("quay.io/x/y:t@{d}")),
            format!("quay.io/x/y:t@{d}")
        );
        let r = Reference::parse(&format!("127.0.0.1:5000/x/y:t@{d}")).expect("valid");
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.manifest_ref(), d);
        assert_eq!(
            parsed("a__b/c-d/e--f.g_h"),
            "docker.io/a__b/c-d/e--f.g_h:latest"
        );
    }

    #[test]
    fn hostile_references_refused() {
        let long = "a".repeat(600);
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "busybox:.x",
            "busybox@sha256:abc",
            "busybox@md5:0123",
            "quay.io/../etc",
            "quay.io/a//b",
            "quay.io/a/b/",
            "quay.io:99999999/a",
            "quay.io:/a",
            "-bad.io/a",
            "a b",
            "a\nb",
            "a\u{7f}",
            "büsybox",
            "a..b",
            "a_._b",
            "x.io/a/_b",
            &long,
            &format!("busybox:{}", "t".repeat(129)),
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} accepted");
        }
        let e = Reference::parse("a\nb").expect_err("refused");
        assert!(!e.to_string().contains('\n'));
    }
}
