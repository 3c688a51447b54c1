//! `policy.json` (containers-policy.json(5)): parsing into requirements, and choosing the
//! requirements for an image by the most specific matching scope.
//!
//! Parsing is strict, as containers/image's is: unknown fields, a missing `default`, an empty
//! requirement list, two key sources in one rule, or a form this crate cannot enforce (X.509
//! keys, Fulcio, Rekor) are errors that name the place, never silently ignored — an ignored
//! field could only make the policy weaker than its author meant.

use std::collections::BTreeMap;

use base64::Engine;
use serde_json::{Map, Value};

use crate::SignatureError;
use crate::reference::{self, DockerReference, ImageIdentity};

/// The largest `policy.json` read.
pub const MAX_POLICY_BYTES: usize = 1 << 20;
/// The most scopes one transport may list.
const MAX_SCOPES: usize = 4096;
/// The most requirements one scope may list.
const MAX_REQUIREMENTS: usize = 64;
/// The most keys one rule may name.
const MAX_KEYS: usize = 64;
/// The largest inline key (`keyData`), decoded.
const MAX_KEY_DATA: usize = 256 << 10;

/// A parsed image security policy.
#[derive(Debug, Clone)]
pub struct Policy {
    default: Vec<Requirement>,
    /// The `docker` transport's scopes; other transports are checked and kept out of the way
    /// (the guest pulls only from registries).
    docker: BTreeMap<String, Vec<Requirement>>,
}

/// One requirement of a scope: all requirements of the chosen scope must accept the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Requirement {
    InsecureAcceptAnything,
    Reject,
    /// Simple signing with OpenPGP keys.
    SignedBy {
        keys: KeySource,
        identity: SignedIdentity,
    },
    /// A cosign signature in the registry, verified with public keys.
    SigstoreSigned {
        keys: KeySource,
        identity: SignedIdentity,
    },
}

impl Requirement {
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Self::InsecureAcceptAnything => "insecureAcceptAnything",
            Self::Reject => "reject",
            Self::SignedBy { .. } => "signedBy",
            Self::SigstoreSigned { .. } => "sigstoreSigned",
        }
    }
}

/// Where a rule's trusted keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeySource {
    /// URIs handed to the [`crate::ResourceFetcher`] (`kbs:///…`, `file:///…`; an absolute path
    /// is passed as `file://` + path).
    Uris(Vec<String>),
    /// Inline keys (`keyData`/`keyDatas`), decoded from base64.
    Inline(Vec<Vec<u8>>),
}

/// What the signature must claim about the image (`signedIdentity`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SignedIdentity {
    MatchExact,
    MatchRepoDigestOrExact,
    MatchRepository,
    ExactReference(DockerReference),
    ExactRepository(DockerReference),
    RemapIdentity {
        prefix: String,
        signed_prefix: String,
    },
}

/// The requirements chosen for an image, and the name of the scope they came from.
pub(crate) struct Chosen<'p> {
    /// `transports.docker["scope"]` or `default`.
    pub(crate) scope: String,
    pub(crate) requirements: &'p [Requirement],
}

impl Policy {
    /// Parses and checks `policy.json`.
    ///
    /// # Errors
    /// [`SignatureError::InvalidPolicy`] naming the JSON path of the first problem.
    pub fn parse(json: &[u8]) -> Result<Policy, SignatureError> {
        if json.len() > MAX_POLICY_BYTES {
            return Err(invalid(
                "(document)",
                format!("larger than {MAX_POLICY_BYTES} bytes"),
            ));
        }
        let value: Value = crate::json::parse(json)
            .map_err(|e| invalid("(document)", format!("not JSON: {e}")))?;
        let top = object(&value, "(document)")?;
        only_keys(top, "(document)", &["default", "transports"])?;
        let default = match top.get("default") {
            Some(v) => requirements(v, "default")?,
            None => {
                return Err(invalid(
                    "default",
                    "missing: every policy needs a default, e.g. [{\"type\": \"reject\"}]".into(),
                ));
            }
        };
        let mut docker = BTreeMap::new();
        if let Some(transports) = top.get("transports") {
            let transports = object(transports, "transports")?;
            for (transport, scopes) in transports {
                let at = if !transport.is_empty()
                    && transport.len() <= 64
                    && transport
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                {
                    format!("transports.{transport}")
                } else {
                    format!("transports.{}", quote(transport))
                };
                let scopes = object(scopes, &at)?;
                if scopes.len() > MAX_SCOPES {
                    return Err(invalid(&at, format!("more than {MAX_SCOPES} scopes")));
                }
                for (scope, reqs) in scopes {
                    let at = format!("{at}[{}]", quote(scope));
                    if transport == "docker" {
                        check_docker_scope(scope).map_err(|r| invalid(&at, r))?;
                    }
                    let reqs = requirements(reqs, &at)?;
                    if transport == "docker" {
                        docker.insert(scope.clone(), reqs);
                    }
                }
            }
        }
        Ok(Policy { default, docker })
    }

    /// The requirements for `image`: the most specific `transports.docker` scope that matches,
    /// then `transports.docker[""]`, then `default`.
    pub(crate) fn requirements_for(&self, image: &ImageIdentity) -> Chosen<'_> {
        for scope in image
            .scopes()
            .into_iter()
            .chain(std::iter::once(String::new()))
        {
            if let Some(reqs) = self.docker.get(&scope) {
                return Chosen {
                    scope: format!("transports.docker[{}]", quote(&scope)),
                    requirements: reqs,
                };
            }
        }
        Chosen {
            scope: "default".into(),
            requirements: &self.default,
        }
    }
}

/// The scope forms containers/image accepts for the docker transport: `""`, `*.domain`, or a
/// fully spelled `host[:port][/path][:tag|@digest]` (no `docker.io` shorthand).
fn check_docker_scope(scope: &str) -> Result<(), String> {
    if scope.is_empty() {
        return Ok(());
    }
    if scope.len() > reference::MAX_REFERENCE {
        return Err(format!(
            "scope longer than {} bytes",
            reference::MAX_REFERENCE
        ));
    }
    if let Some(domain) = scope.strip_prefix("*.") {
        return reference::check_registry(domain)
            .and_then(|()| {
                if domain.contains(':') {
                    Err("a wildcard scope names a domain without a port".into())
                } else {
                    Ok(())
                }
            })
            .map_err(|r| format!("wildcard scope: {r}"));
    }
    if !scope.contains('/') {
        reference::check_registry(scope).map_err(|r| format!("scope: {r}"))?;
        if !scope.contains(['.', ':']) && scope != "localhost" {
            return Err(format!(
                "{scope:?} is neither a registry host nor a full repository: write {:?} for the Docker Hub repository",
                DockerReference::parse(scope)
                    .map(|r| r.text())
                    .unwrap_or_else(|_| "host/repository".into())
            ));
        }
        return Ok(());
    }
    let parsed = DockerReference::parse(scope)?;
    if parsed.text() != scope {
        return Err(format!(
            "scope is not in canonical form: write {:?}",
            parsed.text()
        ));
    }
    if parsed.tag.is_some() && parsed.digest.is_some() {
        return Err("a scope names a tag or a digest, not both".into());
    }
    Ok(())
}

fn requirements(value: &Value, at: &str) -> Result<Vec<Requirement>, SignatureError> {
    let Value::Array(items) = value else {
        return Err(invalid(at, "expected a list of requirements".into()));
    };
    if items.is_empty() {
        return Err(invalid(
            at,
            "an empty requirement list; write [{\"type\": \"reject\"}] or [{\"type\": \"insecureAcceptAnything\"}]".into(),
        ));
    }
    if items.len() > MAX_REQUIREMENTS {
        return Err(invalid(
            at,
            format!("more than {MAX_REQUIREMENTS} requirements"),
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| requirement(item, &format!("{at}[{i}]")))
        .collect()
}

fn requirement(value: &Value, at: &str) -> Result<Requirement, SignatureError> {
    let obj = object(value, at)?;
    let Some(Value::String(kind)) = obj.get("type") else {
        return Err(invalid(at, "missing \"type\"".into()));
    };
    match kind.as_str() {
        "insecureAcceptAnything" => {
            only_keys(obj, at, &["type"])?;
            Ok(Requirement::InsecureAcceptAnything)
        }
        "reject" => {
            only_keys(obj, at, &["type"])?;
            Ok(Requirement::Reject)
        }
        "signedBy" => {
            only_keys(
                obj,
                at,
                &[
                    "type",
                    "keyType",
                    "keyPath",
                    "keyPaths",
                    "keyData",
                    "signedIdentity",
                ],
            )?;
            match obj.get("keyType") {
                Some(Value::String(t)) if t == "GPGKeys" => {}
                Some(Value::String(t)) => {
                    return Err(invalid(
                        &format!("{at}.keyType"),
                        format!(
                            "{:?} is not supported: only \"GPGKeys\" is",
                            reference::peerpod_clip(t)
                        ),
                    ));
                }
                _ => return Err(invalid(at, "missing \"keyType\": \"GPGKeys\"".into())),
            }
            let keys = key_source(obj, at, &["keyPath", "keyPaths", "keyData"])?;
            let identity = signed_identity(obj.get("signedIdentity"), at)?
                .unwrap_or(SignedIdentity::MatchRepoDigestOrExact);
            Ok(Requirement::SignedBy { keys, identity })
        }
        "sigstoreSigned" => {
            for unsupported in [
                "fulcio",
                "pki",
                "rekorPublicKeyPath",
                "rekorPublicKeyPaths",
                "rekorPublicKeyData",
                "rekorPublicKeyDatas",
            ] {
                if obj.contains_key(unsupported) {
                    return Err(invalid(
                        &format!("{at}.{unsupported}"),
                        "not supported: only public keys (keyPath, keyPaths, keyData, keyDatas) are"
                            .into(),
                    ));
                }
            }
            only_keys(
                obj,
                at,
                &[
                    "type",
                    "keyPath",
                    "keyPaths",
                    "keyData",
                    "keyDatas",
                    "signedIdentity",
                ],
            )?;
            let keys = key_source(obj, at, &["keyPath", "keyPaths", "keyData", "keyDatas"])?;
            // As containers/image (and unlike image-rs, which checks no identity), the default
            // is matchRepoDigestOrExact: cosign signs `registry/repository` without a tag, so
            // an image pulled by tag needs `signedIdentity: matchRepository` said in the policy
            // (which lets the registry serve any signed image of the repository for that tag).
            let identity = signed_identity(obj.get("signedIdentity"), at)?
                .unwrap_or(SignedIdentity::MatchRepoDigestOrExact);
            Ok(Requirement::SigstoreSigned { keys, identity })
        }
        "signedBaseLayer" => Err(invalid(
            &format!("{at}.type"),
            "\"signedBaseLayer\" is not supported".into(),
        )),
        other => Err(invalid(
            &format!("{at}.type"),
            format!(
                "unknown requirement type {:?}: expected insecureAcceptAnything, reject, signedBy or sigstoreSigned",
                reference::peerpod_clip(other)
            ),
        )),
    }
}

fn key_source(
    obj: &Map<String, Value>,
    at: &str,
    allowed: &[&str],
) -> Result<KeySource, SignatureError> {
    let present: Vec<&str> = allowed
        .iter()
        .copied()
        .filter(|k| obj.contains_key(*k))
        .collect();
    let [field] = present.as_slice() else {
        return Err(invalid(
            at,
            format!("exactly one of {} must be set", allowed.join(", ")),
        ));
    };
    let at = format!("{at}.{field}");
    let value = &obj[*field];
    let strings: Vec<&str> = match value {
        Value::String(s) if !field.ends_with('s') => vec![s.as_str()],
        Value::Array(items) if field.ends_with('s') => {
            if items.is_empty() || items.len() > MAX_KEYS {
                return Err(invalid(&at, format!("list 1 to {MAX_KEYS} keys")));
            }
            items
                .iter()
                .map(|v| {
                    v.as_str()
                        .ok_or_else(|| invalid(&at, "expected strings".into()))
                })
                .collect::<Result<_, _>>()?
        }
        _ => {
            let want = if field.ends_with('s') {
                "a list of strings"
            } else {
                "a string"
            };
            return Err(invalid(&at, format!("expected {want}")));
        }
    };
    if field.starts_with("keyPath") {
        let uris = strings
            .into_iter()
            .map(|s| key_uri(s).map_err(|r| invalid(&at, r)))
            .collect::<Result<_, _>>()?;
        Ok(KeySource::Uris(uris))
    } else {
        let keys = strings
            .into_iter()
            .map(|s| {
                if s.len() > MAX_KEY_DATA * 4 / 3 + 4 {
                    return Err(invalid(
                        &at,
                        format!("a key larger than {MAX_KEY_DATA} bytes"),
                    ));
                }
                base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map_err(|e| invalid(&at, format!("not base64: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(KeySource::Inline(keys))
    }
}

/// A key location as the resource fetcher takes it.
fn key_uri(path: &str) -> Result<String, String> {
    if path.len() > 1024 || path.chars().any(char::is_control) {
        return Err("a key path is at most 1024 printable characters".into());
    }
    if path.starts_with("kbs:///") || path.starts_with("file:///") {
        Ok(path.to_string())
    } else if path.starts_with('/') {
        Ok(format!("file://{path}"))
    } else {
        Err(format!(
            "{:?} is neither kbs:///<repository>/<type>/<tag>, file:///<path> nor an absolute path",
            reference::peerpod_clip(path)
        ))
    }
}

fn signed_identity(
    value: Option<&Value>,
    rule: &str,
) -> Result<Option<SignedIdentity>, SignatureError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let at = format!("{rule}.signedIdentity");
    let obj = object(value, &at)?;
    let Some(Value::String(kind)) = obj.get("type") else {
        return Err(invalid(&at, "missing \"type\"".into()));
    };
    let field = |name: &str| -> Result<&str, SignatureError> {
        match obj.get(name) {
            Some(Value::String(s)) => Ok(s.as_str()),
            _ => Err(invalid(&at, format!("{kind} needs a string {name:?}"))),
        }
    };
    let identity = match kind.as_str() {
        "matchExact" => {
            only_keys(obj, &at, &["type"])?;
            SignedIdentity::MatchExact
        }
        "matchRepoDigestOrExact" => {
            only_keys(obj, &at, &["type"])?;
            SignedIdentity::MatchRepoDigestOrExact
        }
        "matchRepository" => {
            only_keys(obj, &at, &["type"])?;
            SignedIdentity::MatchRepository
        }
        "exactReference" => {
            only_keys(obj, &at, &["type", "dockerReference"])?;
            let r = DockerReference::parse(field("dockerReference")?)
                .map_err(|r| invalid(&format!("{at}.dockerReference"), r))?;
            if r.tag.is_none() && r.digest.is_none() {
                return Err(invalid(
                    &format!("{at}.dockerReference"),
                    "exactReference needs a tag or a digest; use exactRepository for a repository"
                        .into(),
                ));
            }
            SignedIdentity::ExactReference(r)
        }
        "exactRepository" => {
            only_keys(obj, &at, &["type", "dockerRepository"])?;
            let r = DockerReference::parse(field("dockerRepository")?)
                .map_err(|r| invalid(&format!("{at}.dockerRepository"), r))?;
            if r.tag.is_some() || r.digest.is_some() {
                return Err(invalid(
                    &format!("{at}.dockerRepository"),
                    "a repository has no tag or digest".into(),
                ));
            }
            SignedIdentity::ExactRepository(r)
        }
        "remapIdentity" => {
            only_keys(obj, &at, &["type", "prefix", "signedPrefix"])?;
            let prefix = field("prefix")?.to_string();
            let signed_prefix = field("signedPrefix")?.to_string();
            for (name, p) in [("prefix", &prefix), ("signedPrefix", &signed_prefix)] {
                check_prefix(p).map_err(|r| invalid(&format!("{at}.{name}"), r))?;
            }
            SignedIdentity::RemapIdentity {
                prefix,
                signed_prefix,
            }
        }
        other => {
            return Err(invalid(
                &format!("{at}.type"),
                format!(
                    "unknown signedIdentity type {:?}: expected matchExact, matchRepoDigestOrExact, matchRepository, exactReference, exactRepository or remapIdentity",
                    reference::peerpod_clip(other)
                ),
            ));
        }
    };
    Ok(Some(identity))
}

/// A remapIdentity prefix is a scope of the `host[:port][/path]` or `*.domain` form.
fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Err("empty prefix".into());
    }
    if prefix.starts_with("*.") {
        return Err("a wildcard prefix is not supported: name the host or repository".into());
    }
    if prefix.contains('@')
        || (prefix.contains('/')
            && prefix
                .rsplit('/')
                .next()
                .is_some_and(|last| last.contains(':')))
    {
        return Err("a prefix names a host or repository, without tag or digest".into());
    }
    check_docker_scope(prefix)
}

fn object<'v>(value: &'v Value, at: &str) -> Result<&'v Map<String, Value>, SignatureError> {
    value
        .as_object()
        .ok_or_else(|| invalid(at, "expected a JSON object".into()))
}

fn only_keys(obj: &Map<String, Value>, at: &str, allowed: &[&str]) -> Result<(), SignatureError> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(unknown) => Err(invalid(
            at,
            format!(
                "unknown field {}: allowed here are {}",
                quote(unknown),
                allowed.join(", ")
            ),
        )),
        None => Ok(()),
    }
}

/// A JSON-quoted, clipped copy of `text` for a path in a message.
pub(crate) fn quote(text: &str) -> String {
    let mut end = text.len().min(reference::MAX_REFERENCE);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    serde_json::to_string(&text[..end]).unwrap_or_default()
}

fn invalid(at: &str, reason: String) -> SignatureError {
    SignatureError::InvalidPolicy {
        at: at.to_string(),
        reason,
    }
}
