//! Thousands of execs leave the agent as they found it: every exec's descriptors, process entry
//! and reaper slot are released once it has been waited for.

use std::time::Instant;

use crate::common::ctx;
use crate::support::*;
use peerpod_protocols::kata::{agent, agent_ttrpc};

const CYCLES: usize = 2000;
/// Execs in flight at once (the helper processes are what takes the time).
const PARALLEL: usize = 4;

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status_field(&status, "VmRSS")
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap_or(0)
}

async fn exec_and_wait(client: &agent_ttrpc::AgentServiceClient, exec: &str, terminal: bool) {
    client
        .exec_process(
            ctx(),
            &exec_request_with("c", exec, &["/bin/true"], terminal),
        )
        .await
        .unwrap_or_else(|e| panic!("exec {exec}: {e:?}"));
    assert_eq!(wait(client, "c", exec).await, 0);
}

async fn cycles(
    client: &agent_ttrpc::AgentServiceClient,
    prefix: &str,
    count: usize,
    terminal: bool,
) {
    let workers = (0..PARALLEL).map(|worker| async move {
        for n in (worker..count).step_by(PARALLEL) {
            exec_and_wait(client, &format!("{prefix}-{n}"), terminal).await;
        }
    });
    futures::future::join_all(workers).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_thousand_execs_keep_descriptors_and_memory_flat() {
    let (agent, client, rootfs) = pod("leaks", "policy/examples/allow-all.rego").await;
    create_and_start(
        &client,
        &container_request("c", &rootfs, &["/bin/sleep", "100000"]),
    )
    .await;
    let pid = agent.child.id();
    // Warm up: allocator arenas, tokio's worker threads and the ttrpc connection settle.
    cycles(&client, "warm", 200, false).await;
    cycles(&client, "warm-tty", 20, true).await;
    let (fds_before, rss_before) = (open_fds(pid), rss_kib(pid));
    let started = Instant::now();
    cycles(&client, "x", CYCLES, false).await;
    // Processes with a terminal too (its master side is three more descriptors).
    cycles(&client, "tty", CYCLES / 10, true).await;
    let (fds_after, rss_after) = (open_fds(pid), rss_kib(pid));
    eprintln!(
        "{CYCLES} exec+wait cycles (and {} with a terminal) in {:?}: descriptors {fds_before} -> {fds_after}, \
         RSS {rss_before} KiB -> {rss_after} KiB",
        CYCLES / 10,
        started.elapsed()
    );
    // One descriptor kept per exec would be +2000; allow a few for tokio's and ttrpc's own.
    assert!(
        fds_after <= fds_before + 4,
        "descriptors grew from {fds_before} to {fds_after} over {CYCLES} execs"
    );
    // A kept process entry (its stdio, buffers and slot) costs well over 1 KiB per exec, so
    // a leak grows RSS by several MiB here; allocator noise stays under 2 MiB.
    assert!(
        rss_after <= rss_before + 2048,
        "RSS grew from {rss_before} KiB to {rss_after} KiB over {CYCLES} execs"
    );
    // Waited-for execs are gone: their ids answer NOT_FOUND and may be used again.
    let mut request = agent::WaitProcessRequest::new();
    request.container_id = "c".into();
    request.exec_id = "x-0".into();
    let (code, _) = crate::common::status_of(client.wait_process(ctx(), &request).await);
    assert_eq!(code, ttrpc::Code::NOT_FOUND);
    exec_and_wait(&client, "x-0", false).await;
    client
        .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
        .await
        .expect("destroy");
}
