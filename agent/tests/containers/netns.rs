//! Which network namespace a container joins: the named one its spec gives (in a peer-pod VM the
//! front door writes `/run/netns/podns` there), never a host-chosen path elsewhere.

use std::os::unix::fs::MetadataExt;
use std::process::Command;

use crate::support::*;
use peerpod_protocols::json::from_json;
use peerpod_protocols::kata::agent_ttrpc;
use serde_json::json;

/// A named network namespace (`ip netns add`), deleted on drop.
struct NamedNetns(String);

impl NamedNetns {
    fn add(name: &str) -> Self {
        let _ = Command::new("ip").args(["netns", "del", name]).status();
        let status = Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .expect("ip runs");
        assert!(status.success(), "ip netns add {name}");
        Self(name.to_owned())
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }

    fn inode(&self) -> u64 {
        std::fs::metadata(self.path()).expect("netns file").ino()
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The inode of the network namespace a process in container `id` is in.
async fn container_netns(client: &agent_ttrpc::AgentServiceClient, id: &str) -> u64 {
    let out = run(
        client,
        id,
        &format!("{id}-ns"),
        "readlink /proc/self/ns/net",
    )
    .await;
    out.trim()
        .strip_prefix("net:[")
        .and_then(|s| s.strip_suffix(']'))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("readlink said {out:?}"))
}

fn with_network_path(
    request: &mut peerpod_protocols::kata::agent::CreateContainerRequest,
    path: &str,
) {
    let mut linux = peerpod_protocols::kata::oci::Linux::new();
    from_json(
        &json!({
            "Namespaces": [
                {"Type": "pid"}, {"Type": "mount"}, {"Type": "ipc"}, {"Type": "uts"},
                {"Type": "network", "Path": path}
            ],
            "MaskedPaths": ["/proc/kcore"],
            "ReadonlyPaths": ["/proc/sys"],
            "Resources": {"Pids": {"Limit": 64}}
        }),
        &mut linux,
    )
    .expect("linux fits the protos");
    request.OCI.mut_or_insert_default().Linux = protobuf::MessageField::some(linux);
}

#[tokio::test(flavor = "multi_thread")]
async fn containers_join_the_named_pod_netns_and_never_a_host_chosen_path() {
    let (agent, client, rootfs) = pod("netns", "policy/examples/allow-all.rego").await;
    let podns = NamedNetns::add(&format!("pp-podns-{}", std::process::id()));

    // The spec names the pod's namespace (as the front door rewrites it): the container is in it.
    let mut request = container_request("inpod", &rootfs, &["/bin/sleep", "1000"]);
    with_network_path(&mut request, &podns.path());
    create_and_start(&client, &request).await;
    assert_eq!(container_netns(&client, "inpod").await, podns.inode());

    // A host-chosen path outside /run/netns (here the namespace of another process, standing for
    // the VM's main one where 15150 and the IMDS are): not joined; the container shares the
    // agent's namespace instead, as one without a path does.
    let agent_ns = std::fs::metadata(format!("/proc/{}/ns/net", agent.child.id()))
        .expect("agent netns")
        .ino();
    let mut other = Command::new("unshare")
        .args(["-n", "sleep", "600"])
        .spawn()
        .expect("unshare runs");
    let vm_ns_path = format!("/proc/{}/ns/net", other.id());
    let mut vm_ns = agent_ns;
    for _ in 0..100 {
        vm_ns = std::fs::metadata(&vm_ns_path).expect("other netns").ino();
        if vm_ns != agent_ns {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_ne!(agent_ns, vm_ns, "the other process has its own namespace");
    for (id, path) in [
        ("hostns", vm_ns_path.clone()),
        ("dotdot", "/run/netns/../../proc/1/ns/net".to_owned()),
        ("nopath", String::new()),
    ] {
        let mut request = container_request(id, &rootfs, &["/bin/sleep", "1000"]);
        with_network_path(&mut request, &path);
        create_and_start(&client, &request).await;
        assert_eq!(container_netns(&client, id).await, agent_ns, "{id}");
    }
    let _ = other.kill();
    let _ = other.wait();
}
