//! Resource URIs: `kbs://[<host>[:<port>]]/<repository>/<type>/<tag>[?<query>]`.
//!
//! The host part is kept but not used to route: resources always come from the configured KBS,
//! as upstream's CDH does. The path must be exactly three segments of `[A-Za-z0-9_.-]` not
//! starting with a dot (the KBS protocol's rule), so a URI can never name a path outside the
//! repository tree.

use std::fmt;

use peerpod_kbs_protocol::messages::ResourcePath;

/// The longest authority and query accepted.
const MAX_PART: usize = 256;

/// A parsed resource URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceUri {
    /// `host[:port]`, possibly empty.
    pub authority: String,
    /// `<repository>/<type>/<tag>`.
    pub path: ResourcePath,
    /// The query, without `?`, possibly empty.
    pub query: String,
}

/// Why a text is not a resource URI.
#[derive(Debug, thiserror::Error)]
#[error("{uri:?} is not a resource URI kbs://[host[:port]]/<repository>/<type>/<tag>: {reason}")]
pub struct UriError {
    /// The text (cut to 200 characters).
    pub uri: String,
    /// What is wrong.
    pub reason: String,
}

impl ResourceUri {
    /// Parses a `kbs://` URI.
    pub fn parse(text: &str) -> Result<Self, UriError> {
        let err = |reason: &str| UriError {
            uri: text.chars().take(200).collect(),
            reason: reason.to_string(),
        };
        let rest = text
            .strip_prefix("kbs://")
            .ok_or_else(|| err("the scheme must be kbs://"))?;
        let (authority, rest) = rest
            .split_once('/')
            .ok_or_else(|| err("no path after the authority"))?;
        // The URI comes from the host (a request or a sealed secret's kid) and is quoted in
        // errors and logs: host[:port] characters only, and a printable query, both short.
        let host_char =
            |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-' | '[' | ']');
        if authority.len() > MAX_PART || !authority.chars().all(host_char) {
            return Err(err("the authority must be host[:port]"));
        }
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        if query.len() > MAX_PART || !query.chars().all(|c| c.is_ascii_graphic()) {
            return Err(err(
                "the query must be printable ASCII of at most 256 bytes",
            ));
        }
        let path = ResourcePath::parse(path).map_err(|e| err(&e.to_string()))?;
        Ok(Self {
            authority: authority.to_string(),
            path,
            query: query.to_string(),
        })
    }
}

impl fmt::Display for ResourceUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kbs://{}/{}", self.authority, self.path)?;
        if !self.query.is_empty() {
            write!(f, "?{}", self.query)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_that_parse_and_print_back() {
        for text in [
            "kbs:///default/key/one",
            "kbs://kbs.example:8080/repo/type/tag",
            "kbs:///default/key/one?version=2",
        ] {
            let uri = ResourceUri::parse(text).expect(text);
            assert_eq!(uri.to_string(), text);
        }
        let uri = ResourceUri::parse("kbs://h:1/a/b/c").expect("uri");
        assert_eq!(uri.authority, "h:1");
        assert_eq!(uri.path.to_string(), "a/b/c");
    }

    #[test]
    fn forms_that_do_not() {
        let long_query = format!("kbs:///a/b/c?{}", "x".repeat(257));
        let long_host = format!("kbs://{}/a/b/c", "h".repeat(257));
        for text in [
            "http:///a/b/c",
            "kbs://a/b/c",
            "kbs:///a/b",
            "kbs:///a/b/c/d",
            "kbs:///a/../c",
            "kbs:///a/b/.hidden",
            "kbs://user@host/a/b/c",
            "kbs:///a//c",
            "kbs://host\nforged log line/a/b/c",
            "kbs://ho\u{1b}[31mst/a/b/c",
            "kbs:///a/b/c?x=1\nforged",
            "kbs:///a/b/c?x=\u{7f}",
            long_query.as_str(),
            long_host.as_str(),
            "",
        ] {
            let err = ResourceUri::parse(text).expect_err(text);
            assert!(err.to_string().contains("is not a resource URI"), "{err}");
        }
    }
}
