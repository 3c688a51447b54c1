//! The agent in a QEMU test VM (Debian's cloud kernel, an initramfs around this build of
//! `kata-agent`), driven over TCP through QEMU's port forwarding: a pod's life from sandbox to
//! destruction with busybox containers, as the shim drives it, plus the guest's details and
//! network. Needs `qemu-system-x86_64` (Debian's qemu-system-x86; `make deps` installs it) and
//! apt to fetch the kernel package on the first run; fails, never skips, without them.

use std::time::{Duration, Instant};

use peerpod_protocols::kata::{agent, agent_ttrpc, health};
use peerpod_tests::requests::{self, Stream, ctx};
use peerpod_tests::vm::{GUEST_BUSYBOX_ROOTFS, GUEST_IP};
use peerpod_tests::{TestVm, VmOptions};

#[test]
fn a_pod_lives_and_dies_in_a_vm() {
    let started = Instant::now();
    let vm = TestVm::boot(&VmOptions::new(env!("CARGO_BIN_EXE_kata-agent")))
        .unwrap_or_else(|e| panic!("the test VM did not boot: {e}"));
    eprintln!(
        "test VM: agent answered {:.1?} after qemu started ({:.1?} with the image), kernel {}, on {}",
        vm.boot_time(),
        started.elapsed(),
        vm.image().kernel_release(),
        vm.agent_addr()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("async runtime");
    let lifecycle = Instant::now();
    runtime.block_on(pod_lifecycle(&vm));
    eprintln!(
        "test VM: lifecycle took {:.1?}; whole test {:.1?}",
        lifecycle.elapsed(),
        started.elapsed()
    );
}

async fn pod_lifecycle(vm: &TestVm) {
    let (client, health) = requests::connect(&vm.agent_addr())
        .await
        .expect("connect to the agent in the VM");
    let check = health
        .check(ctx(), &requests::health_check())
        .await
        .expect("health");
    assert_eq!(
        check.status,
        health::health_check_response::ServingStatus::SERVING.into()
    );
    guest_details_and_network(&client).await;

    let shm = "/run/kata-containers/sandbox/shm";
    client
        .create_sandbox(
            ctx(),
            &requests::sandbox("sb", "pod", shm).expect("sandbox request"),
        )
        .await
        .expect("CreateSandbox");

    // A container that prints and exits.
    let hello = requests::container(
        "hello",
        GUEST_BUSYBOX_ROOTFS,
        &[
            "/bin/sh",
            "-c",
            "echo $GREETING from $(hostname) on $(uname -r)",
        ],
    )
    .expect("container request");
    client
        .create_container(ctx(), &hello)
        .await
        .expect("CreateContainer hello");
    client
        .start_container(ctx(), &requests::start("hello"))
        .await
        .expect("StartContainer hello");
    let out = requests::read_all(&client, "hello", "hello", Stream::Stdout).await;
    assert!(out.starts_with("hello from pod on "), "{out:?}");
    assert!(out.trim_end().ends_with("-cloud-amd64"), "{out:?}");
    assert_eq!(wait(&client, "hello", "hello").await, 0);
    client
        .remove_container(ctx(), &requests::remove("hello"))
        .await
        .expect("RemoveContainer hello");

    // A long-running container: an exec with a stdin/stdout round trip, its cgroup (v2 in the
    // guest) limit seen from inside, then SIGKILL.
    let sleeper = requests::container("sleeper", GUEST_BUSYBOX_ROOTFS, &["/bin/sleep", "1000"])
        .expect("container request");
    client
        .create_container(ctx(), &sleeper)
        .await
        .expect("CreateContainer sleeper");
    client
        .start_container(ctx(), &requests::start("sleeper"))
        .await
        .expect("StartContainer sleeper");
    client
        .exec_process(
            ctx(),
            &requests::exec("sleeper", "cat", &["/bin/cat"]).expect("exec request"),
        )
        .await
        .expect("ExecProcess cat");
    let written = client
        .write_stdin(ctx(), &requests::write_stdin("sleeper", "cat", b"ping\n"))
        .await
        .expect("WriteStdin");
    assert_eq!(written.len, 5);
    client
        .close_stdin(ctx(), &requests::close_stdin("sleeper", "cat"))
        .await
        .expect("CloseStdin");
    assert_eq!(
        requests::read_all(&client, "sleeper", "cat", Stream::Stdout).await,
        "ping\n"
    );
    assert_eq!(wait(&client, "sleeper", "cat").await, 0);

    // Without a cgroup namespace the container sees the whole hierarchy; its own cgroup is
    // the one /proc/self/cgroup names.
    let script =
        "c=$(sed -n 's/^0:://p' /proc/self/cgroup); echo $c; cat /sys/fs/cgroup$c/pids.max";
    client
        .exec_process(
            ctx(),
            &requests::exec("sleeper", "pids", &["/bin/sh", "-c", script]).expect("exec request"),
        )
        .await
        .expect("ExecProcess pids");
    let out = requests::read_all(&client, "sleeper", "pids", Stream::Stdout).await;
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines.len() == 2 && lines[0].ends_with("/sleeper") && lines[1] == "64",
        "the container's cgroup (v2) and its pids limit: {out:?}"
    );
    assert_eq!(wait(&client, "sleeper", "pids").await, 0);

    client
        .signal_process(ctx(), &requests::signal("sleeper", "sleeper", 9))
        .await
        .expect("SignalProcess");
    assert_eq!(
        wait(&client, "sleeper", "sleeper").await,
        137,
        "128 + SIGKILL"
    );
    client
        .remove_container(ctx(), &requests::remove("sleeper"))
        .await
        .expect("RemoveContainer sleeper");

    client
        .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
        .await
        .expect("DestroySandbox");
    // As upstream's, the agent stops once the pod is gone (and the test VM's init powers off).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !vm
        .serial_log()
        .contains("kata-agent exited with status 0; powering off")
    {
        assert!(
            Instant::now() < deadline,
            "the agent did not exit after DestroySandbox: {}",
            vm.serial_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn guest_details_and_network(client: &agent_ttrpc::AgentServiceClient) {
    let mut request = agent::GuestDetailsRequest::new();
    request.mem_block_size = true;
    let details = client
        .get_guest_details(ctx(), &request)
        .await
        .expect("GetGuestDetails");
    assert_eq!(details.agent_details.version, env!("CARGO_PKG_VERSION"));

    let interfaces = client
        .list_interfaces(ctx(), &agent::ListInterfacesRequest::new())
        .await
        .expect("ListInterfaces");
    let eth0 = interfaces
        .Interfaces
        .iter()
        .find(|i| i.name == "eth0")
        .unwrap_or_else(|| panic!("no eth0 in the guest: {interfaces:?}"));
    assert!(
        eth0.IPAddresses
            .iter()
            .any(|a| a.address == GUEST_IP && a.mask == "24"),
        "eth0 has {GUEST_IP}/24: {eth0:?}"
    );
    assert!(
        interfaces.Interfaces.iter().any(|i| i.name == "lo"),
        "{interfaces:?}"
    );
}

async fn wait(client: &agent_ttrpc::AgentServiceClient, container: &str, exec: &str) -> i32 {
    requests::wait(client, container, exec)
        .await
        .unwrap_or_else(|e| panic!("WaitProcess {container}/{exec}: {e:?}"))
}
