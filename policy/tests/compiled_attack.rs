//! Policies built to hurt the engine: nesting that makes regorus's parser take exponential
//! time, and expressions or reference chains deep enough to overflow a thread's stack in a
//! recursive evaluator. The engine must refuse the first before parsing, keep the compiled
//! form's recursion bounded on the 2 MiB stacks the agent decides on, and decide the rest
//! exactly as the reference interpreter does.

use peerpod_policy::differential::Reference;
use peerpod_policy::{AgentPolicy, PolicyError};
use serde_json::json;

/// The stack of the agent's (tokio) threads that decide requests.
const AGENT_STACK: usize = 2 << 20;

/// Runs `f` on a thread with the agent's stack; a stack overflow aborts the whole test binary.
fn on_agent_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(AGENT_STACK)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("no panic")
}

fn exec_policy(body: &str) -> String {
    format!("package agent_policy\n\nExecProcessRequest if {{ {body} }}\n")
}

#[test]
fn nested_collection_literals_are_refused_before_the_parser_sees_them() {
    // regorus parses `[[[...]]]` in time doubling per level: 30 levels would take hours.
    for text in [
        exec_policy(&format!("x := {}1{}; x", "[".repeat(30), "]".repeat(30))),
        exec_policy(&format!(
            "x := {}1{}; x",
            "{\"a\": ".repeat(30),
            "}".repeat(30)
        )),
        exec_policy(&format!(
            "x := {}1{}; x",
            "count([".repeat(30),
            "])".repeat(30)
        )),
    ] {
        let err = AgentPolicy::load(&text).expect_err("refused");
        assert!(matches!(err, PolicyError::TooDeep { line: 3, .. }), "{err}");
        assert!(err.to_string().contains("move inner literals"), "{err}");
    }
    // Many shallower ones side by side add up.
    let chains = vec![format!("{}1{}", "[".repeat(11), "]".repeat(11)); 3].join(", ");
    let err = AgentPolicy::load(&exec_policy(&format!("x := [{chains}]; x"))).expect_err("refused");
    assert!(err.to_string().contains("too many"), "{err}");

    // A SetPolicy carrying one is refused and the policy in force stays.
    let policy = AgentPolicy::load(
        "package agent_policy\n\nSetPolicyRequest := true\nExecProcessRequest := true\n",
    )
    .expect("loads");
    let deep = exec_policy(&format!("x := {}1{}; x", "[".repeat(40), "]".repeat(40)));
    assert!(policy.set_policy(&deep).is_err());
    assert!(policy.decide("ExecProcessRequest", &json!({})).is_allowed());

    // Rule and `every` bodies are parsed once: they nest freely, and decide as the reference.
    let every = exec_policy(&format!(
        "{}x > 0{}",
        "every x in input.a { ".repeat(30),
        " }".repeat(30)
    ));
    let engine = AgentPolicy::load(&every).expect("loads");
    let mut reference = Reference::load(&every).expect("reference loads");
    for input in [json!({"a": [1]}), json!({"a": [0]}), json!({"a": []})] {
        let expected = reference.decide("ExecProcessRequest", &input).allowed;
        assert_eq!(
            engine.decide("ExecProcessRequest", &input).is_allowed(),
            expected
        );
        assert_eq!(
            engine.compiled_check("ExecProcessRequest", &input),
            Some(Ok(()))
        );
    }
}

#[test]
fn deep_expressions_stay_on_the_interpreter_and_decide_as_it_does() {
    // 3,000 chained comparisons: the compiled form's recursive lowering overflowed 2 MiB.
    let text = exec_policy(&format!("x := 1{}; x", " == 1".repeat(3000)));
    let (coverage, allowed, expected) = on_agent_stack(move || {
        let engine = AgentPolicy::load(&text).expect("loads");
        let mut reference = Reference::load(&text).expect("reference loads");
        let input = json!({});
        (
            engine.compiled_coverage(),
            engine.decide("ExecProcessRequest", &input).is_allowed(),
            reference.decide("ExecProcessRequest", &input).allowed,
        )
    });
    assert!(coverage.0.is_empty(), "{coverage:?}");
    assert!(
        coverage
            .1
            .iter()
            .any(|(_, why)| why.contains("nested more than 64")),
        "{coverage:?}"
    );
    assert_eq!(allowed, expected);

    // 60 deep is compiled and equal.
    let text = exec_policy(&format!("x := 1{}; x == true", " == 1".repeat(60)));
    let engine = AgentPolicy::load(&text).expect("loads");
    assert_eq!(engine.compiled_coverage().0, ["ExecProcessRequest"]);
    assert_eq!(
        engine.compiled_check("ExecProcessRequest", &json!({})),
        Some(Ok(()))
    );
}

fn rule_chain(n: usize) -> String {
    let mut text = "package agent_policy\n\nExecProcessRequest if r0\n".to_owned();
    for i in 0..n {
        text.push_str(&format!("r{i} if r{}\n", i + 1));
    }
    text.push_str(&format!("r{n} := input.ok\n"));
    text
}

fn function_chain(n: usize) -> String {
    let mut text = "package agent_policy\n\nExecProcessRequest if f0(input.ok)\n".to_owned();
    for i in 0..n {
        text.push_str(&format!("f{i}(x) := y if {{ y := f{}(x) }}\n", i + 1));
    }
    text.push_str(&format!("f{n}(x) := x\n"));
    text
}

#[test]
fn long_reference_chains_never_overflow_the_compiled_form() {
    on_agent_stack(|| {
        for text in [rule_chain(40), function_chain(40)] {
            let engine = AgentPolicy::load(&text).expect("loads");
            assert_eq!(engine.compiled_coverage().0, ["ExecProcessRequest"]);
            for input in [json!({"ok": true}), json!({"ok": false}), json!({})] {
                assert_eq!(
                    engine.compiled_check("ExecProcessRequest", &input),
                    Some(Ok(())),
                    "{input}"
                );
            }
        }
        // 250 references deep: compiled (chains up to 256), but the evaluation passes its
        // nesting bound and gives up (`None`: the interpreter decides) instead of recursing on.
        for text in [rule_chain(250), function_chain(250)] {
            let engine = AgentPolicy::load(&text).expect("loads");
            assert_eq!(engine.compiled_coverage().0, ["ExecProcessRequest"]);
            assert_eq!(
                engine.compiled_check("ExecProcessRequest", &json!({"ok": true})),
                None
            );
        }
        // 5,000 deep: not compiled at all, and loading does not recurse along the chain.
        for text in [rule_chain(5000), function_chain(5000)] {
            let engine = AgentPolicy::load(&text).expect("loads");
            assert!(engine.compiled_coverage().0.is_empty());
        }
    });
}
