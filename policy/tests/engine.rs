//! The agent policy engine's behaviour: results, state, failures, SetPolicy, concurrency.

use std::sync::Arc;

use peerpod_policy::differential::Reference;
use peerpod_policy::{AgentPolicy, Denial, PolicyError, SetPolicyError, Verdict};
use serde_json::json;

fn load(text: &str) -> AgentPolicy {
    AgentPolicy::load(text).unwrap_or_else(|e| panic!("policy must load: {e}"))
}

fn denial(policy: &AgentPolicy, entrypoint: &str, input: serde_json::Value) -> Denial {
    match policy.decide(entrypoint, &input).verdict() {
        Verdict::Denied(d) => d.clone(),
        other => panic!("{entrypoint} must be denied, got {other:?}"),
    }
}

const STATEFUL: &str = r#"package agent_policy
import rego.v1

default CreateContainerRequest := false
default ExecProcessRequest := false
default RemoveContainerRequest := false

CreateContainerRequest := {"allowed": true, "ops": ops} if {
    print("create", input.container_id)
    not data.pstate[input.container_id]
    ops := [{"op": "add", "path": concat("/", ["/pstate", input.container_id]), "value": input.name}]
}

ExecProcessRequest if {
    name := data.pstate[input.container_id]
    print("exec in", name)
    name == "web"
}

RemoveContainerRequest := {"allowed": true, "ops": ops} if {
    ops := [{"op": "remove", "path": concat("/", ["/pstate", input.container_id])}]
}
"#;

#[test]
fn boolean_results_allow_and_deny() {
    let policy = load(
        "package agent_policy\nimport rego.v1\ndefault StatsContainerRequest := true\n\
         default ExecProcessRequest := false\n",
    );
    assert!(
        policy
            .decide("StatsContainerRequest", &json!({}))
            .is_allowed()
    );
    assert_eq!(
        denial(&policy, "ExecProcessRequest", json!({})),
        Denial::False
    );
}

#[test]
fn state_is_carried_across_requests() {
    let policy = load(STATEFUL);
    // Nothing recorded yet: exec is undefined, hence denied.
    assert_eq!(
        denial(&policy, "ExecProcessRequest", json!({"container_id": "c1"})),
        Denial::False
    );
    let created = policy.decide(
        "CreateContainerRequest",
        &json!({"container_id": "c1", "name": "web"}),
    );
    assert!(created.is_allowed(), "{}", created.reason());
    assert_eq!(created.prints(), ["policy.rego:9: create c1"]);
    assert_eq!(policy.state(), json!({"c1": "web"}));

    assert!(
        policy
            .decide("ExecProcessRequest", &json!({"container_id": "c1"}))
            .is_allowed()
    );
    // The same id cannot be created twice: the rule's `not` fails, the default is false.
    assert_eq!(
        denial(
            &policy,
            "CreateContainerRequest",
            json!({"container_id": "c1", "name": "db"})
        ),
        Denial::False
    );
    assert!(
        policy
            .decide(
                "CreateContainerRequest",
                &json!({"container_id": "c2", "name": "db"})
            )
            .is_allowed()
    );
    assert_eq!(
        denial(&policy, "ExecProcessRequest", json!({"container_id": "c2"})),
        Denial::False
    );

    assert!(
        policy
            .decide("RemoveContainerRequest", &json!({"container_id": "c1"}))
            .is_allowed()
    );
    assert_eq!(policy.state(), json!({"c2": "db"}));
    assert_eq!(
        denial(&policy, "ExecProcessRequest", json!({"container_id": "c1"})),
        Denial::False
    );
}

#[test]
fn operations_that_leave_the_state_as_it_was_publish_nothing() {
    let policy = load(
        "package agent_policy\n\nCreateContainerRequest := {\"allowed\": true, \"ops\": [\
         {\"op\": \"add\", \"path\": concat(\"/\", [\"/pstate\", input.id]), \"value\": input.name}]}\n",
    );
    let create = |id: &str, name: &str| {
        let d = policy.decide("CreateContainerRequest", &json!({"id": id, "name": name}));
        assert!(d.is_allowed(), "{}", d.reason());
    };
    create("c1", "web");
    let after_first = policy.state_generation();
    assert_eq!(after_first, 1);
    // The same add again: allowed, the state is the same document, no new generation (which
    // would make concurrent evaluations of this state re-run).
    create("c1", "web");
    assert_eq!(policy.state_generation(), after_first);
    assert_eq!(policy.state(), json!({"c1": "web"}));
    // A different value does change it.
    create("c1", "db");
    assert_eq!(policy.state_generation(), after_first + 1);
    assert_eq!(policy.state(), json!({"c1": "db"}));
}

#[test]
fn a_state_operation_that_does_not_apply_denies_and_leaves_the_state() {
    let policy = load(STATEFUL);
    assert!(
        policy
            .decide(
                "CreateContainerRequest",
                &json!({"container_id": "a", "name": "web"})
            )
            .is_allowed()
    );
    let d = denial(
        &policy,
        "RemoveContainerRequest",
        json!({"container_id": "never"}),
    );
    assert!(matches!(d, Denial::StateUpdate(_)), "{d:?}");
    assert_eq!(policy.state(), json!({"a": "web"}));
}

#[test]
fn undefined_missing_and_failing_rules_deny() {
    let policy = load(
        "package agent_policy\nimport rego.v1\n\
         CopyFileRequest if input.path == \"/ok\"\n\
         GetMetricsRequest := 7\n\
         ListRoutesRequest := {\"allowed\": \"yes\"}\n\
         UpdateRoutesRequest := {\"allowed\": true, \"ops\": 3}\n\
         ListInterfacesRequest if { x := [1][input.i]; x > 0 }\n",
    );
    assert_eq!(
        denial(&policy, "CopyFileRequest", json!({"path": "/etc"})),
        Denial::Undefined
    );
    assert!(
        policy
            .decide("CopyFileRequest", &json!({"path": "/ok"}))
            .is_allowed()
    );
    assert_eq!(
        denial(&policy, "CreateSandboxRequest", json!({})),
        Denial::NoRule
    );
    assert!(
        matches!(denial(&policy, "GetMetricsRequest", json!({})), Denial::BadResult(r) if r == "7")
    );
    assert!(matches!(
        denial(&policy, "ListRoutesRequest", json!({})),
        Denial::BadResult(_)
    ));
    assert!(matches!(
        denial(&policy, "UpdateRoutesRequest", json!({})),
        Denial::BadResult(_)
    ));
    assert_eq!(denial(&policy, "x.y", json!({})), Denial::BadEntryPoint);
    assert!(matches!(
        policy.decide_json("CopyFileRequest", "{not json").verdict(),
        Verdict::Denied(Denial::BadInput(_))
    ));
    let message = policy
        .decide("CreateSandboxRequest", &json!({}))
        .denial_message();
    assert_eq!(
        message,
        "CreateSandboxRequest is blocked by policy: the policy has no rule for this request"
    );
}

#[test]
fn an_evaluation_error_denies_even_when_failures_are_allowed() {
    // Conflicting values for a complete rule are an evaluation error.
    let policy = load(
        "package agent_policy\nimport rego.v1\n\
         AllowRequestsFailingPolicy := true\n\
         default ExecProcessRequest := false\n\
         CreateContainerRequest := true if input.a\n\
         CreateContainerRequest := false if input.b\n",
    );
    assert!(policy.allows_failing_requests());
    let d = denial(
        &policy,
        "CreateContainerRequest",
        json!({"a": true, "b": true}),
    );
    assert!(matches!(d, Denial::EvalError(_)), "{d:?}");
    // A plain `false` is let through, and says so.
    let decision = policy.decide("ExecProcessRequest", &json!({}));
    assert!(decision.is_allowed());
    assert_eq!(
        decision.verdict(),
        &Verdict::AllowedFailingPolicy(Denial::False)
    );
}

#[test]
fn no_policy_denies_everything_with_the_reason() {
    let policy =
        AgentPolicy::deny_all("/etc/kata-opa/default-policy.rego: No such file or directory");
    assert!(!policy.is_loaded());
    let d = policy.decide("GetOOMEventRequest", &json!({}));
    assert!(!d.is_allowed());
    assert!(
        d.denial_message()
            .contains("no agent policy is in force (/etc/kata-opa"),
        "{}",
        d.denial_message()
    );
    assert!(matches!(
        policy.set_policy("package agent_policy\ndefault X := true"),
        Err(SetPolicyError::Denied(_))
    ));
}

#[test]
fn load_refuses_bad_text_and_other_packages() {
    let err = AgentPolicy::load("package agent_policy\nallow if {").expect_err("syntax error");
    assert!(matches!(err, PolicyError::Compile(_)));
    assert!(err.to_string().contains("policy.rego:2"), "{err}");
    let err = AgentPolicy::load("package other\nimport rego.v1\nx := 1").expect_err("package");
    assert!(
        err.to_string().contains("[\"other\"]") && err.to_string().contains("package agent_policy"),
        "{err}"
    );
}

/// regorus's `rego-extensions` feature adds an `or` operator that neither OPA nor the upstream
/// agent's regorus has. Cargo unifies features across a workspace, so one crate turning it on
/// would change the dialect of every agent built with it (CI's pod VM e2e boots such a build).
#[test]
fn the_or_extension_is_not_rego_in_any_build() {
    let text = "package agent_policy\nimport rego.v1\ndefault ExecProcessRequest := false\n\
                ExecProcessRequest if { input.a or input.b }\n";
    let err = AgentPolicy::load(text).expect_err("`or` is not Rego");
    assert!(matches!(err, PolicyError::Compile(_)), "{err}");
}

#[test]
fn v0_policies_load_and_v1_syntax_is_never_misread() {
    // An old-style (v0) policy: rule bodies without `if`.
    let v0 = load(
        "package agent_policy\ndefault ExecProcessRequest = false\nExecProcessRequest { input.ok == true }\n",
    );
    assert!(
        v0.decide("ExecProcessRequest", &json!({"ok": true}))
            .is_allowed()
    );
    assert!(
        !v0.decide("ExecProcessRequest", &json!({"ok": false}))
            .is_allowed()
    );
    // v1 syntax without imports is read as v1, not as v0 with an identifier named `if`.
    let v1 = load(
        "package agent_policy\ndefault ExecProcessRequest := false\n\
         ExecProcessRequest if { input.process.Args[0] == \"ls\" }\n",
    );
    assert!(
        !v1.decide("ExecProcessRequest", &json!({"process": {"Args": ["sh"]}}))
            .is_allowed()
    );
    assert!(
        v1.decide("ExecProcessRequest", &json!({"process": {"Args": ["ls"]}}))
            .is_allowed()
    );
    // A policy broken in v1 that v0 would read differently is refused, not reinterpreted.
    let err = AgentPolicy::load(
        "package agent_policy\nExecProcessRequest if { true }\nCreateContainerRequest { true }\n",
    );
    assert!(err.is_err());
}

#[test]
fn set_policy_needs_permission_and_a_valid_policy() {
    let closed = load("package agent_policy\nimport rego.v1\ndefault SetPolicyRequest := false\n");
    let err = closed
        .set_policy("package agent_policy\ndefault ExecProcessRequest := true")
        .expect_err("denied");
    assert!(
        err.to_string()
            .starts_with("SetPolicyRequest is blocked by policy"),
        "{err}"
    );
    assert!(!closed.decide("ExecProcessRequest", &json!({})).is_allowed());

    // Only a policy text the current policy approves of may replace it.
    let guarded = load(
        "package agent_policy\nimport rego.v1\ndefault ExecProcessRequest := false\n\
         SetPolicyRequest if startswith(input.policy, \"package agent_policy\\n# approved\")\n\
         CreateContainerRequest := {\"allowed\": true, \"ops\": [{\"op\": \"add\", \"path\": \"/pstate/x\", \"value\": 1}]}\n",
    );
    assert!(
        guarded
            .decide("CreateContainerRequest", &json!({}))
            .is_allowed()
    );
    assert_eq!(guarded.state(), json!({"x": 1}));
    let err = guarded
        .set_policy("package agent_policy\n# approved\nExecProcessRequest if {")
        .expect_err("does not compile");
    assert!(matches!(err, SetPolicyError::Invalid(_)), "{err}");
    assert!(
        !guarded
            .decide("ExecProcessRequest", &json!({}))
            .is_allowed(),
        "old policy stays"
    );
    assert!(
        guarded
            .set_policy("package agent_policy\n# sneaky\ndefault ExecProcessRequest := true")
            .is_err()
    );

    guarded
        .set_policy("package agent_policy\n# approved\nimport rego.v1\ndefault ExecProcessRequest := true\n")
        .expect("allowed and valid");
    assert!(
        guarded
            .decide("ExecProcessRequest", &json!({}))
            .is_allowed()
    );
    assert_eq!(
        guarded.state(),
        json!({}),
        "a new policy starts with a fresh state"
    );
}

/// The one-rule policies with which a bytecode fast path was caught allowing what the policy
/// denies: a body must stop at an assignment from an undefined or erroring expression. Each is
/// replayed 300 times on one engine, as the attack was: an early decision and a late one must
/// both be the reference interpreter's (a denial, except for `print`, whose undefined argument
/// the interpreter prints as `<undefined>` and goes on).
#[test]
fn bodies_stop_at_undefined_and_erroring_expressions() {
    let cases = [
        ("x := input.missing; true", json!({}), false),
        ("x := 1 / input.n; true", json!({"n": 0}), false),
        ("x := input.a[5]; true", json!({"a": [1]}), false),
        ("x := to_number(input.s); true", json!({"s": "abc"}), false),
        ("print(1 / input.n); true", json!({"n": 0}), true),
    ];
    for (body, input, allowed) in cases {
        let text = format!(
            "package agent_policy\nimport rego.v1\ndefault ExecProcessRequest := false\n\
             ExecProcessRequest if {{ {} }}\n",
            body.replace("; ", "\n")
        );
        let policy = load(&text);
        let mut reference = Reference::load(&text).expect("the reference loads it");
        assert_eq!(
            reference.decide("ExecProcessRequest", &input).allowed,
            allowed
        );
        for i in 0..300 {
            let decision = policy.decide("ExecProcessRequest", &input);
            assert_eq!(decision.is_allowed(), allowed, "{body}: request {i}");
        }
    }
    // The realistic idiom: exec only into containers created under the policy.
    let policy = load(
        r#"package agent_policy
import rego.v1
default ExecProcessRequest := false
ExecProcessRequest if {
    name := data.pstate[input.container_id]
    not input.process.Args[0] in {"/bin/sh", "/bin/bash"}
}
"#,
    );
    for i in 0..300 {
        let decision = policy.decide(
            "ExecProcessRequest",
            &json!({"container_id": "never-created", "process": {"Args": ["/bin/cat"]}}),
        );
        assert!(!decision.is_allowed(), "request {i} was allowed");
    }
}

/// Two concurrent SetPolicy calls: the policy in force allows exactly one replacement (any
/// text marked `# approved`), and each replacement allows none. However the calls race, at
/// most one may succeed.
#[test]
fn concurrent_set_policy_is_decided_by_the_policy_it_replaces() {
    let first = r##"package agent_policy
import rego.v1
default SetPolicyRequest := false
SetPolicyRequest if contains(input.policy, "# approved")
"##;
    for round in 0..20 {
        let policy = Arc::new(load(first));
        let threads: Vec<_> = (0..2)
            .map(|t| {
                let policy = Arc::clone(&policy);
                std::thread::spawn(move || {
                    let text = format!(
                        "package agent_policy\n# approved {t}\ndefault SetPolicyRequest := false\n\
                         default ExecProcessRequest := true\n"
                    );
                    policy.set_policy(&text).is_ok()
                })
            })
            .collect();
        let ok = threads
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .filter(|ok| *ok)
            .count();
        assert_eq!(ok, 1, "round {round}: {ok} replacements were installed");
    }
}

#[test]
fn concurrent_evaluations_agree_and_state_changes_are_serialised() {
    let policy = Arc::new(load(STATEFUL));
    assert!(
        policy
            .decide(
                "CreateContainerRequest",
                &json!({"container_id": "web1", "name": "web"})
            )
            .is_allowed()
    );
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let policy = Arc::clone(&policy);
            std::thread::spawn(move || {
                let mut created = 0;
                for i in 0..25 {
                    assert!(
                        policy
                            .decide("ExecProcessRequest", &json!({"container_id": "web1"}))
                            .is_allowed()
                    );
                    assert!(
                        !policy
                            .decide("ExecProcessRequest", &json!({"container_id": "nope"}))
                            .is_allowed()
                    );
                    // Every thread races to create the same ids; each id must be created once.
                    let id = format!("c{}", i % 10);
                    if policy
                        .decide(
                            "CreateContainerRequest",
                            &json!({"container_id": id, "name": format!("t{t}")}),
                        )
                        .is_allowed()
                    {
                        created += 1;
                    }
                }
                created
            })
        })
        .collect();
    let created: usize = threads
        .into_iter()
        .map(|t| t.join().expect("no panic"))
        .sum();
    assert_eq!(
        created, 10,
        "each of c0..c9 is created exactly once across all threads"
    );
    let state = policy.state();
    assert_eq!(state.as_object().map(|o| o.len()), Some(11), "{state}");
}

/// A large constant document is read as JSON at load; a text that only looks like one (inside
/// a raw string) is left as written, and so is a policy that could see the data document.
#[test]
fn constant_documents_are_hoisted_only_where_the_meaning_is_kept() {
    let items: Vec<String> = (0..500).map(|i| format!("{{\"id\": {i}}}")).collect();
    let document = format!("{{\"items\": [{}]}}", items.join(",\n"));
    let hoistable = format!(
        "package agent_policy\nimport rego.v1\nconsts := {document}\n\
         default ExecProcessRequest := false\n\
         ExecProcessRequest if {{ consts.items[input.n].id == input.n; print(\"ok\") }}\n"
    );
    let policy = load(&hoistable);
    assert!(policy.hoisted_constants());
    let decision = policy.decide("ExecProcessRequest", &json!({"n": 150}));
    assert!(decision.is_allowed());
    // Line numbers are kept: the print is on the line after the document.
    let line = hoistable.lines().count();
    assert_eq!(decision.prints(), [format!("policy.rego:{line}: ok")]);

    let in_a_string = format!(
        "package agent_policy\nimport rego.v1\ntext := `\nconsts := {document}\n`\n\
         default ExecProcessRequest := false\n"
    );
    let policy = load(&in_a_string);
    assert!(!policy.hoisted_constants());
    assert_eq!(
        policy.rule_value("text"),
        Some(json!(format!("\nconsts := {document}\n")))
    );

    let sees_data = format!("{hoistable}everything := data\n");
    assert!(!load(&sees_data).hoisted_constants());
}

/// genpolicy's `import future.keywords.in/every/if` mean nothing in Rego v1 and are blanked at
/// load (regorus then resolves calls without an import table). Decisions and print lines stay
/// the reference's; a v0 policy keeps its imports, and a text v1 refuses stays refused.
#[test]
fn v1_keyword_imports_are_blanked_without_changing_decisions_or_prints() {
    let text = "package agent_policy\n\nimport future.keywords.in\nimport future.keywords.every\n\
                import future.keywords.if\n\ndefault ExecProcessRequest := false\n\
                ok(a) if { every x in a { x in [\"sh\", \"-c\"] } }\n\
                ExecProcessRequest if {\n    print(\"args\", input.args)\n    \
                ok(input.args)\n    print(\"ok\")\n}\n";
    let policy = load(text);
    assert_eq!(policy.parsed_imports(), Some(0));
    let mut reference = Reference::load(text).expect("the reference loads it");
    for input in [
        json!({"args": ["sh", "-c"]}),
        json!({"args": ["sh", "rm"]}),
        json!({}),
    ] {
        let decision = policy.decide("ExecProcessRequest", &input);
        let expected = reference.decide("ExecProcessRequest", &input);
        assert_eq!(decision.is_allowed(), expected.allowed, "{input}");
        assert_eq!(decision.prints(), expected.prints.as_slice(), "{input}");
    }
    let allowed = policy.decide("ExecProcessRequest", &json!({"args": ["sh"]}));
    assert_eq!(
        allowed.prints(),
        ["policy.rego:10: args [\"sh\"]", "policy.rego:12: ok"]
    );

    // Other imports are kept as written.
    let kept = text.replace(
        "import future.keywords.if\n",
        "import future.keywords.if\nimport data.pstate as keywords\n",
    );
    assert_eq!(load(&kept).parsed_imports(), Some(4));

    // A v0 policy needs its keyword imports: read as v0 with them.
    let v0 = load(
        "package agent_policy\nimport future.keywords.in\n\
         default ExecProcessRequest := false\nExecProcessRequest { \"sh\" in input.args }\n",
    );
    assert_eq!(v0.parsed_imports(), Some(1));
    assert!(
        v0.decide("ExecProcessRequest", &json!({"args": ["sh"]}))
            .is_allowed()
    );

    // A keyword imported twice is refused by v1; blanking would have accepted it.
    let twice = text.replace(
        "import future.keywords.if\n",
        "import future.keywords.if\nimport future.keywords.in\n",
    );
    // It is read as written: v1 refuses it, and the v0 fallback (as before) keeps all four.
    assert!(Reference::load(&twice).is_none());
    assert_eq!(load(&twice).parsed_imports(), Some(4));
}
