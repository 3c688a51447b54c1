//! The outcome of evaluating one request against the policy.

use std::fmt::Write as _;

use super::prints::Prints;

/// How many of the policy's last print lines a denial message carries.
const REASON_PRINT_LINES: usize = 12;

/// The longest print line a denial message carries whole (genpolicy prints entire inputs).
const REASON_LINE_BYTES: usize = 600;

/// The decision on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    entrypoint: String,
    verdict: Verdict,
    prints: Prints,
}

/// Whether the request may proceed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The policy allows the request.
    Allowed,
    /// The policy did not allow the request, but it sets `AllowRequestsFailingPolicy := true`,
    /// so the request proceeds anyway. The cause is kept for the logs.
    AllowedFailingPolicy(Denial),
    /// The request must not proceed.
    Denied(Denial),
}

/// Why a request was not allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// The entrypoint rule evaluated to `false` (or `allowed: false`).
    False,
    /// The entrypoint rule is declared but produced no value for this input.
    Undefined,
    /// The policy declares no rule for the entrypoint.
    NoRule,
    /// Evaluation failed; an error always denies.
    EvalError(String),
    /// The rule produced something other than a boolean or `{allowed, ops}`.
    BadResult(String),
    /// The rule allowed the request, but its state operations could not be applied.
    StateUpdate(String),
    /// The request could not be turned into policy input.
    BadInput(String),
    /// The entrypoint name is not a Rego identifier.
    BadEntryPoint,
    /// No policy is in force (missing or invalid); everything is denied.
    NoPolicy(String),
}

impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::False => f.write_str("the policy rule evaluated to false"),
            Self::Undefined => f.write_str("the policy rule is undefined for this request"),
            Self::NoRule => f.write_str("the policy has no rule for this request"),
            Self::EvalError(e) => write!(f, "policy evaluation failed: {e}"),
            Self::BadResult(r) => write!(
                f,
                "the policy rule returned {r}, expected a boolean or {{\"allowed\", \"ops\"}}"
            ),
            Self::StateUpdate(e) => write!(f, "the policy's state update failed: {e}"),
            Self::BadInput(e) => write!(f, "the request could not be given to the policy: {e}"),
            Self::BadEntryPoint => f.write_str("the entrypoint name is not a valid rule name"),
            Self::NoPolicy(why) => write!(f, "no agent policy is in force ({why})"),
        }
    }
}

impl Decision {
    pub(crate) fn new(entrypoint: &str, verdict: Verdict, prints: impl Into<Prints>) -> Self {
        Self {
            entrypoint: entrypoint.to_owned(),
            verdict,
            prints: prints.into(),
        }
    }

    /// Whether the request may proceed.
    pub fn is_allowed(&self) -> bool {
        !matches!(self.verdict, Verdict::Denied(_))
    }

    /// The entrypoint the request was evaluated against.
    pub fn entrypoint(&self) -> &str {
        &self.entrypoint
    }

    /// The verdict with its cause.
    pub fn verdict(&self) -> &Verdict {
        &self.verdict
    }

    /// Everything the policy printed while deciding, one line per `print` call, prefixed with
    /// the policy file and line (`policy.rego:120: ...`).
    pub fn prints(&self) -> &[String] {
        self.prints.lines()
    }

    /// A readable reason: the cause, then the last lines the policy printed.
    pub fn reason(&self) -> String {
        let cause = match &self.verdict {
            Verdict::Allowed => return "allowed by policy".to_owned(),
            Verdict::AllowedFailingPolicy(d) => {
                format!("allowed only because AllowRequestsFailingPolicy is set; {d}")
            }
            Verdict::Denied(d) => d.to_string(),
        };
        let mut out = cause;
        let prints = self.prints.lines();
        if !prints.is_empty() {
            let skipped = prints.len().saturating_sub(REASON_PRINT_LINES);
            out.push_str("; the policy printed");
            if skipped > 0 {
                let _ = write!(out, " ({skipped} earlier lines omitted)");
            }
            out.push(':');
            for line in &prints[skipped..] {
                out.push('\n');
                push_clipped(&mut out, line);
            }
        }
        out
    }

    /// The message a denied request is answered with:
    /// `<EntryPoint> is blocked by policy: <reason>`.
    pub fn denial_message(&self) -> String {
        format!(
            "{} is blocked by policy: {}",
            self.entrypoint,
            self.reason()
        )
    }
}

/// Appends `line`, cut at [`REASON_LINE_BYTES`] with a note of how much was left out.
fn push_clipped(out: &mut String, line: &str) {
    if line.len() <= REASON_LINE_BYTES {
        out.push_str(line);
        return;
    }
    let mut cut = REASON_LINE_BYTES;
    while !line.is_char_boundary(cut) {
        cut -= 1;
    }
    let _ = write!(out, "{} ...({} more bytes)", &line[..cut], line.len() - cut);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denial_message_names_the_entrypoint_and_keeps_the_tail_of_prints() {
        let prints: Vec<String> = (0..20)
            .map(|i| format!("policy.rego:{i}: step {i}"))
            .collect();
        let d = Decision::new("ExecProcessRequest", Verdict::Denied(Denial::False), prints);
        let msg = d.denial_message();
        assert!(msg.starts_with(
            "ExecProcessRequest is blocked by policy: the policy rule evaluated to false"
        ));
        assert!(msg.contains("(8 earlier lines omitted)"));
        assert!(msg.contains("step 19") && !msg.contains("step 7\n"));
        assert!(!d.is_allowed());
    }

    #[test]
    fn long_print_lines_are_clipped() {
        let d = Decision::new(
            "X",
            Verdict::Denied(Denial::False),
            vec![format!("policy.rego:1: input = {}", "é".repeat(1000))],
        );
        let msg = d.reason();
        assert!(msg.len() < 800, "{}", msg.len());
        assert!(msg.contains("more bytes)"));
    }

    #[test]
    fn allowed_failing_policy_still_proceeds() {
        let d = Decision::new(
            "X",
            Verdict::AllowedFailingPolicy(Denial::Undefined),
            Vec::new(),
        );
        assert!(d.is_allowed());
        assert!(d.reason().contains("AllowRequestsFailingPolicy"));
    }
}
