//! Entry points for the fuzz targets in `fuzz/` and for the in-tree mutation tests.
//!
//! Each function takes arbitrary bytes and must never panic, whatever they are.

use std::sync::{Mutex, OnceLock, PoisonError};

use crate::AgentPolicy;
use crate::differential::{Reference, check, generate};
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

/// The fuzz policy in the engine, and in the reference interpreter.
fn fuzz_policies() -> &'static (AgentPolicy, Mutex<Option<Reference>>) {
    static POLICIES: OnceLock<(AgentPolicy, Mutex<Option<Reference>>)> = OnceLock::new();
    POLICIES.get_or_init(|| {
        let engine =
            AgentPolicy::load(FUZZ_POLICY).unwrap_or_else(|e| AgentPolicy::deny_all(e.to_string()));
        (engine, Mutex::new(Reference::load(FUZZ_POLICY)))
    })
}

/// Feeds bytes to the policy engine as request JSON, for several entrypoints, including ones
/// the policy does not define and ones that are not identifiers. The engine and the reference
/// interpreter see the same requests in the same order and must reach the same decisions and
/// states.
pub fn policy_input(data: &[u8]) {
    let (policy, reference) = fuzz_policies();
    assert!(policy.is_loaded(), "the fuzz policy must load");
    let (selector, body) = data.split_first().unwrap_or((&0, &[]));
    let entrypoint = match selector % 4 {
        0 => "CreateContainerRequest",
        1 => "ExecProcessRequest",
        2 => "UpdateRoutesRequest",
        _ => "x.y[\"z\"]",
    };
    let text = String::from_utf8_lossy(body);
    let mut reference = reference.lock().unwrap_or_else(PoisonError::into_inner);
    let decision = policy.decide_json(entrypoint, &text);
    if let (Some(reference), Ok(input)) = (
        reference.as_mut(),
        serde_json::from_str::<serde_json::Value>(&text),
    ) && selector % 4 < 3
    {
        let expected = reference.decide(entrypoint, &input);
        assert_eq!(
            decision.is_allowed(),
            expected.allowed,
            "the engine and the reference disagree on {text}"
        );
        assert_eq!(
            policy.state(),
            reference.state(),
            "states differ after {text}"
        );
    }
    // Whatever the input, a decision names its entrypoint and has a reason.
    assert_eq!(decision.entrypoint(), entrypoint);
    assert!(!decision.reason().is_empty());
    if selector % 4 >= 2 {
        assert!(!decision.is_allowed(), "{entrypoint} must never be allowed");
    }
}

/// Fuzzer bytes as the choices of the policy generator: the generated policy and requests go
/// through the engine and the reference interpreter, which must agree on every decision and
/// state (see [`crate::differential`]).
pub fn policy_differential(data: &[u8]) {
    let case = generate::case(&mut generate::Bytes::new(data));
    if let Err(divergence) = check(&case, |text| AgentPolicy::load(text).ok()) {
        panic!("the engine diverged from the reference: {divergence}");
    }
}

/// Arbitrary bytes as a policy text (as `SetPolicy` or initdata would bring it): loading must
/// never panic, the engine must load no text the reference interpreter refuses (in Rego v1, or
/// v0 for the older policies the engine also reads; the load-time reading of constant documents
/// included), and where both load they must decide an exec request alike.
pub fn policy_text(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let engine = AgentPolicy::load(&text).ok();
    let reference = Reference::load(&text).or_else(|| Reference::load_dialect(&text, true));
    assert!(
        engine.is_none() || reference.is_some(),
        "the engine loaded a text the reference refuses: {text:?}"
    );
    if let (Some(engine), Some(mut reference)) = (engine, reference) {
        let input = serde_json::json!({"container_id": "c1", "n": 1});
        assert_eq!(
            engine.decide("ExecProcessRequest", &input).is_allowed(),
            reference.decide("ExecProcessRequest", &input).allowed,
            "the engine and the reference disagree on a decision"
        );
    }
}
