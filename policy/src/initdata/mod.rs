//! Initdata: the TOML document that carries a pod VM's configuration, and its digest.
//!
//! An initdata document looks like this:
//!
//! ```toml
//! version = "0.1.0"
//! algorithm = "sha256"
//!
//! [data]
//! "aa.toml" = '''...'''
//! "cdh.toml" = '''...'''
//! "policy.rego" = '''...'''
//! ```
//!
//! The digest is taken over exactly the bytes of the document (after the annotation's gzip layer is
//! removed), with the algorithm the document names. [`Digest`] derives the values each platform
//! measures from it: see [`Digest::azure_vtpm_pcr8`], [`Digest::snp_hostdata`] and
//! [`Digest::tdx_mrconfigid`].

mod annotation;
mod check;
mod digest;

pub use annotation::{AnnotationError, DEFAULT_DECODE_LIMIT, decode_annotation, encode_annotation};
pub use check::{AZURE_USER_DATA_CAP, CheckReport, Finding, Severity};
pub use digest::{Algorithm, Digest, Platform};

use std::collections::BTreeMap;

/// The only initdata specification version defined so far.
pub const VERSION: &str = "0.1.0";

/// The data key holding the attestation agent's configuration.
pub const AA_TOML: &str = "aa.toml";
/// The data key holding the confidential data hub's configuration.
pub const CDH_TOML: &str = "cdh.toml";
/// The data key holding the agent policy.
pub const POLICY_REGO: &str = "policy.rego";

/// Why an initdata document was refused.
#[derive(Debug, thiserror::Error)]
pub enum InitDataError {
    /// The document is not UTF-8 text.
    #[error("initdata is not UTF-8 text")]
    NotUtf8(#[source] std::str::Utf8Error),
    /// The document is not valid TOML.
    #[error("initdata is not valid TOML")]
    Toml(#[source] toml::de::Error),
    /// A required key is absent.
    #[error("initdata has no `{key}` key; add `{key} = {example}` at the top of the document")]
    MissingKey {
        /// The missing key.
        key: &'static str,
        /// An example value for the fix.
        example: &'static str,
    },
    /// A key has a value of the wrong TOML type.
    #[error("initdata key `{key}` must be {expected}, found a {found}")]
    WrongType {
        /// The offending key, as a dotted path.
        key: String,
        /// What the specification requires.
        expected: &'static str,
        /// The TOML type found.
        found: &'static str,
    },
    /// The `version` is not one this implementation knows.
    #[error("unsupported initdata version {found:?}: the only defined version is \"0.1.0\"")]
    UnsupportedVersion {
        /// The version found in the document.
        found: String,
    },
    /// The `algorithm` is not one of the accepted names.
    #[error(
        "unsupported initdata algorithm {found:?}: use one of \"sha256\", \"sha384\", \"sha512\" \
         (IANA spellings such as \"sha-384\" are refused by Trustee too)"
    )]
    UnsupportedAlgorithm {
        /// The algorithm name found in the document.
        found: String,
    },
    /// A top-level key other than `version`, `algorithm` and `data`.
    #[error(
        "unknown top-level initdata key `{key}`: only `version`, `algorithm` and `data` are allowed; \
         put configuration files under [data]"
    )]
    UnknownKey {
        /// The unknown key.
        key: String,
    },
}

/// A parsed initdata document together with the exact bytes it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitData {
    raw: Vec<u8>,
    algorithm: Algorithm,
    data: BTreeMap<String, String>,
}

impl InitData {
    /// Parses and validates an initdata TOML document.
    ///
    /// The bytes are kept as given: the digest is computed over them, not over a re-serialisation.
    pub fn parse(raw: &[u8]) -> Result<Self, InitDataError> {
        let text = std::str::from_utf8(raw).map_err(InitDataError::NotUtf8)?;
        let table: toml::Table = text.parse().map_err(InitDataError::Toml)?;

        if let Some(key) = table
            .keys()
            .find(|k| !matches!(k.as_str(), "version" | "algorithm" | "data"))
        {
            return Err(InitDataError::UnknownKey { key: key.clone() });
        }

        let version = string_key(&table, "version", "\"0.1.0\"")?;
        if version != VERSION {
            return Err(InitDataError::UnsupportedVersion {
                found: version.to_owned(),
            });
        }
        let algorithm = string_key(&table, "algorithm", "\"sha256\"")?;
        let algorithm =
            Algorithm::from_name(algorithm).ok_or_else(|| InitDataError::UnsupportedAlgorithm {
                found: algorithm.to_owned(),
            })?;

        let mut data = BTreeMap::new();
        match table.get("data") {
            None => {}
            Some(toml::Value::Table(entries)) => {
                for (key, value) in entries {
                    let toml::Value::String(text) = value else {
                        return Err(InitDataError::WrongType {
                            key: format!("data.\"{key}\""),
                            expected: "a string",
                            found: value.type_str(),
                        });
                    };
                    data.insert(key.clone(), text.clone());
                }
            }
            Some(other) => {
                return Err(InitDataError::WrongType {
                    key: "data".to_owned(),
                    expected: "a table ([data])",
                    found: other.type_str(),
                });
            }
        }

        Ok(Self {
            raw: raw.to_vec(),
            algorithm,
            data,
        })
    }

    /// Decodes the annotation form (base64 of gzip) and parses the document inside.
    pub fn from_annotation(text: &str, limit: usize) -> Result<Self, FromAnnotationError> {
        let raw = decode_annotation(text, limit)?;
        Ok(Self::parse(&raw)?)
    }

    /// The exact bytes of the document.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The document as text (it was checked to be UTF-8 when parsed).
    pub fn text(&self) -> &str {
        // Invariant: `parse` refused non-UTF-8 input, and `raw` is never changed afterwards.
        std::str::from_utf8(&self.raw).unwrap_or_default()
    }

    /// The digest algorithm the document names.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The `[data]` entries.
    pub fn data(&self) -> &BTreeMap<String, String> {
        &self.data
    }

    /// One `[data]` entry.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.data.get(key).map(String::as_str)
    }

    /// The agent policy, if the document carries one.
    pub fn policy(&self) -> Option<&str> {
        self.get(POLICY_REGO)
    }

    /// The digest of the document's bytes with its algorithm.
    pub fn digest(&self) -> Digest {
        Digest::compute(self.algorithm, &self.raw)
    }

    /// The annotation form of the document: standard base64 of its gzip compression.
    pub fn to_annotation(&self) -> String {
        encode_annotation(&self.raw)
    }
}

/// Why an annotation could not be turned into an [`InitData`].
#[derive(Debug, thiserror::Error)]
pub enum FromAnnotationError {
    /// The annotation layer (base64, gzip) is broken.
    #[error(transparent)]
    Annotation(#[from] AnnotationError),
    /// The document inside is not valid initdata.
    #[error(transparent)]
    InitData(#[from] InitDataError),
}

fn string_key<'t>(
    table: &'t toml::Table,
    key: &'static str,
    example: &'static str,
) -> Result<&'t str, InitDataError> {
    match table.get(key) {
        None => Err(InitDataError::MissingKey { key, example }),
        Some(toml::Value::String(s)) => Ok(s),
        Some(other) => Err(InitDataError::WrongType {
            key: key.to_owned(),
            expected: "a string",
            found: other.type_str(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str =
        "version = \"0.1.0\"\nalgorithm = \"sha384\"\n\n[data]\n\"a.toml\" = \"x = 1\"\n";

    #[test]
    fn parses_a_document_and_keeps_its_bytes() {
        let doc = InitData::parse(DOC.as_bytes()).expect("valid");
        assert_eq!(doc.algorithm(), Algorithm::Sha384);
        assert_eq!(doc.get("a.toml"), Some("x = 1"));
        assert_eq!(doc.raw(), DOC.as_bytes());
        assert_eq!(doc.policy(), None);
    }

    #[test]
    fn data_may_be_absent() {
        let doc = InitData::parse(b"version = \"0.1.0\"\nalgorithm = \"sha256\"\n").expect("valid");
        assert!(doc.data().is_empty());
    }

    fn err(text: &str) -> String {
        InitData::parse(text.as_bytes())
            .expect_err("must be refused")
            .to_string()
    }

    #[test]
    fn refuses_bad_algorithms_naming_the_accepted_ones() {
        for bad in ["sha-384", "SHA256", "md5", "sha3-256", ""] {
            let msg = err(&format!("version = \"0.1.0\"\nalgorithm = \"{bad}\"\n"));
            assert!(msg.contains("\"sha256\", \"sha384\", \"sha512\""), "{msg}");
            assert!(msg.contains(&format!("{bad:?}")), "{msg}");
        }
    }

    #[test]
    fn refuses_unknown_top_level_keys() {
        let msg = err("version = \"0.1.0\"\nalgorithm = \"sha256\"\npolicy = \"x\"\n");
        assert!(
            msg.contains("unknown top-level initdata key `policy`"),
            "{msg}"
        );
    }

    #[test]
    fn refuses_other_versions_and_missing_keys() {
        assert!(err("version = \"0.2.0\"\nalgorithm = \"sha256\"\n").contains("\"0.2.0\""));
        assert!(err("algorithm = \"sha256\"\n").contains("no `version` key"));
        assert!(err("version = \"0.1.0\"\n").contains("no `algorithm` key"));
        assert!(err("version = 1\nalgorithm = \"sha256\"\n").contains("must be a string"));
    }

    #[test]
    fn refuses_non_string_data_and_bad_toml() {
        let msg = err("version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\nn = 3\n");
        assert!(
            msg.contains("data.\"n\"") && msg.contains("integer"),
            "{msg}"
        );
        let msg = err("version = \"0.1.0\"\nalgorithm = \"sha256\"\ndata = 3\n");
        assert!(msg.contains("must be a table"), "{msg}");
        assert!(err("version = ").contains("not valid TOML"));
        let bad_utf8 = InitData::parse(&[0xff, 0xfe]).expect_err("not utf-8");
        assert!(bad_utf8.to_string().contains("UTF-8"));
    }
}
