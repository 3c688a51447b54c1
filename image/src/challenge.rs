//! `WWW-Authenticate` challenges (RFC 7235) as registries send them:
//! `Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull"`
//! or `Basic realm="Registry Realm"`.

use std::collections::BTreeMap;

/// The longest challenge header read.
pub const MAX_CHALLENGE: usize = 4096;

/// A parsed challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// Basic authentication.
    Basic,
    /// A token from `realm`, for `service` and `scope`.
    Bearer {
        /// The token endpoint (an absolute http(s) URL; checked by the caller).
        realm: String,
        /// `service=` for the token request.
        service: Option<String>,
        /// `scope=` for the token request.
        scope: Option<String>,
    },
}

/// Why a challenge is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("WWW-Authenticate: {0}")]
pub struct ChallengeError(pub &'static str);

/// Parses one challenge (the first when several are listed; registries send one).
pub fn parse(header: &str) -> Result<Challenge, ChallengeError> {
    if header.len() > MAX_CHALLENGE {
        return Err(ChallengeError("longer than 4096 bytes"));
    }
    let header = header.trim();
    let (scheme, rest) = header
        .split_once(' ')
        .map_or((header, ""), |(s, r)| (s, r.trim()));
    let params = params(rest)?;
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Ok(Challenge::Basic),
        "bearer" => {
            let realm = params
                .get("realm")
                .cloned()
                .ok_or(ChallengeError("Bearer challenge without realm"))?;
            Ok(Challenge::Bearer {
                realm,
                service: params.get("service").cloned(),
                scope: params.get("scope").cloned(),
            })
        }
        _ => Err(ChallengeError("neither Basic nor Bearer")),
    }
}

/// `key="value", key=token, …` with backslash escapes inside quotes.
fn params(mut s: &str) -> Result<BTreeMap<String, String>, ChallengeError> {
    let mut out = BTreeMap::new();
    loop {
        s = s.trim_start_matches([' ', ',']);
        if s.is_empty() {
            return Ok(out);
        }
        let (key, rest) = s
            .split_once('=')
            .ok_or(ChallengeError("a parameter without '='"))?;
        let key = key.trim().to_ascii_lowercase();
        if key.is_empty()
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(ChallengeError("a parameter name is not a token"));
        }
        let rest = rest.trim_start();
        let (value, after) = if let Some(quoted) = rest.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, e)) => value.push(e),
                        None => break,
                    },
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c if c.is_control() => {
                        return Err(ChallengeError("a control character in a value"));
                    }
                    c => value.push(c),
                }
            }
            let end = end.ok_or(ChallengeError("an unterminated quoted value"))?;
            (value, &quoted[end..])
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            (rest[..end].trim().to_string(), &rest[end..])
        };
        if out.insert(key, value).is_some() {
            return Err(ChallengeError("a parameter given twice"));
        }
        s = after;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_challenges() {
        assert_eq!(
            parse(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#
            ),
            Ok(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull".into()),
            })
        );
        assert_eq!(
            parse(r#"Basic realm="Registry Realm""#),
            Ok(Challenge::Basic)
        );
        assert_eq!(
            parse(r#"bearer realm="https://a/t", scope="repository:a/b:pull,push""#),
            Ok(Challenge::Bearer {
                realm: "https://a/t".into(),
                service: None,
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
    }

    #[test]
    fn hostile_challenges_refused() {
        for bad in [
            "Negotiate abc",
            "Bearer service=\"x\"",
            "Bearer realm=\"unterminated",
            "Bearer realm=\"a\", realm=\"b\"",
            "Bearer realm=\"a\nb\"",
            "Bearer =x",
            "Bearer realm",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(parse(&format!("Bearer realm=\"{}\"", "a".repeat(5000))).is_err());
    }
}
