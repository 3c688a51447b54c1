//! A pod from CreateSandbox to DestroySandbox: containers, namespaces, clean-up, bad requests.

use ttrpc::Code;

use crate::common::{Agent, ctx, status_of};
use crate::support::*;
use peerpod_protocols::kata::agent;

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

    // Unknown ids.
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
    // The id of a running process cannot be used twice.
    let (code, _) = status_of(
        client
            .exec_process(ctx(), &exec_request("sleeper", "nap", &["/bin/true"]))
            .await,
    );
    assert_eq!(code, Code::ALREADY_EXISTS);
    let mut signal = agent::SignalProcessRequest::new();
    signal.container_id = "sleeper".into();
    signal.exec_id = "nap".into();
    signal.signal = 9;
    client
        .signal_process(ctx(), &signal)
        .await
        .expect("signal one");
    // As upstream (since 3.32) and a shell: 128 + the signal.
    assert_eq!(wait(&client, "sleeper", "nap").await, 137);
    // SIGTERM to the whole container (empty exec id): the init, pid 1 of its namespace, has no
    // SIGTERM handler and would ignore it, so the agent sends SIGKILL instead, as upstream does;
    // every process of the container gets it.
    signal.exec_id = String::new();
    signal.signal = 15;
    client
        .signal_process(ctx(), &signal)
        .await
        .expect("signal all");
    assert_eq!(wait(&client, "sleeper", "sleeper").await, 137);
    assert_eq!(wait(&client, "sleeper", "nap2").await, 137);
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

#[tokio::test(flavor = "multi_thread")]
async fn two_concurrent_creates_of_one_id_make_one_container() {
    let (_agent, client, rootfs) = pod("create-race", "policy/examples/allow-all.rego").await;
    let request = container_request("twin", &rootfs, &["/bin/sleep", "1000"]);
    let (first, second) = tokio::join!(
        client.create_container(ctx(), &request),
        client.create_container(ctx(), &request)
    );
    let refused = match (first, second) {
        (Ok(_), refused) | (refused, Ok(_)) => refused,
        (a, b) => panic!("neither create succeeded: {a:?} {b:?}"),
    };
    let (code, message) = status_of(refused);
    assert_eq!(code, Code::ALREADY_EXISTS, "{message}");
    // The one made is intact: it starts, runs execs (which read its bundle) and is removed.
    let mut start = agent::StartContainerRequest::new();
    start.container_id = "twin".into();
    client.start_container(ctx(), &start).await.expect("start");
    assert_eq!(run(&client, "twin", "e", "echo intact").await, "intact\n");
    client
        .remove_container(ctx(), &remove("twin"))
        .await
        .expect("remove");
}

#[tokio::test(flavor = "multi_thread")]
async fn namespace_types_as_upstreams_runtime_spells_them() {
    let (_agent, client, rootfs) = pod("ns-spelling", "policy/examples/allow-all.rego").await;
    let mut request = container_request("c", &rootfs, &["/bin/sleep", "1000"]);
    let linux = request
        .OCI
        .mut_or_insert_default()
        .Linux
        .mut_or_insert_default();
    linux.Namespaces.clear();
    for typ in ["pid", "mnt", "ipc", "uts", "net", "cgroup"] {
        let mut namespace = peerpod_protocols::kata::oci::LinuxNamespace::new();
        namespace.Type = typ.into();
        linux.Namespaces.push(namespace);
    }
    create_and_start(&client, &request).await;
    assert_eq!(run(&client, "c", "h", "hostname").await, "pod\n");
    client
        .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
        .await
        .expect("destroy");
}
