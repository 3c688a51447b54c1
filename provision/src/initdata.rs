//! `/run/peerpod/initdata` (the pod's initdata annotation: base64 of the gzipped TOML) into
//! the files the services read, checked by the policy crate before anything is written.
//!
//! Written from a valid document: `aa.toml`, `cdh.toml` and `policy.rego` (the data keys that
//! are present; others are logged and ignored, as upstream), `initdata.digest` (lower-case hex
//! of the document's digest with its own algorithm, no newline: upstream's format) and
//! `initdata.toml` (the decoded document, for `attestation-agent -t`, which binds it to the
//! TEE, and for the CDH's `[peerpod] initdata`). Provisioning never extends PCR 8 itself: the
//! attestation agent does, exactly once (see docs/podvm.md).

use peerpod_policy::initdata::{DEFAULT_DECODE_LIMIT, InitData, Severity};

/// The data keys written to `/run/peerpod` (upstream's list).
pub const DATA_FILES: [&str; 3] = ["aa.toml", "cdh.toml", "policy.rego"];
/// The digest file.
pub const DIGEST_FILE: &str = "initdata.digest";
/// The decoded document.
pub const DOCUMENT_FILE: &str = "initdata.toml";

/// Why the initdata was refused. Every variant stops provisioning: nothing is written.
#[derive(Debug, thiserror::Error)]
pub enum InitDataError {
    /// Not the annotation form, or not a valid document.
    #[error(
        "/run/peerpod/initdata is not valid initdata ({reason}); fix the pod's \
         io.katacontainers.config.hypervisor.cc_init_data annotation or the peer-pods \
         config map's INITDATA (`initdata check` tells what is wrong)"
    )]
    Invalid {
        /// What is wrong (never the content).
        reason: String,
    },
    /// An initdata file already in `/run/peerpod` that is larger than a `write_files` entry may
    /// be: refused rather than read in part.
    #[error(
        "/run/peerpod/initdata is {len} bytes, over the {max}-byte limit of an initdata \
         annotation in user data; whatever wrote it there (a provider's cloud-init) must write \
         the pod's annotation as it is"
    )]
    TooLarge {
        /// Its size.
        len: u64,
        /// The limit ([`crate::userdata::MAX_CONTENT`]).
        max: usize,
    },
    /// A valid document whose contents would not work (a config that is not TOML, a policy
    /// that does not compile).
    #[error(
        "the initdata's contents are refused: {findings}; fix them and re-encode \
         (`initdata check` lists the same findings)"
    )]
    Contents {
        /// The error findings, first line of each.
        findings: String,
    },
}

/// The files a valid initdata yields: `(name in /run/peerpod, content)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitDataFiles {
    /// The files, data keys first, then the digest and the document.
    pub files: Vec<(&'static str, Vec<u8>)>,
    /// The digest, lower-case hex.
    pub digest_hex: String,
    /// The algorithm's name.
    pub algorithm: &'static str,
}

fn first_line(text: &str) -> String {
    text.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect()
}

/// Decodes, parses and checks `encoded` (the content of `/run/peerpod/initdata`), returning
/// the files to write.
pub fn files_from(encoded: &[u8]) -> Result<InitDataFiles, InitDataError> {
    let text = std::str::from_utf8(encoded).map_err(|_| InitDataError::Invalid {
        reason: "not text".into(),
    })?;
    let doc = InitData::from_annotation(text, DEFAULT_DECODE_LIMIT).map_err(|e| {
        InitDataError::Invalid {
            // The top-level message only: a TOML error's source quotes the document.
            reason: first_line(&e.to_string()),
        }
    })?;
    let report = doc.check();
    for f in &report.findings {
        if f.severity != Severity::Error {
            tracing::warn!(finding = %first_line(&f.message), "initdata");
        }
    }
    if report.has_errors() {
        let findings = report
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .map(|f| first_line(&f.message))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(InitDataError::Contents { findings });
    }
    let mut files = Vec::new();
    for name in DATA_FILES {
        if let Some(v) = doc.get(name) {
            files.push((name, v.as_bytes().to_vec()));
        }
    }
    for key in doc.data().keys() {
        if !DATA_FILES.contains(&key.as_str()) {
            tracing::warn!(
                key = %crate::userdata::shown(key),
                "initdata data key is not one of aa.toml, cdh.toml, policy.rego: not written"
            );
        }
    }
    let digest = doc.digest();
    let digest_hex = digest.to_hex();
    files.push((DIGEST_FILE, digest_hex.clone().into_bytes()));
    files.push((DOCUMENT_FILE, doc.raw().to_vec()));
    Ok(InitDataFiles {
        files,
        digest_hex,
        algorithm: doc.algorithm().name(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerpod_policy::initdata::encode_annotation;

    const DOC: &str = "version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n\"aa.toml\" = '''\n\
                       [token_configs.kbs]\nurl = \"https://kbs\"\n'''\n\"extra\" = \"x\"\n";

    #[test]
    fn valid_document_yields_files_and_digest() -> Result<(), InitDataError> {
        let out = files_from(encode_annotation(DOC.as_bytes()).as_bytes())?;
        let names: Vec<_> = out.files.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["aa.toml", DIGEST_FILE, DOCUMENT_FILE]);
        assert_eq!(out.algorithm, "sha384");
        assert_eq!(out.digest_hex.len(), 96);
        let expected = InitData::parse(DOC.as_bytes())
            .map_err(|e| InitDataError::Invalid {
                reason: e.to_string(),
            })?
            .digest()
            .to_hex();
        assert_eq!(out.digest_hex, expected);
        assert_eq!(out.files[2].1, DOC.as_bytes());
        Ok(())
    }

    #[test]
    fn broken_documents_are_refused() {
        let bad = [
            b"not base64 at all!".to_vec(),
            b"aGVsbG8=".to_vec(),
            encode_annotation(b"version = \"0.1.0\"\nalgorithm = \"md5\"\n").into_bytes(),
            encode_annotation(b"version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"aa.toml\" = \"= = =\"\n")
                .into_bytes(),
            encode_annotation(b"version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"policy.rego\" = \"package nope\\nx := \"\n")
                .into_bytes(),
            vec![0xff, 0xfe],
        ];
        for b in bad {
            assert!(files_from(&b).is_err(), "{:?}", String::from_utf8_lossy(&b));
        }
    }
}
