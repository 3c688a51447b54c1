//! The cloud-config document the host passes as user data: only `write_files`, strictly.
//!
//! Upstream parses with `yaml.UnmarshalStrict` into `{write_files: [{path, content}]}`, so any
//! other key fails the whole document; so does ours. An entry may also carry cloud-init's
//! `encoding` (`b64`/`base64`, `gz`/`gzip`, `gz+b64`/`gzip+base64`/..., `text/plain`), which
//! upstream would refuse: we decode it. Everything is bounded: the document, the number of
//! entries, each entry's decoded content (a gzip bomb stops at the bound).

use std::io::Read as _;

use base64::Engine as _;
use serde::Deserialize;

/// The largest user data document read (1 MiB; Azure's user data is at most 64 KiB).
pub const MAX_USER_DATA: usize = 1 << 20;
/// The most `write_files` entries.
pub const MAX_ENTRIES: usize = 32;
/// The largest decoded content of one entry (512 KiB).
pub const MAX_CONTENT: usize = 512 << 10;

/// Why user data was refused.
#[derive(Debug, thiserror::Error)]
pub enum UserDataError {
    /// Over [`MAX_USER_DATA`].
    #[error("the user data is {len} bytes, over the {max}-byte limit")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not UTF-8 text.
    #[error("the user data is not UTF-8 text")]
    NotText,
    /// Not a cloud-config document of the expected shape.
    #[error("the user data is not a cloud-config document with only write_files: {0}")]
    Yaml(String),
    /// Too many entries.
    #[error("write_files has {count} entries, over the limit of {max}")]
    TooManyEntries {
        /// How many.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Two entries for one path.
    #[error("write_files names {path:?} twice")]
    Duplicate {
        /// The path, clipped.
        path: String,
    },
    /// An `encoding` we do not know.
    #[error(
        "write_files entry {path:?}: unknown encoding {encoding:?} (use b64, gzip+b64 or none)"
    )]
    Encoding {
        /// The path, clipped.
        path: String,
        /// The encoding, clipped.
        encoding: String,
    },
    /// Content that does not decode as its encoding says.
    #[error("write_files entry {path:?}: content is not valid {what}")]
    Decode {
        /// The path, clipped.
        path: String,
        /// What it should have been.
        what: &'static str,
    },
    /// Decoded content over [`MAX_CONTENT`].
    #[error("write_files entry {path:?}: content is over the {max}-byte limit")]
    ContentTooLarge {
        /// The path, clipped.
        path: String,
        /// The limit.
        max: usize,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCloudConfig {
    #[serde(default)]
    write_files: Option<Vec<RawWriteFile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWriteFile {
    path: String,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    encoding: Option<String>,
}

/// One `write_files` entry, its content decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteFile {
    /// The path as given (not yet checked against the allow-list).
    pub path: String,
    /// The decoded content.
    pub content: Vec<u8>,
}

/// A parsed cloud-config document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloudConfig {
    /// The `write_files` entries, in order.
    pub write_files: Vec<WriteFile>,
}

/// A path clipped and made printable for messages (the host chose it).
pub(crate) fn shown(path: &str) -> String {
    path.chars()
        .take(200)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// What the parser found wrong, in fixed words of ours. The parser's own message quotes the
/// document (values, unknown keys, numbers, escaped quotes inside strings), and user data
/// carries TLS keys and credentials, so nothing of it is kept but its kind.
fn problem(message: &str) -> &'static str {
    const KINDS: [(&str, &str); 8] = [
        (
            "unknown field",
            "a key other than write_files, or other than path, content and encoding in an entry",
        ),
        ("missing field", "a write_files entry without its path"),
        ("duplicate field", "a key given twice"),
        (
            "invalid type",
            "a value of the wrong type (write_files is a list of maps of strings)",
        ),
        ("invalid value", "a value that is not allowed there"),
        ("invalid length", "a list of the wrong length"),
        ("recursion limit exceeded", "nesting too deep"),
        ("repetition limit exceeded", "too many aliases"),
    ];
    // The kind comes first in the parser's message; a quoted value after it may hold any text.
    KINDS
        .iter()
        .filter_map(|(marker, kind)| message.find(marker).map(|at| (at, *kind)))
        .min_by_key(|(at, _)| *at)
        .map_or("not valid YAML", |(_, kind)| kind)
}

impl CloudConfig {
    /// Parses user data (already base64-decoded where the source encodes it).
    pub fn parse(raw: &[u8]) -> Result<Self, UserDataError> {
        if raw.len() > MAX_USER_DATA {
            return Err(UserDataError::TooLarge {
                len: raw.len(),
                max: MAX_USER_DATA,
            });
        }
        let text = std::str::from_utf8(raw).map_err(|_| UserDataError::NotText)?;
        let parsed: RawCloudConfig = serde_yaml_ng::from_str(text).map_err(|e| {
            // The location and the kind of problem; never the parser's quote of the content.
            let at = e
                .location()
                .map(|l| format!(" at line {}, column {}", l.line(), l.column()))
                .unwrap_or_default();
            UserDataError::Yaml(format!("{}{at}", problem(&e.to_string())))
        })?;
        let raw_files = parsed.write_files.unwrap_or_default();
        if raw_files.len() > MAX_ENTRIES {
            return Err(UserDataError::TooManyEntries {
                count: raw_files.len(),
                max: MAX_ENTRIES,
            });
        }
        let mut write_files: Vec<WriteFile> = Vec::with_capacity(raw_files.len());
        for f in raw_files {
            if write_files.iter().any(|w| w.path == f.path) {
                return Err(UserDataError::Duplicate {
                    path: shown(&f.path),
                });
            }
            let content = decode(
                &f.path,
                f.content.unwrap_or_default(),
                f.encoding.as_deref(),
            )?;
            write_files.push(WriteFile {
                path: f.path,
                content,
            });
        }
        Ok(Self { write_files })
    }
}

fn decode(path: &str, content: String, encoding: Option<&str>) -> Result<Vec<u8>, UserDataError> {
    let too_large = || UserDataError::ContentTooLarge {
        path: shown(path),
        max: MAX_CONTENT,
    };
    let (b64, gz) = match encoding.map(str::to_ascii_lowercase).as_deref() {
        None | Some("text/plain") => (false, false),
        Some("b64" | "base64") => (true, false),
        Some("gz" | "gzip") => (false, true),
        Some("gz+b64" | "gz+base64" | "gzip+b64" | "gzip+base64") => (true, true),
        Some(_) => {
            return Err(UserDataError::Encoding {
                path: shown(path),
                encoding: shown(encoding.unwrap_or_default()),
            });
        }
    };
    let bytes = if b64 {
        let compact: String = content.split_ascii_whitespace().collect();
        base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map_err(|_| UserDataError::Decode {
                path: shown(path),
                what: "base64",
            })?
    } else {
        content.into_bytes()
    };
    let bytes = if gz {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes.as_slice())
            .take(MAX_CONTENT as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|_| UserDataError::Decode {
                path: shown(path),
                what: "gzip",
            })?;
        out
    } else {
        bytes
    };
    if bytes.len() > MAX_CONTENT {
        return Err(too_large());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caa_shape_parses() -> Result<(), UserDataError> {
        let c = CloudConfig::parse(
            b"#cloud-config\nwrite_files:\n- path: /run/peerpod/apf.json\n  content: |\n    {\"a\":1}\n\
              - path: /run/peerpod/auth.json\n  content: \"\"\n- path: /run/peerpod/x\n",
        )?;
        assert_eq!(c.write_files.len(), 3);
        assert_eq!(c.write_files[0].content, b"{\"a\":1}\n");
        assert!(c.write_files[1].content.is_empty());
        assert!(c.write_files[2].content.is_empty());
        Ok(())
    }

    #[test]
    fn encodings_decode() -> Result<(), UserDataError> {
        use std::io::Write as _;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"zipped")
            .map_err(|_| UserDataError::NotText)?;
        let gz = base64::engine::general_purpose::STANDARD
            .encode(gz.finish().map_err(|_| UserDataError::NotText)?);
        let doc = format!(
            "write_files:\n- path: /a\n  encoding: b64\n  content: aGVs\n    bG8=\n\
             - path: /b\n  encoding: gzip+base64\n  content: {gz}\n"
        );
        let c = CloudConfig::parse(doc.as_bytes())?;
        assert_eq!(c.write_files[0].content, b"hello");
        assert_eq!(c.write_files[1].content, b"zipped");
        Ok(())
    }

    #[test]
    fn strictness() {
        let refused = |doc: &str| CloudConfig::parse(doc.as_bytes()).err();
        // Upstream's UnmarshalStrict refuses unknown keys: so do we.
        assert!(matches!(
            refused("runcmd: [reboot]\nwrite_files: []\n"),
            Some(UserDataError::Yaml(_))
        ));
        assert!(matches!(
            refused("write_files:\n- path: /a\n  owner: root\n"),
            Some(UserDataError::Yaml(_))
        ));
        assert!(matches!(
            refused("write_files:\n- path: /a\n  content: x\n  content: y\n"),
            Some(UserDataError::Yaml(_))
        ));
        assert!(matches!(
            refused("write_files:\n- path: /a\n- path: /a\n"),
            Some(UserDataError::Duplicate { .. })
        ));
        assert!(matches!(
            refused("write_files:\n- path: /a\n  encoding: rot13\n"),
            Some(UserDataError::Encoding { .. })
        ));
        assert!(matches!(
            refused("write_files:\n- path: /a\n  encoding: b64\n  content: '!!'\n"),
            Some(UserDataError::Decode { .. })
        ));
        assert!(matches!(
            refused("this is not yaml: [\n"),
            Some(UserDataError::Yaml(_))
        ));
        assert!(matches!(
            refused("- a list\n"),
            Some(UserDataError::Yaml(_))
        ));
        assert!(matches!(
            CloudConfig::parse(b"\xff\xfe"),
            Err(UserDataError::NotText)
        ));
    }

    #[test]
    fn bounds() {
        let many: String = (0..=MAX_ENTRIES)
            .map(|i| format!("- path: /f{i}\n"))
            .collect();
        assert!(matches!(
            CloudConfig::parse(format!("write_files:\n{many}").as_bytes()),
            Err(UserDataError::TooManyEntries { .. })
        ));
        let big = "x".repeat(MAX_CONTENT + 1);
        assert!(matches!(
            CloudConfig::parse(format!("write_files:\n- path: /a\n  content: {big}\n").as_bytes()),
            Err(UserDataError::ContentTooLarge { .. })
        ));
        assert!(matches!(
            CloudConfig::parse(&vec![b' '; MAX_USER_DATA + 1]),
            Err(UserDataError::TooLarge { .. })
        ));
        // A gzip bomb stops at the bound instead of inflating.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut gz, &vec![0u8; 8 << 20]).expect("in-memory gzip");
        let gz = base64::engine::general_purpose::STANDARD.encode(gz.finish().expect("gzip"));
        assert!(matches!(
            CloudConfig::parse(
                format!("write_files:\n- path: /a\n  encoding: gz+b64\n  content: {gz}\n")
                    .as_bytes()
            ),
            Err(UserDataError::ContentTooLarge { .. })
        ));
    }

    /// Values with quotes (escaped in the parser's message), unknown keys and numbers: none of
    /// them reaches the message, which is the kind of problem, its line and its column.
    #[test]
    fn error_messages_are_the_kind_and_the_place_only() {
        for (doc, kind) in [
            (
                "write_files:\n- path: /a\n  content: x\n  \"pa\\\"ss-SECRET-1\": y\n",
                "a key other than write_files",
            ),
            (
                "write_files:\n- path: [\"x\\\" SECRET-2 \\\"\"]\n",
                "a value of the wrong type",
            ),
            (
                "write_files:\n- path: /a\n  content: [77777]\n",
                "a value of the wrong type",
            ),
            ("write_files: 77777\n", "a value of the wrong type"),
            (
                "write_files: 'it''s \"SECRET-3\"'\n",
                "a value of the wrong type",
            ),
            ("SECRET-4-key: 1\n", "a key other than write_files"),
            (
                "write_files:\n- content: \"SECRET-5\"\n",
                "without its path",
            ),
            ("write_files:\n- path: \"SECRET-6\\q\"\n", "not valid YAML"),
            (
                "write_files: [\"unknown field SECRET-7\"]\n",
                "a value of the wrong type",
            ),
        ] {
            let e = CloudConfig::parse(doc.as_bytes())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(kind), "{doc:?}: {e}");
            assert!(
                e.contains(" at line ") && e.contains(", column "),
                "{doc:?}: {e}"
            );
            for leak in ["SECRET", "77777", "\\", "`"] {
                let rest = e.trim_start_matches("the user data is not a cloud-config document");
                assert!(!rest.contains(leak), "{doc:?} leaked {leak:?}: {e}");
            }
            assert_eq!(e.matches('"').count(), 0, "{doc:?}: {e}");
        }
    }

    #[test]
    fn error_messages_do_not_quote_content() {
        let doc = "write_files:\n- path: /a\n  content: SECRET-VALUE\n  bogus: SECRET-VALUE\n";
        let e = CloudConfig::parse(doc.as_bytes())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("line"), "{e}");
        assert!(!e.contains("SECRET-VALUE"), "{e}");
        for doc in [
            "write_files: SECRET-VALUE\n",
            "write_files:\n- path: [SECRET-VALUE]\n",
            "write_files:\n- SECRET-VALUE\n",
        ] {
            let e = CloudConfig::parse(doc.as_bytes())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains("not a cloud-config"), "{e}");
            assert!(!e.contains("SECRET-VALUE"), "{e}");
        }
    }
}
