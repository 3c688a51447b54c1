//! Replays the 32 requests of a pod's life from `../shared/conformance/genpolicy` against the
//! real genpolicy policy, in order on one engine, and checks every decision against the upstream
//! engine's.

use peerpod_policy::differential::Reference;
use peerpod_policy::{AgentPolicy, Denial, Verdict};

#[path = "../../tests/src/shared_fixture.rs"]
mod shared_fixture;

#[test]
fn decides_every_case_as_upstream() {
    let Some(dir) = shared_fixture::shared_fixture("conformance/genpolicy") else {
        return;
    };
    let policy_text = std::fs::read_to_string(dir.join("policy.rego")).expect("policy.rego");
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).expect("cases.json"))
            .expect("cases.json is JSON");
    assert_eq!(cases.len(), 32);

    let policy = AgentPolicy::load(&policy_text).expect("genpolicy's policy compiles");
    assert!(!policy.allows_failing_requests());
    // The reference interpreter, as the upstream agent drives it, in lockstep.
    let mut reference = Reference::load(&policy_text).expect("the reference loads it");
    // policy_data is read as JSON at load rather than parsed as Rego (see docs/policy.md): it
    // must be exactly the value the reference computes from the text.
    assert!(
        policy.hoisted_constants(),
        "genpolicy's policy_data is hoisted"
    );
    // Its `import future.keywords.*` lines mean nothing in Rego v1 and are blanked at load.
    assert!(policy_text.contains("\nimport future.keywords.in\n"));
    assert_eq!(policy.parsed_imports(), Some(0));
    let hoisted = policy.rule_value("policy_data").expect("policy_data");
    assert_eq!(Some(hoisted), reference.rule_value("policy_data"));

    let (compiled_entries, refusals) = policy.compiled_coverage();
    eprintln!("compiled entry points: {compiled_entries:?}\nnot compiled: {refusals:?}");
    let mut compiled = 0;
    let mut mismatches = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let kind = case["kind"].as_str().expect("kind");
        let expected = case["allowed"].as_bool().expect("allowed");
        // The compiled form must decide and print exactly as the interpreter, on every case
        // whose entry point it compiles.
        match policy.compiled_check(kind, &case["request"]) {
            None => {}
            Some(Ok(())) => compiled += 1,
            Some(Err(what)) => panic!("case {i} {kind}: the compiled form differs: {what}"),
        }
        let decision = policy.decide(kind, &case["request"]);
        let interpreted = reference.decide(kind, &case["request"]);
        assert_eq!(
            decision.is_allowed(),
            interpreted.allowed,
            "case {i}: the engine and the reference interpreter disagree"
        );
        // The same lines, numbered the same: hoisting and blanking keyword imports keep the
        // text's lines where they were.
        assert_eq!(
            decision.prints(),
            interpreted.prints.as_slice(),
            "case {i}: the engine and the reference interpreter printed differently"
        );
        if decision.is_allowed() != expected {
            mismatches.push(format!(
                "case {i} {kind} ({}): expected allowed={expected}, got {}",
                case["description"],
                decision.reason()
            ));
        }
        if case["upstream"] == "ERROR" {
            // Upstream fails internally here; we must deny, and say it was the state update.
            assert!(
                matches!(decision.verdict(), Verdict::Denied(Denial::StateUpdate(_))),
                "case {i}: {:?}",
                decision.verdict()
            );
        }
        if !expected {
            let message = decision.denial_message();
            assert!(message.starts_with(&format!("{kind} is blocked by policy: ")));
            if matches!(decision.verdict(), Verdict::Denied(Denial::False)) {
                // Plain text: print lines on lines of their own, not one escaped debug string.
                assert!(message.contains("\npolicy.rego:"), "{message}");
            }
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    eprintln!(
        "{compiled} of {} cases also decided by the compiled form",
        cases.len()
    );

    // The sandbox's containers were all removed; the state still remembers the sandbox.
    let state = policy.state();
    assert!(state.get("sandbox_name").is_some(), "{state}");
    assert_eq!(state, reference.state());
}
