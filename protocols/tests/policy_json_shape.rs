//! Our protos and JSON mapping reproduce, byte for byte in structure, the policy input the
//! upstream agent produced for the 32 requests of the shared genpolicy fixture: each request is
//! read into our generated message type and written back, and must come out unchanged.

use std::path::PathBuf;

use peerpod_protocols::json::{from_json, to_json};
use peerpod_protocols::kata::agent;
use protobuf::MessageDyn;

#[path = "../../tests/src/shared_fixture.rs"]
mod shared_fixture;

fn message_for(kind: &str) -> Box<dyn MessageDyn> {
    match kind {
        "CreateContainerRequest" => Box::new(agent::CreateContainerRequest::new()),
        "StartContainerRequest" => Box::new(agent::StartContainerRequest::new()),
        "RemoveContainerRequest" => Box::new(agent::RemoveContainerRequest::new()),
        "ExecProcessRequest" => Box::new(agent::ExecProcessRequest::new()),
        "SignalProcessRequest" => Box::new(agent::SignalProcessRequest::new()),
        "UpdateInterfaceRequest" => Box::new(agent::UpdateInterfaceRequest::new()),
        "UpdateRoutesRequest" => Box::new(agent::UpdateRoutesRequest::new()),
        "CreateSandboxRequest" => Box::new(agent::CreateSandboxRequest::new()),
        "DestroySandboxRequest" => Box::new(agent::DestroySandboxRequest::new()),
        other => panic!("no message type for {other}"),
    }
}

#[test]
fn upstream_policy_inputs_round_trip_through_our_messages() {
    let Some(dir) = shared_fixture::shared_fixture("conformance/genpolicy/cases.json") else {
        return;
    };
    let text = std::fs::read_to_string(&dir).unwrap_or_else(|e| {
        panic!(
            "the shared genpolicy fixture is missing at {}: {e}",
            dir.display()
        )
    });
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).expect("cases.json");
    let mut checked = 0;
    for (i, case) in cases.iter().enumerate() {
        let kind = case["kind"].as_str().expect("kind");
        if kind == "CopyFileRequest" {
            // The agent gives the policy a derived view of CopyFile (no file data), not the
            // message itself; the agent's tests cover that view.
            continue;
        }
        let mut message = message_for(kind);
        from_json(&case["request"], &mut *message)
            .unwrap_or_else(|e| panic!("case {i} ({kind}): {e}"));
        let back = to_json(&*message);
        assert_eq!(
            back, case["request"],
            "case {i} ({kind}) changed in the round trip"
        );
        checked += 1;
    }
    assert_eq!(checked, 30);
}

#[test]
fn unknown_fields_and_wrong_types_are_named() {
    let mut m = agent::ExecProcessRequest::new();
    let err = from_json(&serde_json::json!({"container_id": "c", "nope": 1}), &mut m)
        .expect_err("unknown");
    assert!(err.to_string().contains("no field \"nope\""), "{err}");
    let mut m = agent::ExecProcessRequest::new();
    let err = from_json(&serde_json::json!({"process": {"Args": "ls"}}), &mut m).expect_err("type");
    assert_eq!(
        err.to_string(),
        "process.Args: expected an array, found \"ls\""
    );
}

#[test]
fn unset_messages_are_null_and_keywords_are_suffixed() {
    let json = to_json(&agent::ExecProcessRequest::new());
    assert_eq!(json["process"], serde_json::Value::Null);
    assert_eq!(json["container_id"], "");
    let mount = to_json(&peerpod_protocols::kata::oci::Mount::new());
    assert!(
        mount.get("type_").is_some() && mount.get("type").is_none(),
        "{mount}"
    );
}

/// The whole set of keys a policy can see, for every message reachable from an AgentService
/// request, locked against `tests/data/policy-keys.txt` (checked against upstream's serde
/// output: proto field names, `type` as `type_`, oneof variants in CamelCase). A change to the
/// protos or the mapping that renames, adds or drops a key fails here; regenerate the file with
/// `UPDATE_POLICY_KEYS=1` only after checking the new keys against upstream.
#[test]
fn the_policy_key_set_is_locked() {
    let file = agent::file_descriptor();
    let roots: Vec<_> = file
        .services()
        .flat_map(|s| s.methods().map(|m| m.input_type()).collect::<Vec<_>>())
        .collect();
    let keys = peerpod_protocols::json::policy_keys(&roots);
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/policy-keys.txt");
    let text = keys.join("\n") + "\n";
    if std::env::var_os("UPDATE_POLICY_KEYS").is_some() {
        std::fs::write(&path, &text).expect("write the key list");
    }
    let locked = std::fs::read_to_string(&path).expect("tests/data/policy-keys.txt");
    let locked: Vec<&str> = locked.lines().collect();
    let added: Vec<_> = keys
        .iter()
        .filter(|k| !locked.contains(&k.as_str()))
        .collect();
    let dropped: Vec<_> = locked
        .iter()
        .filter(|k| !keys.contains(&(**k).to_owned()))
        .collect();
    assert!(
        added.is_empty() && dropped.is_empty(),
        "the policy's key set changed: added {added:?}, dropped {dropped:?}"
    );
    assert!(locked.contains(&"grpc.LinuxSyscall.ErrnoRet.Errnoret"));
    assert!(locked.contains(&"grpc.Mount.type_"));
}

#[test]
fn a_syscall_errno_is_written_as_upstream_and_read_in_both_spellings() {
    let mut syscall = peerpod_protocols::kata::oci::LinuxSyscall::new();
    syscall.set_errnoret(1);
    let json = to_json(&syscall);
    assert_eq!(json["ErrnoRet"], serde_json::json!({"Errnoret": 1}));
    for spelling in ["Errnoret", "errnoret"] {
        let mut back = peerpod_protocols::kata::oci::LinuxSyscall::new();
        from_json(&serde_json::json!({"ErrnoRet": {spelling: 1}}), &mut back).expect("reads");
        assert_eq!(back.errnoret(), 1);
    }
}
