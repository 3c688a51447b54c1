//! The sample policies and requests shipped in `policy/examples/` and `policy/benches/data/`
//! behave as their documentation says.

use std::path::{Path, PathBuf};

use peerpod_policy::AgentPolicy;
use peerpod_policy::differential::Reference;
use peerpod_policy::engine::all_entrypoints;
use peerpod_policy::initdata::InitData;
use serde_json::Value;

fn crate_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    let path = crate_path(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn json(relative: &str) -> Value {
    serde_json::from_str(&read(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

#[test]
fn allow_all_allows_every_agent_request() {
    let policy = AgentPolicy::load(&read("examples/allow-all.rego")).expect("loads");
    for entrypoint in all_entrypoints() {
        let d = policy.decide(entrypoint, &serde_json::json!({}));
        assert!(d.is_allowed(), "{entrypoint}: {}", d.reason());
    }
}

#[test]
fn allow_all_except_exec_denies_only_exec() {
    let policy = AgentPolicy::load(&read("examples/allow-all-except-exec.rego")).expect("loads");
    for entrypoint in all_entrypoints() {
        let d = policy.decide(entrypoint, &serde_json::json!({}));
        assert_eq!(
            d.is_allowed(),
            entrypoint != "ExecProcessRequest",
            "{entrypoint}"
        );
    }
}

#[test]
fn the_sample_initdata_carries_the_stateful_example() {
    let doc = InitData::parse(read("examples/initdata.toml").as_bytes()).expect("valid initdata");
    let report = doc.check();
    assert!(report.findings.is_empty(), "{report:?}");
    assert_eq!(doc.policy(), Some(read("examples/stateful.rego").as_str()));
    assert!(doc.get("aa.toml").is_some() && doc.get("cdh.toml").is_some());
}

/// Replays `examples/requests/sequence.json` on both evaluators.
#[test]
fn the_stateful_example_decides_the_documented_sequence() {
    let text = read("examples/stateful.rego");
    let fast = AgentPolicy::load(&text).expect("loads");
    let mut reference = Reference::load(&text).expect("the reference interpreter loads it");
    let sequence = json("examples/requests/sequence.json");
    for (i, step) in sequence.as_array().expect("array").iter().enumerate() {
        let kind = step["kind"].as_str().expect("kind");
        let request = json(&format!(
            "examples/requests/{}",
            step["file"].as_str().expect("file")
        ));
        let expected = step["allowed"].as_bool().expect("allowed");
        let decision = fast.decide(kind, &request);
        assert_eq!(
            decision.is_allowed(),
            expected,
            "step {i} {kind}: {}",
            decision.reason()
        );
        assert_eq!(
            decision.is_allowed(),
            reference.decide(kind, &request).allowed,
            "step {i}: the engine and the reference interpreter disagree"
        );
        if !expected {
            assert!(
                decision.reason().contains("policy.rego:"),
                "{}",
                decision.reason()
            );
        }
    }
    assert_eq!(fast.state(), reference.state());
    assert_eq!(
        fast.state().get("sandbox_name"),
        Some(&Value::from("web-app"))
    );
}

/// The benchmark's inputs still mean what the benchmark assumes.
#[test]
fn the_benchmark_policy_and_requests_agree() {
    let text = read("benches/data/genpolicy-sized.rego");
    let rules = text
        .lines()
        .take_while(|l| !l.starts_with("policy_data"))
        .count();
    assert!(
        rules >= 1500,
        "the benchmark policy must keep >= 1,500 lines of rules, has {rules}"
    );
    let policy = AgentPolicy::load(&text).expect("loads");
    let create = json("benches/data/requests/create-app.json");
    let exec = json("benches/data/requests/exec-probe.json");
    let denied = json("benches/data/requests/exec-denied.json");
    assert!(
        !policy.decide("ExecProcessRequest", &exec).is_allowed(),
        "no container yet"
    );
    let d = policy.decide("CreateContainerRequest", &create);
    assert!(d.is_allowed(), "{}", d.reason());
    assert!(policy.decide("ExecProcessRequest", &exec).is_allowed());
    assert!(!policy.decide("ExecProcessRequest", &denied).is_allowed());
    // A second container of the same kind under a fresh id, as the benchmark creates them.
    let mut again = create.clone();
    again["container_id"] = Value::from("f".repeat(64));
    let d = policy.decide("CreateContainerRequest", &again);
    assert!(d.is_allowed(), "{}", d.reason());
}
