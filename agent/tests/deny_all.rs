//! Every AgentService RPC under a deny-all policy, sent to the `kata-agent` binary over its real
//! socket by a pod that has something to act on: a sandbox, running, created and paused
//! containers, processes with stdin, a terminal and output, a network namespace. Each request
//! is refused with PERMISSION_DENIED and changes nothing: no container starts, stops, pauses,
//! resumes or changes limits; no process starts, gets a signal, input or EOF; nothing is
//! mounted or written; the network, the terminal size, the clock, the entropy pool (a file
//! bound over /dev/random in the agent's mount namespace) and the policy stay as they were.
//! The one documented exception is ReadStdout/ReadStderr, which read first (as upstream does)
//! and then answer empty data.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Agent, busybox_rootfs, ctx, repo_file, status_of};
use peerpod_policy::engine::RPC_ENTRYPOINTS;
use peerpod_protocols::json::from_json;
use peerpod_protocols::kata::{agent, agent_ttrpc, health};
use peerpod_tests::requests;
use serde_json::json;
use ttrpc::Code;
use ttrpc::context;

/// A policy that says no to every entrypoint, explicitly.
fn deny_all_policy() -> String {
    let mut text = "package agent_policy\n".to_owned();
    let entrypoints: BTreeSet<&str> = RPC_ENTRYPOINTS.iter().map(|(_, e)| *e).collect();
    for entrypoint in entrypoints {
        text.push_str(&format!("default {entrypoint} := false\n"));
    }
    text
}

/// The pids of processes whose command line is exactly `args`.
fn processes(args: &[&str]) -> Vec<i32> {
    let wanted: Vec<u8> = args
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .expect("proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == wanted))
        .collect()
}

fn one_process(args: &[&str]) -> i32 {
    let pids = processes(args);
    assert_eq!(pids.len(), 1, "{args:?}: {pids:?}");
    pids[0]
}

/// A cgroup file of `pid` for the v1 `controller` (`v1_file`) or the unified hierarchy
/// (`v2_file`), whichever the machine has.
fn cgroup_read(pid: i32, controller: &str, v1_file: &str, v2_file: &str) -> String {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next(), parts.next());
        let (Some(controllers), Some(path)) = (controllers, path) else {
            continue;
        };
        let file = if controllers.split(',').any(|c| c == controller) {
            format!("/sys/fs/cgroup/{controller}{path}/{v1_file}")
        } else if controllers.is_empty() && !Path::new("/sys/fs/cgroup/pids").exists() {
            format!("/sys/fs/cgroup{path}/{v2_file}")
        } else {
            continue;
        };
        return std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{file}: {e}"))
            .trim()
            .to_owned();
    }
    panic!("no {controller} cgroup for {pid}: {cgroups}");
}

fn frozen(pid: i32) -> bool {
    matches!(
        cgroup_read(pid, "freezer", "freezer.state", "cgroup.freeze").as_str(),
        "FROZEN" | "1"
    )
}

fn pids_max(pid: i32) -> String {
    cgroup_read(pid, "pids", "pids.max", "pids.max")
}

/// `ip ARGS` in the agent's network namespace.
fn ip(agent_pid: u32, args: &[&str]) -> String {
    let output = Command::new("nsenter")
        .args(["-t", &agent_pid.to_string(), "-n", "ip"])
        .args(args)
        .output()
        .expect("nsenter runs");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Mount points under `dir` in the mount namespace of `pid`.
fn mounts_under(pid: u32, dir: &Path) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .expect("mountinfo")
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .map(str::to_owned)
        .collect()
}

fn short_ctx() -> context::Context {
    context::with_timeout(5_000_000_000)
}

fn message<M: protobuf::MessageFull>(value: serde_json::Value) -> M {
    let mut m = M::new();
    from_json(&value, &mut m).expect("request fits the protos");
    m
}

async fn create(client: &agent_ttrpc::AgentServiceClient, id: &str, rootfs: &Path, seconds: &str) {
    let request = requests::container(id, &rootfs.display().to_string(), &["/bin/sleep", seconds])
        .expect("request");
    client
        .create_container(ctx(), &request)
        .await
        .expect("create");
}

async fn exec(client: &agent_ttrpc::AgentServiceClient, id: &str, script: &str, terminal: bool) {
    let mut request = requests::exec("c1", id, &["/bin/sh", "-c", script]).expect("request");
    if let Some(process) = request.process.as_mut() {
        process.Terminal = terminal;
    }
    client.exec_process(ctx(), &request).await.expect("exec");
}

fn resize(row: u32, column: u32) -> agent::TtyWinResizeRequest {
    let mut request = agent::TtyWinResizeRequest::new();
    request.container_id = "c1".into();
    request.exec_id = "tty".into();
    request.row = row;
    request.column = column;
    request
}

/// Waits until `check` holds, for up to 10 s.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deny_all_policy_refuses_every_rpc_before_it_acts() {
    // In its own network and mount namespaces, without CAP_SYS_TIME, and with a plain file
    // over /dev/random: a SetGuestDateTime that got past the gate would fail with EPERM
    // (INTERNAL, not PERMISSION_DENIED) instead of moving the test machine's clock, and a
    // ReseedRandomDev would leave its bytes in the file.
    let sink = std::env::temp_dir().join(format!("deny-all-random-{}", std::process::id()));
    std::fs::write(&sink, "").expect("sink");
    let script = format!(
        "mount --bind {} /dev/random && exec \"$0\" \"$@\"",
        sink.display()
    );
    let mut agent = Agent::start_wrapped(
        "deny-all",
        &format!(
            "policy_file = '{}'\n",
            repo_file("policy/examples/allow-all.rego").display()
        ),
        &[
            "setpriv",
            "--bounding-set",
            "-sys_time",
            "unshare",
            "--net",
            "--mount",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    let (client, health) = agent.connect().await;
    let pid = agent.child.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .expect("CapEff");
    const CAP_SYS_TIME: u32 = 25;
    assert_eq!(
        effective & (1 << CAP_SYS_TIME),
        0,
        "the agent cannot set the clock"
    );
    let dir = agent.dir.clone();
    let rootfs = busybox_rootfs(&dir);
    let tmp = rootfs.join("tmp");

    // The pod, while everything is allowed.
    let sandbox =
        requests::sandbox("sb", "pod", &dir.join("shm").display().to_string()).expect("sandbox");
    client
        .create_sandbox(ctx(), &sandbox)
        .await
        .expect("sandbox");
    create(&client, "c1", &rootfs, "1001").await;
    client
        .start_container(ctx(), &requests::start("c1"))
        .await
        .expect("start");
    create(&client, "c2", &rootfs, "1002").await;
    create(&client, "c3", &rootfs, "1003").await;
    client
        .start_container(ctx(), &requests::start("c3"))
        .await
        .expect("start");
    let mut pause = agent::PauseContainerRequest::new();
    pause.container_id = "c3".into();
    client.pause_container(ctx(), &pause).await.expect("pause");
    exec(&client, "in", "cat > /tmp/stdin-got; sleep 1004", false).await;
    exec(
        &client,
        "out",
        "echo out-data; echo err-data >&2; sleep 1005",
        false,
    )
    .await;
    let watch_size = "while true; do stty size > /tmp/tty-size.new \
                      && mv /tmp/tty-size.new /tmp/tty-size; sleep 0.05; done";
    exec(&client, "tty", watch_size, true).await;
    client
        .tty_win_resize(ctx(), &resize(10, 20))
        .await
        .expect("resize");
    eventually("the first resize", || {
        std::fs::read_to_string(tmp.join("tty-size")).is_ok_and(|s| s.trim() == "10 20")
    })
    .await;
    let mut seed = agent::ReseedRandomDevRequest::new();
    seed.data = b"allowed-seed".to_vec();
    client
        .reseed_random_dev(ctx(), &seed)
        .await
        .expect("reseed");
    assert_eq!(
        std::fs::read(&sink).expect("sink"),
        b"allowed-seed",
        "the sink catches what ReseedRandomDev writes"
    );
    let c1 = one_process(&["/bin/sleep", "1001"]);
    let c3 = one_process(&["/bin/sleep", "1003"]);
    eventually("the exec's sleep", || {
        processes(&["sleep", "1005"]).len() == 1
    })
    .await;
    eventually("the stdin reader", || tmp.join("stdin-got").exists()).await;
    assert!(frozen(c3) && !frozen(c1));
    assert_eq!(pids_max(c1), "64");

    let before = (
        ip(pid, &["-o", "addr"]),
        ip(pid, &["route", "show", "table", "all"]),
        ip(pid, &["neigh"]),
        mounts_under(pid, &dir),
    );

    let mut set = agent::SetPolicyRequest::new();
    set.policy = deny_all_policy();
    client
        .set_policy(ctx(), &set)
        .await
        .expect("deny-all in force");

    let mut refused: Vec<(&str, Code)> = Vec::new();
    macro_rules! deny {
        ($name:literal, $call:expr) => {{
            let (code, message) = status_of($call.await);
            assert_eq!(code, Code::PERMISSION_DENIED, "{}: {message}", $name);
            refused.push(($name, code));
        }};
    }

    // Containers.
    let c4 = requests::container("c4", &rootfs.display().to_string(), &["/bin/sleep", "1006"])
        .expect("request");
    deny!("CreateContainer", client.create_container(ctx(), &c4));
    deny!(
        "StartContainer",
        client.start_container(ctx(), &requests::start("c2"))
    );
    deny!(
        "RemoveContainer",
        client.remove_container(ctx(), &requests::remove("c1"))
    );
    let e = requests::exec("c1", "new", &["/bin/sleep", "1007"]).expect("exec");
    deny!("ExecProcess", client.exec_process(ctx(), &e));
    deny!(
        "SignalProcess",
        client.signal_process(ctx(), &requests::signal("c1", "", 9))
    );
    let mut wait = agent::WaitProcessRequest::new();
    wait.container_id = "c1".into();
    deny!("WaitProcess", client.wait_process(short_ctx(), &wait));
    let update: agent::UpdateContainerRequest =
        message(json!({"container_id": "c1", "resources": {"Pids": {"Limit": 5}}}));
    deny!("UpdateContainer", client.update_container(ctx(), &update));
    let ephemeral = dir.join("ephemeral");
    let mounts: agent::UpdateEphemeralMountsRequest = message(json!({"storages": [{
        "driver": "ephemeral", "source": "tmpfs", "fstype": "tmpfs",
        "mount_point": ephemeral.display().to_string(), "options": []
    }]}));
    deny!(
        "UpdateEphemeralMounts",
        client.update_ephemeral_mounts(ctx(), &mounts)
    );
    let mut stats = agent::StatsContainerRequest::new();
    stats.container_id = "c1".into();
    deny!("StatsContainer", client.stats_container(ctx(), &stats));
    let mut pause = agent::PauseContainerRequest::new();
    pause.container_id = "c1".into();
    deny!("PauseContainer", client.pause_container(ctx(), &pause));
    let mut resume = agent::ResumeContainerRequest::new();
    resume.container_id = "c3".into();
    deny!("ResumeContainer", client.resume_container(ctx(), &resume));
    deny!(
        "RemoveStaleVirtiofsShareMounts",
        client.remove_stale_virtiofs_share_mounts(
            ctx(),
            &agent::RemoveStaleVirtiofsShareMountsRequest::new()
        )
    );

    // Processes' input, output and terminal.
    let write = requests::write_stdin("c1", "in", b"planted input\n");
    deny!("WriteStdin", client.write_stdin(ctx(), &write));
    for (name, stderr) in [("ReadStdout", false), ("ReadStderr", true)] {
        // Read first, as upstream: the data read is withheld.
        let mut read = agent::ReadStreamRequest::new();
        read.container_id = "c1".into();
        read.exec_id = "out".into();
        read.len = 4096;
        let reply = if stderr {
            client.read_stderr(short_ctx(), &read).await
        } else {
            client.read_stdout(short_ctx(), &read).await
        };
        let reply = reply.unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert!(reply.data.is_empty(), "{name} gave {:?}", reply.data);
        refused.push((name, Code::PERMISSION_DENIED));
    }
    deny!(
        "CloseStdin",
        client.close_stdin(ctx(), &requests::close_stdin("c1", "in"))
    );
    deny!(
        "TtyWinResize",
        client.tty_win_resize(ctx(), &resize(30, 40))
    );

    // The network.
    let interface: agent::UpdateInterfaceRequest = message(json!({"interface": {
        "device": "lo", "name": "lo", "mtu": 65536,
        "IPAddresses": [{"address": "10.99.0.1", "mask": "24"}]
    }}));
    deny!(
        "UpdateInterface",
        client.update_interface(ctx(), &interface)
    );
    let routes: agent::UpdateRoutesRequest = message(json!({"routes": {"Routes": [
        {"dest": "10.98.0.0/24", "device": "lo"}
    ]}}));
    deny!("UpdateRoutes", client.update_routes(ctx(), &routes));
    deny!(
        "ListInterfaces",
        client.list_interfaces(ctx(), &agent::ListInterfacesRequest::new())
    );
    deny!(
        "ListRoutes",
        client.list_routes(ctx(), &agent::ListRoutesRequest::new())
    );
    let neighbors: agent::AddARPNeighborsRequest = message(json!({"neighbors": {"ARPNeighbors": [{
        "toIPAddress": {"address": "10.97.0.5", "mask": "32"},
        "device": "lo", "lladdr": "02:00:00:00:00:01", "state": 128
    }]}}));
    deny!(
        "AddARPNeighbors",
        client.add_arp_neighbors(ctx(), &neighbors)
    );
    deny!(
        "GetIPTables",
        client.get_ip_tables(ctx(), &agent::GetIPTablesRequest::new())
    );
    let mut iptables = agent::SetIPTablesRequest::new();
    iptables.data = b"*filter\n:INPUT DROP [0:0]\nCOMMIT\n".to_vec();
    deny!("SetIPTables", client.set_ip_tables(ctx(), &iptables));

    // The sandbox and the guest.
    deny!(
        "GetMetrics",
        client.get_metrics(ctx(), &agent::GetMetricsRequest::new())
    );
    let mut sandbox2 =
        requests::sandbox("sb2", "pod2", &dir.join("shm2").display().to_string()).expect("sandbox");
    sandbox2.dns.push("nameserver 6.6.6.6".into());
    deny!("CreateSandbox", client.create_sandbox(ctx(), &sandbox2));
    deny!(
        "DestroySandbox",
        client.destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
    );
    let mut cpu = agent::OnlineCPUMemRequest::new();
    cpu.nb_cpus = 1;
    deny!("OnlineCPUMem", client.online_cpu_mem(ctx(), &cpu));
    let mut seed = agent::ReseedRandomDevRequest::new();
    seed.data = b"DENIED-SEED".to_vec();
    deny!("ReseedRandomDev", client.reseed_random_dev(ctx(), &seed));
    deny!(
        "GetGuestDetails",
        client.get_guest_details(ctx(), &agent::GuestDetailsRequest::new())
    );
    let mut probe = agent::MemHotplugByProbeRequest::new();
    probe.memHotplugProbeAddr.push(0x1000_0000);
    deny!(
        "MemHotplugByProbe",
        client.mem_hotplug_by_probe(ctx(), &probe)
    );
    // Ten years ahead (the agent cannot set the clock: see above; a request past the gate would
    // be INTERNAL) and an invalid time: the policy answers before the request is looked at.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    let mut time = agent::SetGuestDateTimeRequest::new();
    time.Sec = i64::try_from(now.as_secs()).expect("seconds") + 10 * 365 * 86_400;
    deny!("SetGuestDateTime", client.set_guest_date_time(ctx(), &time));
    time.Usec = 2_000_000;
    let (code, _) = status_of(client.set_guest_date_time(ctx(), &time).await);
    assert_eq!(code, Code::PERMISSION_DENIED, "denied before validated");
    let copied = dir.join("shared/containers/c1-hosts");
    let mut copy = agent::CopyFileRequest::new();
    copy.path = copied.display().to_string();
    copy.file_mode = 0o100_644;
    copy.dir_mode = 0o40_755;
    copy.file_size = 4;
    copy.data = b"evil".to_vec();
    deny!("CopyFile", client.copy_file(ctx(), &copy));
    deny!(
        "GetOOMEvent",
        client.get_oom_event(short_ctx(), &agent::GetOOMEventRequest::new())
    );
    let mut swap = agent::AddSwapRequest::new();
    swap.PCIPath.push(1);
    deny!("AddSwap", client.add_swap(ctx(), &swap));
    let mut swap_path = agent::AddSwapPathRequest::new();
    swap_path.path = dir.join("swapfile").display().to_string();
    deny!("AddSwapPath", client.add_swap_path(ctx(), &swap_path));
    let mut volume = agent::VolumeStatsRequest::new();
    volume.volume_guest_path = dir.display().to_string();
    deny!("GetVolumeStats", client.get_volume_stats(ctx(), &volume));
    let mut resize_volume = agent::ResizeVolumeRequest::new();
    resize_volume.volume_guest_path = dir.display().to_string();
    resize_volume.size = 1 << 30;
    deny!("ResizeVolume", client.resize_volume(ctx(), &resize_volume));
    let mut allow_all = agent::SetPolicyRequest::new();
    allow_all.policy =
        std::fs::read_to_string(repo_file("policy/examples/allow-all.rego")).expect("allow-all");
    deny!("SetPolicy", client.set_policy(ctx(), &allow_all));
    deny!(
        "MemAgentMemcgSet",
        client.mem_agent_memcg_set(ctx(), &agent::MemAgentMemcgConfig::new())
    );
    deny!(
        "MemAgentCompactSet",
        client.mem_agent_compact_set(ctx(), &agent::MemAgentCompactConfig::new())
    );
    deny!(
        "GetDiagnosticData",
        client.get_diagnostic_data(ctx(), &agent::GetDiagnosticDataRequest::new())
    );

    // Every RPC was asked, once.
    let asked: BTreeSet<&str> = refused.iter().map(|(name, _)| *name).collect();
    let all: BTreeSet<&str> = RPC_ENTRYPOINTS.iter().map(|(name, _)| *name).collect();
    assert_eq!(asked, all);
    assert_eq!(refused.len(), 42);

    // Give anything that slipped through time to show.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Still serving, with the same policy (SetPolicy was refused) and the same pod.
    health
        .check(ctx(), &health::CheckRequest::new())
        .await
        .expect("still serving after DestroySandbox was refused");
    let (code, _) = status_of(
        client
            .get_guest_details(ctx(), &agent::GuestDetailsRequest::new())
            .await,
    );
    assert_eq!(code, Code::PERMISSION_DENIED, "the policy did not change");
    assert_eq!(
        one_process(&["/bin/sleep", "1001"]),
        c1,
        "c1 runs, unsignalled"
    );
    assert_eq!(one_process(&["/bin/sleep", "1003"]), c3);
    assert!(
        processes(&["/bin/sleep", "1002"]).is_empty(),
        "c2 not started"
    );
    assert!(processes(&["/bin/sleep", "1006"]).is_empty(), "no c4");
    assert!(processes(&["/bin/sleep", "1007"]).is_empty(), "no exec");
    assert!(processes(&["sleep", "1004"]).is_empty(), "stdin not closed");
    assert!(!dir.join("state/bundles/c4").exists());
    assert!(!frozen(c1), "c1 not paused");
    assert!(frozen(c3), "c3 not resumed");
    assert_eq!(pids_max(c1), "64", "c1's limits unchanged");
    assert_eq!(
        std::fs::read_to_string(tmp.join("stdin-got")).expect("stdin file"),
        "",
        "no input reached the process"
    );
    assert_eq!(
        std::fs::read_to_string(tmp.join("tty-size"))
            .expect("size")
            .trim(),
        "10 20",
        "the terminal kept its size"
    );
    let after = (
        ip(pid, &["-o", "addr"]),
        ip(pid, &["route", "show", "table", "all"]),
        ip(pid, &["neigh"]),
        mounts_under(pid, &dir),
    );
    assert_eq!(before, after, "network and mounts unchanged");
    assert!(
        !before
            .3
            .iter()
            .any(|m| m.ends_with("shm2") || m.ends_with("ephemeral"))
    );
    assert!(!dir.join("resolv.conf").exists(), "no DNS written");
    assert_eq!(
        std::fs::read(&sink).expect("sink"),
        b"allowed-seed",
        "no reseed"
    );
    assert!(!copied.exists() && !dir.join("shared/containers").exists());
    let now_after = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    assert!(
        now_after < now + Duration::from_secs(3600),
        "the clock did not jump"
    );

    // The gate refused each one (and logged it without the request).
    let log = agent.log();
    for (name, _) in RPC_ENTRYPOINTS {
        let line = if *name == "SetPolicy" {
            log.lines()
                .any(|l| l.contains("SetPolicy denied by the policy in force"))
        } else {
            log.lines().any(|l| {
                l.contains("request denied by policy") && l.contains(&format!("\"rpc\":\"{name}\""))
            })
        };
        assert!(line, "no denial logged for {name}");
    }
    assert!(!log.contains("planted input") && !log.contains("evil"));
    let _ = std::fs::remove_file(&sink);
}
