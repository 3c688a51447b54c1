//! ExecProcess and StartContainer whose request deadline (`timeout_nano`) passes while the
//! agent is still at work: ttrpc drops the handler at the deadline, so the work runs as its own
//! task. A deadline stops the wait, never the work half-way: no process is left running that
//! the agent does not track.

use std::time::Duration;

use peerpod_protocols::kata::agent;
use ttrpc::Code;

use crate::common::{ctx, status_of};
use crate::support::*;

fn deadline(ms: u64) -> ttrpc::context::Context {
    ttrpc::context::with_timeout(
        i64::try_from(Duration::from_millis(ms).as_nanos()).unwrap_or(i64::MAX),
    )
}

/// The pids of processes whose command line is exactly `args`.
fn processes_running(args: &[&str]) -> Vec<u32> {
    let wanted: Vec<u8> = args
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == wanted)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Execs sent with deadlines from 1 ms to 160 ms (shorter and longer than an exec takes):
/// whatever each request answered, every process that was started is the agent's: SignalProcess
/// kills it and WaitProcess reports it; none is left running untracked. Before, an exec dropped
/// at its deadline while the helper was starting it left the process running, unknown to the
/// agent (SignalProcess and WaitProcess answered NOT_FOUND).
#[tokio::test(flavor = "multi_thread")]
async fn an_exec_past_its_deadline_leaves_no_untracked_process() {
    let (agent, client, rootfs) = pod("exec-deadline", "policy/examples/allow-all.rego").await;
    create_and_start(
        &client,
        &container_request("c", &rootfs, &["/bin/sleep", "1000"]),
    )
    .await;
    let marker = format!("{}", 40_000 + std::process::id() % 20_000);
    let mut untracked = Vec::new();
    let mut timed_out = 0;
    for (i, ms) in [1, 2, 5, 10, 20, 40, 80, 160].into_iter().enumerate() {
        let exec = format!("e{i}");
        let seconds = format!("{marker}{i}");
        let args = ["/bin/sleep", seconds.as_str()];
        match client
            .exec_process(deadline(ms), &exec_request("c", &exec, &args))
            .await
        {
            Ok(_) => {}
            Err(ttrpc::Error::RpcStatus(s)) if s.code() == Code::DEADLINE_EXCEEDED => {
                timed_out += 1
            }
            Err(ttrpc::Error::Others(m)) if m.contains("deadline") => timed_out += 1,
            Err(e) => panic!("exec {exec}: {e:?}\n{}", agent.log()),
        }
        // Let a started exec finish starting.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        if processes_running(&args).is_empty() {
            continue;
        }
        let mut kill = agent::SignalProcessRequest::new();
        kill.container_id = "c".into();
        kill.exec_id = exec.clone();
        kill.signal = 9;
        match client.signal_process(ctx(), &kill).await {
            Ok(_) => assert_eq!(wait(&client, "c", &exec).await, 137, "{exec}"),
            Err(e) => {
                let (code, message) = status_of(Err::<(), _>(e));
                untracked.push(format!("{exec} ({ms} ms): {code:?} {message}"));
                for pid in processes_running(&args) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        assert!(
            processes_running(&args).is_empty(),
            "{exec}: still running after the kill"
        );
    }
    eprintln!("{timed_out} of 8 execs timed out");
    assert!(
        timed_out > 0,
        "no exec outlasted its deadline: the test proves nothing"
    );
    assert!(untracked.is_empty(), "untracked processes: {untracked:?}");
    client
        .remove_container(ctx(), &remove("c"))
        .await
        .expect("remove");
}

/// StartContainer sent with deadlines shorter and longer than a start takes: afterwards the
/// container is either started (a second StartContainer answers FAILED_PRECONDITION, already
/// started) or not (a second one starts it), and in both cases it runs execs. Before, a start
/// dropped at its deadline could let the process run while the container stayed "created":
/// every later StartContainer failed in the helper and every exec was refused as not running.
#[tokio::test(flavor = "multi_thread")]
async fn a_start_past_its_deadline_leaves_the_container_usable() {
    let (agent, client, rootfs) = pod("start-deadline", "policy/examples/allow-all.rego").await;
    for (i, ms) in [1, 2, 5, 10, 20, 40].into_iter().enumerate() {
        let id = format!("s{i}");
        client
            .create_container(
                ctx(),
                &container_request(&id, &rootfs, &["/bin/sleep", "1000"]),
            )
            .await
            .expect("create");
        let mut start = agent::StartContainerRequest::new();
        start.container_id = id.clone();
        let _ = client.start_container(deadline(ms), &start).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        match client.start_container(ctx(), &start).await {
            Ok(_) => {}
            Err(e) => {
                let (code, message) = status_of(Err::<(), _>(e));
                assert_eq!(
                    code,
                    Code::FAILED_PRECONDITION,
                    "{id} ({ms} ms): {message}\n{}",
                    agent.log()
                );
            }
        }
        assert_eq!(
            run(&client, &id, "x", "echo usable").await,
            "usable\n",
            "{id}"
        );
        client
            .remove_container(ctx(), &remove(&id))
            .await
            .expect("remove");
    }
}
