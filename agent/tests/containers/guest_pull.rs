//! A container whose root filesystem is pulled in the guest: the `image_guest_pull` storage
//! sends `PullImage` to the real CDH (in this process, on its socket), which pulls from Debian's
//! `docker-registry` on 127.0.0.1 an image built from busybox-static with umoci, mounts it at
//! `/run/kata-containers/<id>/rootfs`, and the agent runs the container from it.

use std::sync::Arc;

use ttrpc::Code;

use crate::common::{ctx, status_of};
use crate::support::*;
use peerpod_protocols::kata::agent;

#[path = "../../../image/tests/common/mod.rs"]
mod image_fixtures;

use image_fixtures::{Registry, RegistryOptions, Scratch, Step, build_image, tools_present};

fn guest_pull_request(id: &str, image: &str, args: &[&str]) -> agent::CreateContainerRequest {
    // The host's rootfs path is replaced by the pulled one.
    let mut request = container_request(id, std::path::Path::new("/nonexistent"), args);
    request.storages.push(agent::Storage {
        driver: "image_guest_pull".into(),
        driver_options: vec![
            r#"image_guest_pull={"metadata":{"io.kubernetes.cri.container-type":"container"}}"#
                .into(),
        ],
        source: image.into(),
        fstype: "overlay".into(),
        mount_point: format!("/run/kata-containers/{id}/rootfs"),
        ..Default::default()
    });
    request
}

#[tokio::test(flavor = "multi_thread")]
async fn container_runs_from_an_image_pulled_in_the_guest() {
    if !tools_present() {
        return;
    }
    let scratch = Scratch::new("agent-guest-pull");
    let dir = scratch.path();
    let registry = Registry::start(RegistryOptions::default()).expect("registry");
    let layout = dir.join("layout");
    build_image(
        &layout,
        "v1",
        &[
            vec![Step::Busybox],
            vec![Step::Write("/etc/motd", b"pulled in the guest\n")],
        ],
    )
    .expect("image");
    registry
        .push(&layout, "v1", "apps/motd", "v1", "oci")
        .expect("push");
    std::fs::write(
        dir.join("registries.conf"),
        format!(
            "[[registry]]\nlocation = \"{}\"\ninsecure = true\n",
            registry.addr
        ),
    )
    .expect("registries.conf");
    let cdh_socket = dir.join("cdh.sock");
    let config = confidential_data_hub::CdhConfig::parse(&format!(
        "[aa]\naa_socket = \"unix://{d}/no-aa.sock\"\n[image]\nwork_dir = \"{d}/image-rs\"\n\
         registry_configuration_uri = \"file://{d}/registries.conf\"\n",
        d = dir.display()
    ))
    .expect("cdh.toml");
    let hub = Arc::new(confidential_data_hub::Hub::new(config).expect("CDH"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let addr = format!("unix://{}", cdh_socket.display());
    tokio::spawn(async move {
        let _ = confidential_data_hub::server::serve(&addr, hub, async {
            let _ = stopped.await;
        })
        .await;
    });
    while !cdh_socket.exists() {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    let (agent, client, _rootfs) = pod_with(
        "guest-pull",
        &format!(
            "{}cdh_socket = 'unix://{}'\nimage_pull_timeout = 120\n",
            policy("policy/examples/allow-all.rego"),
            cdh_socket.display()
        ),
    )
    .await;
    let id = format!("pulled-{}", std::process::id());
    let image = format!("{}/apps/motd:v1", registry.addr);
    let request = guest_pull_request(&id, &image, &["/bin/cat", "/etc/motd"]);
    create_and_start(&client, &request).await;
    let out = read_all(&client, &id, &id, false).await;
    assert_eq!(out, "pulled in the guest\n", "{}", agent.log());
    assert_eq!(wait(&client, &id, &id).await, 0);
    let rootfs = std::path::PathBuf::from(format!("/run/kata-containers/{id}/rootfs"));
    assert!(
        mounts_under(&rootfs).iter().any(|m| m.contains("overlay")),
        "the pulled rootfs is an overlay mount"
    );

    // Removing the container unmounts its pulled root filesystem.
    client
        .remove_container(ctx(), &remove(&id))
        .await
        .expect("remove");
    assert!(
        mounts_under(&rootfs).is_empty(),
        "still mounted after removal"
    );

    // An image that is not in the registry: the CDH's reason, and no container.
    let missing = guest_pull_request(
        "missing-img",
        &format!("{}/apps/nope:v1", registry.addr),
        &["/bin/true"],
    );
    let (code, message) = status_of(client.create_container(ctx(), &missing).await);
    assert_eq!(code, Code::FAILED_PRECONDITION, "{message}");
    assert!(
        message.contains("apps/nope") && message.contains("404"),
        "{message}"
    );

    client
        .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
        .await
        .expect("destroy");
    let _ = stop.send(());
    let _ = std::fs::remove_dir_all(format!("/run/kata-containers/{id}"));
    let _ = std::fs::remove_dir_all("/run/kata-containers/missing-img");
}
