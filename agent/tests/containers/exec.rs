//! Exec'd processes: terminals, policy denials.

use ttrpc::Code;

use crate::common::{ctx, status_of};
use crate::support::*;
use peerpod_protocols::kata::agent;

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
async fn a_waited_exec_is_released_and_a_signal_reports_128_plus_it() {
    let (_agent, client, rootfs) = pod("exec-release", "policy/examples/allow-all.rego").await;
    create_and_start(
        &client,
        &container_request("c", &rootfs, &["/bin/sleep", "1000"]),
    )
    .await;
    client
        .exec_process(ctx(), &exec_request("c", "t", &["/bin/sleep", "1000"]))
        .await
        .expect("exec");
    let mut signal = agent::SignalProcessRequest::new();
    signal.container_id = "c".into();
    signal.exec_id = "t".into();
    signal.signal = 15;
    client
        .signal_process(ctx(), &signal)
        .await
        .expect("SIGTERM");
    assert_eq!(wait(&client, "c", "t").await, 143, "128 + SIGTERM");
    // Released: it is no longer known, and its id can name a new process.
    let mut write = agent::WriteStreamRequest::new();
    write.container_id = "c".into();
    write.exec_id = "t".into();
    write.data = b"x".to_vec();
    let (code, _) = status_of(client.write_stdin(ctx(), &write).await);
    assert_eq!(code, Code::NOT_FOUND);
    let (code, _) = status_of(client.signal_process(ctx(), &signal).await);
    assert_eq!(code, Code::NOT_FOUND);
    assert_eq!(run(&client, "c", "t", "echo again").await, "again\n");
    // The container's own process stays known after it is waited for.
    signal.exec_id = "c".into();
    signal.signal = 9;
    client
        .signal_process(ctx(), &signal)
        .await
        .expect("SIGKILL");
    assert_eq!(wait(&client, "c", "c").await, 137);
    assert_eq!(wait(&client, "c", "c").await, 137, "waited twice");
    client
        .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
        .await
        .expect("destroy");
}
