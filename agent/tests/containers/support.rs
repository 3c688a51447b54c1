//! What every container test uses: a busybox root filesystem, requests as the kata shim sends
//! them, and an agent with a sandbox made.

use std::path::{Path, PathBuf};

use peerpod_protocols::json::from_json;
use peerpod_protocols::kata::{agent, agent_ttrpc};
use peerpod_tests::requests::{self, Stream};
use serde_json::json;

pub(crate) use crate::common::busybox_rootfs;
use crate::common::{Agent, ctx, repo_file};

pub(crate) fn container_request(
    id: &str,
    rootfs: &Path,
    args: &[&str],
) -> agent::CreateContainerRequest {
    container_request_with(id, rootfs, args, json!({"Pids": {"Limit": 64}}))
}

pub(crate) fn container_request_with(
    id: &str,
    rootfs: &Path,
    args: &[&str],
    resources: serde_json::Value,
) -> agent::CreateContainerRequest {
    requests::container_with(id, &rootfs.display().to_string(), args, resources)
        .expect("request fits the protos")
}

pub(crate) fn exec_request(
    container: &str,
    exec: &str,
    args: &[&str],
) -> agent::ExecProcessRequest {
    exec_request_with(container, exec, args, false)
}

pub(crate) fn exec_request_with(
    container: &str,
    exec: &str,
    args: &[&str],
    terminal: bool,
) -> agent::ExecProcessRequest {
    let mut request = requests::exec(container, exec, args).expect("request fits the protos");
    request.process.mut_or_insert_default().Terminal = terminal;
    request
}

/// Reads a stream to its end.
pub(crate) async fn read_all(
    client: &agent_ttrpc::AgentServiceClient,
    container: &str,
    exec: &str,
    stderr: bool,
) -> String {
    let stream = if stderr {
        Stream::Stderr
    } else {
        Stream::Stdout
    };
    requests::read_all(client, container, exec, stream).await
}

pub(crate) async fn wait(
    client: &agent_ttrpc::AgentServiceClient,
    container: &str,
    exec: &str,
) -> i32 {
    requests::wait(client, container, exec)
        .await
        .unwrap_or_else(|e| panic!("wait {container}/{exec}: {e:?}"))
}

pub(crate) fn remove(container: &str) -> agent::RemoveContainerRequest {
    let mut request = agent::RemoveContainerRequest::new();
    request.container_id = container.into();
    request.timeout = 10;
    request
}

pub(crate) fn sandbox(id: &str, shm: &Path) -> agent::CreateSandboxRequest {
    let json = json!({
        "sandbox_id": id,
        "hostname": "pod",
        "dns": ["nameserver 10.96.0.10", "search demo.svc.cluster.local"],
        "storages": [{
            "driver": "ephemeral", "source": "shm", "fstype": "tmpfs",
            "mount_point": shm.display().to_string(),
            "options": ["noexec", "nosuid", "nodev", "mode=1777", "size=1048576"]
        }]
    });
    let mut request = agent::CreateSandboxRequest::new();
    from_json(&json, &mut request).expect("request fits the protos");
    request
}

pub(crate) fn mounts_under(dir: &Path) -> Vec<String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let dir = dir.display().to_string();
    mountinfo
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(4)
                .is_some_and(|m| m.starts_with(&dir))
        })
        .map(str::to_owned)
        .collect()
}

/// An agent deciding with the policy file at `policy_path`, with a sandbox made, and a busybox
/// root filesystem for its containers.
pub(crate) async fn pod(
    name: &str,
    policy_path: &str,
) -> (Agent, agent_ttrpc::AgentServiceClient, PathBuf) {
    pod_with(name, &policy(policy_path)).await
}

/// [`pod`] with any agent configuration lines.
pub(crate) async fn pod_with(
    name: &str,
    config: &str,
) -> (Agent, agent_ttrpc::AgentServiceClient, PathBuf) {
    let mut agent = Agent::start(name, None, config);
    let (client, _) = agent.connect().await;
    let rootfs = busybox_rootfs(&agent.dir);
    client
        .create_sandbox(ctx(), &sandbox("sb", &agent.dir.join("shm")))
        .await
        .expect("sandbox");
    (agent, client, rootfs)
}

/// Creates a container and starts it.
pub(crate) async fn create_and_start(
    client: &agent_ttrpc::AgentServiceClient,
    request: &agent::CreateContainerRequest,
) {
    client
        .create_container(ctx(), request)
        .await
        .expect("create");
    let mut start = agent::StartContainerRequest::new();
    start.container_id = request.container_id.clone();
    client.start_container(ctx(), &start).await.expect("start");
}

pub(crate) fn policy(path: &str) -> String {
    format!("policy_file = '{}'\n", repo_file(path).display())
}

/// How many descriptors a process has open.
pub(crate) fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The directories named `relative` in any cgroup hierarchy (v1 controllers under
/// /sys/fs/cgroup/*, or the v2 hierarchy at /sys/fs/cgroup itself).
pub(crate) fn cgroup_dirs(relative: &str) -> Vec<PathBuf> {
    let mut roots = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        roots.extend(entries.flatten().map(|e| e.path()));
    }
    roots
        .into_iter()
        .map(|root| root.join(relative))
        .filter(|p| p.is_dir())
        .collect()
}

/// Runs a command in the container and returns its stdout (asserting it exits 0).
pub(crate) async fn run(
    client: &agent_ttrpc::AgentServiceClient,
    container: &str,
    exec: &str,
    script: &str,
) -> String {
    client
        .exec_process(
            ctx(),
            &exec_request(container, exec, &["/bin/sh", "-c", script]),
        )
        .await
        .unwrap_or_else(|e| panic!("exec {script}: {e:?}"));
    let out = read_all(client, container, exec, false).await;
    assert_eq!(wait(client, container, exec).await, 0, "{script}: {out}");
    out
}

/// Reads a cgroup file inside the container, cgroup v2 or v1 layout.
pub(crate) fn cgroup_file(v2: &str, v1: &str) -> String {
    format!("cat /sys/fs/cgroup/{v2} 2>/dev/null || cat /sys/fs/cgroup/{v1}")
}

/// An ExecProcess request whose process is exactly `process` (protobuf JSON field names), for
/// processes that leave fields unset.
pub(crate) fn exec_request_raw(
    container: &str,
    exec: &str,
    process: serde_json::Value,
) -> agent::ExecProcessRequest {
    let json = json!({"container_id": container, "exec_id": exec, "process": process});
    let mut request = agent::ExecProcessRequest::new();
    from_json(&json, &mut request).expect("request fits the protos");
    request
}

/// Runs `request` and returns its stdout and exit status.
pub(crate) async fn run_request(
    client: &agent_ttrpc::AgentServiceClient,
    request: &agent::ExecProcessRequest,
) -> (String, i32) {
    client
        .exec_process(ctx(), request)
        .await
        .unwrap_or_else(|e| panic!("exec {}: {e:?}", request.exec_id));
    let out = read_all(client, &request.container_id, &request.exec_id, false).await;
    let status = wait(client, &request.container_id, &request.exec_id).await;
    (out, status)
}

/// The value of one `Name:\tvalue` line of a /proc status listing.
pub(crate) fn status_field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':')))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {name} in {status}"))
}
