//! What an exec'd process may do: the container's capabilities, user, groups, no_new_privs and
//! rlimits when the request leaves them unset; bind storages' mount flags; device cgroup rules.

use serde_json::json;

use crate::common::ctx;
use crate::support::*;
use peerpod_protocols::json::from_json;
use peerpod_protocols::kata::{agent, agent_ttrpc};

/// CAP_KILL (5) alone, as /proc/<pid>/status shows a capability set.
const CAP_KILL_ONLY: &str = "0000000000000020";

#[tokio::test(flavor = "multi_thread")]
async fn execs_without_privileges_inherit_the_containers() {
    let (_agent, client, rootfs) = pod("exec-privileges", "policy/examples/allow-all.rego").await;
    let mut request = container_request("c", &rootfs, &["/bin/sleep", "1000"]);
    // Only CAP_KILL, in every set (ambient too, so a non-root process keeps it across exec);
    // uid 1000 with a supplementary group; at most 512 open files.
    let mut process = peerpod_protocols::kata::oci::Process::new();
    from_json(
        &json!({
            "Args": ["/bin/sleep", "1000"],
            "Env": ["PATH=/bin"],
            "Cwd": "/",
            "User": {"UID": 1000, "GID": 1000, "AdditionalGids": [2000]},
            "NoNewPrivileges": true,
            "Capabilities": {
                "Bounding": ["CAP_KILL"], "Effective": ["CAP_KILL"], "Permitted": ["CAP_KILL"],
                "Inheritable": ["CAP_KILL"], "Ambient": ["CAP_KILL"]
            },
            "Rlimits": [{"Type": "RLIMIT_NOFILE", "Hard": 512, "Soft": 512}]
        }),
        &mut process,
    )
    .expect("process fits the protos");
    request.OCI.mut_or_insert_default().Process = protobuf::MessageField::some(process);
    create_and_start(&client, &request).await;

    let script = "grep -E '^(Uid|Gid|Groups|CapEff|CapPrm|CapBnd|NoNewPrivs):' /proc/self/status; \
                  echo Files: $(ulimit -n)";
    let args = json!(["/bin/sh", "-c", script]);
    // As genpolicy requires of execs: no capabilities; no_new_privs not asked for.
    let cases = [
        ("root", json!({"UID": 0, "GID": 0}), "0", "0"),
        ("user", json!({"UID": 1000, "GID": 1000}), "1000", "1000"),
        // No user at all (upstream's client sends none): the container's, with its groups.
        ("nouser", serde_json::Value::Null, "1000", "2000"),
        // Capabilities beyond the container's are not granted.
        ("greedy", json!({"UID": 0, "GID": 0}), "0", "0"),
    ];
    for (exec, user, uid, groups) in cases {
        let mut process = json!({"Args": args, "Env": ["PATH=/bin"], "Cwd": "/"});
        if !user.is_null() {
            process["User"] = user;
        }
        if exec == "greedy" {
            let all = json!(["CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_KILL"]);
            process["Capabilities"] = json!({
                "Bounding": all, "Effective": all, "Permitted": all, "Inheritable": all,
                "Ambient": all
            });
        }
        let (status, code) = run_request(&client, &exec_request_raw("c", exec, process)).await;
        assert_eq!(code, 0, "{exec}: {status}");
        for set in ["CapEff", "CapPrm", "CapBnd"] {
            assert_eq!(
                status_field(&status, set),
                CAP_KILL_ONLY,
                "{exec} {set}: {status}"
            );
        }
        assert_eq!(status_field(&status, "NoNewPrivs"), "1", "{exec}: {status}");
        assert_eq!(
            status_field(&status, "Uid").split_whitespace().next(),
            Some(uid),
            "{exec}: {status}"
        );
        assert_eq!(status_field(&status, "Groups"), groups, "{exec}: {status}");
        assert_eq!(status_field(&status, "Files"), "512", "{exec}: {status}");
    }
    client
        .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
        .await
        .expect("destroy");
}

/// A container whose OCI process has no `capabilities`: its init (which reads its own
/// /proc/self/status) and its execs hold no capability in any set (before: all of the agent's
/// root capabilities, CapPrm 000001fffeffffff here), and no_new_privs stays as the spec has it.
#[tokio::test(flavor = "multi_thread")]
async fn a_container_without_capabilities_gets_none() {
    let (_agent, client, rootfs) = pod("no-capabilities", "policy/examples/allow-all.rego").await;
    let script = "grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs):' /proc/self/status; \
                  exec sleep 1000";
    let mut request = container_request("c", &rootfs, &["/bin/sh", "-c", script]);
    let process = request
        .OCI
        .mut_or_insert_default()
        .Process
        .mut_or_insert_default();
    process.Capabilities = protobuf::MessageField::none();
    process.NoNewPrivileges = false;
    create_and_start(&client, &request).await;
    // The init's six lines, as they come.
    let mut init = String::new();
    while init.lines().count() < 6 {
        let mut read = agent::ReadStreamRequest::new();
        read.container_id = "c".into();
        read.len = 4096;
        let chunk = client
            .read_stdout(ctx(), &read)
            .await
            .expect("init's output");
        init.push_str(&String::from_utf8_lossy(&chunk.data));
    }
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(
            status_field(&init, set),
            "0000000000000000",
            "init {set}: {init}"
        );
    }
    assert_eq!(status_field(&init, "NoNewPrivs"), "0", "{init}");
    // An exec inherits the container's (empty) sets.
    let exec = run(
        &client,
        "c",
        "caps",
        "grep -E '^Cap(Prm|Eff|Bnd):' /proc/self/status",
    )
    .await;
    for set in ["CapPrm", "CapEff", "CapBnd"] {
        assert_eq!(
            status_field(&exec, set),
            "0000000000000000",
            "exec {set}: {exec}"
        );
    }
    client
        .remove_container(ctx(), &remove("c"))
        .await
        .expect("remove");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_bind_storage_is_read_only_in_the_container() {
    let (agent, client, rootfs) = pod("ro-storage", "policy/examples/allow-all.rego").await;
    let source = agent.dir.join("volume");
    std::fs::create_dir_all(&source).expect("volume");
    std::fs::copy(rootfs.join("bin/busybox"), source.join("busybox")).expect("a program");
    // A mount inside the volume: the storage's read-only flag reaches it too.
    let sub = source.join("sub");
    std::fs::create_dir_all(&sub).expect("sub");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(&sub)
        .status()
        .expect("mount");
    assert!(mounted.success());
    let mount_point = agent.dir.join("storages/volume");
    let mut request = container_request("c", &rootfs, &["/bin/sleep", "1000"]);
    let mut storage = agent::Storage::new();
    from_json(
        &json!({
            "driver": "bind", "source": source.display().to_string(), "fstype": "bind",
            "mount_point": mount_point.display().to_string(), "options": ["ro", "noexec"]
        }),
        &mut storage,
    )
    .expect("storage fits the protos");
    request.storages.push(storage);
    let mut mount = peerpod_protocols::kata::oci::Mount::new();
    mount.destination = "/data".into();
    mount.type_ = "bind".into();
    mount.source = mount_point.display().to_string();
    mount.options = vec!["rbind".into()];
    request.OCI.mut_or_insert_default().Mounts.push(mount);
    create_and_start(&client, &request).await;

    let (out, code) = run_request(
        &client,
        &exec_request(
            "c",
            "w",
            &[
                "/bin/sh",
                "-c",
                "touch /data/new /data/sub/new 2>&1; /data/busybox true 2>&1; ls /data",
            ],
        ),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.matches("Read-only file system").count(),
        2,
        "the volume and the mount inside it: {out}"
    );
    assert!(out.contains("Permission denied"), "noexec: {out}");
    assert!(!source.join("new").exists());
    assert!(!sub.join("new").exists());
    assert!(
        std::fs::write(mount_point.join("from-the-agent"), b"x").is_err(),
        "the storage itself is read-only"
    );
    client
        .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
        .await
        .expect("destroy");
    let _ = nix::mount::umount2(&sub, nix::mount::MntFlags::MNT_DETACH);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_rule_for_minor_zero_allows_minor_zero_only() {
    let (_agent, client, rootfs) = pod("device-rules", "policy/examples/allow-all.rego").await;
    // Deny everything, then allow c 4:0 (tty0) only; the container gets nodes for 4:0 and 4:1.
    let devices = json!([
        {"Allow": false, "Type": "a", "Major": -1, "Minor": -1, "Access": "rwm"},
        {"Allow": true, "Type": "c", "Major": 4, "Minor": 0, "Access": "rw"}
    ]);
    let mut request = container_request_with(
        "c",
        &rootfs,
        &["/bin/sleep", "1000"],
        json!({"Pids": {"Limit": 64}, "Devices": devices}),
    );
    from_json(
        &json!({"Devices": [
            {"Path": "/dev/tty0", "Type": "c", "Major": 4, "Minor": 0, "FileMode": 438},
            {"Path": "/dev/tty1", "Type": "c", "Major": 4, "Minor": 1, "FileMode": 438}
        ]}),
        &mut *request
            .OCI
            .mut_or_insert_default()
            .Linux
            .mut_or_insert_default(),
    )
    .expect("devices fit the protos");
    create_and_start(&client, &request).await;
    assert_eq!(opened(&client, "after-create").await, (true, false));

    // UpdateContainer converts its rules the same way.
    update_devices(
        &client,
        &json!([
            {"Allow": false, "Type": "a", "Major": -1, "Minor": -1, "Access": "rwm"},
            {"Allow": true, "Type": "c", "Major": 4, "Minor": 1, "Access": "rw"}
        ]),
    )
    .await
    .expect("update to 4:1");
    assert_eq!(opened(&client, "after-4-1").await, (false, true));
    update_devices(
        &client,
        &json!([
            {"Allow": false, "Type": "a", "Major": -1, "Minor": -1, "Access": "rwm"},
            {"Allow": true, "Type": "c", "Major": 4, "Minor": 0, "Access": "rw"}
        ]),
    )
    .await
    .expect("update to 4:0");
    assert_eq!(opened(&client, "after-4-0").await, (true, false));
    // An allow rule without a type would allow every device: refused.
    let (code, message) = crate::common::status_of(
        update_devices(
            &client,
            &json!([{"Allow": true, "Type": "", "Major": 4, "Minor": 0, "Access": "rw"}]),
        )
        .await,
    );
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{message}");
    assert_eq!(opened(&client, "after-refusal").await, (true, false));
    client
        .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
        .await
        .expect("destroy");
}

/// Whether /dev/tty0 and /dev/tty1 open in container "c": only a device cgroup denial
/// ("Operation not permitted") counts as not opened.
async fn opened(client: &agent_ttrpc::AgentServiceClient, exec: &str) -> (bool, bool) {
    let (out, _) = run_request(
        client,
        &exec_request(
            "c",
            exec,
            &[
                "/bin/sh",
                "-c",
                "for n in 0 1; do : < /dev/tty$n && echo tty$n opened; done 2>&1",
            ],
        ),
    )
    .await;
    let allowed = |tty: &str| {
        !out.lines()
            .any(|l| l.contains(tty) && l.contains("Operation not permitted"))
    };
    (allowed("tty0"), allowed("tty1"))
}

async fn update_devices(
    client: &agent_ttrpc::AgentServiceClient,
    devices: &serde_json::Value,
) -> Result<protobuf::well_known_types::empty::Empty, ttrpc::Error> {
    let mut update = agent::UpdateContainerRequest::new();
    update.container_id = "c".into();
    from_json(
        &json!({"Devices": devices}),
        &mut *update.resources.mut_or_insert_default(),
    )
    .expect("resources fit the protos");
    client.update_container(ctx(), &update).await
}
