//! Images made by the real tools in the formats users push: zstd layers written by
//! `skopeo copy --dest-compress-format zstd`, and simple-signing signatures made by
//! `skopeo copy --sign-by` with GnuPG, served from an HTTP lookaside (busybox httpd) and
//! checked through the Puller's `signedBy` policy; cosign-format signatures (ECDSA P-256 made
//! by `openssl dgst`) stored in the registry at `sha256-<hex>.sig`, checked by `sigstoreSigned`.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::*;
use peerpod_image::Puller;
use peerpod_image::resources::NoResources;
use sha2::Digest as _;

/// Whether `tool` is installed; outside CI a missing one skips loudly, under `CI=true` fails.
fn have(tool: &str, package: &str) -> bool {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return true;
    }
    let message =
        format!("{tool} missing (Debian package {package}): run scripts/install-test-deps.sh");
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "{message} (CI=true: a missing tool fails)"
    );
    eprintln!("\n*** SKIPPED: {message} ***");
    false
}

/// Every entry under `root`: kind, mode, owner, and the content's sha256 or the link target.
fn tree(root: &Path) -> Result<BTreeMap<String, String>> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
            let path = entry?.path();
            let m = std::fs::symlink_metadata(&path)?;
            let what = if m.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&path)?.display())
            } else if m.is_dir() {
                todo.push(path.clone());
                "dir".to_string()
            } else {
                format!(
                    "file {}",
                    hex::encode(sha2::Sha256::digest(std::fs::read(&path)?))
                )
            };
            let rel = path.strip_prefix(root)?.display().to_string();
            out.insert(
                rel,
                format!("{what} mode {:o} {}:{}", m.mode(), m.uid(), m.gid()),
            );
        }
    }
    Ok(out)
}

/// The layers' media types in `repo:tag`'s manifest, as the registry serves it.
fn layer_media_types(registry: &Registry, repo_tag: &str) -> Result<Vec<String>> {
    let raw = run(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{}/{repo_tag}", registry.addr),
    ]))?;
    let m: serde_json::Value = serde_json::from_str(&raw)?;
    Ok(m["layers"]
        .as_array()
        .context("layers")?
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap_or_default().to_string())
        .collect())
}

/// The same image pushed by skopeo gzip-compressed and zstd-compressed: each pulled into its
/// own real layer store and mounted; the two root filesystems are the same file for file, and
/// the diff_ids (digests of the uncompressed layers) are equal.
#[tokio::test(flavor = "multi_thread")]
async fn zstd_image_from_skopeo_unpacks_identically_to_the_gzip_one() -> Result<()> {
    if !ready() {
        return Ok(());
    }
    let scratch = Scratch::new("zstd");
    // Two registries: skopeo would otherwise reuse the gzip blobs the registry already holds
    // for the same diff_ids instead of writing zstd ones.
    let registry = Registry::start(RegistryOptions::default())?;
    let zstd_registry = Registry::start(RegistryOptions::default())?;
    let layout = scratch.path().join("layout");
    build_image(
        &layout,
        "v1",
        &[
            vec![Step::Busybox],
            vec![
                Step::Write("/etc/conf", b"zstd and gzip"),
                Step::Seeded("/data/blob", 300_000, 7),
            ],
            vec![Step::Remove("/etc/conf")],
        ],
    )?;
    registry.push(&layout, "v1", "fmt/gzip", "v1", "oci")?;
    run(Command::new("skopeo")
        .args([
            "copy",
            "--insecure-policy",
            "--quiet",
            "--format",
            "oci",
            "--dest-tls-verify=false",
            "--dest-compress-format",
            "zstd",
        ])
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(format!("docker://{}/fmt/zstd:v1", zstd_registry.addr)))?;
    assert_eq!(
        layer_media_types(&zstd_registry, "fmt/zstd:v1")?,
        vec!["application/vnd.oci.image.layer.v1.tar+zstd"; 3],
        "skopeo wrote zstd layers"
    );
    assert_eq!(
        layer_media_types(&registry, "fmt/gzip:v1")?,
        vec!["application/vnd.oci.image.layer.v1.tar+gzip"; 3]
    );

    let mut roots = Vec::new();
    let mut outs = Vec::new();
    for (repo, registry) in [("gzip", &registry), ("zstd", &zstd_registry)] {
        let work = scratch.path().join(format!("work-{repo}"));
        let config = insecure_config(&scratch, &registry.addr, &format!("work-{repo}"));
        let store = Arc::new(peerpod_image::LayerDirStore::open(
            &work,
            Default::default(),
        )?);
        let p = Puller::new(config, Arc::new(NoResources), store)?;
        let bundle = scratch.path().join(format!("bundle-{repo}"));
        std::fs::create_dir_all(&bundle)?;
        let out = p
            .pull(&format!("{}/fmt/{repo}:v1", registry.addr), &bundle)
            .await?;
        assert_eq!((out.fetched_layers, out.reused_layers), (3, 0), "{repo}");
        let rootfs = bundle.join("rootfs");
        assert!(
            !rootfs.join("etc/conf").exists(),
            "{repo}: whiteout applied"
        );
        let ran = run(Command::new("chroot").arg(&rootfs).args([
            "/bin/busybox",
            "wc",
            "-c",
            "/data/blob",
        ]))?;
        assert!(ran.starts_with("300000 "), "{repo}: {ran}");
        roots.push(tree(&rootfs)?);
        outs.push(out);
        p.release(&bundle)?;
        assert!(!rootfs.exists(), "{repo}: unmounted on release");
    }
    assert_eq!(outs[0].diff_ids, outs[1].diff_ids);
    assert_ne!(outs[0].manifest_digest, outs[1].manifest_digest);
    assert!(roots[0].len() > 5, "{:?}", roots[0]);
    assert_eq!(roots[0], roots[1], "gzip and zstd root filesystems differ");
    Ok(())
}

/// A manifest that calls a gzip blob zstd (the digests all match): refused as not zstd,
/// nothing installed.
#[tokio::test(flavor = "multi_thread")]
async fn layer_whose_bytes_are_not_its_declared_zstd_is_refused() -> Result<()> {
    if !tools_present() {
        return Ok(());
    }
    let (scratch, registry, _) =
        registry_with_image("zstd-lie", "fmt/lie", &[vec![Step::Write("/a", b"a")]])?;
    let raw = run(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{}/fmt/lie:v1", registry.addr),
    ]))?;
    let store = Arc::new(RecordingStore::default());
    // Built first: it installs the process's rustls provider the test's client uses too.
    let p = Puller::new(
        insecure_config(&scratch, &registry.addr, "work"),
        Arc::new(NoResources),
        store.clone(),
    )?;
    let mut m: serde_json::Value = serde_json::from_str(&raw)?;
    m["layers"][0]["mediaType"] = "application/vnd.oci.image.layer.v1.tar+zstd".into();
    common::raw::put_manifest(
        &reqwest::Client::new(),
        &registry.addr,
        "fmt/lie",
        "zstd",
        common::raw::OCI_MANIFEST,
        m.to_string(),
    )
    .await?;
    let e = p
        .pull(
            &format!("{}/fmt/lie:zstd", registry.addr),
            &PathBuf::from("/run/b/lie"),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().to_lowercase().contains("zstd"), "{e}");
    assert!(store.installs.lock().unwrap().is_empty());
    Ok(())
}

/// A GnuPG home with one passphrase-less signing key.
struct Gpg {
    home: Scratch,
    fingerprint: String,
}

impl Gpg {
    fn new(name: &str) -> Result<Self> {
        let home = Scratch::new(&format!("gpg-{name}"));
        std::fs::set_permissions(
            home.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )?;
        let mut g = Self {
            home,
            fingerprint: String::new(),
        };
        run(g.cmd().args([
            "--quick-gen-key",
            &format!("{name} <{name}@example.test>"),
            "ed25519",
            "sign",
            "never",
        ]))?;
        let listing = run(g.cmd().args(["--with-colons", "--list-keys"]))?;
        g.fingerprint = listing
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .and_then(|l| l.trim_matches(':').rsplit(':').next())
            .context("no fingerprint")?
            .to_string();
        Ok(g)
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("gpg");
        c.env("GNUPGHOME", self.home.path()).args([
            "--batch",
            "--yes",
            "--no-tty",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
        ]);
        c
    }

    /// The public key, binary, written to `path`.
    fn export(&self, path: &Path) -> Result<()> {
        let out = self.cmd().args(["--export", &self.fingerprint]).output()?;
        if !out.status.success() || out.stdout.is_empty() {
            bail!("gpg --export: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::fs::write(path, out.stdout)?;
        Ok(())
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        // The agent gpg started for this home (gpgconf stops exactly that one).
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.home.path())
            .args(["--kill", "gpg-agent"])
            .output();
    }
}

/// `busybox httpd` serving a directory on 127.0.0.1: the lookaside.
struct Httpd {
    addr: String,
    child: Child,
}

impl Httpd {
    fn start(dir: &Path) -> Result<Self> {
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new(BUSYBOX)
            .args(["httpd", "-f", "-p", &addr, "-h"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("busybox httpd")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&addr).is_err() {
            if Instant::now() > deadline {
                bail!("busybox httpd did not listen on {addr}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self { addr, child })
    }
}

impl Drop for Httpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pushes `layout:v1` to `repo:v1`, signed with `gpg`'s key when given (skopeo writes the
/// signature into `sigs`, the lookaside's staging directory).
fn push_signed(
    registry: &Registry,
    layout: &Path,
    repo: &str,
    gpg: Option<&Gpg>,
    registries_d: &Path,
) -> Result<()> {
    let mut cmd = Command::new("skopeo");
    cmd.args([
        "copy",
        "--insecure-policy",
        "--quiet",
        "--format",
        "oci",
        "--dest-tls-verify=false",
    ])
    .arg("--registries.d")
    .arg(registries_d);
    if let Some(g) = gpg {
        cmd.env("GNUPGHOME", g.home.path())
            .args(["--sign-by", &g.fingerprint]);
    }
    cmd.arg(format!("oci:{}:v1", layout.display()))
        .arg(format!("docker://{}/{repo}:v1", registry.addr));
    run(&mut cmd).map(|_| ())
}

/// `skopeo copy --sign-by` signs with GnuPG into a lookaside served over HTTP; the Puller's
/// `signedBy` policy with the signer's key accepts it end to end. Refused, with nothing
/// installed: the same image under another signer's key, an unsigned image, and the signature
/// of one image copied next to another image's digest.
#[tokio::test(flavor = "multi_thread")]
async fn gpg_signed_image_accepted_wrong_key_unsigned_and_replayed_signature_refused() -> Result<()>
{
    if !tools_present() || !have("gpg", "gnupg") {
        return Ok(());
    }
    let scratch = Scratch::new("gpgsig");
    let registry = Registry::start(RegistryOptions::default())?;
    let layout = scratch.path().join("layout");
    build_image(&layout, "v1", &[vec![Step::Write("/signed", b"yes")]])?;
    let other_layout = scratch.path().join("other");
    build_image(&other_layout, "v1", &[vec![Step::Write("/other", b"no")]])?;

    let signer = Gpg::new("signer")?;
    let stranger = Gpg::new("stranger")?;
    let sigs = scratch.path().join("sigs");
    let registries_d = scratch.path().join("registries.d");
    std::fs::create_dir_all(&registries_d)?;
    std::fs::write(
        registries_d.join("default.yaml"),
        format!(
            "default-docker:\n  lookaside-staging: file://{}\n",
            sigs.display()
        ),
    )?;
    push_signed(&registry, &layout, "sig/app", Some(&signer), &registries_d)?;
    push_signed(
        &registry,
        &other_layout,
        "sig/unsigned",
        None,
        &registries_d,
    )?;
    push_signed(
        &registry,
        &other_layout,
        "sig/replayed",
        None,
        &registries_d,
    )?;
    let written: Vec<_> = std::fs::read_dir(sigs.join("sig"))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    assert_eq!(written.len(), 1, "skopeo signed one image: {written:?}");
    assert!(written[0].starts_with("app@sha256="), "{written:?}");
    let app_sig = sigs.join("sig").join(&written[0]).join("signature-1");
    assert!(app_sig.exists());

    // The replayed case: app's signature placed where the other image's would be.
    let raw = run(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{}/sig/replayed:v1", registry.addr),
    ]))?;
    let replayed_digest = peerpod_image::Digest::of(raw.as_bytes()).to_string();
    let replay_dir = sigs
        .join("sig")
        .join(format!("replayed@{}", replayed_digest.replace(':', "=")));
    std::fs::create_dir_all(&replay_dir)?;
    std::fs::copy(&app_sig, replay_dir.join("signature-1"))?;

    let httpd = Httpd::start(&sigs)?;
    let lookaside = file_uri(
        scratch.path(),
        "sigstore.yaml",
        &format!("default-docker:\n  lookaside: http://{}\n", httpd.addr),
    );
    let key_of = |g: &Gpg, name: &str| -> Result<String> {
        let p = scratch.path().join(name);
        g.export(&p)?;
        Ok(format!("file://{}", p.display()))
    };
    let policy = |key: &str| {
        format!(
            r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{"{}/sig":[{{"type":"signedBy","keyType":"GPGKeys","keyPath":"{}"}}]}}}}}}"#,
            registry.addr,
            key.trim_start_matches("file://")
        )
    };
    let puller_with = |key: &str| -> Result<(Puller, Arc<RecordingStore>)> {
        let mut config = insecure_config(&scratch, &registry.addr, "work");
        config.image_security_policy_uri =
            Some(file_uri(scratch.path(), "policy.json", &policy(key)));
        config.sigstore_config_uri = Some(lookaside.clone());
        Ok(recording_puller(config))
    };
    let signer_key = key_of(&signer, "signer.gpg")?;
    let stranger_key = key_of(&stranger, "stranger.gpg")?;

    // Signed by the key the policy names: pulled.
    let (p, store) = puller_with(&signer_key)?;
    let out = p
        .pull(
            &format!("{}/sig/app:v1", registry.addr),
            &PathBuf::from("/run/b/sig1"),
        )
        .await?;
    assert_eq!(out.fetched_layers, 1);
    assert_eq!(store.installs.lock().unwrap().len(), 1);
    assert!(
        written[0].ends_with(&out.manifest_digest.to_string().replace(':', "=")),
        "the signature skopeo made is for the digest pulled"
    );

    // Unsigned, and a signature replayed from another image: refused before any layer.
    for (repo, bundle) in [("unsigned", "sig2"), ("replayed", "sig3")] {
        refused_by_policy(
            &p,
            &format!("{}/sig/{repo}:v1", registry.addr),
            &PathBuf::from(format!("/run/b/{bundle}")),
            &["signedBy"],
        )
        .await?;
    }
    assert_eq!(
        store.installs.lock().unwrap().len(),
        1,
        "nothing more installed"
    );

    // The policy names another key: the real signature is refused, nothing installed.
    let (p, store) = puller_with(&stranger_key)?;
    refused_by_policy(
        &p,
        &format!("{}/sig/app:v1", registry.addr),
        &PathBuf::from("/run/b/sig4"),
        &["signedBy"],
    )
    .await?;
    assert!(store.installs.lock().unwrap().is_empty());
    Ok(())
}

/// A cosign signature of `repo@digest` as `cosign sign --key` stores it: a manifest at the tag
/// `sha256-<hex>.sig` whose layer is the simple-signing payload, signed (ECDSA P-256, SHA-256,
/// DER) by `openssl dgst` with `key`. `signed_digest` is the digest the payload names.
async fn push_cosign_signature(
    http: &reqwest::Client,
    registry: &Registry,
    repo: &str,
    at_digest: &str,
    signed_digest: &str,
    key: &Path,
    scratch: &Path,
) -> Result<()> {
    use base64::Engine;
    let payload = serde_json::json!({
        "critical": {
            "identity": {"docker-reference": format!("{}/{repo}", registry.addr)},
            "image": {"docker-manifest-digest": signed_digest},
            "type": "cosign container image signature"
        },
        "optional": null
    })
    .to_string()
    .into_bytes();
    let payload_file = scratch.join("payload.json");
    std::fs::write(&payload_file, &payload)?;
    let sig_file = scratch.join("payload.sig");
    run(Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .arg("-out")
        .arg(&sig_file)
        .arg(&payload_file))?;
    let signature = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&sig_file)?);
    let payload_len = payload.len();
    let payload_digest = common::raw::upload(http, &registry.addr, repo, payload).await?;
    let config = serde_json::json!({
        "architecture": "", "os": "", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [payload_digest]}
    })
    .to_string()
    .into_bytes();
    let config_len = config.len();
    let config_digest = common::raw::upload(http, &registry.addr, repo, config).await?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_len},
        "layers": [{
            "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
            "digest": payload_digest, "size": payload_len,
            "annotations": {"dev.cosignproject.cosign/signature": signature}
        }]
    });
    let tag = format!("{}.sig", at_digest.replace(':', "-"));
    common::raw::put_manifest(
        http,
        &registry.addr,
        repo,
        &tag,
        common::raw::OCI_MANIFEST,
        manifest.to_string(),
    )
    .await
}

/// Cosign-format signatures in the registry at `sha256-<hex>.sig`, signed by openssl with a
/// P-256 key: the Puller's `sigstoreSigned` policy with the public key accepts the signed image;
/// refused with nothing installed: the policy naming another key, an unsigned image, and a
/// signature whose payload names another image's digest stored at this image's tag.
#[tokio::test(flavor = "multi_thread")]
async fn cosign_signed_image_accepted_wrong_key_unsigned_and_foreign_payload_refused() -> Result<()>
{
    if !tools_present() {
        return Ok(());
    }
    let scratch = Scratch::new("cosign");
    let registry = Registry::start(RegistryOptions::default())?;
    let layout = scratch.path().join("layout");
    build_image(&layout, "v1", &[vec![Step::Write("/signed", b"cosign")]])?;
    build_image(
        &layout,
        "v2",
        &[vec![Step::Write("/other", b"signature replayed")]],
    )?;
    build_image(&layout, "v3", &[vec![Step::Write("/third", b"not signed")]])?;
    registry.push(&layout, "v1", "cos/app", "v1", "oci")?;
    registry.push(&layout, "v2", "cos/app", "foreign", "oci")?;
    registry.push(&layout, "v3", "cos/app", "unsigned", "oci")?;
    for name in ["signer", "stranger"] {
        run(Command::new("sh").arg("-c").arg(format!(
            "cd {} && openssl ecparam -name prime256v1 -genkey -noout -out {name}.key && \
             openssl ec -in {name}.key -pubout -out {name}.pub 2>/dev/null",
            scratch.path().display()
        )))?;
    }
    let digest_of = |tag: &str| -> Result<String> {
        let raw = run(Command::new("skopeo").args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{}/cos/app:{tag}", registry.addr),
        ]))?;
        Ok(peerpod_image::Digest::of(raw.as_bytes()).to_string())
    };
    let signed = digest_of("v1")?;
    let other = digest_of("foreign")?;

    let puller_with = |key: &str| -> Result<(Puller, Arc<RecordingStore>)> {
        let mut config = insecure_config(&scratch, &registry.addr, "work");
        config.image_security_policy_uri = Some(file_uri(
            scratch.path(),
            "policy.json",
            &format!(
                r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{"{}/cos":[{{"type":"sigstoreSigned","keyPath":"{}","signedIdentity":{{"type":"matchRepository"}}}}]}}}}}}"#,
                registry.addr,
                scratch.path().join(key).display()
            ),
        ));
        Ok(recording_puller(config))
    };
    // Built first: it installs the process's rustls provider the test's client uses too.
    let (p, store) = puller_with("signer.pub")?;
    let http = reqwest::Client::new();
    let key = scratch.path().join("signer.key");
    push_cosign_signature(
        &http,
        &registry,
        "cos/app",
        &signed,
        &signed,
        &key,
        scratch.path(),
    )
    .await?;
    // A genuine signature of v1, stored where v2's signature would be.
    push_cosign_signature(
        &http,
        &registry,
        "cos/app",
        &other,
        &signed,
        &key,
        scratch.path(),
    )
    .await?;

    let out = p
        .pull(
            &format!("{}/cos/app:v1", registry.addr),
            &PathBuf::from("/run/b/cos1"),
        )
        .await?;
    assert_eq!(out.manifest_digest.to_string(), signed);
    assert_eq!(store.installs.lock().unwrap().len(), 1);

    // "foreign" carries v1's genuine signature (its payload names v1's digest); "unsigned"
    // has no signature manifest at all.
    for tag in ["unsigned", "foreign"] {
        let e = refused_by_policy(
            &p,
            &format!("{}/cos/app:{tag}", registry.addr),
            &PathBuf::from(format!("/run/b/cos-{tag}")),
            &[],
        )
        .await?;
        let why = if tag == "unsigned" {
            "does not exist".to_string()
        } else {
            format!("the signature is for manifest {signed}")
        };
        assert!(e.to_string().contains(&why), "{tag}: {e}");
        assert!(e.to_string().contains("sigstoreSigned"), "{tag}: {e}");
    }
    assert_eq!(
        store.installs.lock().unwrap().len(),
        1,
        "nothing more installed"
    );

    let (p, store) = puller_with("stranger.pub")?;
    refused_by_policy(
        &p,
        &format!("{}/cos/app:v1", registry.addr),
        &PathBuf::from("/run/b/cos2"),
        &[],
    )
    .await?;
    assert!(store.installs.lock().unwrap().is_empty());
    Ok(())
}
