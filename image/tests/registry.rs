//! Pulls from Debian's `docker-registry` on 127.0.0.1: plain HTTP, htpasswd Basic auth, TLS with
//! a test CA; images built with umoci from busybox-static and pushed with skopeo (OCI and
//! Docker v2 schema 2), multi-layer with a whiteout, a multi-platform index, mirrors.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use anyhow::Result;
use common::*;
use peerpod_image::resources::NoResources;
use peerpod_image::{Digest, ImageError, Puller};

fn puller(config: peerpod_image::ImageConfig, store: &Arc<RecordingStore>) -> Puller {
    Puller::new(config, Arc::new(NoResources), store.clone()).expect("puller")
}

fn skopeo_digest(registry: &Registry, repo_tag: &str) -> Result<String> {
    let mut cmd = Command::new("skopeo");
    cmd.args(["inspect", "--raw"]);
    if let Some(d) = &registry.cert_dir {
        cmd.arg("--cert-dir").arg(d);
    } else {
        cmd.arg("--tls-verify=false");
    }
    if let Some((u, p)) = &registry.options.auth {
        cmd.arg("--creds").arg(format!("{u}:{p}"));
    }
    cmd.arg(format!("docker://{}/{repo_tag}", registry.addr));
    let raw = run(&mut cmd)?;
    Ok(Digest::of(raw.as_bytes()).to_string())
}

/// busybox; `/etc/one` and `/data/two`; `/etc/one` removed (a whiteout).
fn whiteout_layers() -> Vec<Vec<Step<'static>>> {
    vec![
        vec![Step::Busybox],
        vec![
            Step::Write("/etc/one", b"one"),
            Step::Write("/data/two", b"two"),
        ],
        vec![Step::Remove("/etc/one")],
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn multi_layer_oci_image_with_whiteout_pulled_once_and_shared() -> Result<()> {
    if !tools_present() {
        return Ok(());
    }
    let (scratch, registry, _) =
        registry_with_image("multilayer", "test/multi", &whiteout_layers())?;

    let config = insecure_config(&scratch, &registry.addr, "work");
    let (p, store) = recording_puller(config);
    let bundle = PathBuf::from("/run/test-bundles/one");
    let image = format!("{}/test/multi:v1", registry.addr);
    let out = p.pull(&image, &bundle).await?;

    assert_eq!(
        out.manifest_digest.to_string(),
        skopeo_digest(&registry, "test/multi:v1")?
    );
    assert_eq!(out.diff_ids.len(), 3);
    assert_eq!((out.fetched_layers, out.reused_layers), (3, 0));
    assert!(
        out.bytes > 500_000,
        "busybox layer is most of it: {}",
        out.bytes
    );
    {
        let layers = store.layers.lock().unwrap();
        let top = &layers[&out.diff_ids[2]];
        assert!(top.iter().any(|n| n.ends_with("etc/.wh.one")), "{top:?}");
        let middle = &layers[&out.diff_ids[1]];
        assert!(middle.iter().any(|n| n.ends_with("data/two")), "{middle:?}");
        assert!(
            layers[&out.diff_ids[0]]
                .iter()
                .any(|n| n.ends_with("bin/busybox"))
        );
    }
    assert_eq!(store.mounts.lock().unwrap()[&bundle], out.diff_ids);

    // A second container of the same image: nothing fetched again.
    let bundle2 = PathBuf::from("/run/test-bundles/two");
    let out2 = p
        .pull(&format!("{image}@{}", out.manifest_digest), &bundle2)
        .await?;
    assert_eq!((out2.fetched_layers, out2.reused_layers), (0, 3));
    assert_eq!(store.installs.lock().unwrap().len(), 3);

    // Released one: its layers stay for the other; released both: collected.
    p.release(&bundle)?;
    assert_eq!(store.layers.lock().unwrap().len(), 3);
    p.release(&bundle2)?;
    assert!(store.layers.lock().unwrap().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_schema2_over_tls_with_htpasswd_auth() -> Result<()> {
    if !tools_present() {
        return Ok(());
    }
    let scratch = Scratch::new("auth-tls");
    let registry = Registry::start(RegistryOptions {
        auth: Some(("puller".into(), "s3cret-pass".into())),
        tls: true,
    })?;
    let layout = scratch.path().join("layout");
    build_image(&layout, "v1", &[vec![Step::Busybox]])?;
    registry.push(&layout, "v1", "private/app", "v1", "v2s2")?;
    let image = format!("{}/private/app:v1", registry.addr);
    let ca = registry.ca_pem.clone().unwrap();
    let auth = |user: &str, pass: &str| {
        serde_json::json!({"auths": {registry.addr.clone(): {"auth": base64_encode(&format!("{user}:{pass}"))}}})
            .to_string()
    };

    // Right credentials and the test CA: pulled.
    let mut config = test_config(&scratch.path().join("work"));
    config.extra_root_certificates = vec![ca.clone()];
    config.authenticated_registry_credentials_uri = Some(file_uri(
        scratch.path(),
        "auth.json",
        &auth("puller", "s3cret-pass"),
    ));
    let store = Arc::new(RecordingStore::default());
    let out = puller(config.clone(), &store)
        .pull(&image, &PathBuf::from("/run/b/1"))
        .await?;
    assert_eq!(
        out.manifest_digest.to_string(),
        skopeo_digest(&registry, "private/app:v1")?
    );
    assert_eq!(out.fetched_layers, 1);

    // No credentials: refused, naming the fix.
    let mut none = config.clone();
    none.authenticated_registry_credentials_uri = None;
    let e = puller(none, &Arc::default())
        .pull(&image, &PathBuf::from("/run/b/2"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ImageError::Unauthorized { status: 401, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("no credentials"), "{e}");

    // Wrong password: refused, and the password is in no message.
    let mut wrong = config.clone();
    wrong.authenticated_registry_credentials_uri = Some(file_uri(
        scratch.path(),
        "wrong.json",
        &auth("puller", "not-the-pass"),
    ));
    let e = puller(wrong, &Arc::default())
        .pull(&image, &PathBuf::from("/run/b/3"))
        .await
        .unwrap_err();
    assert!(matches!(e, ImageError::Unauthorized { .. }), "{e}");
    assert!(!format!("{e} {e:?}").contains("not-the-pass"), "{e:?}");

    // Without the test CA: the certificate is not trusted.
    let mut untrusted = config.clone();
    untrusted.extra_root_certificates.clear();
    let e = puller(untrusted, &Arc::default())
        .pull(&image, &PathBuf::from("/run/b/4"))
        .await
        .unwrap_err();
    assert!(matches!(e, ImageError::Transport { .. }), "{e}");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn multi_platform_index_picks_the_guest_platform() -> Result<()> {
    if !tools_present() {
        return Ok(());
    }
    let scratch = Scratch::new("index");
    let registry = Registry::start(RegistryOptions::default())?;
    let layout = scratch.path().join("layout");
    build_image(&layout, "guest", &[vec![Step::Write("/which", b"guest")]])?;
    build_image(&layout, "other", &[vec![Step::Write("/which", b"other")]])?;
    run(Command::new("umoci").args([
        "config",
        "--image",
        &format!("{}:other", layout.display()),
        "--architecture",
        "riscv64",
    ]))?;
    registry.push(&layout, "guest", "multi/arch", "guest", "oci")?;
    registry.push(&layout, "other", "multi/arch", "other", "oci")?;
    let guest = skopeo_digest(&registry, "multi/arch:guest")?;
    let other = skopeo_digest(&registry, "multi/arch:other")?;
    let arch = peerpod_image::manifest::guest_architecture();
    let index = |entries: &[(&str, &str)]| {
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": entries.iter().map(|(d, a)| serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": d, "size": 1,
                "platform": {"architecture": a, "os": "linux"}
            })).collect::<Vec<_>>()
        })
        .to_string()
    };
    let http = reqwest::Client::new();
    for (tag, body) in [
        ("both", index(&[(&other, "riscv64"), (&guest, arch)])),
        ("foreign", index(&[(&other, "riscv64")])),
    ] {
        common::raw::put_manifest(
            &http,
            &registry.addr,
            "multi/arch",
            tag,
            "application/vnd.oci.image.index.v1+json",
            body,
        )
        .await?;
    }
    let config = insecure_config(&scratch, &registry.addr, "work");
    let (p, _store) = recording_puller(config);
    let out = p
        .pull(
            &format!("{}/multi/arch:both", registry.addr),
            &PathBuf::from("/run/b/i"),
        )
        .await?;
    assert_eq!(out.image_manifest_digest.to_string(), guest);
    assert_eq!(
        out.manifest_digest.to_string(),
        skopeo_digest(&registry, "multi/arch:both")?
    );
    assert_ne!(out.manifest_digest, out.image_manifest_digest);
    let e = p
        .pull(
            &format!("{}/multi/arch:foreign", registry.addr),
            &PathBuf::from("/run/b/j"),
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains(&format!("no image for linux/{arch}")),
        "{e}"
    );
    assert!(e.to_string().contains("linux/riscv64"), "{e}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn mirrors_in_order_blocked_refused_and_down_registry_named() -> Result<()> {
    if !tools_present() {
        return Ok(());
    }
    let (scratch, registry, _) = registry_with_image(
        "mirrors",
        "mirrored/app",
        &[vec![Step::Write("/hello", b"hi")]],
    )?;
    let dead = format!("127.0.0.1:{}", free_port());
    let conf = format!(
        "[[registry]]\nprefix = \"example.invalid/app\"\nlocation = \"{addr}/mirrored/app\"\ninsecure = true\n\
         [[registry.mirror]]\nlocation = \"{dead}/mirrored/app\"\ninsecure = true\n\
         [[registry]]\nprefix = \"example.invalid/banned\"\nblocked = true\n\
         [[registry]]\nlocation = \"{dead}\"\ninsecure = true\n",
        addr = registry.addr
    );
    let mut config = test_config(&scratch.path().join("work"));
    config.registry_configuration_uri = Some(file_uri(scratch.path(), "r.conf", &conf));
    let (p, store) = recording_puller(config);
    // The mirror is down: the remapped location serves it.
    let out = p
        .pull("example.invalid/app:v1", &PathBuf::from("/run/b/m"))
        .await?;
    assert_eq!(out.source, format!("{}/mirrored/app:v1", registry.addr));

    let e = p
        .pull("example.invalid/banned/x:v1", &PathBuf::from("/run/b/n"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("blocked"), "{e}");

    // A registry that is down: a bounded number of attempts, then an error naming it.
    let started = std::time::Instant::now();
    let e = p
        .pull(&format!("{dead}/x/y:v1"), &PathBuf::from("/run/b/o"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ImageError::Transport { attempts: 3, .. }),
        "{e}"
    );
    assert!(
        e.to_string().contains(&dead) && e.to_string().contains("cannot connect"),
        "{e}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    assert!(store.installs.lock().unwrap().len() == 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn signature_policy_and_bad_bundle_refused_before_any_fetch() -> Result<()> {
    let scratch = Scratch::new("policy");
    let mut config = test_config(&scratch.path().join("work"));
    config.image_security_policy_uri = Some("kbs:///default/security-policy/test".into());
    let (p, store) = recording_puller(config);
    // The policy cannot be fetched (no KBS here): refused, nothing pulled unverified.
    let e = p
        .pull("127.0.0.1:1/a/b:v1", &PathBuf::from("/run/b/p"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ImageError::Resource {
                what: "image_security_policy_uri",
                ..
            }
        ),
        "{e}"
    );
    let p = puller(test_config(&scratch.path().join("work")), &store);
    for bad in ["relative/b", "/run/../etc", "/run/./b"] {
        let e = p
            .pull("127.0.0.1:1/a/b:v1", &PathBuf::from(bad))
            .await
            .unwrap_err();
        assert!(matches!(e, ImageError::Bundle { .. }), "{bad}: {e}");
    }
    assert!(store.installs.lock().unwrap().is_empty());
    Ok(())
}

fn base64_encode(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The registry and an image in it, for the policy tests.
async fn policy_puller(
    scratch: &Scratch,
    registry: &Registry,
    policy: &str,
) -> Result<(Puller, Arc<RecordingStore>)> {
    let mut config = insecure_config(scratch, &registry.addr, "work");
    config.image_security_policy_uri = Some(file_uri(scratch.path(), "policy.json", policy));
    let store = Arc::new(RecordingStore::default());
    Ok((puller(config, &store), store))
}

#[tokio::test(flavor = "multi_thread")]
async fn signature_policy_accepts_refuses_and_names_the_rule() -> Result<()> {
    if !tools_present() {
        return Ok(());
    }
    let (scratch, registry, _) = registry_with_image(
        "sigpolicy",
        "signed/app",
        &[vec![Step::Write("/hello", b"hi")]],
    )?;
    let image = format!("{}/signed/app:v1", registry.addr);
    run(Command::new("sh").arg("-c").arg(format!(
        "cd {} && openssl ecparam -name prime256v1 -genkey -noout -out cosign.key && \
         openssl ec -in cosign.key -pubout -out cosign.pub 2>/dev/null",
        scratch.path().display()
    )))?;
    let key = scratch.path().join("cosign.pub");

    // insecureAcceptAnything for this repository: pulled.
    let accept = format!(
        r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{"{}/signed":[{{"type":"insecureAcceptAnything"}}]}}}}}}"#,
        registry.addr
    );
    let (p, store) = policy_puller(&scratch, &registry, &accept).await?;
    p.pull(&image, &PathBuf::from("/run/b/s1")).await?;
    assert_eq!(store.installs.lock().unwrap().len(), 1);

    // The default rejects everything else: refused, naming the rule, nothing fetched.
    let (p, store) =
        policy_puller(&scratch, &registry, r#"{"default":[{"type":"reject"}]}"#).await?;
    refused_by_policy(
        &p,
        &image,
        &PathBuf::from("/run/b/s2"),
        &["default[0] reject"],
    )
    .await?;
    assert!(store.installs.lock().unwrap().is_empty());

    // A cosign key is required and the image is unsigned: refused, nothing fetched.
    let signed = format!(
        r#"{{"default":[{{"type":"sigstoreSigned","keyPath":"file://{}"}}]}}"#,
        key.display()
    );
    let (p, store) = policy_puller(&scratch, &registry, &signed).await?;
    refused_by_policy(&p, &image, &PathBuf::from("/run/b/s3"), &["sigstoreSigned"]).await?;
    assert!(store.installs.lock().unwrap().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pulled_image_is_an_overlay_rootfs_with_whiteouts_applied_and_collected_on_release()
-> Result<()> {
    if !ready() {
        return Ok(());
    }
    let (scratch, registry, _) = registry_with_image("overlay", "real/store", &whiteout_layers())?;
    let config = insecure_config(&scratch, &registry.addr, "work");
    let (p, store) = store_puller(config)?;
    let bundle = scratch.path().join("bundle");
    std::fs::create_dir_all(&bundle)?;
    let out = p
        .pull(&format!("{}/real/store:v1", registry.addr), &bundle)
        .await?;
    let rootfs = bundle.join("rootfs");
    assert_eq!(std::fs::read(rootfs.join("data/two"))?, b"two");
    assert!(!rootfs.join("etc/one").exists(), "the whiteout hides it");
    let ran = run(Command::new("chroot")
        .arg(&rootfs)
        .args(["/bin/busybox", "cat", "/data/two"]))?;
    assert_eq!(ran, "two");
    for d in &out.diff_ids {
        assert!(store.inner().contains(&d.to_string()));
    }
    p.release(&bundle)?;
    assert!(!rootfs.exists());
    for d in &out.diff_ids {
        assert!(!store.inner().contains(&d.to_string()), "{d} collected");
    }
    Ok(())
}

/// Makes every bundle state in the store look mounted a minute ago (past `REAP_GRACE`).
fn backdate_bundle_states(work: &std::path::Path) -> Result<()> {
    let then = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    for entry in std::fs::read_dir(work.join("overlay"))? {
        std::fs::File::open(entry?.path())?.set_modified(then)?;
    }
    Ok(())
}

/// The kata-agent removes a container with a plain `umount` of its rootfs, never telling the
/// CDH: the next collection (on the CDH's timer, or at the start of the next pull) sees the
/// mount gone and removes the image's layers from work_dir; pulling the image again fetches
/// them again and works.
#[tokio::test(flavor = "multi_thread")]
async fn layers_of_a_rootfs_unmounted_by_the_agent_are_collected_and_pulled_again() -> Result<()> {
    if !ready() {
        return Ok(());
    }
    let (scratch, registry, _) = registry_with_image(
        "reap",
        "reap/a",
        &[vec![Step::Busybox], vec![Step::Write("/etc/a", b"a")]],
    )?;
    let config = insecure_config(&scratch, &registry.addr, "work");
    let work = config.work_dir.clone();
    let (p, store) = store_puller(config)?;
    let image = format!("{}/reap/a:v1", registry.addr);
    let layers_in_store = |diff_ids: &[Digest]| {
        diff_ids
            .iter()
            .filter(|d| store.inner().contains(&d.to_string()))
            .count()
    };
    let x = scratch.path().join("bundle x");
    std::fs::create_dir_all(&x)?;
    let first = p.pull(&image, &x).await?;
    assert_eq!(first.fetched_layers, 2);
    assert_eq!(std::fs::read(x.join("rootfs/etc/a"))?, b"a");

    // Still mounted: a collection keeps everything.
    backdate_bundle_states(&work)?;
    assert_eq!(p.collect().await?, Some(0));
    assert_eq!(layers_in_store(&first.diff_ids), 2);

    // The agent's umount; the timer's collection.
    run(Command::new("umount").arg(x.join("rootfs")))?;
    assert_eq!(p.collect().await?, Some(1));
    assert_eq!(
        layers_in_store(&first.diff_ids),
        0,
        "layers removed from work_dir"
    );
    assert!(std::fs::read_dir(work.join("overlay"))?.next().is_none());

    // Pulled again into the same bundle: fetched again, mounted, readable.
    let again = p.pull(&image, &x).await?;
    assert_eq!((again.fetched_layers, again.reused_layers), (2, 0));
    assert_eq!(std::fs::read(x.join("rootfs/etc/a"))?, b"a");

    // Unmounted again; this time the next pull (into another bundle) collects first, so it
    // reuses nothing stale.
    run(Command::new("umount").arg(x.join("rootfs")))?;
    backdate_bundle_states(&work)?;
    let y = scratch.path().join("bundle-y");
    std::fs::create_dir_all(&y)?;
    let third = p.pull(&image, &y).await?;
    assert_eq!((third.fetched_layers, third.reused_layers), (2, 0));
    assert_eq!(std::fs::read(y.join("rootfs/etc/a"))?, b"a");
    assert_eq!(
        std::fs::read_dir(work.join("overlay"))?.count(),
        1,
        "only y's state is left"
    );
    p.release(&y)?;
    assert_eq!(layers_in_store(&third.diff_ids), 0);
    Ok(())
}
