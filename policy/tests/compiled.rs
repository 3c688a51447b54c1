//! The compiled form on the policies that made regorus's bytecode VM allow what the interpreter
//! denies (issue 11): each is compiled, and each request — replayed 300 times, as the VM was
//! only used once warm — is decided and printed exactly as the reference interpreter does.

use peerpod_policy::AgentPolicy;
use peerpod_policy::differential::Reference;
use serde_json::json;

/// `(rule, input, whether the reference allows it)`.
fn counterexamples() -> Vec<(&'static str, serde_json::Value, bool)> {
    vec![
        // An assignment from a missing path: the body stops, the rule is undefined.
        (
            "ExecProcessRequest if { x := input.missing; true }",
            json!({}),
            false,
        ),
        // Division by zero is undefined with strict builtin errors off.
        (
            "ExecProcessRequest if { x := 1 / input.n; true }",
            json!({"n": 0}),
            false,
        ),
        // Indexing past the end.
        (
            "ExecProcessRequest if { x := input.a[5]; true }",
            json!({"a": [1]}),
            false,
        ),
        // A builtin error is undefined.
        (
            "ExecProcessRequest if { x := to_number(input.s); true }",
            json!({"s": "abc"}),
            false,
        ),
        // A print whose argument is undefined prints `<undefined>` and holds.
        (
            "ExecProcessRequest if { print(1 / input.n); true }",
            json!({"n": 0}),
            true,
        ),
        // The realistic idiom: exec into a container that was never created.
        (
            "ExecProcessRequest if {\n    name := data.pstate[input.container_id]\n    not input.process.Args[0] in {\"sh\", \"bash\"}\n}",
            json!({"container_id": "never-created", "process": {"Args": ["ls"]}}),
            false,
        ),
    ]
}

#[test]
fn the_vm_counterexamples_are_decided_as_the_interpreter_decides_them() {
    for (rule, input, allowed) in counterexamples() {
        let text =
            format!("package agent_policy\n\ndefault ExecProcessRequest := false\n\n{rule}\n");
        let policy = AgentPolicy::load(&text).expect("the policy loads");
        let (compiled, refusals) = policy.compiled_coverage();
        assert!(
            compiled.iter().any(|e| e == "ExecProcessRequest"),
            "{rule}: not compiled ({refusals:?})"
        );
        let mut reference = Reference::load(&text).expect("the reference loads it");
        for i in 0..300 {
            assert_eq!(
                policy.compiled_check("ExecProcessRequest", &input),
                Some(Ok(())),
                "{rule}, request {i}"
            );
            let decision = policy.decide("ExecProcessRequest", &input);
            let expected = reference.decide("ExecProcessRequest", &input);
            assert_eq!(
                decision.is_allowed(),
                expected.allowed,
                "{rule}, request {i}"
            );
            assert_eq!(decision.is_allowed(), allowed, "{rule}, request {i}");
            assert_eq!(decision.prints(), expected.prints.as_slice(), "{rule}");
        }
    }
}

#[test]
fn an_error_is_explained_by_the_interpreter() {
    // Two definitions of a complete rule with different values: an evaluation error. The
    // compiled form sees the error; the denial names the interpreter's cause.
    let text = "package agent_policy\n\nExecProcessRequest := 1 if input.a\nExecProcessRequest := 2 if input.b\n";
    let policy = AgentPolicy::load(text).expect("the policy loads");
    assert!(
        policy
            .compiled_coverage()
            .0
            .contains(&"ExecProcessRequest".to_owned())
    );
    let input = json!({"a": true, "b": true});
    assert_eq!(
        policy.compiled_check("ExecProcessRequest", &input),
        Some(Ok(()))
    );
    let decision = policy.decide("ExecProcessRequest", &input);
    assert!(!decision.is_allowed());
    let reason = decision.reason();
    assert!(reason.contains("policy evaluation failed"), "{reason}");
    assert!(reason.contains("policy.rego:"), "{reason}");
}

#[test]
fn constructs_off_the_whitelist_stay_on_the_interpreter() {
    // `with` is not compiled: the entry point that reaches it is decided by the interpreter,
    // another one that does not reach it is compiled.
    let text = "package agent_policy\n\nExecProcessRequest if { helper with input as {\"x\": 1} }\nhelper if input.x == 1\nCreateContainerRequest if input.ok\n";
    let policy = AgentPolicy::load(text).expect("the policy loads");
    let (compiled, refusals) = policy.compiled_coverage();
    assert!(!compiled.contains(&"ExecProcessRequest".to_owned()));
    assert!(compiled.contains(&"CreateContainerRequest".to_owned()));
    assert!(
        refusals
            .iter()
            .any(|(name, _)| name == "ExecProcessRequest"),
        "{refusals:?}"
    );
    assert_eq!(
        policy.compiled_check("ExecProcessRequest", &json!({})),
        None
    );
    let mut reference = Reference::load(text).expect("the reference loads it");
    let decision = policy.decide("ExecProcessRequest", &json!({}));
    assert_eq!(
        decision.is_allowed(),
        reference.decide("ExecProcessRequest", &json!({})).allowed
    );
    assert!(decision.is_allowed());
}

#[test]
fn the_engine_is_shared_across_threads() {
    // The compiled form holds regorus's parse (reference counted); the engine must stay
    // shareable by the agent's request handlers.
    fn shareable<T: Send + Sync>() {}
    shareable::<AgentPolicy>();
}

/// Found by release runs of the differential generator; each is a case where the compiled form
/// once differed from the interpreter.
#[test]
fn differential_findings_stay_fixed() {
    let cases = [
        // regorus hoists `x[v]` with `v` an `every` variable as a loop (its hoister does not
        // count `every` variables as bound): an undefined `x` stops the body, nothing printed.
        (
            "ExecProcessRequest if {\n    every v in {\"k\": input.arr} { print(input.obj[v], v) }\n}",
            json!({"arr": ["a"], "obj": {}}),
            true,
        ),
        (
            "ExecProcessRequest if {\n    every v in {\"k\": 1} { print(input.n[v], \"(\" / true) }\n}",
            json!({"n": "x"}),
            true,
        ),
        // The variable a unification binds is bound before the other side is looked at: an
        // error in the interpreter; not compiled.
        (
            "ExecProcessRequest if {\n    v1 = count(input.arr)[v1]\n}",
            json!({"arr": [1]}),
            false,
        ),
    ];
    for (rule, input, compiled) in cases {
        let text =
            format!("package agent_policy\n\ndefault ExecProcessRequest := false\n\n{rule}\n");
        let policy = AgentPolicy::load(&text).expect("the policy loads");
        let is_compiled = policy
            .compiled_coverage()
            .0
            .contains(&"ExecProcessRequest".to_owned());
        assert_eq!(is_compiled, compiled, "{rule}");
        if compiled {
            assert_eq!(
                policy.compiled_check("ExecProcessRequest", &input),
                Some(Ok(())),
                "{rule}"
            );
        }
        let mut reference = Reference::load(&text).expect("the reference loads it");
        let decision = policy.decide("ExecProcessRequest", &input);
        let expected = reference.decide("ExecProcessRequest", &input);
        assert_eq!(decision.is_allowed(), expected.allowed, "{rule}");
        assert_eq!(decision.prints(), expected.prints.as_slice(), "{rule}");
    }
}
