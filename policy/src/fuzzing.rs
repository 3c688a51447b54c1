//! Entry points for the fuzz targets in `fuzz/` and for the in-tree mutation tests.
//!
//! Each function takes arbitrary bytes and must never panic, whatever they are.

use std::sync::OnceLock;

use crate::AgentPolicy;
use crate::initdata::{InitData, decode_annotation};

/// Bound used when fuzzing the annotation decoder: small, so bombs are cheap to detect.
pub const FUZZ_DECODE_LIMIT: usize = 64 * 1024;

/// Feeds bytes to the initdata decoders: as annotation text, and as a raw TOML document.
pub fn initdata(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(raw) = decode_annotation(text, FUZZ_DECODE_LIMIT)
    {
        assert!(raw.len() <= FUZZ_DECODE_LIMIT);
        if let Ok(doc) = InitData::parse(&raw) {
            let _ = doc.digest().azure_vtpm_pcr8();
        }
    }
    if let Ok(doc) = InitData::parse(data) {
        // A parsed document must survive its own annotation round trip unchanged.
        let encoded = doc.to_annotation();
        let again = decode_annotation(&encoded, usize::MAX).map(|raw| raw == doc.raw());
        assert!(
            matches!(again, Ok(true)),
            "annotation round trip changed the document"
        );
    }
}

/// A small stateful policy in genpolicy's style, used as the target of [`policy_input`].
pub const FUZZ_POLICY: &str = r#"package agent_policy
import future.keywords.in
import future.keywords.if

default CreateContainerRequest := false
default ExecProcessRequest := false

policy_containers := [{"name": "web", "args": ["/bin/sh"]}, {"name": "db", "args": ["/bin/db"]}]

CreateContainerRequest := {"allowed": true, "ops": ops} if {
    some c in policy_containers
    input.OCI.Process.Args == c.args
    not data.pstate[input.container_id]
    ops := [{"op": "add", "path": concat("/", ["/pstate", input.container_id]), "value": c.name}]
}

ExecProcessRequest if {
    name := data.pstate[input.container_id]
    regex.match("^[a-z]+$", name)
    count(input.process.Args) > 0
    startswith(input.process.Args[0], "/bin/")
}
"#;

/// The fuzz policy twice: on bytecode, and on the interpreter alone.
fn fuzz_policies() -> &'static (AgentPolicy, AgentPolicy) {
    static POLICIES: OnceLock<(AgentPolicy, AgentPolicy)> = OnceLock::new();
    POLICIES.get_or_init(|| {
        let fail = |e: crate::PolicyError| AgentPolicy::deny_all(e.to_string());
        let fast = AgentPolicy::load(FUZZ_POLICY).unwrap_or_else(fail);
        let reference = AgentPolicy::load_interpreted(FUZZ_POLICY).unwrap_or_else(fail);
        (fast, reference)
    })
}

/// Feeds bytes to the policy engine as request JSON, for several entrypoints, including ones
/// the policy does not define and ones that are not identifiers. The bytecode evaluator and the
/// interpreter see the same requests in the same order and must reach the same verdicts.
pub fn policy_input(data: &[u8]) {
    let (policy, reference) = fuzz_policies();
    assert!(
        policy.uses_bytecode(),
        "the fuzz policy must compile to bytecode"
    );
    let (selector, body) = data.split_first().unwrap_or((&0, &[]));
    let entrypoint = match selector % 4 {
        0 => "CreateContainerRequest",
        1 => "ExecProcessRequest",
        2 => "UpdateRoutesRequest",
        _ => "x.y[\"z\"]",
    };
    let text = String::from_utf8_lossy(body);
    let decision = policy.decide_json(entrypoint, &text);
    let expected = reference.decide_json(entrypoint, &text);
    assert_eq!(
        decision.verdict(),
        expected.verdict(),
        "evaluators disagree on {text}"
    );
    // Whatever the input, a decision names its entrypoint and has a reason.
    assert_eq!(decision.entrypoint(), entrypoint);
    assert!(!decision.reason().is_empty());
    if selector % 4 >= 2 {
        assert!(!decision.is_allowed(), "{entrypoint} must never be allowed");
    }
}
