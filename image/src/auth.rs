//! Registry credentials from a containers `auth.json` (`{"auths": {"<key>": {"auth":
//! "<base64 user:password>"}}}`; `username`/`password` fields are read too).
//!
//! A key is a registry (`quay.io`, `localhost:5000`), a registry with a repository path prefix
//! (`quay.io/team`: the most specific key wins, as in containers/image), or Docker's legacy
//! URL form (`https://index.docker.io/v1/`). Passwords, the `auth` field and the tokens the
//! client gets for them are [`Secret`]s: wiped from memory when dropped, `<redacted>` when
//! Debug-printed, never in errors or logs.

use std::collections::BTreeMap;

use base64::Engine;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::reference::{DOCKER_HUB, Reference};

/// The largest `auth.json` read.
pub const MAX_AUTH_FILE: usize = 1 << 20;

/// A secret string (a password, a token, an `Authorization` value): zeroed when dropped,
/// printed as `<redacted>` by Debug, no Display; [`Secret::expose`] is the only way to the text.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Takes `text` (moved, not copied).
    pub fn new(text: String) -> Self {
        Self(Zeroizing::new(text))
    }

    /// The secret text, for the one place that must send it.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }

    /// Whether the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self::new)
    }
}

/// A user name and password for one registry.
#[derive(Clone)]
pub struct Credential {
    /// The user name.
    pub username: String,
    /// The password or token.
    pub password: Secret,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field("password", &self.password)
            .finish()
    }
}

/// Why an `auth.json` is refused. Never quotes the file's contents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("registry credentials (auth.json): {0}")]
pub struct AuthError(pub String);

/// The parsed file: credentials by normalised key.
#[derive(Debug, Clone, Default)]
pub struct AuthFile {
    entries: BTreeMap<String, Credential>,
}

impl AuthFile {
    /// Parses an `auth.json`.
    pub fn parse(bytes: &[u8]) -> Result<Self, AuthError> {
        #[derive(Deserialize)]
        struct File {
            #[serde(default)]
            auths: BTreeMap<String, Entry>,
        }
        #[derive(Deserialize)]
        struct Entry {
            auth: Option<Secret>,
            username: Option<String>,
            password: Option<Secret>,
        }
        if bytes.len() > MAX_AUTH_FILE {
            return Err(AuthError(format!("larger than {MAX_AUTH_FILE} bytes")));
        }
        // serde_json's error names a position, never the text.
        let file: File = serde_json::from_slice(bytes).map_err(|e| {
            AuthError(format!(
                "not JSON of the form {{\"auths\": {{\"<registry>\": {{\"auth\": \"<base64 \
                 user:password>\"}}}}}} (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        let mut entries = BTreeMap::new();
        for (key, entry) in file.auths {
            let name = normalise_key(&key);
            let cred = match (entry.auth, entry.username, entry.password) {
                (Some(auth), _, _) if !auth.is_empty() => {
                    let decoded = Zeroizing::new(
                        base64::engine::general_purpose::STANDARD
                            .decode(auth.expose().trim())
                            .map_err(|_| {
                                AuthError(format!("{name:?}: \"auth\" is not standard base64"))
                            })?,
                    );
                    let text = std::str::from_utf8(&decoded).map_err(|_| {
                        AuthError(format!("{name:?}: \"auth\" is not UTF-8 user:password"))
                    })?;
                    let (user, pass) = text.split_once(':').ok_or_else(|| {
                        AuthError(format!("{name:?}: \"auth\" is not user:password"))
                    })?;
                    Credential {
                        username: user.to_string(),
                        password: Secret::new(pass.to_string()),
                    }
                }
                (_, Some(username), Some(password)) => Credential { username, password },
                _ => {
                    return Err(AuthError(format!(
                        "{name:?}: neither \"auth\" nor \"username\" and \"password\""
                    )));
                }
            };
            if cred.username.bytes().any(|b| b.is_ascii_control()) {
                return Err(AuthError(format!(
                    "{name:?}: the user name has control characters"
                )));
            }
            entries.insert(name, cred);
        }
        Ok(Self { entries })
    }

    /// The credential for `reference`: the longest key that is its registry or a
    /// `registry/path` prefix of its repository.
    pub fn lookup(&self, reference: &Reference) -> Option<&Credential> {
        let full = format!("{}/{}", reference.registry, reference.repository);
        let mut best: Option<(&String, &Credential)> = None;
        for (key, cred) in &self.entries {
            let matches = *key == reference.registry
                || (full.starts_with(key.as_str())
                    && full.as_bytes().get(key.len()) == Some(&b'/'))
                || *key == full;
            if matches && best.is_none_or(|(k, _)| key.len() > k.len()) {
                best = Some((key, cred));
            }
        }
        best.map(|(_, c)| c)
    }

    /// How many entries the file has.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the file has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// `https://index.docker.io/v1/` → `docker.io`; `http://host:5000` → `host:5000`.
fn normalise_key(key: &str) -> String {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"));
    let k = match k {
        // The URL form names a host; its path (`/v1/`) is not a repository.
        Some(rest) => rest.split('/').next().unwrap_or_default(),
        None => key.trim_end_matches('/'),
    };
    let (host, path) = match k.split_once('/') {
        Some((h, p)) => (h, Some(p)),
        None => (k, None),
    };
    let host = match host {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB,
        h => h,
    };
    match path {
        Some(p) => format!("{host}/{p}"),
        None => host.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn lookup_most_specific() {
        let json = format!(
            r#"{{"auths": {{
                "quay.io": {{"auth": "{}"}},
                "quay.io/team": {{"auth": "{}"}},
                "https://index.docker.io/v1/": {{"auth": "{}"}},
                "localhost:5000": {{"username": "u", "password": "p:w"}}
            }}}}"#,
            b64("general:one"),
            b64("team:two"),
            b64("hub:three:with:colons")
        );
        let f = AuthFile::parse(json.as_bytes()).expect("valid");
        let user = |r: &str| {
            f.lookup(&Reference::parse(r).expect("ref"))
                .map(|c| (c.username.clone(), c.password.expose().to_string()))
        };
        assert_eq!(
            user("quay.io/other/x"),
            Some(("general".into(), "one".into()))
        );
        assert_eq!(user("quay.io/team/x"), Some(("team".into(), "two".into())));
        assert_eq!(
            user("quay.io/teamx/x"),
            Some(("general".into(), "one".into()))
        );
        assert_eq!(
            user("busybox"),
            Some(("hub".into(), "three:with:colons".into()))
        );
        assert_eq!(user("localhost:5000/a"), Some(("u".into(), "p:w".into())));
        assert_eq!(user("ghcr.io/a"), None);
        assert!(!format!("{:?}", f).contains("one"));
    }

    #[test]
    fn secrets_never_debug_printed() {
        let json = format!(
            r#"{{"auths": {{"a.io": {{"auth": "{}"}}, "b.io": {{"username": "u", "password": "pw-b-7781"}}}}}}"#,
            b64("user:pw-a-4411")
        );
        let f = AuthFile::parse(json.as_bytes()).expect("valid");
        let a = f
            .lookup(&Reference::parse("a.io/x").expect("ref"))
            .expect("a.io");
        let b = f
            .lookup(&Reference::parse("b.io/x").expect("ref"))
            .expect("b.io");
        assert_eq!(a.password.expose(), "pw-a-4411");
        assert_eq!(b.password.expose(), "pw-b-7781");
        for text in [
            format!("{f:?}"),
            format!("{f:#?}"),
            format!("{a:?}"),
            format!("{:?}", a.password),
            format!("{:?}", b.password),
            format!("{:?}", Secret::new("Bearer tok-9931".into())),
        ] {
            for secret in ["pw-a-4411", "pw-b-7781", "tok-9931", &b64("user:pw-a-4411")] {
                assert!(!text.contains(secret), "{text}");
            }
            assert!(text.contains("<redacted>"), "{text}");
        }
    }

    #[test]
    fn bad_files_refused_without_echo() {
        for bad in [
            r#"{"auths": {"x.io": {"auth": "!!!secret!!!"}}}"#.to_string(),
            format!(
                r#"{{"auths": {{"x.io": {{"auth": "{}"}}}}}}"#,
                b64("nocolonsecret")
            ),
            r#"{"auths": {"x.io": {}}}"#.to_string(),
            r#"{"auths": "secret"}"#.to_string(),
            "secret".to_string(),
        ] {
            let e = AuthFile::parse(bad.as_bytes()).expect_err(&bad).to_string();
            assert!(!e.contains("secret"), "{e}");
        }
        assert!(AuthFile::parse(&vec![b' '; MAX_AUTH_FILE + 1]).is_err());
        assert!(AuthFile::parse(b"{}").expect("empty").is_empty());
    }
}
