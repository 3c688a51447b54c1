//! Cgroup limits, statistics, updates, freezing and OOM events.

use serde_json::json;
use ttrpc::Code;

use crate::common::{ctx, status_of};
use crate::support::*;
use peerpod_protocols::json::from_json;
use peerpod_protocols::kata::agent;

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
        137,
        "128 + the OOM killer's SIGKILL"
    );
    client
        .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
        .await
        .expect("destroy");
}
