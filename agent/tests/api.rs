//! The `kata-agent` binary driven over real sockets by a ttrpc client generated from our protos:
//! health, the policy gate on every RPC, SetPolicy, initdata policies, missing policies,
//! malformed requests, unix and TCP listeners, clean shutdown (and exit after DestroySandbox),
//! upstream's answers to RPCs peer pods do not need, and a warning for every failed request.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Agent, TIMEOUT, ctx, repo_file, status_of};
use peerpod_protocols::kata::{agent, health};
use ttrpc::Code;

fn policy_line(path: &str) -> String {
    format!("policy_file = '{}'\n", repo_file(path).display())
}

#[tokio::test(flavor = "multi_thread")]
async fn allow_all_serves_health_details_and_names_unimplemented_rpcs() {
    let mut agent = Agent::start(
        "allow-all",
        None,
        &policy_line("policy/examples/allow-all.rego"),
    );
    let (client, health) = agent.connect().await;

    let check = health
        .check(ctx(), &health::CheckRequest::new())
        .await
        .expect("health");
    assert_eq!(
        check.status,
        health::health_check_response::ServingStatus::SERVING.into()
    );
    let version = health
        .version(ctx(), &health::CheckRequest::new())
        .await
        .expect("version");
    assert_eq!(version.agent_version, env!("CARGO_PKG_VERSION"));

    let mut request = agent::GuestDetailsRequest::new();
    request.mem_block_size = true;
    let details = client
        .get_guest_details(ctx(), &request)
        .await
        .expect("guest details");
    assert_eq!(details.agent_details.version, env!("CARGO_PKG_VERSION"));

    // Netlink, read-only here (the agent runs in the host's namespace in this test).
    let interfaces = client
        .list_interfaces(ctx(), &agent::ListInterfacesRequest::new())
        .await
        .expect("interfaces");
    assert!(
        interfaces.Interfaces.iter().any(|i| i.name == "lo"),
        "{interfaces:?}"
    );

    let (code, message) = status_of(client.add_swap(ctx(), &agent::AddSwapRequest::new()).await);
    assert_eq!(code, Code::UNIMPLEMENTED);
    assert_eq!(message, "AddSwap is not implemented by this agent");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_denied_request_is_permission_denied_with_the_policys_reason() {
    let mut agent = Agent::start(
        "no-exec",
        None,
        &policy_line("policy/examples/allow-all-except-exec.rego"),
    );
    let (client, _) = agent.connect().await;
    let mut exec = agent::ExecProcessRequest::new();
    exec.container_id = "c1".into();
    let (code, message) = status_of(client.exec_process(ctx(), &exec).await);
    assert_eq!(code, Code::PERMISSION_DENIED);
    assert_eq!(
        message,
        "ExecProcessRequest is blocked by policy: the policy rule evaluated to false"
    );
    // Allowed requests get past the gate.
    client
        .create_sandbox(ctx(), &agent::CreateSandboxRequest::new())
        .await
        .expect("allowed");
    assert!(
        agent.log().contains("request denied by policy"),
        "{}",
        agent.log()
    );
    assert!(
        !agent.log().contains("\"c1\""),
        "the request must not be logged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_policy_only_health_answers() {
    let mut agent = Agent::start(
        "no-policy",
        None,
        "policy_file = '/nonexistent/policy.rego'\n",
    );
    let (client, health) = agent.connect().await;
    health
        .check(ctx(), &health::CheckRequest::new())
        .await
        .expect("health serves");
    let (code, message) = status_of(
        client
            .get_guest_details(ctx(), &agent::GuestDetailsRequest::new())
            .await,
    );
    assert_eq!(code, Code::PERMISSION_DENIED);
    assert!(
        message.starts_with("GuestDetailsRequest is blocked by policy: no agent policy is in force (cannot read the policy file /nonexistent/policy.rego"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_initdata_policy_is_the_policy() {
    let initdata = repo_file("policy/examples/initdata.toml");
    let mut agent = Agent::start(
        "initdata",
        None,
        &format!(
            "initdata_file = '{}'\n{}",
            initdata.display(),
            policy_line("policy/examples/allow-all.rego")
        ),
    );
    let (client, _) = agent.connect().await;
    // The sample's stateful policy refuses SetPolicy and unknown containers, although the
    // policy file allows everything: initdata wins.
    let (code, message) = status_of(
        client
            .exec_process(ctx(), &agent::ExecProcessRequest::new())
            .await,
    );
    assert_eq!(code, Code::PERMISSION_DENIED);
    assert!(
        message.contains("policy.rego:"),
        "the stateful policy explains itself: {message}"
    );
    let mut set = agent::SetPolicyRequest::new();
    set.policy = "package agent_policy\ndefault ExecProcessRequest := true\n".into();
    let (code, _) = status_of(client.set_policy(ctx(), &set).await);
    assert_eq!(code, Code::PERMISSION_DENIED);
}

#[tokio::test(flavor = "multi_thread")]
async fn set_policy_swaps_atomically_and_refuses_bad_policies() {
    let mut agent = Agent::start(
        "set-policy",
        None,
        &policy_line("policy/examples/allow-all.rego"),
    );
    let (client, _) = agent.connect().await;

    let mut bad = agent::SetPolicyRequest::new();
    bad.policy = "package agent_policy\nExecProcessRequest if {".into();
    let (code, message) = status_of(client.set_policy(ctx(), &bad).await);
    assert_eq!(code, Code::INVALID_ARGUMENT);
    assert!(message.starts_with("invalid request: the new policy was refused and the current one stays in force: the policy does not compile"), "{message}");
    // The old policy is still in force: exec gets past the gate (to find no container).
    let (code, _) = status_of(
        client
            .exec_process(ctx(), &agent::ExecProcessRequest::new())
            .await,
    );
    assert_eq!(code, Code::NOT_FOUND);

    let mut good = agent::SetPolicyRequest::new();
    good.policy = std::fs::read_to_string(repo_file("policy/examples/allow-all-except-exec.rego"))
        .expect("example");
    client
        .set_policy(ctx(), &good)
        .await
        .expect("allowed and valid");
    let (code, _) = status_of(
        client
            .exec_process(ctx(), &agent::ExecProcessRequest::new())
            .await,
    );
    assert_eq!(code, Code::PERMISSION_DENIED);
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_on_tcp() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let addr = format!("tcp://127.0.0.1:{port}");
    let mut agent = Agent::start(
        "tcp",
        Some(&addr),
        &policy_line("policy/examples/allow-all.rego"),
    );
    let (client, _) = agent.connect().await;
    client
        .get_guest_details(ctx(), &agent::GuestDetailsRequest::new())
        .await
        .expect("guest details over TCP");
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_and_oversized_requests_fail_and_the_agent_keeps_serving() {
    let mut agent = Agent::start(
        "malformed",
        None,
        &policy_line("policy/examples/allow-all.rego"),
    );
    let (client, health) = agent.connect().await;
    let raw = ttrpc::r#async::Client::connect(&agent.addr)
        .await
        .expect("connect");

    // A payload that is not a protobuf message of the method's request type.
    let mut request = ttrpc::Request::new();
    request.service = "grpc.AgentService".into();
    request.method = "CreateContainer".into();
    request.payload = vec![0xff; 64];
    request.timeout_nano = 5_000_000_000;
    let reply = raw.request(request).await;
    let failed = match &reply {
        Err(_) => true,
        Ok(response) => response.status.code() != Code::OK,
    };
    assert!(failed, "garbage must not succeed: {reply:?}");

    // An unknown method.
    let mut request = ttrpc::Request::new();
    request.service = "grpc.AgentService".into();
    request.method = "NoSuchMethod".into();
    request.timeout_nano = 5_000_000_000;
    let reply = raw.request(request).await;
    let code = reply.map(|r| r.status.code()).unwrap_or(Code::UNKNOWN);
    assert_ne!(code, Code::OK);

    // A request larger than a ttrpc message may be (4 MiB).
    let mut copy = agent::CopyFileRequest::new();
    copy.path = "/tmp/big".into();
    copy.data = vec![0u8; 5 * 1024 * 1024];
    assert!(client.copy_file(ctx(), &copy).await.is_err());

    // Still serving, on new and old connections.
    health
        .check(ctx(), &health::CheckRequest::new())
        .await
        .expect("still healthy");
    let (fresh, _) = agent.connect().await;
    fresh
        .get_guest_details(ctx(), &agent::GuestDetailsRequest::new())
        .await
        .expect("still serving");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_the_agent_and_removes_its_socket() {
    let mut agent = Agent::start("sigterm", None, "unknown_setting = 1\n");
    let _ = agent.connect().await;
    let socket = agent.dir.join("run/agent.sock");
    assert!(socket.exists());
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(agent.child.id().to_string())
        .status()
        .expect("kill runs");
    assert!(status.success());
    let deadline = Instant::now() + TIMEOUT;
    let exit = loop {
        if let Some(exit) = agent.child.try_wait().expect("wait") {
            break exit;
        }
        assert!(Instant::now() < deadline, "the agent did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "{exit}: {}", agent.log());
    assert!(!socket.exists(), "the socket file is removed");
    let log = agent.log();
    assert!(log.contains("unknown key `unknown_setting`"), "{log}");
}

#[test]
fn an_unreadable_configuration_stops_the_agent_with_a_reason() {
    let output = Command::new(env!("CARGO_BIN_EXE_kata-agent"))
        .args(["--config", "/nonexistent/agent.toml"])
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot read the agent configuration file /nonexistent/agent.toml"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn guest_requests_copy_files_metrics_entropy_and_time() {
    let mut agent = Agent::start(
        "guest",
        None,
        &policy_line("policy/examples/allow-all.rego"),
    );
    let (client, _) = agent.connect().await;

    // A file in two chunks, under the shared directory.
    let target = agent.dir.join("shared/containers/c1-hosts");
    let mut copy = agent::CopyFileRequest::new();
    copy.path = target.display().to_string();
    copy.file_size = 10;
    copy.file_mode = 0o100_644;
    copy.dir_mode = 0o40_755;
    copy.data = b"127.0".to_vec();
    client.copy_file(ctx(), &copy).await.expect("first chunk");
    copy.offset = 5;
    copy.data = b".0.1\n".to_vec();
    client.copy_file(ctx(), &copy).await.expect("last chunk");
    assert_eq!(
        std::fs::read_to_string(&target).expect("copied"),
        "127.0.0.1\n"
    );
    // Outside the shared directory: refused, nothing written.
    copy.path = agent.dir.join("elsewhere").display().to_string();
    copy.offset = 0;
    copy.data = b"0123456789".to_vec();
    let (code, message) = status_of(client.copy_file(ctx(), &copy).await);
    assert_eq!(code, Code::INVALID_ARGUMENT);
    assert!(
        message.contains("must be an absolute path under"),
        "{message}"
    );
    assert!(!agent.dir.join("elsewhere").exists());

    let metrics = client
        .get_metrics(ctx(), &agent::GetMetricsRequest::new())
        .await
        .expect("metrics");
    assert!(
        metrics
            .metrics
            .contains("kata_agent_process_resident_memory_bytes "),
        "{}",
        metrics.metrics
    );

    let mut seed = agent::ReseedRandomDevRequest::new();
    seed.data = vec![7; 64];
    client
        .reseed_random_dev(ctx(), &seed)
        .await
        .expect("reseed");

    let mut time = agent::SetGuestDateTimeRequest::new();
    time.Sec = 1;
    time.Usec = 2_000_000;
    let (code, _) = status_of(client.set_guest_date_time(ctx(), &time).await);
    assert_eq!(code, Code::INVALID_ARGUMENT);
}

#[tokio::test(flavor = "multi_thread")]
async fn drop_in_rpcs_and_guest_details_answer_as_upstream() {
    // Upstream's Duration form for cdh_api_timeout is read (an unreadable value would stop the
    // agent before it listens).
    let mut agent = Agent::start(
        "drop-in",
        None,
        &format!(
            "cdh_api_timeout = {{ secs = 7, nanos = 500 }}\n{}",
            policy_line("policy/examples/allow-all.rego")
        ),
    );
    let (client, _) = agent.connect().await;
    client
        .remove_stale_virtiofs_share_mounts(
            ctx(),
            &agent::RemoveStaleVirtiofsShareMountsRequest::new(),
        )
        .await
        .expect("RemoveStaleVirtiofsShareMounts succeeds");
    client
        .get_diagnostic_data(ctx(), &agent::GetDiagnosticDataRequest::new())
        .await
        .expect("GetDiagnosticData succeeds");

    let details = client
        .get_guest_details(ctx(), &agent::GuestDetailsRequest::new())
        .await
        .expect("guest details");
    let details = details.agent_details.into_option().expect("agent details");
    assert!(details.supports_seccomp, "seccomp profiles are applied");
    assert_eq!(details.extra_features, ["agent-policy", "seccomp"]);
    // The storage handlers are exactly the drivers the runtime accepts, as it lists them when
    // it refuses another.
    let mut sandbox = agent::CreateSandboxRequest::new();
    let mut storage = agent::Storage::new();
    storage.driver = "no-such-driver".into();
    storage.mount_point = agent.dir.join("nowhere").display().to_string();
    sandbox.storages.push(storage);
    let (code, message) = status_of(client.create_sandbox(ctx(), &sandbox).await);
    assert_ne!(code, Code::OK, "{message}");
    let supported = message
        .split_once("(supported: ")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(list, _)| list)
        .unwrap_or_else(|| panic!("no list of drivers in {message:?}"));
    let mut supported: Vec<&str> = supported.split(", ").collect();
    supported.sort_unstable();
    let mut handlers = details.storage_handlers.clone();
    handlers.sort_unstable();
    assert_eq!(handlers, supported);
    assert!(!agent.log().contains("cdh_api_timeout"), "{}", agent.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_request_is_logged_without_what_it_carried() {
    const PLANTED: &str = "sk-live-PLANTED-7f3a";
    let mut agent = Agent::start(
        "failure-log",
        None,
        &policy_line("policy/examples/allow-all.rego"),
    );
    let (client, _) = agent.connect().await;

    // A container id the agent quotes back in its error.
    let mut signal = agent::SignalProcessRequest::new();
    signal.container_id = format!("{PLANTED}-id");
    signal.signal = 9;
    let (code, message) = status_of(client.signal_process(ctx(), &signal).await);
    assert_eq!(code, Code::NOT_FOUND);
    assert!(message.contains(PLANTED), "the caller is told: {message}");
    // A secret environment value in a container request that fails (no such root).
    // Its root filesystem path, which the error names, carries the value too.
    let rootfs = format!("/nonexistent/{PLANTED}/rootfs");
    let mut create =
        peerpod_tests::requests::container("failing", &rootfs, &["/bin/true"]).expect("request");
    if let Some(process) = create.OCI.as_mut().and_then(|s| s.Process.as_mut()) {
        process.Env.push(format!("DB_PASSWORD={PLANTED}"));
    }
    let (code, _) = status_of(client.create_container(ctx(), &create).await);
    assert_ne!(code, Code::OK);
    // A serde error quoting a value the request chose.
    let mut bad = agent::CreateContainerRequest::new();
    bad.container_id = "bad".into();
    let mut spec = peerpod_protocols::kata::oci::Spec::new();
    let mut linux = peerpod_protocols::kata::oci::Linux::new();
    let mut ns = peerpod_protocols::kata::oci::LinuxNamespace::new();
    ns.Type = format!("{PLANTED}-ns");
    linux.Namespaces.push(ns);
    spec.Linux = protobuf::MessageField::some(linux);
    bad.OCI = protobuf::MessageField::some(spec);
    let (code, _) = status_of(client.create_container(ctx(), &bad).await);
    assert_ne!(code, Code::OK);
    // A CopyFile path the error names (outside this agent's copy root, so refused).
    let mut copy = agent::CopyFileRequest::new();
    copy.path = format!("/run/kata-containers/shared/containers/{PLANTED}-file");
    copy.offset = 1;
    copy.file_size = 2;
    copy.file_mode = 0o100_644;
    copy.data = b"x".to_vec();
    let (code, message) = status_of(client.copy_file(ctx(), &copy).await);
    assert_ne!(code, Code::OK, "{message}");
    assert!(message.contains(PLANTED), "the caller is told: {message}");
    // Stdin data for a process that is not there.
    let write = peerpod_tests::requests::write_stdin("nope", "nope", PLANTED.as_bytes());
    let (code, _) = status_of(client.write_stdin(ctx(), &write).await);
    assert_eq!(code, Code::NOT_FOUND);

    // A policy whose rule answers with a value from the request: the denial's cause quotes it.
    let mut set = agent::SetPolicyRequest::new();
    set.policy = "package agent_policy\nStartContainerRequest := input.container_id\n".into();
    client.set_policy(ctx(), &set).await.expect("set policy");
    let (code, _) = status_of(
        client
            .start_container(ctx(), &peerpod_tests::requests::start(PLANTED))
            .await,
    );
    assert_eq!(code, Code::PERMISSION_DENIED);

    let log = agent.log();
    assert!(
        log.lines()
            .any(|l| l.contains("request denied by policy") && l.contains("StartContainer")),
        "{log}"
    );
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("request failed"))
        .collect();
    for (method, code) in [
        ("SignalProcess", "NOT_FOUND"),
        ("CreateContainer", ""),
        ("WriteStdin", "NOT_FOUND"),
    ] {
        assert!(
            failed
                .iter()
                .any(|l| l.contains("WARN") && l.contains(method) && l.contains(code)),
            "no warning for {method}: {log}"
        );
    }
    assert!(
        failed.iter().all(|l| l.contains("reason")),
        "each says why: {failed:?}"
    );
    assert!(
        !log.contains(PLANTED),
        "the request leaked into the log: {log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn destroy_sandbox_answers_then_the_agent_exits() {
    let mut agent = Agent::start(
        "destroy-exits",
        None,
        &policy_line("policy/examples/allow-all-except-exec.rego"),
    );
    let (client, health) = agent.connect().await;
    // A denied or failed request does not stop it.
    let (code, _) = status_of(
        client
            .exec_process(ctx(), &agent::ExecProcessRequest::new())
            .await,
    );
    assert_eq!(code, Code::PERMISSION_DENIED);
    health
        .check(ctx(), &health::CheckRequest::new())
        .await
        .expect("still serving");
    client
        .create_sandbox(ctx(), &agent::CreateSandboxRequest::new())
        .await
        .expect("sandbox");
    client
        .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
        .await
        .expect("DestroySandbox is answered");
    let deadline = Instant::now() + TIMEOUT;
    let exit = loop {
        if let Some(exit) = agent.child.try_wait().expect("wait") {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "the agent still runs: {}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "{exit}: {}", agent.log());
    assert!(!agent.dir.join("run/agent.sock").exists());
    assert!(agent.log().contains("sandbox destroyed; the agent stops"));
}

/// A test's agent leaves nothing behind in the temp dir: once dropped (stopped), its directory
/// (config, log, socket, state) is gone. Before, every test left its agent-api-<pid>-<name>
/// directory (about 1,200 had accumulated).
#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_test_agent_leaves_no_directory() {
    let mut agent = Agent::start(
        "leaves-nothing",
        None,
        &policy_line("policy/examples/allow-all.rego"),
    );
    let (_client, health) = agent.connect().await;
    health
        .check(ctx(), &health::CheckRequest::new())
        .await
        .expect("health");
    let dir = agent.dir.clone();
    assert!(dir.join("agent.log").exists());
    drop(agent);
    assert!(!dir.exists(), "{} was left behind", dir.display());
}
