//! An ocicrypt-encrypted image pulled through the `confidential-data-hub` binary: the layer's
//! key-encryption key lives only in the test KBS, released after the attestation agent (on a
//! simulated Azure SNP CVM) attests. With a KBS resource policy that refuses the pod, PullImage
//! fails and no plaintext of the encrypted layer exists anywhere under the CDH's work_dir or
//! the bundle.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "../../image/tests/common/mod.rs"]
mod image_fixtures;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;

use common::{Aa, Cdh, cdh_toml, code, ctx};
use image_fixtures::{Registry, RegistryOptions, Scratch, Step, build_image, run, tools_present};
use peerpod_protocols::cdh::api::ImagePullRequest;
use peerpod_protocols::cdh::api_ttrpc::ImagePullServiceClient;
use peerpod_tests::cvm::{CvmOptions, Flavour, SimulatedCvm};
use peerpod_tests::kbs::{KbsOptions, RunningKbs};
use sha2::Digest as _;

const KEK: [u8; 32] = [0x5e; 32];
const KID: &str = "kbs:///default/image-kek/app";
/// The content of the encrypted layer's file: found nowhere on disk unless decrypted.
const MARKER: &[u8] = b"plaintext-only-after-attestation 9c41e07d";

fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex_string(&sha2::Sha256::digest(b)))
}

fn hex_string(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Uploads `blob` to `repo` in the registry at `addr` (monolithic upload, with curl).
fn upload_blob(addr: &str, repo: &str, blob: &[u8], scratch: &Path) -> String {
    let digest = sha256(blob);
    let file = scratch.join("upload.bin");
    std::fs::write(&file, blob).unwrap();
    let headers = run(Command::new("curl").args([
        "-sS",
        "-f",
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-X",
        "POST",
        &format!("http://{addr}/v2/{repo}/blobs/uploads/"),
    ]))
    .unwrap();
    let location = headers
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("location")
                .then(|| v.trim().to_string())
        })
        .expect("upload location");
    let location = if location.starts_with('/') {
        format!("http://{addr}{location}")
    } else {
        location
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    run(Command::new("curl")
        .args([
            "-sS",
            "-f",
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
        ])
        .arg(format!("@{}", file.display()))
        .arg(format!("{location}{sep}digest={digest}")))
    .unwrap();
    digest
}

/// Pushes a two-layer image (busybox, then a file holding [`MARKER`]) and, as `repo:enc`, the
/// same image with the second layer ocicrypt-encrypted under [`KEK`] named [`KID`]; the
/// plaintext second layer is then deleted from the registry.
fn push_encrypted(registry: &Registry, repo: &str, dir: &Path) {
    let layout = dir.join("layout");
    build_image(
        &layout,
        "v1",
        &[
            vec![Step::Busybox],
            vec![Step::Write("/secret/data", MARKER)],
        ],
    )
    .unwrap();
    registry.push(&layout, "v1", repo, "v1", "oci").unwrap();
    let addr = &registry.addr;
    let raw = run(Command::new("curl").args([
        "-sS",
        "-f",
        "-H",
        "Accept: application/vnd.oci.image.manifest.v1+json",
        &format!("http://{addr}/v2/{repo}/manifests/v1"),
    ]))
    .unwrap();
    let mut manifest: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let plain_digest = manifest["layers"][1]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let hex = plain_digest.trim_start_matches("sha256:");
    let plain = std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap();
    let (cipher, annotations) = peerpod_image_crypt::testing::encrypt_layer(&plain, &KEK, KID);
    assert!(
        !cipher.windows(MARKER.len()).any(|w| w == MARKER),
        "the ciphertext hides the marker"
    );
    let cipher_digest = upload_blob(addr, repo, &cipher, dir);
    manifest["layers"][1] = serde_json::json!({
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
        "digest": cipher_digest,
        "size": cipher.len(),
        "annotations": annotations,
    });
    let body = dir.join("manifest.json");
    std::fs::write(&body, manifest.to_string()).unwrap();
    run(Command::new("curl")
        .args([
            "-sS",
            "-f",
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/vnd.oci.image.manifest.v1+json",
            "--data-binary",
        ])
        .arg(format!("@{}", body.display()))
        .arg(format!("http://{addr}/v2/{repo}/manifests/enc")))
    .unwrap();
    // Only the ciphertext of the secret layer stays in the registry.
    run(Command::new("curl").args([
        "-sS",
        "-f",
        "-X",
        "DELETE",
        &format!("http://{addr}/v2/{repo}/blobs/{plain_digest}"),
    ]))
    .unwrap();
    let status = run(Command::new("curl").args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{addr}/v2/{repo}/blobs/{plain_digest}"),
    ]))
    .unwrap();
    assert_eq!(
        status, "404",
        "the plaintext layer is gone from the registry"
    );
}

/// Every regular file under `root` whose bytes contain [`MARKER`].
fn files_with_marker(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(m) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if m.is_dir() {
                todo.push(path);
            } else if m.is_file()
                && std::fs::read(&path).is_ok_and(|b| b.windows(MARKER.len()).any(|w| w == MARKER))
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

fn image_section(dir: &Path, registry: &str) -> String {
    std::fs::write(
        dir.join("registries.conf"),
        format!("[[registry]]\nlocation = \"{registry}\"\ninsecure = true\n"),
    )
    .unwrap();
    format!(
        "[image]\nwork_dir = \"{d}/image-rs\"\nregistry_configuration_uri = \"file://{d}/registries.conf\"\n",
        d = dir.display()
    )
}

async fn pull(cdh: &Cdh, image: &str, bundle: &Path) -> ttrpc::Result<String> {
    ImagePullServiceClient::new(cdh.connect().await)
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

fn is_root() -> bool {
    run(Command::new("id").arg("-u")).is_ok_and(|u| u.trim() == "0")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_image_pulled_only_after_attestation_and_refused_pod_gets_no_plaintext() {
    if !tools_present() {
        return;
    }
    if run(Command::new("sh").args(["-c", "command -v curl"])).is_err() {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "curl missing (CI=true: a missing tool fails)"
        );
        eprintln!("\n*** SKIPPED: curl missing: run scripts/install-test-deps.sh ***");
        return;
    }
    if !is_root() {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "CI runs as root"
        );
        eprintln!("\n*** SKIPPED: overlay mounts need root ***");
        return;
    }
    let scratch = Scratch::new("cdh-encrypted");
    let dir = scratch.path();
    let registry = Registry::start(RegistryOptions::default()).unwrap();
    push_encrypted(&registry, "enc/app", dir);
    let image = format!("{}/enc/app:enc", registry.addr);

    // A pod the KBS releases the KEK to: pulled, decrypted, mounted.
    let ok_dir = dir.join("attested");
    std::fs::create_dir_all(&ok_dir).unwrap();
    let cvm = SimulatedCvm::start(CvmOptions::new(Flavour::Snp, &ok_dir)).expect("CVM");
    let mut options = KbsOptions::for_cvm(&cvm, None).expect("KBS options");
    options
        .resources
        .insert("default/image-kek/app".into(), KEK.to_vec());
    let stats = std::sync::Arc::clone(&options.stats);
    let kbs = RunningKbs::start(options, "127.0.0.1:0", None).expect("KBS");
    let aa = Aa::start(&ok_dir, &kbs.url(), &cvm).await;
    let cdh = Cdh::start(
        &ok_dir,
        &cdh_toml(
            &ok_dir,
            &kbs.url(),
            &aa.socket,
            &image_section(&ok_dir, &registry.addr),
        ),
    );
    let bundle = ok_dir.join("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    let digest = pull(&cdh, &image, &bundle)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", cdh.log_text()));
    assert!(digest.starts_with("sha256:"), "{digest}");
    assert_eq!(
        std::fs::read(bundle.join("rootfs/secret/data")).unwrap(),
        MARKER
    );
    assert!(bundle.join("rootfs/bin/busybox").is_file());
    assert!(stats.attestations.load(Ordering::Relaxed) >= 1, "attested");
    assert!(stats.resources.load(Ordering::Relaxed) >= 1, "KEK fetched");
    assert!(
        !cdh.log_text().contains(&hex_string(&KEK)),
        "the KEK is in no log"
    );
    let _ = run(Command::new("umount").arg(bundle.join("rootfs")));
    drop(cdh);
    drop(aa);
    drop(kbs);

    // A KBS whose resource policy refuses the pod: PullImage fails, nothing decrypted.
    let no_dir = dir.join("refused");
    std::fs::create_dir_all(&no_dir).unwrap();
    let cvm = SimulatedCvm::start(CvmOptions::new(Flavour::Snp, &no_dir)).expect("CVM");
    let mut options = KbsOptions::for_cvm(&cvm, None).expect("KBS options");
    options
        .resources
        .insert("default/image-kek/app".into(), KEK.to_vec());
    options.resource_policy = "package policy\nimport rego.v1\ndefault allow := false\n".into();
    let stats = std::sync::Arc::clone(&options.stats);
    let kbs = RunningKbs::start(options, "127.0.0.1:0", None).expect("KBS");
    let aa = Aa::start(&no_dir, &kbs.url(), &cvm).await;
    let cdh = Cdh::start(
        &no_dir,
        &cdh_toml(
            &no_dir,
            &kbs.url(),
            &aa.socket,
            &image_section(&no_dir, &registry.addr),
        ),
    );
    let bundle = no_dir.join("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    let e = pull(&cdh, &image, &bundle).await.unwrap_err();
    let message = format!("{e:?}");
    assert!(
        message.contains("is encrypted") && message.contains(KID),
        "names the encrypted layer and its KEK: {message}"
    );
    assert!(message.contains("resource policy denies"), "{message}");
    assert_eq!(
        code(&e),
        ttrpc::Code::PERMISSION_DENIED,
        "{e:?}\n{}",
        cdh.log_text()
    );
    assert!(
        stats.attestations.load(Ordering::Relaxed) >= 1,
        "it attested"
    );
    assert!(
        !bundle.join("rootfs").join("bin").exists(),
        "nothing mounted"
    );
    let leaked = files_with_marker(&no_dir);
    assert!(leaked.is_empty(), "plaintext on disk: {leaked:?}");
    let _ = run(Command::new("umount").arg(bundle.join("rootfs")));
}
