//! The sample initdata's pod, run by the agent under the sample's own (stateful, genpolicy
//! style) policy: what `make demo` shows, as a test. Needs root.

mod common;

use std::path::Path;

use common::{Agent, ctx, repo_file, status_of};
use peerpod_protocols::json::from_json;
use peerpod_protocols::kata::agent;
use peerpod_tests::requests::{self, Stream};
use protobuf::MessageFull;
use ttrpc::Code;

const HELLO: &str = "5e110c0ffee0c0de5e110c0ffee0c0de5e110c0ffee0c0de5e110c0ffee0c0de";

fn request<M: MessageFull>(file: &str) -> M {
    let path = repo_file(&format!("policy/examples/requests/{file}"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let mut message = M::new();
    from_json(&json, &mut message).expect("fits the protos");
    message
}

/// The root filesystem the sample policy's hello container expects to find baked in.
fn baked_in_rootfs() {
    let root = Path::new("/run/peerpod-demo/busybox");
    for sub in ["bin", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(root.join(sub)).expect("rootfs dir");
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static is needed");
    for applet in ["sh", "echo", "id", "sleep", "cat"] {
        let link = root.join("bin").join(applet);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("busybox", link).expect("applet link");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sample_pod_runs_under_its_own_policy() {
    baked_in_rootfs();
    let initdata = repo_file("policy/examples/initdata.toml");
    let mut agent = Agent::start_in_own_netns(
        "sample-pod",
        &format!("initdata_file = '{}'\n", initdata.display()),
    );
    let (client, _) = agent.connect().await;

    client
        .create_sandbox(
            ctx(),
            &request::<agent::CreateSandboxRequest>("create-sandbox.json"),
        )
        .await
        .expect("the policy's sandbox");
    client
        .create_container(
            ctx(),
            &request::<agent::CreateContainerRequest>("create-hello.json"),
        )
        .await
        .expect("the policy's hello container");
    let mut start = agent::StartContainerRequest::new();
    start.container_id = HELLO.into();
    client.start_container(ctx(), &start).await.expect("start");

    // The policy lets the host read hello's output; the line comes from inside the container.
    let mut read = agent::ReadStreamRequest::new();
    read.container_id = HELLO.into();
    read.len = 1024;
    let first = client.read_stdout(ctx(), &read).await.expect("read");
    assert_eq!(
        String::from_utf8_lossy(&first.data),
        "hello from a confidential pod, as uid 1000\n"
    );

    // Its probe command runs; a shell does not, and nothing starts.
    client
        .exec_process(
            ctx(),
            &request::<agent::ExecProcessRequest>("exec-hello-status.json"),
        )
        .await
        .expect("the policy's probe");
    let status = requests::read_all(&client, HELLO, "exec-hello-status", Stream::Stdout).await;
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert!(status.contains("CapEff:\t0000000000000000"), "{status}");
    let (code, message) = status_of(
        client
            .exec_process(
                ctx(),
                &request::<agent::ExecProcessRequest>("exec-hello-shell.json"),
            )
            .await,
    );
    assert_eq!(code, Code::PERMISSION_DENIED);
    assert!(
        message.contains("container hello may only run"),
        "{message}"
    );

    // A container the policy does not describe is refused, whatever the runtime could do.
    let (code, _) = status_of(
        client
            .create_container(
                ctx(),
                &request::<agent::CreateContainerRequest>("create-web-privileged.json"),
            )
            .await,
    );
    assert_eq!(code, Code::PERMISSION_DENIED);

    let mut remove = agent::RemoveContainerRequest::new();
    remove.container_id = HELLO.into();
    remove.timeout = 10;
    client
        .remove_container(ctx(), &remove)
        .await
        .expect("remove");
    // Once removed, the policy forgets it: its probe is refused.
    let (code, _) = status_of(
        client
            .exec_process(
                ctx(),
                &request::<agent::ExecProcessRequest>("exec-hello-status.json"),
            )
            .await,
    );
    assert_eq!(code, Code::PERMISSION_DENIED);
    client
        .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
        .await
        .expect("destroy");
    let _ = std::fs::remove_dir_all(format!("/run/kata-containers/{HELLO}"));
}
