//! The agent end to end, on a unix socket: container and exec round trips, RPC throughput under
//! two policies, and the agent's resident memory.
//!
//! Run with `make bench` (or `cargo bench -p kata-agent --bench agent`); needs root and Debian's
//! busybox-static, like the agent's container tests. Figures are printed next to a baseline from
//! the same run: Health (not policy-gated) for throughput, and the agent's RSS before any
//! container for memory. `BENCH_ITERS` sets iterations (default 40 container cycles, 10x that
//! for execs and RPCs).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Agent, ctx, repo_file};
use peerpod_protocols::json::from_json;
use peerpod_protocols::kata::{agent, agent_ttrpc, health, health_ttrpc};
use serde_json::json;

fn busybox_rootfs(dir: &Path) -> std::path::PathBuf {
    let rootfs = dir.join("rootfs");
    for sub in ["bin", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(rootfs.join(sub)).expect("rootfs dir");
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
        .expect("/bin/busybox (Debian busybox-static) is needed");
    for applet in ["sh", "true", "sleep"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).expect("link");
    }
    rootfs
}

fn container(id: &str, rootfs: &Path, args: &[&str]) -> agent::CreateContainerRequest {
    let spec = json!({
        "container_id": id, "exec_id": id,
        "OCI": {
            "Version": "1.1.0",
            "Root": {"Path": rootfs.display().to_string()},
            "Process": {"Args": args, "Env": ["PATH=/bin"], "Cwd": "/", "User": {"UID": 0, "GID": 0}},
            "Mounts": [
                {"destination": "/proc", "type_": "proc", "source": "proc"},
                {"destination": "/dev", "type_": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]}
            ],
            "Linux": {"Namespaces": [{"Type": "pid"}, {"Type": "mount"}, {"Type": "ipc"}, {"Type": "uts"}]}
        }
    });
    let mut request = agent::CreateContainerRequest::new();
    from_json(&spec, &mut request).expect("fits the protos");
    request
}

fn exec(container: &str, exec: &str) -> agent::ExecProcessRequest {
    let spec = json!({
        "container_id": container, "exec_id": exec,
        "process": {"Args": ["/bin/true"], "Env": ["PATH=/bin"], "Cwd": "/", "User": {"UID": 0, "GID": 0}}
    });
    let mut request = agent::ExecProcessRequest::new();
    from_json(&spec, &mut request).expect("fits the protos");
    request
}

struct Summary {
    p50: Duration,
    p99: Duration,
}

fn summarize(mut samples: Vec<Duration>) -> Summary {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Summary {
        p50: at(0.5),
        p99: at(0.99),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

async fn throughput<F, Fut>(clients: usize, per_client: usize, call: F) -> f64
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let call = Arc::new(call);
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let call = Arc::clone(&call);
            tokio::spawn(async move {
                for _ in 0..per_client {
                    call().await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("client task");
    }
    (clients * per_client) as f64 / start.elapsed().as_secs_f64()
}

async fn rpc_rates(
    label: &str,
    client: &agent_ttrpc::AgentServiceClient,
    health: &health_ttrpc::HealthClient,
    iters: usize,
) {
    for clients in [1, 4] {
        let h = health.clone();
        let base = throughput(clients, iters, move || {
            let h = h.clone();
            async move {
                h.check(ctx(), &health::CheckRequest::new())
                    .await
                    .expect("health");
            }
        })
        .await;
        let c = client.clone();
        let gated = throughput(clients, iters, move || {
            let c = c.clone();
            async move {
                c.get_guest_details(ctx(), &agent::GuestDetailsRequest::new())
                    .await
                    .expect("guest details");
            }
        })
        .await;
        println!(
            "GetGuestDetails, {label:<22} {clients} client(s): {gated:>8.0} req/s | Health (not gated) {base:>8.0} req/s | ratio {:.2}",
            gated / base
        );
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let quick = std::env::args().any(|a| a == "--test" || a == "--list");
    let iters: usize = if quick {
        3
    } else {
        std::env::var("BENCH_ITERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(40)
    };
    println!(
        "agent benchmark: {iters} container cycles, {} execs and RPCs per client",
        iters * 10
    );

    let allow_all = format!(
        "policy_file = '{}'\n",
        repo_file("policy/examples/allow-all.rego").display()
    );
    let mut agent = Agent::start("bench", None, &allow_all);
    let (client, health) = agent.connect().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = rss_kib(agent.child.id());
    println!("agent idle RSS: {idle} KiB");

    let rootfs = busybox_rootfs(&agent.dir);
    let mut sandbox = agent::CreateSandboxRequest::new();
    sandbox.sandbox_id = "bench".into();
    client
        .create_sandbox(ctx(), &sandbox)
        .await
        .expect("sandbox");

    // CreateContainer + StartContainer + WaitProcess (+ RemoveContainer) for `true`.
    let mut cycles = Vec::new();
    let mut first_three = Vec::new();
    for i in 0..iters {
        let id = format!("t{i}");
        let begin = Instant::now();
        client
            .create_container(ctx(), &container(&id, &rootfs, &["/bin/true"]))
            .await
            .expect("create");
        let mut start = agent::StartContainerRequest::new();
        start.container_id = id.clone();
        client.start_container(ctx(), &start).await.expect("start");
        let mut wait = agent::WaitProcessRequest::new();
        wait.container_id = id.clone();
        let status = client
            .wait_process(ctx(), &wait)
            .await
            .expect("wait")
            .status;
        assert_eq!(status, 0);
        let run = begin.elapsed();
        let mut remove = agent::RemoveContainerRequest::new();
        remove.container_id = id;
        client
            .remove_container(ctx(), &remove)
            .await
            .expect("remove");
        cycles.push(run);
        first_three.push(begin.elapsed());
    }
    let c = summarize(cycles);
    let with_remove = summarize(first_three);
    println!(
        "CreateContainer+Start+Wait of `true`: p50 {} p99 {} (with RemoveContainer: p50 {})",
        ms(c.p50),
        ms(c.p99),
        ms(with_remove.p50)
    );

    // ExecProcess + WaitProcess of `true` in a running container.
    client
        .create_container(
            ctx(),
            &container("sleeper", &rootfs, &["/bin/sleep", "100000"]),
        )
        .await
        .expect("create");
    let mut start = agent::StartContainerRequest::new();
    start.container_id = "sleeper".into();
    client.start_container(ctx(), &start).await.expect("start");
    let mut execs = Vec::new();
    for i in 0..iters * 10 {
        let id = format!("e{i}");
        let begin = Instant::now();
        client
            .exec_process(ctx(), &exec("sleeper", &id))
            .await
            .expect("exec");
        let mut wait = agent::WaitProcessRequest::new();
        wait.container_id = "sleeper".into();
        wait.exec_id = id;
        client.wait_process(ctx(), &wait).await.expect("wait");
        execs.push(begin.elapsed());
    }
    let e = summarize(execs);
    println!(
        "ExecProcess+WaitProcess of `true`: p50 {} p99 {}",
        ms(e.p50),
        ms(e.p99)
    );
    println!(
        "agent RSS after {} containers and {} execs: {} KiB (idle: {idle} KiB)",
        iters + 1,
        iters * 10,
        rss_kib(agent.child.id())
    );

    rpc_rates("allow-all policy", &client, &health, iters * 10).await;
    client
        .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
        .await
        .expect("destroy");
    drop(agent);

    let genpolicy = repo_file("policy/benches/data/genpolicy-sized.rego");
    let mut agent = Agent::start(
        "bench-genpolicy",
        None,
        &format!("policy_file = '{}'\n", genpolicy.display()),
    );
    let (client, health) = agent.connect().await;
    rpc_rates("genpolicy-sized policy", &client, &health, iters * 10).await;
    println!(
        "agent idle RSS with the genpolicy-sized policy: {} KiB",
        rss_kib(agent.child.id())
    );
}
