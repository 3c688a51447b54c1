//! `api.ImagePullService/PullImage` through the CDH binary: an image in a local
//! `docker-registry` behind htpasswd auth whose auth.json comes from the key broker
//! (`kbs:///…`, served here by offline_fs_kbc), pulled and mounted at `bundle/rootfs`; the
//! answer is the digest the reference resolved to. Refusals carry the status of their cause.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "../../image/tests/common/mod.rs"]
mod image_fixtures;

use std::path::Path;
use std::sync::{Arc, Mutex};

use base64::Engine;
use common::{Cdh, code, ctx};
use image_fixtures::{Registry, RegistryOptions, Scratch, Step, build_image, run, tools_present};
use peerpod_protocols::aa::attestation_agent::{
    ExtendRuntimeMeasurementRequest, ExtendRuntimeMeasurementResponse, RuntimeMeasurementResult,
};
use peerpod_protocols::aa::attestation_agent_ttrpc::{
    AttestationAgentService, create_attestation_agent_service,
};
use peerpod_protocols::cdh::api::ImagePullRequest;
use peerpod_protocols::cdh::api_ttrpc::ImagePullServiceClient;

/// An attestation agent that only records `ExtendRuntimeMeasurement` events, on its socket, and
/// answers `result` (OK; NOT_ENABLED is upstream's agent's answer with its event log off).
#[derive(Default)]
struct RecordingAa {
    events: Mutex<Vec<(String, String, String)>>,
    result: RuntimeMeasurementResult,
}

#[async_trait::async_trait]
impl AttestationAgentService for RecordingAa {
    async fn extend_runtime_measurement(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: ExtendRuntimeMeasurementRequest,
    ) -> ttrpc::Result<ExtendRuntimeMeasurementResponse> {
        self.events
            .lock()
            .unwrap()
            .push((req.Domain, req.Operation, req.Content));
        Ok(ExtendRuntimeMeasurementResponse {
            Result: self.result.into(),
            ..Default::default()
        })
    }
}

async fn start_aa(dir: &Path) -> (Arc<RecordingAa>, ttrpc::r#async::Server) {
    start_aa_answering(dir, RuntimeMeasurementResult::OK).await
}

async fn start_aa_answering(
    dir: &Path,
    result: RuntimeMeasurementResult,
) -> (Arc<RecordingAa>, ttrpc::r#async::Server) {
    let aa = Arc::new(RecordingAa {
        result,
        ..Default::default()
    });
    let mut server = ttrpc::r#async::Server::new()
        .bind(&format!("unix://{}/aa.sock", dir.display()))
        .unwrap()
        .register_service(create_attestation_agent_service(aa.clone()));
    server.start().await.unwrap();
    (aa, server)
}

fn cdh_toml(dir: &Path, registry: &str, extra: &str) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let auth = serde_json::json!({"auths": {registry: {"auth": b64("puller:pull-pass")}}});
    let resources = serde_json::json!({ "default/credential/registry": b64(&auth.to_string()) });
    std::fs::write(dir.join("resources.json"), resources.to_string()).unwrap();
    std::fs::write(
        dir.join("registries.conf"),
        format!("[[registry]]\nlocation = \"{registry}\"\ninsecure = true\n"),
    )
    .unwrap();
    format!(
        "socket = \"unix://{d}/cdh.sock\"\n\
         [kbc]\nname = \"offline_fs_kbc\"\n\
         [aa]\naa_socket = \"unix://{d}/aa.sock\"\n\
         [image]\nwork_dir = \"{d}/image-rs\"\n\
         authenticated_registry_credentials_uri = \"kbs:///default/credential/registry\"\n\
         registry_configuration_uri = \"file://{d}/registries.conf\"\n{extra}\n\
         [peerpod]\noffline_fs_kbc_files = [\"{d}/resources.json\"]\n",
        d = dir.display()
    )
}

async fn pull(
    client: &ImagePullServiceClient,
    image: &str,
    bundle: &Path,
) -> ttrpc::Result<String> {
    client
        .pull_image(
            ctx(),
            &ImagePullRequest {
                image_url: image.into(),
                bundle_path: bundle.display().to_string(),
                ..Default::default()
            },
        )
        .await
        .map(|r| r.manifest_digest)
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_image_mounts_the_rootfs_and_answers_the_digest() {
    if !tools_present() {
        return;
    }
    let scratch = Scratch::new("cdh-pull");
    let dir = scratch.path();
    let registry = Registry::start(RegistryOptions {
        auth: Some(("puller".into(), "pull-pass".into())),
        tls: false,
    })
    .unwrap();
    let layout = dir.join("layout");
    build_image(
        &layout,
        "v1",
        &[
            vec![Step::Busybox],
            vec![Step::Write("/etc/motd", b"pulled in the guest")],
        ],
    )
    .unwrap();
    registry
        .push(&layout, "v1", "app/web", "v1", "oci")
        .unwrap();
    let expected = run(std::process::Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        "--creds",
        "puller:pull-pass",
        "--format",
        "{{.Digest}}",
        &format!("docker://{}/app/web:v1", registry.addr),
    ]))
    .unwrap();

    let (aa, mut aa_server) = start_aa(dir).await;
    let cdh = Cdh::start(dir, &cdh_toml(dir, &registry.addr, ""));
    let client = ImagePullServiceClient::new(cdh.connect().await);
    let bundle = dir.join("bundles/c1");
    std::fs::create_dir_all(&bundle).unwrap();
    let image = format!("{}/app/web:v1", registry.addr);
    let digest = pull(&client, &image, &bundle)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", cdh.log_text()));
    assert_eq!(digest, expected.trim());
    // Recorded in the event log as upstream's CDH records it.
    let events = aa.events.lock().unwrap().clone();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "github.com/confidential-containers");
    assert_eq!(events[0].1, "PullImage");
    let content: serde_json::Value = serde_json::from_str(&events[0].2).unwrap();
    assert_eq!(content["image"], image.as_str());
    assert_eq!(content["digest"], digest.as_str());
    let is_root = run(std::process::Command::new("id").arg("-u")).is_ok_and(|u| u.trim() == "0");
    if is_root {
        assert_eq!(
            std::fs::read_to_string(bundle.join("rootfs/etc/motd")).unwrap(),
            "pulled in the guest"
        );
        assert!(bundle.join("rootfs/bin/busybox").is_file());
        let _ = run(std::process::Command::new("umount").arg(bundle.join("rootfs")));
    }
    // The credentials never reach the log.
    assert!(!cdh.log_text().contains("pull-pass"));

    // A bundle path with '..': INVALID_ARGUMENT. A registry that is down: UNAVAILABLE.
    let e = pull(&client, &image, Path::new("/run/../etc"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::INVALID_ARGUMENT, "{e:?}");
    let e = pull(&client, "not a reference", &bundle).await.unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::INVALID_ARGUMENT, "{e:?}");
    assert_eq!(
        aa.events.lock().unwrap().len(),
        1,
        "failed pulls are not recorded"
    );
    let _ = aa_server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_image_refused_by_policy_is_permission_denied_naming_the_rule() {
    if !tools_present() {
        return;
    }
    let scratch = Scratch::new("cdh-policy");
    let dir = scratch.path();
    let registry = Registry::start(RegistryOptions {
        auth: Some(("puller".into(), "pull-pass".into())),
        tls: false,
    })
    .unwrap();
    let layout = dir.join("layout");
    build_image(&layout, "v1", &[vec![Step::Write("/hello", b"hi")]]).unwrap();
    registry
        .push(&layout, "v1", "app/web", "v1", "oci")
        .unwrap();
    std::fs::write(
        dir.join("policy.json"),
        r#"{"default":[{"type":"reject"}]}"#,
    )
    .unwrap();
    let extra = format!(
        "image_security_policy_uri = \"file://{}/policy.json\"",
        dir.display()
    );
    let cdh = Cdh::start(dir, &cdh_toml(dir, &registry.addr, &extra));
    let client = ImagePullServiceClient::new(cdh.connect().await);
    let bundle = dir.join("b");
    let e = pull(&client, &format!("{}/app/web:v1", registry.addr), &bundle)
        .await
        .unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::PERMISSION_DENIED, "{e:?}");
    assert!(format!("{e:?}").contains("default[0] reject"), "{e:?}");
    assert!(!bundle.join("rootfs").exists());
    assert!(
        !dir.join("image-rs/layers/sha256").exists()
            || std::fs::read_dir(dir.join("image-rs/layers/sha256"))
                .unwrap()
                .next()
                .is_none(),
        "no layer fetched"
    );
}

/// Whether `rootfs` is a mount point in this process's mount namespace.
fn mounted(rootfs: &Path) -> bool {
    let target = rootfs.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(target.as_str()))
}

/// An image pull the attestation agent cannot record. Upstream's CDH uses the image anyway
/// (event log off, or no agent: a warning), and so does ours by default; with
/// `[peerpod] require_pull_measurement = true` (in a cdh.toml the initdata carries) the pull is
/// refused FAILED_PRECONDITION naming the reason and the key, and its root filesystem is not
/// left mounted. An agent that records it is accepted under the same setting.
#[tokio::test(flavor = "multi_thread")]
async fn an_unmeasured_pull_is_refused_when_cdh_toml_requires_measurement() {
    if !tools_present() {
        return;
    }
    let scratch = Scratch::new("cdh-measure");
    let dir = scratch.path();
    let registry = Registry::start(RegistryOptions {
        auth: Some(("puller".into(), "pull-pass".into())),
        tls: false,
    })
    .unwrap();
    let layout = dir.join("layout");
    build_image(&layout, "v1", &[vec![Step::Write("/hello", b"hi")]]).unwrap();
    registry
        .push(&layout, "v1", "app/web", "v1", "oci")
        .unwrap();
    let image = format!("{}/app/web:v1", registry.addr);
    let is_root = run(std::process::Command::new("id").arg("-u")).is_ok_and(|u| u.trim() == "0");
    let required = "[peerpod]\nrequire_pull_measurement = true\n";
    // The [peerpod] table of cdh_toml comes after `extra`: the key joins it.
    let with =
        |d: &Path, extra: &str| cdh_toml(d, &registry.addr, "").replace("[peerpod]\n", extra);

    // The event log is off. Default: used (upstream parity), with a warning.
    let sub = dir.join("open");
    std::fs::create_dir_all(&sub).unwrap();
    let (aa, mut aa_server) = start_aa_answering(&sub, RuntimeMeasurementResult::NOT_ENABLED).await;
    let cdh = Cdh::start(&sub, &with(&sub, "[peerpod]\n"));
    let client = ImagePullServiceClient::new(cdh.connect().await);
    let bundle = sub.join("b");
    std::fs::create_dir_all(&bundle).unwrap();
    pull(&client, &image, &bundle)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", cdh.log_text()));
    assert_eq!(aa.events.lock().unwrap().len(), 1);
    assert!(
        cdh.log_text().contains("did not record the image pull"),
        "{}",
        cdh.log_text()
    );
    if is_root {
        assert!(mounted(&bundle.join("rootfs")));
        let _ = run(std::process::Command::new("umount").arg(bundle.join("rootfs")));
    }
    drop(cdh);
    let _ = aa_server.shutdown().await;

    // Required: refused, nothing left mounted.
    let sub = dir.join("closed");
    std::fs::create_dir_all(&sub).unwrap();
    let (aa, mut aa_server) = start_aa_answering(&sub, RuntimeMeasurementResult::NOT_ENABLED).await;
    let cdh = Cdh::start(&sub, &with(&sub, required));
    let client = ImagePullServiceClient::new(cdh.connect().await);
    let bundle = sub.join("b");
    std::fs::create_dir_all(&bundle).unwrap();
    let e = pull(&client, &image, &bundle).await.unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::FAILED_PRECONDITION, "{e:?}");
    let text = format!("{e:?}");
    assert!(text.contains("require_pull_measurement"), "{text}");
    assert!(text.contains("enable_eventlog = true"), "{text}");
    assert_eq!(aa.events.lock().unwrap().len(), 1, "it was asked");
    assert!(
        !mounted(&bundle.join("rootfs")),
        "the refused rootfs stays mounted"
    );
    let _ = aa_server.shutdown().await;

    // Required, and the platform has no runtime measurement: refused too.
    let _ = std::fs::remove_file(sub.join("aa.sock"));
    let (_aa, mut aa_server) =
        start_aa_answering(&sub, RuntimeMeasurementResult::NOT_SUPPORTED).await;
    let e = pull(&client, &image, &bundle).await.unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::FAILED_PRECONDITION, "{e:?}");
    assert!(format!("{e:?}").contains("no runtime measurement"), "{e:?}");
    assert!(!mounted(&bundle.join("rootfs")));
    let _ = aa_server.shutdown().await;

    // Required, and no attestation agent at all: refused, naming the socket.
    let _ = std::fs::remove_file(sub.join("aa.sock"));
    let e = pull(&client, &image, &bundle).await.unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::FAILED_PRECONDITION, "{e:?}");
    let text = format!("{e:?}");
    assert!(text.contains("no attestation agent at unix://"), "{text}");
    assert!(text.contains("aa_socket"), "{text}");
    assert!(!mounted(&bundle.join("rootfs")));

    // Required, and the agent records it: used.
    let (aa, mut aa_server) = start_aa(&sub).await;
    let bundle = sub.join("b2");
    std::fs::create_dir_all(&bundle).unwrap();
    pull(&client, &image, &bundle)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", cdh.log_text()));
    assert_eq!(aa.events.lock().unwrap().len(), 1);
    if is_root {
        assert!(mounted(&bundle.join("rootfs")));
        let _ = run(std::process::Command::new("umount").arg(bundle.join("rootfs")));
    }
    let _ = aa_server.shutdown().await;
}

/// A pull that crosses one of `[image]`'s totals (unpacked bytes, inodes, the store's bytes) is
/// RESOURCE_EXHAUSTED naming the key to raise, not INTERNAL; nothing is mounted.
#[tokio::test(flavor = "multi_thread")]
async fn a_pull_over_an_image_limit_is_resource_exhausted() {
    if !tools_present() {
        return;
    }
    let scratch = Scratch::new("cdh-limits");
    let registry = Registry::start(RegistryOptions {
        auth: Some(("puller".into(), "pull-pass".into())),
        tls: false,
    })
    .unwrap();
    let layout = scratch.path().join("layout");
    build_image(&layout, "v1", &[vec![Step::Busybox]]).unwrap();
    registry
        .push(&layout, "v1", "app/big", "v1", "oci")
        .unwrap();
    let image = format!("{}/app/big:v1", registry.addr);
    for key in [
        "max_image_unpacked_bytes",
        "max_image_unpacked_inodes",
        "max_layer_store_bytes",
    ] {
        let dir = scratch.path().join(key);
        std::fs::create_dir_all(&dir).unwrap();
        let (_aa, mut aa_server) = start_aa(&dir).await;
        let cdh = Cdh::start(&dir, &cdh_toml(&dir, &registry.addr, &format!("{key} = 3")));
        let client = ImagePullServiceClient::new(cdh.connect().await);
        let bundle = dir.join("bundle");
        std::fs::create_dir_all(&bundle).unwrap();
        let e = pull(&client, &image, &bundle).await.unwrap_err();
        assert_eq!(
            code(&e),
            ttrpc::Code::RESOURCE_EXHAUSTED,
            "{key}: {e:?}\n{}",
            cdh.log_text()
        );
        assert!(format!("{e:?}").contains(key), "{key}: {e:?}");
        assert!(!mounted(&bundle.join("rootfs")), "{key}: mounted");
        let _ = aa_server.shutdown().await;
    }
}
