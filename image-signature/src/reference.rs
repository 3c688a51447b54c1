//! Docker references as signatures and policies spell them: parsing, normalisation
//! (`busybox` → `docker.io/library/busybox`) and the scope names an image matches.

use crate::SignatureError;

/// The longest reference accepted anywhere (a policy scope, a signed identity).
pub(crate) const MAX_REFERENCE: usize = 512;

/// The registry that a reference without one means.
const DOCKER_HUB: &str = "docker.io";

/// A parsed, normalised docker reference: `registry/repository[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DockerReference {
    pub(crate) registry: String,
    pub(crate) repository: String,
    pub(crate) tag: Option<String>,
    pub(crate) digest: Option<String>,
}

impl DockerReference {
    /// Parses `text` as docker's `ParseNormalizedNamed` does: a first component without `.` or
    /// `:` that is not `localhost` is a path on `docker.io`, and a one-component path on
    /// `docker.io` is under `library/`.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("empty reference".into());
        }
        if text.len() > MAX_REFERENCE {
            return Err(format!("reference longer than {MAX_REFERENCE} bytes"));
        }
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => {
                check_digest(digest)?;
                (rest, Some(digest.to_string()))
            }
            None => (text, None),
        };
        // A tag is after the last ':' that follows the last '/' (a ':' before it is a port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].find(':') {
            Some(i) => {
                let at = last_slash + i;
                let tag = &rest[at + 1..];
                check_tag(tag)?;
                (&rest[..at], Some(tag.to_string()))
            }
            None => (rest, None),
        };
        let (registry, repository) = split_registry(name);
        check_registry(&registry)?;
        check_repository(&repository)?;
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository`.
    pub(crate) fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The full normalised text.
    pub(crate) fn text(&self) -> String {
        let mut out = self.name();
        if let Some(tag) = &self.tag {
            out.push(':');
            out.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            out.push('@');
            out.push_str(digest);
        }
        out
    }
}

fn split_registry(name: &str) -> (String, String) {
    let (registry, path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first, rest)
        }
        _ => (DOCKER_HUB, name),
    };
    // Docker's legacy index name is the same registry.
    let registry = if registry == "index.docker.io" {
        DOCKER_HUB
    } else {
        registry
    };
    if registry == DOCKER_HUB && !path.contains('/') {
        (registry.to_string(), format!("library/{path}"))
    } else {
        (registry.to_string(), path.to_string())
    }
}

/// `host[:port]`: a DNS name or IPv4 address, lowercase letters, digits, `.`, `-`, and a port.
pub(crate) fn check_registry(registry: &str) -> Result<(), String> {
    let (host, port) = match registry.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (registry, None),
    };
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        || host.starts_with(['.', '-'])
        || host.ends_with(['.', '-'])
    {
        return Err(format!("registry {registry:?} is not a host name[:port]"));
    }
    if let Some(port) = port
        && (port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("registry {registry:?} has a bad port"));
    }
    Ok(())
}

/// Path components of lowercase letters and digits joined by `.`, `_`, `__` or dashes.
pub(crate) fn check_repository(repository: &str) -> Result<(), String> {
    if repository.is_empty() {
        return Err("empty repository".into());
    }
    for component in repository.split('/') {
        let bytes = component.as_bytes();
        let ok_ends = bytes.first().is_some_and(u8::is_ascii_alphanumeric)
            && bytes.last().is_some_and(u8::is_ascii_alphanumeric);
        let ok_chars = bytes.iter().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
        let ok_separators =
            !component.contains("..") && !component.contains("___") && !component.contains("._");
        if !ok_ends || !ok_chars || !ok_separators {
            return Err(format!(
                "repository {repository:?}: component {component:?} is not lowercase letters and digits separated by '.', '_', '__' or '-'"
            ));
        }
    }
    Ok(())
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub(crate) fn check_tag(tag: &str) -> Result<(), String> {
    let bytes = tag.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!("tag {tag:?} is not a docker tag"))
    }
}

/// `sha256:<64 lowercase hex>` or `sha512:<128 lowercase hex>`.
pub(crate) fn check_digest(digest: &str) -> Result<(), String> {
    let ok = match digest.split_once(':') {
        Some(("sha256", hex)) => is_lower_hex(hex, 64),
        Some(("sha512", hex)) => is_lower_hex(hex, 128),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "digest {:?} is not sha256:<64 hex> or sha512:<128 hex>",
            peerpod_clip(digest)
        ))
    }
}

fn is_lower_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// At most 80 bytes of `text` (on a character boundary), for messages.
pub(crate) fn peerpod_clip(text: &str) -> &str {
    let mut end = text.len().min(80);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The image being verified: where it came from and which manifest was pulled.
///
/// `registry` and `repository` are normalised (`docker.io`, `library/busybox`); `tag` is the
/// tag the user asked for (`None` for an image pulled by digest); `manifest_digest` is the
/// digest of the manifest the reference resolved to, exactly as fetched — for a multi-platform
/// image the digest of the index, which is what `skopeo`/`cosign` sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageIdentity {
    /// `host[:port]`, e.g. `registry.example:5000` or `docker.io`.
    pub registry: String,
    /// The repository path, e.g. `library/busybox`.
    pub repository: String,
    /// The tag the image was referenced by, if any.
    pub tag: Option<String>,
    /// `sha256:<hex>` of the manifest (or index) the reference resolved to.
    pub manifest_digest: String,
}

impl ImageIdentity {
    /// Checks every field's syntax (all of them end up in URLs, tags and messages).
    pub(crate) fn check(&self) -> Result<(), SignatureError> {
        check_registry(&self.registry).map_err(SignatureError::InvalidImage)?;
        check_repository(&self.repository).map_err(SignatureError::InvalidImage)?;
        if let Some(tag) = &self.tag {
            check_tag(tag).map_err(SignatureError::InvalidImage)?;
        }
        check_digest(&self.manifest_digest).map_err(SignatureError::InvalidImage)?;
        Ok(())
    }

    /// `registry/repository`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The reference the user pulled: `registry/repository:tag`, or `registry/repository@digest`
    /// without a tag.
    pub fn reference(&self) -> DockerReferenceText {
        match &self.tag {
            Some(tag) => DockerReferenceText(format!("{}:{tag}", self.name())),
            None => DockerReferenceText(format!("{}@{}", self.name(), self.manifest_digest)),
        }
    }

    /// The policy scopes this image matches, most specific first: the full reference, the
    /// repository, each parent namespace down to the registry, then `*.domain` wildcards for the
    /// registry's host (port removed), as containers/image orders them.
    pub(crate) fn scopes(&self) -> Vec<String> {
        let mut out = vec![self.reference().0];
        let mut name = self.name();
        out.push(name.clone());
        while let Some(slash) = name.rfind('/') {
            name.truncate(slash);
            out.push(name.clone());
        }
        let mut host = self
            .registry
            .split_once(':')
            .map_or(self.registry.as_str(), |(h, _)| h);
        while let Some(dot) = host.find('.') {
            out.push(format!("*{}", &host[dot..]));
            host = &host[dot + 1..];
        }
        out
    }

    /// `registry/repository[:tag]@digest`, for messages.
    pub(crate) fn display(&self) -> String {
        match &self.tag {
            Some(tag) => format!("{}:{tag}@{}", self.name(), self.manifest_digest),
            None => format!("{}@{}", self.name(), self.manifest_digest),
        }
    }
}

/// A reference in text form (`registry/repository:tag` or `registry/repository@digest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerReferenceText(pub String);

impl std::fmt::Display for DockerReferenceText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
