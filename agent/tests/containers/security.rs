//! What confines a container's processes: seccomp.

use serde_json::json;

use crate::common::ctx;
use crate::support::*;
use peerpod_protocols::json::from_json;
use peerpod_protocols::kata::agent;

#[tokio::test(flavor = "multi_thread")]
async fn the_seccomp_profile_binds_exec_processes_too() {
    let (_agent, client, rootfs) = pod("seccomp", "policy/examples/allow-all.rego").await;
    let mut request = container_request(
        "c",
        &rootfs,
        &["/bin/sh", "-c", "mkdir /tmp/by-init; sleep 1000"],
    );
    // A profile that refuses mkdir with EPERM and allows everything else.
    let profile = json!({
        "DefaultAction": "SCMP_ACT_ALLOW",
        "Architectures": ["SCMP_ARCH_X86_64"],
        "Syscalls": [{"Names": ["mkdir", "mkdirat"], "Action": "SCMP_ACT_ERRNO", "ErrnoRet": {"errnoret": 1}}]
    });
    from_json(
        &profile,
        &mut *request
            .OCI
            .mut_or_insert_default()
            .Linux
            .mut_or_insert_default()
            .Seccomp
            .mut_or_insert_default(),
    )
    .expect("seccomp fits the protos");
    create_and_start(&client, &request).await;

    client
        .exec_process(
            ctx(),
            &exec_request(
                "c",
                "m",
                &["/bin/sh", "-c", "mkdir /tmp/by-exec && echo made; echo $?"],
            ),
        )
        .await
        .expect("exec");
    let output = read_all(&client, "c", "m", false).await;
    let errors = read_all(&client, "c", "m", true).await;
    assert_eq!(wait(&client, "c", "m").await, 0);
    assert!(
        !output.contains("made"),
        "mkdir must be refused in an exec'd process: {output} {errors}"
    );
    assert!(errors.contains("Operation not permitted"), "{errors}");
    assert!(!rootfs.join("tmp/by-exec").exists());
    assert!(!rootfs.join("tmp/by-init").exists(), "and in the init");
    // Other system calls still work.
    assert_eq!(run(&client, "c", "ok", "echo fine").await, "fine\n");
    // A process whose environment has no PATH still finds its program.
    let mut bare = exec_request("c", "nopath", &["echo", "found"]);
    bare.process.mut_or_insert_default().Env.clear();
    client
        .exec_process(ctx(), &bare)
        .await
        .expect("exec without PATH");
    assert_eq!(read_all(&client, "c", "nopath", false).await, "found\n");
    assert_eq!(wait(&client, "c", "nopath").await, 0);
    client
        .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
        .await
        .expect("destroy");
}
