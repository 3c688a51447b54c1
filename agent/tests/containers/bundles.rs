//! Guest-pull bundles (`/run/kata-containers/<id>`) against a stand-in confidential data hub on
//! its real socket: its `PullImage` counts calls and bind-mounts a busybox root filesystem at
//! `<bundle>/rootfs`, as the real CDH leaves an overlay there. A duplicate container id is
//! refused before the CDH is asked or anything is written; an existing bundle is never reused;
//! a bundle goes with its container (RemoveContainer, a failed create, DestroySandbox).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use peerpod_protocols::cdh::api::{ImagePullRequest, ImagePullResponse};
use peerpod_protocols::cdh::api_ttrpc::{ImagePullService, create_image_pull_service};
use peerpod_protocols::kata::agent;
use ttrpc::Code;

use crate::common::{ctx, status_of};
use crate::support::*;

const BASE: &str = "/run/kata-containers";

/// The stand-in CDH: counts `PullImage` calls; an image named `…/fail` fails; while `hold` is
/// set, a pull waits for `release`.
struct StandInCdh {
    calls: AtomicUsize,
    source: PathBuf,
    hold: std::sync::atomic::AtomicBool,
    release: tokio::sync::Notify,
    /// The real CDH's behaviour past a deadline: the pull goes on in its own task, which
    /// outlives the request (ttrpc drops the handler at the deadline), waits for
    /// `late_release`, and makes a missing bundle (`mkdir -p <bundle>/rootfs`, as the layer
    /// store does) before it mounts.
    late: std::sync::atomic::AtomicBool,
    late_release: Arc<tokio::sync::Notify>,
}

#[async_trait::async_trait]
impl ImagePullService for StandInCdh {
    async fn pull_image(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: ImagePullRequest,
    ) -> ttrpc::Result<ImagePullResponse> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.late.load(Ordering::SeqCst) {
            let (release, source) = (self.late_release.clone(), self.source.clone());
            let bundle = PathBuf::from(&req.bundle_path);
            let work = tokio::spawn(async move {
                release.notified().await;
                let rootfs = bundle.join("rootfs");
                std::fs::create_dir_all(&rootfs).map_err(|e| format!("mkdir -p: {e}"))?;
                nix::mount::mount(
                    Some(&source),
                    &rootfs,
                    None::<&str>,
                    nix::mount::MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|e| format!("bind: {e}"))
            });
            let status = |message: String| {
                ttrpc::Error::RpcStatus(ttrpc::get_status(Code::INTERNAL, message))
            };
            work.await
                .map_err(|e| status(e.to_string()))?
                .map_err(status)?;
            return Ok(ImagePullResponse {
                manifest_digest: format!("sha256:{}", "ab".repeat(32)),
                ..Default::default()
            });
        }
        if self.hold.load(Ordering::SeqCst) {
            self.release.notified().await;
        }
        let status =
            |code: Code, message: String| ttrpc::Error::RpcStatus(ttrpc::get_status(code, message));
        if req.image_url.ends_with("/fail") {
            return Err(status(Code::NOT_FOUND, "no such image".into()));
        }
        let rootfs = Path::new(&req.bundle_path).join("rootfs");
        std::fs::create_dir(&rootfs)
            .map_err(|e| status(Code::INTERNAL, format!("mkdir {}: {e}", rootfs.display())))?;
        nix::mount::mount(
            Some(&self.source),
            &rootfs,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| status(Code::INTERNAL, format!("bind: {e}")))?;
        Ok(ImagePullResponse {
            manifest_digest: format!("sha256:{}", "ab".repeat(32)),
            ..Default::default()
        })
    }
}

struct Fixture {
    cdh: Arc<StandInCdh>,
    _server: ttrpc::r#async::Server,
    agent: crate::common::Agent,
    client: peerpod_protocols::kata::agent_ttrpc::AgentServiceClient,
    /// Dropped last, once the agent is gone.
    _scratch: Scratch,
}

/// The stand-in's directory (its socket and the busybox source), removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn fixture(name: &str) -> Fixture {
    fixture_with(name, "").await
}

/// [`fixture`] with more agent configuration.
async fn fixture_with(name: &str, config: &str) -> Fixture {
    let dir = std::env::temp_dir().join(format!("agent-bundles-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch");
    let source = busybox_rootfs(&dir);
    let cdh = Arc::new(StandInCdh {
        calls: AtomicUsize::new(0),
        source,
        hold: false.into(),
        release: tokio::sync::Notify::new(),
        late: false.into(),
        late_release: Arc::new(tokio::sync::Notify::new()),
    });
    let socket = dir.join("cdh.sock");
    let service: Arc<dyn ImagePullService + Send + Sync> = cdh.clone();
    let mut server = ttrpc::r#async::Server::new()
        .bind(&format!("unix://{}", socket.display()))
        .expect("bind the stand-in CDH")
        .register_service(create_image_pull_service(service));
    server.start().await.expect("stand-in CDH serves");
    let (agent, client, _rootfs) = pod_with(
        &format!("bundles-{name}"),
        &format!(
            "{}cdh_socket = 'unix://{}'\n{config}",
            policy("policy/examples/allow-all.rego"),
            socket.display()
        ),
    )
    .await;
    Fixture {
        cdh,
        _server: server,
        agent,
        client,
        _scratch: Scratch(dir),
    }
}

fn pull_request(id: &str, image: &str) -> agent::CreateContainerRequest {
    let mut request = container_request(id, Path::new("/nonexistent"), &["/bin/sleep", "600"]);
    request.storages.push(agent::Storage {
        driver: "image_guest_pull".into(),
        driver_options: vec![
            r#"image_guest_pull={"metadata":{"io.kubernetes.cri.container-type":"container"}}"#
                .into(),
        ],
        source: image.into(),
        fstype: "overlay".into(),
        mount_point: format!("{BASE}/{id}/rootfs"),
        ..Default::default()
    });
    request
}

/// Every path under `dir` with its kind and size, and the mounts at or below it.
fn snapshot(dir: &Path) -> (Vec<String>, usize) {
    fn walk(dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).expect("lstat");
            out.push(format!(
                "{} {:?} {}",
                path.display(),
                meta.file_type(),
                meta.len()
            ));
            if meta.is_dir() {
                walk(&path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    (out, mounts_under(dir).len())
}

/// Our entries in `/run/kata-containers` (names starting with `prefix`).
fn leftovers(prefix: &str) -> Vec<String> {
    std::fs::read_dir(BASE)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_duplicate_container_id_is_refused_before_any_pull_or_write() {
    let f = fixture("dup").await;
    let id = format!("dup-{}", std::process::id());
    let image = "registry.example/app:v1";
    f.client
        .create_container(ctx(), &pull_request(&id, image))
        .await
        .unwrap_or_else(|e| panic!("create: {e:?}\n{}", f.agent.log()));
    assert_eq!(f.cdh.calls.load(Ordering::SeqCst), 1);
    let bundle = PathBuf::from(format!("{BASE}/{id}"));
    let before = snapshot(&bundle);
    assert_eq!(before.1, 1, "one rootfs mount");

    // The same id again, with another image: refused, the CDH never asked, nothing written
    // (no second mount stacked on the running container's rootfs).
    let (code, message) = status_of(
        f.client
            .create_container(ctx(), &pull_request(&id, "registry.example/other:v2"))
            .await,
    );
    assert_eq!(code, Code::ALREADY_EXISTS, "{message}");
    assert_eq!(f.cdh.calls.load(Ordering::SeqCst), 1, "the CDH was asked");
    assert_eq!(snapshot(&bundle), before, "the bundle changed");

    // A duplicate of a create still in progress (its pull held in the CDH): refused at once.
    let slow = format!("slow-{}", std::process::id());
    f.cdh.hold.store(true, Ordering::SeqCst);
    let first = {
        let client = f.client.clone();
        let request = pull_request(&slow, image);
        tokio::spawn(async move { client.create_container(ctx(), &request).await })
    };
    while f.cdh.calls.load(Ordering::SeqCst) < 2 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let (code, message) = status_of(
        f.client
            .create_container(ctx(), &pull_request(&slow, image))
            .await,
    );
    assert_eq!(code, Code::ALREADY_EXISTS, "{message}");
    assert_eq!(
        f.cdh.calls.load(Ordering::SeqCst),
        2,
        "the CDH was asked twice"
    );
    f.cdh.hold.store(false, Ordering::SeqCst);
    f.cdh.release.notify_waiters();
    first
        .await
        .expect("task")
        .unwrap_or_else(|e| panic!("the first create: {e:?}\n{}", f.agent.log()));

    // A bundle directory already there (a leftover, or planted): refused, never reused or
    // removed, the CDH never asked.
    let planted = format!("planted-{}", std::process::id());
    let planted_dir = PathBuf::from(format!("{BASE}/{planted}"));
    std::fs::create_dir_all(planted_dir.join("rootfs")).expect("planted");
    std::fs::write(planted_dir.join("marker"), b"not the agent's").expect("marker");
    let (code, message) = status_of(
        f.client
            .create_container(ctx(), &pull_request(&planted, image))
            .await,
    );
    assert_eq!(code, Code::ALREADY_EXISTS, "{message}");
    assert!(message.contains("bundle"), "{message}");
    assert_eq!(f.cdh.calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        std::fs::read(planted_dir.join("marker")).expect("marker kept"),
        b"not the agent's"
    );
    let _ = std::fs::remove_dir_all(&planted_dir);

    for id in [&id, &slow] {
        f.client
            .remove_container(ctx(), &remove(id))
            .await
            .expect("remove");
    }
    assert!(leftovers(&id).is_empty() && leftovers(&slow).is_empty());
}

/// Create and remove 1,000 times (four clients at once); refuse an unsupported storage before
/// the pull; fail creations after the pull (a bind storage without its source) and in the
/// pull; destroy a sandbox with containers: `/run/kata-containers` keeps none of these bundles
/// and no mount below them.
#[tokio::test(flavor = "multi_thread")]
async fn bundles_go_with_their_containers_over_1000_cycles() {
    let f = fixture("cycles").await;
    let prefix = format!("cyc-{}-", std::process::id());
    let image = "registry.example/app:v1";
    // Four clients at once, 250 cycles each.
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let client = f.client.clone();
            let prefix = prefix.clone();
            tokio::spawn(async move {
                for i in 0..250 {
                    let id = format!("{prefix}{w}-{i}");
                    client
                        .create_container(ctx(), &pull_request(&id, image))
                        .await
                        .map_err(|e| format!("create {id}: {e:?}"))?;
                    client
                        .remove_container(ctx(), &remove(&id))
                        .await
                        .map_err(|e| format!("remove {id}: {e:?}"))?;
                    if !Path::new(BASE).join(&id).exists() {
                        continue;
                    }
                    return Err(format!("{id}: the bundle outlived RemoveContainer"));
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    for worker in workers {
        if let Err(e) = worker.await.expect("worker") {
            panic!("{e}\n{}", f.agent.log());
        }
    }
    assert_eq!(leftovers(&prefix), Vec::<String>::new());
    assert_eq!(f.cdh.calls.load(Ordering::SeqCst), 1000);

    // An unsupported storage next to the pull: refused before the CDH is asked.
    let id = format!("{prefix}unsupported");
    let mut request = pull_request(&id, image);
    request.storages.insert(
        0,
        agent::Storage {
            driver: "virtio-fs".into(),
            mount_point: format!("/run/kata-containers/shared/{id}"),
            ..Default::default()
        },
    );
    let (code, message) = status_of(f.client.create_container(ctx(), &request).await);
    assert_eq!(code, Code::FAILED_PRECONDITION, "{message}");
    assert_eq!(
        f.cdh.calls.load(Ordering::SeqCst),
        1000,
        "pulled for nothing"
    );
    assert!(!Path::new(&format!("{BASE}/shared/{id}")).exists());

    // Failed after the pull (a bind storage whose source is missing): the pulled rootfs
    // unmounted and the bundle gone.
    let id = format!("{prefix}after-pull");
    let mut request = pull_request(&id, image);
    request.storages.insert(
        0,
        agent::Storage {
            driver: "bind".into(),
            source: format!("/nonexistent/{id}"),
            mount_point: f.agent.dir.join("bind-target").display().to_string(),
            ..Default::default()
        },
    );
    let (code, message) = status_of(f.client.create_container(ctx(), &request).await);
    assert_eq!(code, Code::INTERNAL, "{message}");
    assert_eq!(f.cdh.calls.load(Ordering::SeqCst), 1001);
    // Failed in the pull.
    let id = format!("{prefix}in-pull");
    let (code, message) = status_of(
        f.client
            .create_container(ctx(), &pull_request(&id, "registry.example/fail"))
            .await,
    );
    assert_eq!(code, Code::FAILED_PRECONDITION, "{message}");
    assert_eq!(leftovers(&prefix), Vec::<String>::new());

    // DestroySandbox removes the containers it finds, and their bundles.
    for i in 0..3 {
        f.client
            .create_container(ctx(), &pull_request(&format!("{prefix}pod-{i}"), image))
            .await
            .unwrap_or_else(|e| panic!("create: {e:?}\n{}", f.agent.log()));
    }
    assert_eq!(leftovers(&prefix).len(), 3);
    f.client
        .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
        .await
        .expect("destroy");
    assert_eq!(leftovers(&prefix), Vec::<String>::new());
    let mounts: Vec<String> = mounts_under(Path::new(BASE))
        .into_iter()
        .filter(|m| m.contains(&prefix))
        .collect();
    assert!(mounts.is_empty(), "{mounts:?}");
}

/// The agent gives up at `image_pull_timeout` while the CDH is still pulling; the CDH then
/// mounts the image, making the bundle again as the real one does. The agent waits for that
/// answer before it cleans up, keeping the id claimed: no bundle and no mount are left.
#[tokio::test(flavor = "multi_thread")]
async fn a_pull_past_the_timeout_leaves_no_bundle_or_mount_behind() {
    let f = fixture_with("late", "image_pull_timeout = 2\n").await;
    f.cdh.late.store(true, Ordering::SeqCst);
    let id = format!("late-{}", std::process::id());
    let bundle = PathBuf::from(format!("{BASE}/{id}"));
    let create = {
        let client = f.client.clone();
        let request = pull_request(&id, "registry.example/big:v1");
        tokio::spawn(async move { client.create_container(ctx(), &request).await })
    };
    // Past the agent's timeout, the pull is still going on in the CDH.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    // The id is still claimed: a retry with the same id does not race the late mount.
    if !create.is_finished() {
        let (code, message) = status_of(
            f.client
                .create_container(ctx(), &pull_request(&id, "registry.example/big:v1"))
                .await,
        );
        assert_eq!(code, Code::ALREADY_EXISTS, "{message}");
    }
    f.cdh.late_release.notify_waiters();
    let (code, message) = status_of(create.await.expect("create task"));
    assert_eq!(code, Code::FAILED_PRECONDITION, "{message}");
    assert!(message.contains("image_pull_timeout (2 s"), "{message}");
    // The CDH's late mount has happened by now (it answered); give a stale one a moment.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mounts = mounts_under(&bundle);
    for mount in &mounts {
        let _ = nix::mount::umount2(mount.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
    let left = bundle.exists();
    let _ = std::fs::remove_dir_all(&bundle);
    assert!(
        mounts.is_empty(),
        "mounts left: {mounts:?}\n{}",
        f.agent.log()
    );
    assert!(!left, "the bundle was left behind\n{}", f.agent.log());
    assert_eq!(
        f.cdh.calls.load(Ordering::SeqCst),
        1,
        "the pull was sent again"
    );
}
