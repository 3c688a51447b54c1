//! `check`: is an initdata document ready to be handed to a pod?

use super::{AA_TOML, Algorithm, CDH_TOML, InitData, POLICY_REGO};
use crate::engine::AgentPolicy;

/// Azure's cap on a VM's user data, which carries the encoded initdata in peer pods: 64 KiB.
pub const AZURE_USER_DATA_CAP: usize = 64 * 1024;

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Worth knowing; nothing will break.
    Note,
    /// Likely to cause trouble on some platform or in some component.
    Warning,
    /// The pod will not start or will not attest as intended.
    Error,
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Note => "note",
            Self::Warning => "warning",
            Self::Error => "error",
        })
    }
}

/// One thing `check` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// How serious it is.
    pub severity: Severity,
    /// What was found and what to do about it.
    pub message: String,
}

/// Everything `check` found in a document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// The findings, in the order they were made.
    pub findings: Vec<Finding>,
}

impl CheckReport {
    /// Whether any finding is an error.
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }

    fn push(&mut self, severity: Severity, message: String) {
        self.findings.push(Finding { severity, message });
    }
}

impl InitData {
    /// Checks the document's contents: that `aa.toml` and `cdh.toml` parse, that `policy.rego`
    /// compiles as an agent policy, and that the encoded form fits Azure's user data.
    pub fn check(&self) -> CheckReport {
        let mut report = CheckReport::default();

        for key in [AA_TOML, CDH_TOML] {
            if let Some(text) = self.get(key)
                && let Err(e) = text.parse::<toml::Table>()
            {
                let detail = e.to_string();
                report.push(
                    Severity::Error,
                    format!("data.\"{key}\" is not valid TOML: {}", detail.trim_end()),
                );
            }
        }

        match self.policy() {
            Some(text) => {
                if let Err(e) = AgentPolicy::validate(text) {
                    report.push(Severity::Error, format!("data.\"{POLICY_REGO}\": {e}"));
                }
            }
            None => report.push(
                Severity::Note,
                format!(
                    "no data.\"{POLICY_REGO}\": the agent will enforce its default policy file \
                     (/etc/kata-opa/default-policy.rego in the pod VM image)"
                ),
            ),
        }

        for key in self.data().keys() {
            if ![AA_TOML, CDH_TOML, POLICY_REGO].contains(&key.as_str()) {
                report.push(
                    Severity::Warning,
                    format!(
                        "data.\"{key}\" is not read by any guest component (known keys: \
                         \"{AA_TOML}\", \"{CDH_TOML}\", \"{POLICY_REGO}\"); it still counts in \
                         the digest"
                    ),
                );
            }
        }

        if self.algorithm() != Algorithm::Sha256 {
            report.push(
                Severity::Note,
                format!(
                    "algorithm {} is extended into Azure's SHA-256 vTPM PCR 8 cut to 32 bytes; \
                     this bundle and `initdata digest --platform azure-vtpm` agree on that, but \
                     sha256 needs no such convention and is the safe choice on Azure",
                    self.algorithm()
                ),
            );
        }

        let encoded = self.to_annotation().len();
        if encoded > AZURE_USER_DATA_CAP {
            report.push(
                Severity::Warning,
                format!(
                    "the encoded initdata is {encoded} bytes, over Azure's {AZURE_USER_DATA_CAP}-byte \
                     user-data cap: peer pods on Azure cannot deliver it; shrink the policy (for \
                     example drop print statements and comments)"
                ),
            );
        }

        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(data: &str, algorithm: &str) -> InitData {
        let text = format!("version = \"0.1.0\"\nalgorithm = \"{algorithm}\"\n[data]\n{data}");
        InitData::parse(text.as_bytes()).expect("valid initdata")
    }

    #[test]
    fn a_good_document_has_no_errors() {
        let d = doc(
            "\"aa.toml\" = \"[token_configs.kbs]\\nurl = 'http://kbs'\"\n\
             \"policy.rego\" = \"package agent_policy\\ndefault CreateContainerRequest := true\"\n",
            "sha256",
        );
        let report = d.check();
        assert!(!report.has_errors(), "{report:?}");
        assert!(report.findings.is_empty(), "{report:?}");
    }

    #[test]
    fn finds_bad_toml_bad_policy_unknown_keys_and_notes_sha384() {
        let d = doc(
            "\"cdh.toml\" = \"socket = \"\n\"policy.rego\" = \"package other\\nx := 1\"\n\"extra\" = \"1\"\n",
            "sha384",
        );
        let report = d.check();
        assert!(report.has_errors());
        let text: Vec<String> = report
            .findings
            .iter()
            .map(|f| format!("{}: {}", f.severity, f.message))
            .collect();
        let all = text.join("\n");
        assert!(
            all.contains("error: data.\"cdh.toml\" is not valid TOML"),
            "{all}"
        );
        assert!(all.contains("package agent_policy"), "{all}");
        assert!(all.contains("warning: data.\"extra\""), "{all}");
        assert!(all.contains("note: algorithm sha384"), "{all}");
    }

    #[test]
    fn warns_over_azure_cap() {
        // Incompressible-ish data: a long pseudo-random string.
        let mut s = String::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        while s.len() < 120_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s.push_str(&format!("{x:016x}"));
        }
        let d = doc(&format!("\"blob\" = \"{s}\"\n"), "sha256");
        let report = d.check();
        assert!(
            report
                .findings
                .iter()
                .any(|f| f.message.contains("user-data cap")),
            "{report:?}"
        );
    }
}
