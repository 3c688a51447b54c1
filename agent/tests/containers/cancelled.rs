//! A CreateContainer whose request gives up (its ttrpc deadline, `timeout_nano`, passes while
//! the confidential data hub is still pulling) is not cut off half-way: the creation goes on
//! as the agent's own task and ends either with a container RemoveContainer removes, or
//! cleaned up. Against a stand-in CDH on its real socket whose pull waits to be released.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use peerpod_protocols::cdh::api::{ImagePullRequest, ImagePullResponse};
use peerpod_protocols::cdh::api_ttrpc::{ImagePullService, create_image_pull_service};
use peerpod_protocols::kata::agent;
use ttrpc::Code;

use crate::common::{ctx, status_of};
use crate::support::*;

/// The stand-in CDH: each pull waits for `release`, then bind-mounts a busybox root
/// filesystem at `<bundle>/rootfs`, as the real CDH leaves an overlay there.
struct SlowCdh {
    source: PathBuf,
    release: tokio::sync::Semaphore,
}

#[async_trait::async_trait]
impl ImagePullService for SlowCdh {
    async fn pull_image(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: ImagePullRequest,
    ) -> ttrpc::Result<ImagePullResponse> {
        let status =
            |message: String| ttrpc::Error::RpcStatus(ttrpc::get_status(Code::INTERNAL, message));
        self.release
            .acquire()
            .await
            .map_err(|e| status(e.to_string()))?
            .forget();
        let rootfs = Path::new(&req.bundle_path).join("rootfs");
        std::fs::create_dir_all(&rootfs).map_err(|e| status(format!("mkdir -p: {e}")))?;
        nix::mount::mount(
            Some(&self.source),
            &rootfs,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| status(format!("bind: {e}")))?;
        Ok(ImagePullResponse {
            manifest_digest: format!("sha256:{}", "cd".repeat(32)),
            ..Default::default()
        })
    }
}

fn pull_request(id: &str) -> agent::CreateContainerRequest {
    let mut request = container_request(id, Path::new("/nonexistent"), &["/bin/sleep", "600"]);
    request.storages.push(agent::Storage {
        driver: "image_guest_pull".into(),
        driver_options: vec![
            r#"image_guest_pull={"metadata":{"io.kubernetes.cri.container-type":"container"}}"#
                .into(),
        ],
        source: "registry.example/slow:v1".into(),
        fstype: "overlay".into(),
        mount_point: format!("/run/kata-containers/{id}/rootfs"),
        ..Default::default()
    });
    request
}

/// A CreateContainer sent with a 300 ms deadline while the pull takes longer: the client gets
/// DEADLINE_EXCEEDED; once the pull ends the container exists (RemoveContainer removes it,
/// bundle and mount included), and the id can be created again. Before, the creation was
/// dropped with the request: the id was freed, the bundle left, the late pull mounted into it,
/// RemoveContainer answered NOT_FOUND and every retry ALREADY_EXISTS.
#[tokio::test(flavor = "multi_thread")]
async fn a_create_whose_request_times_out_finishes_and_is_removable() {
    let dir = std::env::temp_dir().join(format!("agent-cancelled-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch");
    let cdh = Arc::new(SlowCdh {
        source: busybox_rootfs(&dir),
        release: tokio::sync::Semaphore::new(0),
    });
    let socket = dir.join("cdh.sock");
    let service: Arc<dyn ImagePullService + Send + Sync> = cdh.clone();
    let mut server = ttrpc::r#async::Server::new()
        .bind(&format!("unix://{}", socket.display()))
        .expect("bind the stand-in CDH")
        .register_service(create_image_pull_service(service));
    server.start().await.expect("stand-in CDH serves");
    let (agent, client, _rootfs) = pod_with(
        "cancelled",
        &format!(
            "{}cdh_socket = 'unix://{}'\n",
            policy("policy/examples/allow-all.rego"),
            socket.display()
        ),
    )
    .await;
    let id = format!("cancelled-{}", std::process::id());
    let bundle = PathBuf::from(format!("/run/kata-containers/{id}"));

    let short = ttrpc::context::with_timeout(
        i64::try_from(Duration::from_millis(300).as_nanos()).unwrap_or(i64::MAX),
    );
    // The agent's DEADLINE_EXCEEDED, or the client's own deadline, whichever comes first.
    match client.create_container(short, &pull_request(&id)).await {
        Err(ttrpc::Error::RpcStatus(s)) => {
            assert_eq!(s.code(), Code::DEADLINE_EXCEEDED, "{}", s.message());
        }
        Err(ttrpc::Error::Others(message)) => assert!(message.contains("deadline"), "{message}"),
        other => panic!("the create did not time out: {other:?}"),
    }
    // The pull is still going on: the id is still claimed.
    let (code, message) = status_of(client.create_container(ctx(), &pull_request(&id)).await);
    assert_eq!(code, Code::ALREADY_EXISTS, "{message}");
    cdh.release.add_permits(1);

    // The creation finishes on its own: the container appears, and goes with its bundle.
    let mut removed = false;
    for _ in 0..100 {
        match client.remove_container(ctx(), &remove(&id)).await {
            Ok(_) => {
                removed = true;
                break;
            }
            Err(e) => {
                let (code, message) = status_of(Err::<(), _>(e));
                assert_eq!(code, Code::NOT_FOUND, "{message}\n{}", agent.log());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let mounts = mounts_under(&bundle);
    let left = bundle.exists();
    for mount in &mounts {
        let fields: Vec<&str> = mount.split_whitespace().collect();
        if let Some(target) = fields.get(4) {
            let _ = nix::mount::umount2(*target, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _ = std::fs::remove_dir_all(&bundle);
    assert!(removed, "the container never appeared\n{}", agent.log());
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    assert!(!left, "the bundle was left behind");

    // The id is free again: a create within its deadline makes it, a remove removes it.
    cdh.release.add_permits(1);
    client
        .create_container(ctx(), &pull_request(&id))
        .await
        .unwrap_or_else(|e| panic!("create again: {e:?}\n{}", agent.log()));
    client
        .remove_container(ctx(), &remove(&id))
        .await
        .expect("remove again");
    assert!(!bundle.exists(), "the second bundle was left behind");
    drop(client);
    drop(agent);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
