//! Real containers: the `kata-agent` binary runs a busybox root filesystem (Debian's
//! busybox-static) through libcontainer, driven over ttrpc as the kata shim drives it. These
//! tests need root (CI runs as root) for namespaces, mounts and cgroups.

mod common;

use std::path::{Path, PathBuf};

use common::{Agent, ctx, repo_file, status_of};
use peerpod_protocols::json::from_json;
use peerpod_protocols::kata::{agent, agent_ttrpc};
use peerpod_tests::requests::{self, Stream};
use serde_json::json;
use ttrpc::Code;

const BUSYBOX: &str = "/bin/busybox";

/// A root filesystem holding a static busybox and the directories a container needs.
fn busybox_rootfs(dir: &Path) -> PathBuf {
    assert!(
        Path::new(BUSYBOX).is_file(),
        "{BUSYBOX} is missing: install Debian's busybox-static (make deps does)"
    );
    let rootfs = dir.join("rootfs");
    for sub in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(sub)).expect("rootfs dir");
    }
    std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).expect("copy busybox");
    for applet in [
        "sh", "echo", "cat", "sleep", "id", "hostname", "ls", "wc", "true", "kill", "stty", "tty",
        "grep", "tail", "readlink",
    ] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))
            .expect("applet link");
    }
    rootfs
}

fn container_request(id: &str, rootfs: &Path, args: &[&str]) -> agent::CreateContainerRequest {
    container_request_with(id, rootfs, args, json!({"Pids": {"Limit": 64}}))
}

fn container_request_with(
    id: &str,
    rootfs: &Path,
    args: &[&str],
    resources: serde_json::Value,
) -> agent::CreateContainerRequest {
    let json = json!({
        "container_id": id,
        "exec_id": id,
        "OCI": {
            "Version": "1.1.0",
            "Hostname": "busybox",
            "Root": {"Path": rootfs.display().to_string(), "Readonly": false},
            "Process": {
                "Args": args,
                "Env": ["PATH=/bin", "GREETING=hello"],
                "Cwd": "/",
                "User": {"UID": 0, "GID": 0},
                "NoNewPrivileges": true,
                "Capabilities": {
                    "Bounding": ["CAP_KILL"], "Effective": ["CAP_KILL"], "Permitted": ["CAP_KILL"]
                }
            },
            "Mounts": [
                {"destination": "/proc", "type_": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/dev", "type_": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type_": "devpts", "source": "devpts",
                 "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
                {"destination": "/sys", "type_": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
                {"destination": "/sys/fs/cgroup", "type_": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
            ],
            "Linux": {
                "Namespaces": [
                    {"Type": "pid"}, {"Type": "mount"}, {"Type": "ipc"}, {"Type": "uts"}, {"Type": "network"}
                ],
                "MaskedPaths": ["/proc/kcore"],
                "ReadonlyPaths": ["/proc/sys"],
                "Resources": resources
            }
        }
    });
    let mut request = agent::CreateContainerRequest::new();
    from_json(&json, &mut request).expect("request fits the protos");
    request
}

fn exec_request(container: &str, exec: &str, args: &[&str]) -> agent::ExecProcessRequest {
    exec_request_with(container, exec, args, false)
}

fn exec_request_with(
    container: &str,
    exec: &str,
    args: &[&str],
    terminal: bool,
) -> agent::ExecProcessRequest {
    let json = json!({
        "container_id": container,
        "exec_id": exec,
        "process": {
            "Terminal": terminal,
            "Args": args,
            "Env": ["PATH=/bin"],
            "Cwd": "/",
            "User": {"UID": 0, "GID": 0},
            "NoNewPrivileges": true
        }
    });
    let mut request = agent::ExecProcessRequest::new();
    from_json(&json, &mut request).expect("request fits the protos");
    request
}

/// Reads a stream to its end.
async fn read_all(
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

async fn wait(client: &agent_ttrpc::AgentServiceClient, container: &str, exec: &str) -> i32 {
    requests::wait(client, container, exec)
        .await
        .unwrap_or_else(|e| panic!("wait {container}/{exec}: {e:?}"))
}

fn remove(container: &str) -> agent::RemoveContainerRequest {
    let mut request = agent::RemoveContainerRequest::new();
    request.container_id = container.into();
    request.timeout = 10;
    request
}

fn sandbox(id: &str, shm: &Path) -> agent::CreateSandboxRequest {
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

fn mounts_under(dir: &Path) -> Vec<String> {
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
async fn pod(name: &str, policy_path: &str) -> (Agent, agent_ttrpc::AgentServiceClient, PathBuf) {
    pod_with(name, &policy(policy_path)).await
}

/// [`pod`] with any agent configuration lines.
async fn pod_with(name: &str, config: &str) -> (Agent, agent_ttrpc::AgentServiceClient, PathBuf) {
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
async fn create_and_start(
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

fn policy(path: &str) -> String {
    format!("policy_file = '{}'\n", repo_file(path).display())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_lives_and_dies() {
    let mut agent = Agent::start("lifecycle", None, &policy("policy/examples/allow-all.rego"));
    let (client, _) = agent.connect().await;
    let rootfs = busybox_rootfs(&agent.dir);
    let shm = agent.dir.join("sandbox/shm");

    let fds_before = open_fds(agent.child.id());
    client
        .create_sandbox(ctx(), &sandbox("sb", &shm))
        .await
        .expect("sandbox");
    assert_eq!(mounts_under(&shm).len(), 1, "the shm storage is mounted");
    assert_eq!(
        std::fs::read_to_string(agent.dir.join("resolv.conf")).expect("resolv.conf"),
        "nameserver 10.96.0.10\nsearch demo.svc.cluster.local\n"
    );

    // A container that prints and exits: its output and its status.
    let hello = container_request(
        "hello",
        &rootfs,
        &[
            "/bin/sh",
            "-c",
            "echo $GREETING from $(hostname); echo oops >&2",
        ],
    );
    create_and_start(&client, &hello).await;
    assert_eq!(
        read_all(&client, "hello", "hello", false).await,
        "hello from pod\n"
    );
    assert_eq!(read_all(&client, "hello", "hello", true).await, "oops\n");
    assert_eq!(wait(&client, "hello", "hello").await, 0);
    let mut start = agent::StartContainerRequest::new();
    start.container_id = "hello".into();
    let (code, _) = status_of(client.start_container(ctx(), &start).await);
    assert_eq!(code, Code::FAILED_PRECONDITION, "a container starts once");
    client
        .remove_container(ctx(), &remove("hello"))
        .await
        .expect("remove");

    // A long-running container: exec with a stdin round trip, exit codes, pid namespace.
    let sleeper = container_request("sleeper", &rootfs, &["/bin/sleep", "1000"]);
    create_and_start(&client, &sleeper).await;

    client
        .exec_process(ctx(), &exec_request("sleeper", "cat", &["/bin/cat"]))
        .await
        .expect("exec cat");
    let mut write = agent::WriteStreamRequest::new();
    write.container_id = "sleeper".into();
    write.exec_id = "cat".into();
    write.data = b"ping\n".to_vec();
    assert_eq!(
        client.write_stdin(ctx(), &write).await.expect("write").len,
        5
    );
    let mut close = agent::CloseStdinRequest::new();
    close.container_id = "sleeper".into();
    close.exec_id = "cat".into();
    client
        .close_stdin(ctx(), &close)
        .await
        .expect("close stdin");
    assert_eq!(read_all(&client, "sleeper", "cat", false).await, "ping\n");
    assert_eq!(wait(&client, "sleeper", "cat").await, 0);

    client
        .exec_process(
            ctx(),
            &exec_request(
                "sleeper",
                "ps",
                &["/bin/sh", "-c", "ls /proc | grep -c '^[0-9]'; exit 7"],
            ),
        )
        .await
        .expect("exec");
    let count = read_all(&client, "sleeper", "ps", false).await;
    assert_eq!(wait(&client, "sleeper", "ps").await, 7);
    let visible: u32 = count.trim().parse().expect("a number");
    assert!(
        visible <= 4,
        "the container has its own pid namespace: {visible} pids visible"
    );

    // Containers of the sandbox share its IPC and UTS namespaces, which are not the agent's.
    let other = container_request("other", &rootfs, &["/bin/sleep", "1000"]);
    client
        .create_container(ctx(), &other)
        .await
        .expect("create other");
    let mut start_other = agent::StartContainerRequest::new();
    start_other.container_id = "other".into();
    client
        .start_container(ctx(), &start_other)
        .await
        .expect("start other");
    let script = "for n in ipc uts mnt; do readlink /proc/self/ns/$n; done";
    let mine = run(&client, "sleeper", "ns1", script).await;
    let theirs = run(&client, "other", "ns2", script).await;
    let (mine, theirs): (Vec<&str>, Vec<&str>) = (mine.lines().collect(), theirs.lines().collect());
    assert_eq!(mine[..2], theirs[..2], "shared ipc and uts");
    assert_ne!(
        mine[2], theirs[2],
        "each container has its own mount namespace"
    );
    let agent_ipc =
        std::fs::read_link(format!("/proc/{}/ns/ipc", agent.child.id())).expect("agent ns");
    assert_ne!(
        mine[0],
        agent_ipc.to_string_lossy(),
        "the sandbox's ipc namespace is its own"
    );
    client
        .remove_container(ctx(), &remove("other"))
        .await
        .expect("remove other");

    // The same exec id twice, and unknown ids.
    let (code, _) = status_of(
        client
            .exec_process(ctx(), &exec_request("sleeper", "cat", &["/bin/true"]))
            .await,
    );
    assert_eq!(code, Code::ALREADY_EXISTS);
    let (code, message) = status_of(
        client
            .exec_process(ctx(), &exec_request("nope", "x", &["/bin/true"]))
            .await,
    );
    assert_eq!(
        (code, message.as_str()),
        (Code::NOT_FOUND, "container \"nope\" not found")
    );

    // A signal for one process reaches that process only.
    client
        .exec_process(
            ctx(),
            &exec_request("sleeper", "nap", &["/bin/sleep", "1000"]),
        )
        .await
        .expect("exec");
    client
        .exec_process(
            ctx(),
            &exec_request("sleeper", "nap2", &["/bin/sleep", "1000"]),
        )
        .await
        .expect("exec");
    let mut signal = agent::SignalProcessRequest::new();
    signal.container_id = "sleeper".into();
    signal.exec_id = "nap".into();
    signal.signal = 9;
    client
        .signal_process(ctx(), &signal)
        .await
        .expect("signal one");
    assert_eq!(wait(&client, "sleeper", "nap").await, 9);
    // SIGTERM to the whole container (empty exec id): the init, pid 1 of its namespace, has no
    // SIGTERM handler and would ignore it, so the agent sends SIGKILL instead, as upstream does;
    // every process of the container gets it.
    signal.exec_id = String::new();
    signal.signal = 15;
    client
        .signal_process(ctx(), &signal)
        .await
        .expect("signal all");
    assert_eq!(wait(&client, "sleeper", "sleeper").await, 9);
    assert_eq!(wait(&client, "sleeper", "nap2").await, 9);
    client
        .remove_container(ctx(), &remove("sleeper"))
        .await
        .expect("remove");
    let (code, _) = status_of(client.remove_container(ctx(), &remove("sleeper")).await);
    assert_eq!(code, Code::NOT_FOUND);

    // A container still running at DestroySandbox is killed and cleaned up too.
    let last = container_request("last", &rootfs, &["/bin/sleep", "1000"]);
    client.create_container(ctx(), &last).await.expect("create");
    let mut start = agent::StartContainerRequest::new();
    start.container_id = "last".into();
    client.start_container(ctx(), &start).await.expect("start");
    client
        .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
        .await
        .expect("destroy");

    // Nothing left behind: no mounts under the agent's directory, no bundles, no processes.
    assert!(
        mounts_under(&agent.dir).is_empty(),
        "{:?}",
        mounts_under(&agent.dir)
    );
    let bundles = agent.dir.join("state/bundles");
    let left: Vec<_> = std::fs::read_dir(&bundles)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    let children = std::fs::read_to_string(format!(
        "/proc/{}/task/{}/children",
        agent.child.id(),
        agent.child.id()
    ))
    .unwrap_or_default();
    assert!(
        children.trim().is_empty(),
        "the agent still has children: {children}"
    );
    // Every pipe, terminal and socket of the pod was closed.
    let fds_after = open_fds(agent.child.id());
    assert!(
        fds_after <= fds_before,
        "the agent holds {fds_after} descriptors after the pod, {fds_before} before"
    );
    let parent = format!("kata-agent-test-{}-lifecycle", std::process::id());
    assert!(
        cgroup_dirs(&format!("{parent}/sb")).is_empty(),
        "{:?}",
        cgroup_dirs(&parent)
    );
}

/// How many descriptors a process has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The directories named `relative` in any cgroup hierarchy (v1 controllers under
/// /sys/fs/cgroup/*, or the v2 hierarchy at /sys/fs/cgroup itself).
fn cgroup_dirs(relative: &str) -> Vec<PathBuf> {
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

#[tokio::test(flavor = "multi_thread")]
async fn terminals_carry_output_and_resizes() {
    let (_agent, client, rootfs) = pod("tty", "policy/examples/allow-all.rego").await;
    create_and_start(
        &client,
        &container_request("c", &rootfs, &["/bin/sleep", "1000"]),
    )
    .await;

    // The process waits for a line on its terminal, then reports the terminal's size.
    let exec = exec_request_with(
        "c",
        "t",
        &["/bin/sh", "-c", "tty; read line; stty size"],
        true,
    );
    client
        .exec_process(ctx(), &exec)
        .await
        .expect("exec with a terminal");
    let mut resize = agent::TtyWinResizeRequest::new();
    resize.container_id = "c".into();
    resize.exec_id = "t".into();
    resize.row = 33;
    resize.column = 101;
    client.tty_win_resize(ctx(), &resize).await.expect("resize");
    let mut write = agent::WriteStreamRequest::new();
    write.container_id = "c".into();
    write.exec_id = "t".into();
    write.data = b"go\n".to_vec();
    client.write_stdin(ctx(), &write).await.expect("write");
    let output = read_all(&client, "c", "t", false).await;
    assert!(output.contains("/dev/pts/"), "{output:?}");
    assert!(output.contains("33 101"), "{output:?}");
    assert_eq!(wait(&client, "c", "t").await, 0);
    // A terminal has no separate stderr.
    assert_eq!(read_all(&client, "c", "t", true).await, "");

    // Resizing a process without a terminal is refused.
    client
        .exec_process(ctx(), &exec_request("c", "p", &["/bin/true"]))
        .await
        .expect("exec");
    resize.exec_id = "p".into();
    let (code, _) = status_of(client.tty_win_resize(ctx(), &resize).await);
    assert_eq!(code, Code::FAILED_PRECONDITION);
    client
        .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
        .await
        .expect("destroy");
}

/// Runs a command in the container and returns its stdout (asserting it exits 0).
async fn run(
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
fn cgroup_file(v2: &str, v1: &str) -> String {
    format!("cat /sys/fs/cgroup/{v2} 2>/dev/null || cat /sys/fs/cgroup/{v1}")
}

#[tokio::test(flavor = "multi_thread")]
async fn resources_limits_stats_updates_and_freezing() {
    let (_agent, client, rootfs) = pod("resources", "policy/examples/allow-all.rego").await;
    let limits = json!({"Pids": {"Limit": 64}, "Memory": {"Limit": 134217728}});
    create_and_start(
        &client,
        &container_request_with("c", &rootfs, &["/bin/sleep", "1000"], limits),
    )
    .await;

    // The limits are visible inside the container.
    assert_eq!(
        run(
            &client,
            "c",
            "p1",
            &cgroup_file("pids.max", "pids/pids.max")
        )
        .await
        .trim(),
        "64"
    );
    let memory = run(
        &client,
        "c",
        "m1",
        &cgroup_file("memory.max", "memory/memory.limit_in_bytes"),
    )
    .await;
    assert_eq!(memory.trim(), "134217728");

    // Stats come from the container's cgroup.
    let mut stats_request = agent::StatsContainerRequest::new();
    stats_request.container_id = "c".into();
    let stats = client
        .stats_container(ctx(), &stats_request)
        .await
        .expect("stats");
    let cgroup = stats.cgroup_stats.as_ref().expect("cgroup stats");
    assert_eq!(cgroup.pids_stats.limit, 64);
    assert!(cgroup.pids_stats.current >= 1, "{:?}", cgroup.pids_stats);
    assert!(
        cgroup.memory_stats.usage.usage > 0,
        "{:?}",
        cgroup.memory_stats.usage
    );
    assert!(!stats.network_stats.is_empty());

    // UpdateContainer changes a running container's limits.
    let mut update = agent::UpdateContainerRequest::new();
    update.container_id = "c".into();
    from_json(
        &json!({"Pids": {"Limit": 32}}),
        &mut *update.resources.mut_or_insert_default(),
    )
    .expect("resources");
    client
        .update_container(ctx(), &update)
        .await
        .expect("update");
    assert_eq!(
        run(
            &client,
            "c",
            "p2",
            &cgroup_file("pids.max", "pids/pids.max")
        )
        .await
        .trim(),
        "32"
    );

    // Paused, nothing runs in it; resumed, it does again.
    let mut pause = agent::PauseContainerRequest::new();
    pause.container_id = "c".into();
    client.pause_container(ctx(), &pause).await.expect("pause");
    let (code, message) = status_of(
        client
            .exec_process(ctx(), &exec_request("c", "x", &["/bin/true"]))
            .await,
    );
    assert_eq!(code, Code::FAILED_PRECONDITION);
    assert!(message.contains("paused"), "{message}");
    let (code, _) = status_of(client.pause_container(ctx(), &pause).await);
    assert_eq!(code, Code::FAILED_PRECONDITION, "pausing twice");
    let mut resume = agent::ResumeContainerRequest::new();
    resume.container_id = "c".into();
    client
        .resume_container(ctx(), &resume)
        .await
        .expect("resume");
    assert_eq!(run(&client, "c", "after", "echo alive").await, "alive\n");

    client
        .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
        .await
        .expect("destroy");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oom_kill_is_reported() {
    let (_agent, client, rootfs) = pod("oom", "policy/examples/allow-all.rego").await;
    // 32 MiB of memory and no swap beyond it; `tail` keeps /dev/zero's endless first line in
    // memory until the kernel kills it.
    let limits = json!({"Memory": {"Limit": 33554432, "Swap": 33554432}});
    let hog = ["/bin/tail", "/dev/zero"];
    create_and_start(
        &client,
        &container_request_with("hog", &rootfs, &hog, limits),
    )
    .await;
    let event = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        client.get_oom_event(ctx(), &agent::GetOOMEventRequest::new()),
    )
    .await
    .expect("an OOM event within 30 s")
    .expect("GetOOMEvent");
    assert_eq!(event.container_id, "hog");
    assert_eq!(
        wait(&client, "hog", "hog").await,
        9,
        "the OOM killer's SIGKILL"
    );
    client
        .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
        .await
        .expect("destroy");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seccomp_profile_binds_exec_processes_too() {
    let (_agent, client, rootfs) = pod("seccomp", "policy/examples/allow-all.rego").await;
    let mut request = container_request(
        "c",
        &rootfs,
        &["/bin/sh", "-c", "mkdir /tmp/by-init; sleep 1000"],
    );
    // A profile that refuses mkdir with EPERM and allows everything else.
    let profile = json!({
        "DefaultAction": "SCMP_ACT_ALLOW",
        "Architectures": ["SCMP_ARCH_X86_64"],
        "Syscalls": [{"Names": ["mkdir", "mkdirat"], "Action": "SCMP_ACT_ERRNO", "ErrnoRet": {"errnoret": 1}}]
    });
    from_json(
        &profile,
        &mut *request
            .OCI
            .mut_or_insert_default()
            .Linux
            .mut_or_insert_default()
            .Seccomp
            .mut_or_insert_default(),
    )
    .expect("seccomp fits the protos");
    create_and_start(&client, &request).await;

    client
        .exec_process(
            ctx(),
            &exec_request(
                "c",
                "m",
                &["/bin/sh", "-c", "mkdir /tmp/by-exec && echo made; echo $?"],
            ),
        )
        .await
        .expect("exec");
    let output = read_all(&client, "c", "m", false).await;
    let errors = read_all(&client, "c", "m", true).await;
    assert_eq!(wait(&client, "c", "m").await, 0);
    assert!(
        !output.contains("made"),
        "mkdir must be refused in an exec'd process: {output} {errors}"
    );
    assert!(errors.contains("Operation not permitted"), "{errors}");
    assert!(!rootfs.join("tmp/by-exec").exists());
    assert!(!rootfs.join("tmp/by-init").exists(), "and in the init");
    // Other system calls still work.
    assert_eq!(run(&client, "c", "ok", "echo fine").await, "fine\n");
    // A process whose environment has no PATH still finds its program.
    let mut bare = exec_request("c", "nopath", &["echo", "found"]);
    bare.process.mut_or_insert_default().Env.clear();
    client
        .exec_process(ctx(), &bare)
        .await
        .expect("exec without PATH");
    assert_eq!(read_all(&client, "c", "nopath", false).await, "found\n");
    assert_eq!(wait(&client, "c", "nopath").await, 0);
    client
        .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
        .await
        .expect("destroy");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shared_pid_namespace_shows_every_containers_processes() {
    let mut agent = Agent::start("pidns", None, &policy("policy/examples/allow-all.rego"));
    let (client, _) = agent.connect().await;
    let rootfs = busybox_rootfs(&agent.dir);
    let mut request = sandbox("sb", &agent.dir.join("shm"));
    request.sandbox_pidns = true;
    client
        .create_sandbox(ctx(), &request)
        .await
        .expect("sandbox with a shared PID namespace");
    for id in ["a", "b"] {
        client
            .create_container(
                ctx(),
                &container_request(id, &rootfs, &["/bin/sleep", "1000"]),
            )
            .await
            .expect("create");
        let mut start = agent::StartContainerRequest::new();
        start.container_id = id.into();
        client.start_container(ctx(), &start).await.expect("start");
    }
    // From inside "a": the pause process (pid 1) and both containers' sleeps are visible.
    let listing = run(
        &client,
        "a",
        "ps",
        "for p in /proc/[0-9]*; do cat $p/comm; done",
    )
    .await;
    assert_eq!(listing.matches("sleep").count(), 2, "{listing}");
    assert!(
        run(&client, "a", "one", "cat /proc/1/comm").await.trim() == "kata-agent",
        "pid 1 is the pause process"
    );
    client
        .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
        .await
        .expect("destroy");
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", agent.child.id()))
            .unwrap_or_default();
    assert!(
        children.trim().is_empty(),
        "the pause process is gone too: {children}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spec_without_namespaces_still_gets_its_own() {
    let (_agent, client, rootfs) = pod("no-namespaces", "policy/examples/allow-all.rego").await;
    // Kubernetes specs list ipc, uts and mount only; a spec may list none at all.
    let mut request = container_request("c", &rootfs, &["/bin/sleep", "1000"]);
    request
        .OCI
        .mut_or_insert_default()
        .Linux
        .mut_or_insert_default()
        .Namespaces
        .clear();
    create_and_start(&client, &request).await;
    let pids = run(&client, "c", "ps", "ls /proc | grep -c '^[0-9]'").await;
    let visible: u32 = pids.trim().parse().expect("a number");
    assert!(
        visible <= 4,
        "its own PID namespace: {visible} processes visible"
    );
    assert_eq!(
        run(&client, "c", "h", "hostname").await,
        "pod\n",
        "the sandbox's UTS namespace"
    );
    client
        .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
        .await
        .expect("destroy");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_denied_exec_starts_nothing() {
    let (_agent, client, rootfs) =
        pod("denied-exec", "policy/examples/allow-all-except-exec.rego").await;
    create_and_start(
        &client,
        &container_request("c", &rootfs, &["/bin/sleep", "1000"]),
    )
    .await;

    let marker = rootfs.join("tmp/exec-ran");
    let exec = exec_request("c", "x", &["/bin/sh", "-c", "touch /tmp/exec-ran"]);
    let (code, message) = status_of(client.exec_process(ctx(), &exec).await);
    assert_eq!(code, Code::PERMISSION_DENIED);
    assert!(
        message.starts_with("ExecProcessRequest is blocked by policy"),
        "{message}"
    );
    let mut wait = agent::WaitProcessRequest::new();
    wait.container_id = "c".into();
    wait.exec_id = "x".into();
    let (code, _) = status_of(client.wait_process(ctx(), &wait).await);
    assert_eq!(code, Code::NOT_FOUND, "no process was made");
    assert!(!marker.exists());

    client
        .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
        .await
        .expect("destroy");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_container_requests_are_refused_clearly() {
    let mut agent = Agent::start(
        "bad-requests",
        None,
        &policy("policy/examples/allow-all.rego"),
    );
    let (client, _) = agent.connect().await;
    let rootfs = busybox_rootfs(&agent.dir);

    let (code, message) = status_of(
        client
            .create_container(
                ctx(),
                &container_request("../escape", &rootfs, &["/bin/true"]),
            )
            .await,
    );
    assert_eq!(code, Code::INVALID_ARGUMENT, "{message}");

    let missing = agent.dir.join("no-such-rootfs");
    let (code, message) = status_of(
        client
            .create_container(ctx(), &container_request("c1", &missing, &["/bin/true"]))
            .await,
    );
    assert_eq!(code, Code::FAILED_PRECONDITION);
    assert!(message.contains("does not exist"), "{message}");

    let (code, message) = status_of(
        client
            .create_container(
                ctx(),
                &container_request("c2", &rootfs, &["/bin/no-such-program"]),
            )
            .await,
    );
    // libcontainer checks the program exists when creating; the reason reaches the caller.
    assert_eq!(code, Code::INTERNAL);
    assert!(
        message.contains("cannot create container \"c2\"") && message.contains("no-such-program"),
        "{message}"
    );

    let mut nothing = agent::CreateContainerRequest::new();
    nothing.container_id = "c3".into();
    let (code, message) = status_of(client.create_container(ctx(), &nothing).await);
    assert_eq!(code, Code::INVALID_ARGUMENT);
    assert!(message.contains("no OCI spec"), "{message}");
}

/// The attestation agent and the confidential data hub in this process, each on its real
/// socket in `dir`, attesting a simulated Azure SNP CVM to a local KBS that holds `resources`.
struct GuestComponents {
    _cvm: peerpod_tests::cvm::SimulatedCvm,
    _kbs: peerpod_tests::kbs::RunningKbs,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    cdh_socket: PathBuf,
}

impl GuestComponents {
    async fn start(dir: &Path, resources: &[(&str, Vec<u8>)]) -> Self {
        use std::sync::Arc;
        let cvm = peerpod_tests::cvm::SimulatedCvm::start(peerpod_tests::cvm::CvmOptions::new(
            peerpod_tests::cvm::Flavour::Snp,
            dir,
        ))
        .expect("CVM");
        let mut options = peerpod_tests::kbs::KbsOptions::for_cvm(&cvm, None).expect("KBS");
        for (path, value) in resources {
            options.resources.insert((*path).into(), value.clone());
        }
        let kbs = peerpod_tests::kbs::RunningKbs::start(options, "127.0.0.1:0", None).expect("KBS");
        let aa_config = attestation_agent::AaConfig {
            kbs: Some(attestation_agent::config::KbsSection {
                url: kbs.url(),
                cert: None,
                tee_key_algorithm: Default::default(),
            }),
            tpm: cvm.tpm_spec(),
            imds_url: cvm.imds_url(),
            tsm_root: "/nonexistent-tsm".into(),
            allow_sample: false,
            ..Default::default()
        };
        let aa = Arc::new(attestation_agent::AttestationAgent::new(&aa_config, None).expect("AA"));
        let aa_socket = dir.join("aa.sock");
        let cdh_socket = dir.join("cdh.sock");
        let cdh_config = confidential_data_hub::CdhConfig::parse(&format!(
            "[kbc]\nname = \"cc_kbc\"\nurl = \"{}\"\n[aa]\naa_socket = \"unix://{}\"\n",
            kbs.url(),
            aa_socket.display()
        ))
        .expect("cdh.toml");
        let hub = Arc::new(confidential_data_hub::Hub::new(cdh_config).expect("CDH"));
        let mut stops = Vec::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        stops.push(tx);
        let addr = format!("unix://{}", aa_socket.display());
        tokio::spawn(async move {
            let _ = attestation_agent::server::serve(&addr, aa, async {
                let _ = rx.await;
            })
            .await;
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        stops.push(tx);
        let addr = format!("unix://{}", cdh_socket.display());
        tokio::spawn(async move {
            let _ = confidential_data_hub::server::serve(&addr, hub, async {
                let _ = rx.await;
            })
            .await;
        });
        for socket in [&aa_socket, &cdh_socket] {
            let started = std::time::Instant::now();
            while !socket.exists() {
                assert!(
                    started.elapsed().as_secs() < 10,
                    "{} missing",
                    socket.display()
                );
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
        Self {
            _cvm: cvm,
            _kbs: kbs,
            stops,
            cdh_socket,
        }
    }
}

impl Drop for GuestComponents {
    fn drop(&mut self) {
        for tx in self.stops.drain(..) {
            let _ = tx.send(());
        }
    }
}

fn push_env(request: &mut agent::CreateContainerRequest, entry: String) {
    let process = request
        .OCI
        .mut_or_insert_default()
        .Process
        .mut_or_insert_default();
    process.Env.push(entry);
}

#[tokio::test(flavor = "multi_thread")]
async fn sealed_environment_values_are_unsealed_through_the_cdh() {
    use confidential_data_hub::sealed::make;
    const SECRET: &str = "s3cr3t-db-password-from-the-kbs";
    let signer = make::generate_key().expect("key");
    let world_dir = std::env::temp_dir().join(format!("agent-sealed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&world_dir);
    std::fs::create_dir_all(&world_dir).expect("dir");
    let world = GuestComponents::start(
        &world_dir,
        &[
            ("default/key/db", SECRET.as_bytes().to_vec()),
            (
                "default/sign/jwk",
                make::public_jwk(&signer).to_string().into_bytes(),
            ),
        ],
    )
    .await;
    let (agent, client, rootfs) = pod_with(
        "sealed-env",
        &format!(
            "{}cdh_socket = 'unix://{}'\n",
            policy("policy/examples/allow-all.rego"),
            world.cdh_socket.display()
        ),
    )
    .await;

    let sealed = make::seal(
        &make::vault("kbs:///default/key/db"),
        &signer,
        "kbs:///default/sign/jwk",
    );
    let mut request = container_request(
        "app",
        &rootfs,
        &["/bin/sh", "-c", "echo \"$DB_PASSWORD|$GREETING\""],
    );
    push_env(&mut request, format!("DB_PASSWORD={sealed}"));
    create_and_start(&client, &request).await;
    let out = read_all(&client, "app", "app", false).await;
    assert_eq!(out.trim(), format!("{SECRET}|hello"));
    assert_eq!(wait(&client, "app", "app").await, 0);

    // A value sealed by someone else is refused, naming the variable; nothing starts.
    let intruder = make::generate_key().expect("key");
    let forged = make::seal(
        &make::vault("kbs:///default/key/db"),
        &intruder,
        "kbs:///default/sign/jwk",
    );
    let mut request = container_request("forged", &rootfs, &["/bin/true"]);
    push_env(&mut request, format!("API_TOKEN={forged}"));
    let (code, message) = status_of(client.create_container(ctx(), &request).await);
    assert_eq!(code, Code::FAILED_PRECONDITION, "{message}");
    assert!(
        message.contains("API_TOKEN") && message.contains("signature"),
        "{message}"
    );
    assert!(
        !agent.log().contains(SECRET),
        "the secret leaked into the agent's log"
    );
    client
        .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
        .await
        .expect("destroy");
    drop(world);
    let _ = std::fs::remove_dir_all(&world_dir);
}
