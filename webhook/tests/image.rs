//! The container image `webhook/image/build.sh` makes (`make webhook-image`): an OCI layout
//! whose blobs match their digests, a config that runs `/peerpod-webhook` as user 65532 with
//! 9443/tcp exposed, the same image in a docker-archive tarball, and the same digest when built
//! twice. Unpacked with `umoci unpack`, its root holds only the binaries, their libraries, the
//! CA bundle and passwd/group; both binaries run from it under `chroot` as the image's user: the
//! webhook serves a real AdmissionReview over TLS from the default certificate directory, and
//! the advertiser patches the API server stand-in's node through the default service-account
//! directory.
//!
//! The image is built here from this test profile's binaries (`--no-cargo`), or taken from
//! `$PEERPOD_WEBHOOK_IMAGE` (the output directory of `make webhook-image`, e.g.
//! `target/webhook-image`, relative to the workspace root). Needs root (chroot, chown) and umoci, skopeo and strip: without
//! them the tests print SKIPPED, and fail under CI=true.

mod common;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::apiserver::{ApiServer, NODE, TOKEN, a_node, wait_for};
use common::{BoxError, Certs, TempDir, TestResult, container, patched, pod};
use serde_json::{Value, json};
use sha2::Digest as _;

/// The image's user, as the manifests' `runAsUser` names it.
const UID: u32 = 65532;
/// Where the manifests' Deployment mounts the certificate (the binary's default --cert-dir).
const CERT_DIR: &str = "tmp/k8s-webhook-server/serving-certs";
/// Where Kubernetes mounts the service account (the advertiser's default).
const SA_DIR: &str = "var/run/secrets/kubernetes.io/serviceaccount";

/// `tool`'s path from this process's PATH (children run with a cleared environment).
fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

/// Whether the tools and privileges are here; otherwise a loud SKIPPED (a panic under CI=true).
fn can_run(test: &str) -> bool {
    let missing: Vec<&str> = ["umoci", "skopeo", "strip", "chroot", "tar"]
        .into_iter()
        .filter(|tool| which(tool).is_none())
        .collect();
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if missing.is_empty() && root {
        return true;
    }
    let message = format!(
        "{test} needs root and umoci, skopeo, strip, chroot, tar (missing: {}{}): run make deps \
         as root",
        missing.join(", "),
        if root { "" } else { "; not root" }
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message} (CI=true: a missing tool fails)");
    }
    let _ = std::io::stderr().write_all(format!("\n*** SKIPPED: {message} ***\n").as_bytes());
    false
}

/// An image output directory (`oci/`, `peerpod-webhook.tar`); removed on drop when built here.
struct Image {
    out: PathBuf,
    tag: String,
    built_here: bool,
    _dir: Option<TempDir>,
}

fn build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("image/build.sh")
}

/// Runs build.sh with the test profile's binaries into `out`.
fn run_build(out: &Path, extra_env: &[(&str, &str)]) -> Result<std::process::Output, BoxError> {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_peerpod-webhook"))
        .parent()
        .ok_or("the binary has no directory")?;
    assert_eq!(
        Some(bin_dir),
        Path::new(env!("CARGO_BIN_EXE_peerpod-vm-advertiser")).parent(),
        "both binaries come from one directory"
    );
    let mut cmd = Command::new(build_script());
    cmd.arg("--no-cargo")
        .env("WEBHOOK_IMAGE_BIN_DIR", bin_dir)
        .env("WEBHOOK_IMAGE_OUT", out)
        .env("SOURCE_DATE_EPOCH", "1764806400");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    Ok(cmd.output()?)
}

fn image() -> Result<Image, BoxError> {
    if let Some(out) = std::env::var_os("PEERPOD_WEBHOOK_IMAGE") {
        // Relative to the workspace root, where `make webhook-image` runs (tests run in webhook/).
        let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(out);
        let env = std::fs::read_to_string(out.join("image.env"))
            .map_err(|e| format!("PEERPOD_WEBHOOK_IMAGE={}: no image.env: {e}", out.display()))?;
        let tag = env
            .lines()
            .find_map(|l| l.strip_prefix("TAG="))
            .unwrap_or("latest")
            .to_owned();
        return Ok(Image {
            out,
            tag,
            built_here: false,
            _dir: None,
        });
    }
    let dir = TempDir::new("image");
    let out = dir.0.join("out");
    let run = run_build(&out, &[])?;
    if !run.status.success() {
        return Err(format!("build.sh failed: {}", String::from_utf8_lossy(&run.stderr)).into());
    }
    Ok(Image {
        out,
        tag: "latest".to_owned(),
        built_here: true,
        _dir: Some(dir),
    })
}

fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads a blob of the layout after checking its digest and size against the descriptor.
fn blob(layout: &Path, descriptor: &Value) -> Result<Vec<u8>, BoxError> {
    let digest = descriptor["digest"]
        .as_str()
        .ok_or("descriptor without digest")?;
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("not a sha256 digest: {digest}"))?;
    let bytes = std::fs::read(layout.join("blobs/sha256").join(hex))?;
    assert_eq!(
        sha256_hex(&bytes),
        hex,
        "blob {digest} does not match its digest"
    );
    assert_eq!(
        descriptor["size"].as_u64(),
        Some(u64::try_from(bytes.len())?),
        "blob {digest} size"
    );
    Ok(bytes)
}

/// The image's manifest and config, every blob's digest checked.
fn manifest_and_config(image: &Image) -> Result<(Value, Value), BoxError> {
    let layout = image.out.join("oci");
    let layout_file: Value = serde_json::from_slice(&std::fs::read(layout.join("oci-layout"))?)?;
    assert_eq!(layout_file["imageLayoutVersion"], "1.0.0");
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    let desc = index["manifests"]
        .as_array()
        .and_then(|m| {
            m.iter().find(|d| {
                d["annotations"]["org.opencontainers.image.ref.name"] == image.tag.as_str()
            })
        })
        .ok_or_else(|| format!("no manifest tagged {} in {index}", image.tag))?;
    assert_eq!(
        desc["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let manifest: Value = serde_json::from_slice(&blob(&layout, desc)?)?;
    let config: Value = serde_json::from_slice(&blob(&layout, &manifest["config"])?)?;
    let layers = manifest["layers"].as_array().ok_or("no layers")?;
    assert_eq!(layers.len(), 1, "one layer: {manifest}");
    for layer in layers {
        assert_eq!(
            layer["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        blob(&layout, layer)?;
    }
    Ok((manifest, config))
}

#[test]
fn the_image_runs_the_webhook_as_a_non_root_user_on_9443_and_builds_reproducibly() -> TestResult {
    if !can_run("the_image_runs_the_webhook_as_a_non_root_user_on_9443_and_builds_reproducibly") {
        return Ok(());
    }
    let image = image()?;
    let (_, config) = manifest_and_config(&image)?;
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["os"], "linux");
    let c = &config["config"];
    assert_eq!(c["User"], format!("{UID}:{UID}"), "{config}");
    assert_eq!(c["Entrypoint"], json!(["/peerpod-webhook"]), "{config}");
    assert!(c["Cmd"].is_null(), "{config}");
    assert_eq!(c["ExposedPorts"], json!({"9443/tcp": {}}), "{config}");
    assert_eq!(
        config["rootfs"]["diff_ids"].as_array().map(Vec::len),
        Some(1)
    );

    // The docker-archive holds the same image under the name the manifests use.
    let archive = image.out.join("peerpod-webhook.tar");
    let listed = Command::new("tar")
        .arg("-xOf")
        .arg(&archive)
        .arg("manifest.json")
        .output()?;
    assert!(listed.status.success(), "{listed:?}");
    let docker: Value = serde_json::from_slice(&listed.stdout)?;
    // The normalised form of the manifests' `peerpod-webhook:latest`.
    assert_eq!(
        docker[0]["RepoTags"],
        json!([format!("docker.io/library/peerpod-webhook:{}", image.tag)]),
        "{docker}"
    );
    let inspected = Command::new("skopeo")
        .args(["inspect", "--config"])
        .arg(format!("docker-archive:{}", archive.display()))
        .output()?;
    assert!(inspected.status.success(), "{inspected:?}");
    let docker_config: Value = serde_json::from_slice(&inspected.stdout)?;
    for key in ["User", "Entrypoint", "ExposedPorts"] {
        assert_eq!(docker_config["config"][key], c[key], "{key}");
    }
    assert_eq!(docker_config["rootfs"], config["rootfs"]);

    if image.built_here {
        // Built again from the same binaries: the same manifest, the same archive.
        let again = TempDir::new("image-again");
        let run = run_build(&again.0, &[])?;
        assert!(run.status.success(), "{run:?}");
        for file in ["oci/index.json", "peerpod-webhook.tar"] {
            assert_eq!(
                std::fs::read(image.out.join(file))?,
                std::fs::read(again.0.join(file))?,
                "{file} differs between two builds"
            );
        }
    }
    Ok(())
}

#[test]
fn a_hostile_tag_or_a_missing_binary_stops_the_build_naming_it() -> TestResult {
    if !can_run("a_hostile_tag_or_a_missing_binary_stops_the_build_naming_it") {
        return Ok(());
    }
    let dir = TempDir::new("image-bad");
    let out = dir.0.join("out");
    let run = run_build(&out, &[("WEBHOOK_IMAGE_TAG", "../../escape")])?;
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("'../../escape' is not a valid tag"),
        "{stderr}"
    );
    assert!(!out.exists(), "something was written for a refused tag");

    let run = Command::new(build_script())
        .arg("--no-cargo")
        .env("WEBHOOK_IMAGE_BIN_DIR", &dir.0)
        .env("WEBHOOK_IMAGE_OUT", &out)
        .output()?;
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("peerpod-webhook is missing") && stderr.contains("cargo build --release"),
        "{stderr}"
    );
    assert!(!out.exists(), "something was written without binaries");
    Ok(())
}

/// `umoci unpack`s the image into a new directory; returns it with the runtime config.
fn unpack(image: &Image) -> Result<(TempDir, Value), BoxError> {
    let dir = TempDir::new("unpacked");
    let bundle = dir.0.join("bundle");
    let run = Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:{}", image.out.join("oci").display(), image.tag))
        .arg(&bundle)
        .output()?;
    assert!(run.status.success(), "{run:?}");
    let runtime: Value = serde_json::from_slice(&std::fs::read(bundle.join("config.json"))?)?;
    Ok((dir, runtime))
}

fn rootfs(dir: &TempDir) -> PathBuf {
    dir.0.join("bundle/rootfs")
}

/// Every non-directory below `root`, relative.
fn files(root: &Path, dir: &Path, out: &mut BTreeSet<String>) -> Result<(), BoxError> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        let path = entry.path();
        let mode = meta.permissions().mode();
        let rel = path.strip_prefix(root)?.display().to_string();
        assert_eq!(mode & 0o6000, 0, "{rel} is setuid/setgid");
        if meta.is_dir() {
            if rel != "tmp" {
                assert_eq!(mode & 0o002, 0, "{rel} is world-writable");
            }
            files(root, &path, out)?;
        } else {
            assert_eq!(mode & 0o022, 0, "{rel} is writable by others");
            assert_eq!(meta.uid(), 0, "{rel} is not root's");
            out.insert(rel);
        }
    }
    Ok(())
}

/// Runs `args` in the unpacked root as the runtime config's user, like a runtime would.
fn in_image(
    rootfs: &Path,
    runtime: &Value,
    args: &[&str],
) -> Result<tokio::process::Command, BoxError> {
    let uid = runtime["process"]["user"]["uid"].as_u64().ok_or("no uid")?;
    let gid = runtime["process"]["user"]["gid"].as_u64().ok_or("no gid")?;
    let mut cmd = tokio::process::Command::new(which("chroot").ok_or("no chroot")?);
    cmd.arg(format!("--userspec={uid}:{gid}"))
        .arg(rootfs)
        .args(args)
        .env_clear()
        .kill_on_drop(true);
    Ok(cmd)
}

fn uid_of(pid: u32) -> Result<String, BoxError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .ok_or("no Uid line")?
        .split_whitespace()
        .next()
        .ok_or("empty Uid line")?
        .to_owned())
}

fn free_port() -> Result<u16, std::io::Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn sigterm_and_wait(child: &mut tokio::process::Child) -> TestResult {
    let pid = child.id().ok_or("no pid")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid)?),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await??;
    assert!(status.success(), "{status}");
    Ok(())
}

#[tokio::test]
async fn the_unpacked_image_serves_a_review_over_tls_as_its_user() -> TestResult {
    if !can_run("the_unpacked_image_serves_a_review_over_tls_as_its_user") {
        return Ok(());
    }
    common::install_provider();
    let image = image()?;
    let (dir, runtime) = unpack(&image)?;
    let root = rootfs(&dir);
    assert_eq!(runtime["process"]["user"]["uid"], UID, "{runtime}");
    assert_eq!(runtime["process"]["user"]["gid"], UID, "{runtime}");
    assert_eq!(runtime["process"]["args"], json!(["/peerpod-webhook"]));

    // A minimal root: the binaries, the libraries the loader needs, CA bundle, passwd, group.
    let mut found = BTreeSet::new();
    files(&root, &root, &mut found)?;
    let expected = [
        "peerpod-webhook",
        "peerpod-vm-advertiser",
        "etc/passwd",
        "etc/group",
        "etc/ssl/certs/ca-certificates.crt",
    ];
    for f in expected {
        assert!(found.contains(f), "{f} missing from {found:?}");
    }
    let others: Vec<&String> = found
        .iter()
        .filter(|f| !expected.contains(&f.as_str()))
        .collect();
    assert!(
        others.iter().all(|f| {
            let name = f.rsplit('/').next().unwrap_or(f);
            (f.starts_with("lib/") || f.starts_with("lib64/") || f.starts_with("usr/lib"))
                && name.contains(".so")
        }),
        "more than the binaries' libraries: {others:?}"
    );
    assert!(!root.join("bin/sh").exists(), "the image has a shell");
    let passwd = std::fs::read_to_string(root.join("etc/passwd"))?;
    assert!(
        passwd
            .lines()
            .any(|l| l.starts_with(&format!("nonroot:x:{UID}:{UID}:"))),
        "{passwd}"
    );

    // The certificate where the Deployment mounts it: the binary's default --cert-dir.
    let certs = Certs::generate("webhook");
    let cert_dir = root.join(CERT_DIR);
    std::fs::create_dir_all(&cert_dir)?;
    certs.write(&cert_dir);
    // A key only root can read: the image's user cannot start with it, and says which file.
    std::fs::set_permissions(
        cert_dir.join("tls.key"),
        std::fs::Permissions::from_mode(0o600),
    )?;
    let port = free_port()?;
    let bind = format!("127.0.0.1:{port}");
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        in_image(
            &root,
            &runtime,
            &["/peerpod-webhook", "--bind-address", &bind],
        )?
        .output(),
    )
    .await??;
    assert!(
        !out.status.success(),
        "it started with a key it cannot read"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tls.key"), "{stderr}");
    // Readable by the image's user (as a Secret volume with fsGroup or defaultMode 0644 is).
    std::fs::set_permissions(
        cert_dir.join("tls.key"),
        std::fs::Permissions::from_mode(0o644),
    )?;

    let mut child = in_image(
        &root,
        &runtime,
        &["/peerpod-webhook", "--bind-address", &bind],
    )?
    .env("TARGET_RUNTIMECLASS", "kata-remote")
    .spawn()?;
    let addr = bind.parse()?;
    let mut conn = common::connect_when_up(addr, &certs.ca_pem, "the webhook in the image").await?;
    let pid = child.id().ok_or("no pid")?;
    assert_eq!(uid_of(pid)?, UID.to_string(), "the webhook's uid");
    let p = pod(
        Some("kata-remote"),
        vec![],
        vec![container(
            "c",
            &[("cpu", "1500m"), ("memory", "100Mi")],
            &[],
        )],
    );
    let answer = conn.review(&common::review_of(p.clone())).await?.json();
    let out = patched(&p, &answer);
    let annotations = &out["metadata"]["annotations"];
    assert_eq!(
        annotations["io.katacontainers.config.hypervisor.default_vcpus"],
        "2"
    );
    assert_eq!(
        annotations["io.katacontainers.config.hypervisor.default_memory"],
        "100"
    );
    assert_eq!(
        out["spec"]["containers"][0]["resources"],
        json!({"requests": {"kata.peerpods.io/vm": "1"}, "limits": {"kata.peerpods.io/vm": "1"}})
    );
    sigterm_and_wait(&mut child).await
}

#[tokio::test]
async fn the_advertiser_in_the_image_advertises_and_withdraws_as_its_user() -> TestResult {
    if !can_run("the_advertiser_in_the_image_advertises_and_withdraws_as_its_user") {
        return Ok(());
    }
    let image = image()?;
    let (dir, runtime) = unpack(&image)?;
    let root = rootfs(&dir);
    let help = in_image(&root, &runtime, &["/peerpod-vm-advertiser", "--help"])?
        .output()
        .await?;
    assert!(help.status.success(), "{help:?}");
    assert!(String::from_utf8_lossy(&help.stdout).contains("NODE_NAME"));

    let api = ApiServer::start(a_node()).await;
    // The service account where Kubernetes mounts it: the advertiser's default directory.
    let sa = root.join(SA_DIR);
    std::fs::create_dir_all(&sa)?;
    std::fs::write(sa.join("token"), format!("{TOKEN}\n"))?;
    std::fs::write(sa.join("ca.crt"), &api.certs.ca_pem)?;
    let port = api.url.rsplit(':').next().ok_or("port")?.to_owned();
    // No /etc/hosts in the image (the kubelet mounts one): the service IP, as in a cluster.
    let mut child = in_image(&root, &runtime, &["/peerpod-vm-advertiser"])?
        .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        .env("KUBERNETES_SERVICE_PORT", &port)
        .env("NODE_NAME", NODE)
        .env("POD_NAME", "peerpod-vm-advertiser-q8z4d")
        .env("PEERPODS_LIMIT_PER_NODE", "4")
        .spawn()?;
    wait_for(&api, "the capacity", |n| {
        n["status"]["capacity"]["kata.peerpods.io/vm"] == "4"
    })
    .await?;
    assert_eq!(uid_of(child.id().ok_or("no pid")?)?, UID.to_string());
    sigterm_and_wait(&mut child).await?;
    let node = api.node();
    assert!(
        node["status"]["capacity"]
            .get("kata.peerpods.io/vm")
            .is_none(),
        "{node}"
    );
    Ok(())
}
