//! RemoveContainer owns the container it removes: a second removal of the same id, racing the
//! first and a re-create, never touches the container re-made under that id.

use ttrpc::Code;

use crate::common::{ctx, status_of};
use crate::support::*;
use peerpod_protocols::kata::agent;

/// Two RemoveContainer of one running container, sent together, with a CreateContainer of the
/// same id retried until it succeeds: one removal succeeds, the other answers NOT_FOUND (it
/// used to wait for the first, then run the delete and release the old storages again, by then
/// on the new container), and the re-made container starts and runs execs.
#[tokio::test(flavor = "multi_thread")]
async fn a_double_remove_racing_a_re_create_leaves_the_new_container_alone() {
    let (_agent, client, rootfs) = pod("double-remove", "policy/examples/allow-all.rego").await;
    let request = container_request("again", &rootfs, &["/bin/sleep", "1000"]);
    create_and_start(&client, &request).await;
    let removal = remove("again");
    for round in 0..3 {
        let recreate = async {
            loop {
                match client.create_container(ctx(), &request).await {
                    Ok(_) => break,
                    Err(e) => {
                        let (code, message) = status_of(Err::<(), _>(e));
                        assert_eq!(code, Code::ALREADY_EXISTS, "round {round}: {message}");
                        tokio::task::yield_now().await;
                    }
                }
            }
        };
        let (first, second, ()) = tokio::join!(
            client.remove_container(ctx(), &removal),
            client.remove_container(ctx(), &removal),
            recreate
        );
        let refused = match (first, second) {
            (Ok(_), refused) | (refused, Ok(_)) => refused,
            (a, b) => panic!("round {round}: neither removal succeeded: {a:?} {b:?}"),
        };
        let (code, message) = status_of(refused);
        assert_eq!(code, Code::NOT_FOUND, "round {round}: {message}");
        assert!(message.contains("again"), "{message}");
        // The re-made container is whole: it starts and runs an exec.
        let mut start = agent::StartContainerRequest::new();
        start.container_id = "again".into();
        client
            .start_container(ctx(), &start)
            .await
            .unwrap_or_else(|e| panic!("round {round}: the re-made container cannot start: {e:?}"));
        assert_eq!(
            run(&client, "again", &format!("e{round}"), "echo intact").await,
            "intact\n"
        );
    }
    client
        .remove_container(ctx(), &remove("again"))
        .await
        .expect("remove");
    let (code, _) = status_of(client.remove_container(ctx(), &remove("again")).await);
    assert_eq!(code, Code::NOT_FOUND);
}

/// DestroySandbox racing RemoveContainer of the same containers: once DestroySandbox has begun
/// (the first bundle is gone), every other container is removed by its own RemoveContainer.
/// DestroySandbox succeeds (a container another request took is gone either way; it answered
/// NOT_FOUND before and stopped, leaving the sandbox's storages and namespaces), each
/// RemoveContainer succeeds or answers NOT_FOUND, and nothing is left: bundles, the sandbox's
/// shm mount, its namespace directory.
#[tokio::test(flavor = "multi_thread")]
async fn destroy_sandbox_racing_remove_container_tears_everything_down() {
    let (agent, client, rootfs) = pod("destroy-race", "policy/examples/allow-all.rego").await;
    let ids: Vec<String> = (0..5).map(|i| format!("race{i}")).collect();
    for id in &ids {
        create_and_start(
            &client,
            &container_request(id, &rootfs, &["/bin/sleep", "1000"]),
        )
        .await;
    }
    let bundles = agent.dir.join("state/bundles");
    let bundle_count = || std::fs::read_dir(&bundles).map_or(0, |d| d.count());
    assert_eq!(bundle_count(), ids.len());
    let destroy_request = agent::DestroySandboxRequest::new();
    let destroy = client.destroy_sandbox(ctx(), &destroy_request);
    let client = &client;
    let racers = async {
        // Once DestroySandbox removed its first container, it has listed them all.
        let started = tokio::time::Instant::now();
        while bundle_count() == ids.len() {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(20),
                "DestroySandbox removed nothing"
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let removals = ids
            .iter()
            .map(|id| async move { (id, client.remove_container(ctx(), &remove(id)).await) });
        futures::future::join_all(removals).await
    };
    let (destroyed, removals) = tokio::join!(destroy, racers);
    destroyed.unwrap_or_else(|e| panic!("DestroySandbox failed: {e:?}\n{}", agent.log()));
    let mut taken = 0;
    for (id, result) in removals {
        match result {
            Ok(_) => taken += 1,
            Err(e) => {
                let (code, message) = status_of(Err::<(), _>(e));
                assert_eq!(code, Code::NOT_FOUND, "{id}: {message}");
            }
        }
    }
    eprintln!("RemoveContainer took {taken} of {} containers", ids.len());
    assert_eq!(bundle_count(), 0, "bundles left");
    assert!(
        mounts_under(&agent.dir.join("shm")).is_empty(),
        "the sandbox's shm is still mounted"
    );
    assert!(
        !agent.dir.join("state/sandbox-ns").exists(),
        "the sandbox's namespaces were left"
    );
}
