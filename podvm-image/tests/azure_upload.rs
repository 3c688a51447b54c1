//! `podvm-image/azure-upload.sh`: the VHD check Azure's rules need (a fixed VHD whose virtual
//! size is a whole number of MiB) on VHDs made by `qemu-img` as build.sh makes them and on
//! broken ones, then the dry run's commands. The built image's own VHD is checked when
//! `target/podvm-image/out/podvm.vhd` exists.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use std::process::{Command, Output};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("azure-upload.sh")
}

fn run(args: &[&str]) -> Output {
    Command::new(script())
        .args(args)
        .env_remove("AZURE_SUBSCRIPTION_ID")
        .output()
        .expect("azure-upload.sh runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A scratch directory for this test, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("podvm-azure-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether qemu-img is here; without it the test is skipped loudly (a failure under CI=true).
fn have_qemu_img() -> bool {
    if Command::new("qemu-img").arg("--version").output().is_ok() {
        return true;
    }
    let message = "SKIPPED: qemu-img is missing (apt-get install qemu-utils)";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message} (CI=true: a skip fails)");
    }
    eprintln!("\n*** {message} ***");
    false
}

/// The dry run on `vhd` with a whole Azure environment (version 1.2.3) and `extra` variables;
/// no `az` on the path, as a dry run must not need it.
fn dry_run(vhd: &Path, extra: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(script());
    cmd.arg(vhd)
        .env("AZURE_SUBSCRIPTION_ID", "0000-sub")
        .env("AZURE_RESOURCE_GROUP", "rg1")
        .env("AZURE_REGION", "eastus")
        .env("AZURE_STORAGE_ACCOUNT", "acct1")
        .env("IMAGE_VERSION", "1.2.3")
        .env("PATH", "/usr/bin:/bin");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.output().expect("azure-upload.sh runs")
}

/// A raw disk of `bytes` converted by qemu-img with `options` (`-O vpc -o ...`).
fn vhd(dir: &Path, name: &str, bytes: u64, options: &str) -> PathBuf {
    let raw = dir.join(format!("{name}.raw"));
    let file = std::fs::File::create(&raw).expect("raw disk");
    file.set_len(bytes).expect("raw disk size");
    let out = dir.join(format!("{name}.vhd"));
    let status = Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "vpc", "-o", options])
        .arg(&raw)
        .arg(&out)
        .status()
        .expect("qemu-img runs");
    assert!(status.success(), "qemu-img convert {options}");
    out
}

#[test]
fn a_fixed_vhd_of_whole_mebibytes_passes_and_others_are_refused_naming_why() {
    if !have_qemu_img() {
        return;
    }
    let dir = Scratch::new("check");
    let fixed = vhd(&dir.0, "fixed", 3 << 20, "subformat=fixed,force_size");
    let out = run(&["--check-only", fixed.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("virtual size 3 MiB"), "{}", text(&out));

    let dynamic = vhd(&dir.0, "dynamic", 3 << 20, "subformat=dynamic");
    let out = run(&["--check-only", dynamic.to_str().expect("utf-8 path")]);
    assert!(!out.status.success());
    // A dynamic VHD has its footer copy at the start, and its end is not the disk's size.
    assert!(
        text(&out).contains("not fixed") || text(&out).contains("footer"),
        "{}",
        text(&out)
    );

    let odd = vhd(
        &dir.0,
        "odd",
        (3 << 20) + 4096,
        "subformat=fixed,force_size",
    );
    let out = run(&["--check-only", odd.to_str().expect("utf-8 path")]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("not a whole number of MiB"),
        "{}",
        text(&out)
    );

    let raw = dir.0.join("fixed.raw");
    let out = run(&["--check-only", raw.to_str().expect("utf-8 path")]);
    assert!(!out.status.success());
    assert!(text(&out).contains("no VHD footer"), "{}", text(&out));

    // A footer whose size field was altered: not the file's size.
    let mut bytes = std::fs::read(&fixed).expect("read the VHD");
    let at = bytes.len() - 512 + 48;
    bytes[at + 7] ^= 0x10;
    let altered = dir.0.join("altered.vhd");
    std::fs::write(&altered, &bytes).expect("write");
    let out = run(&["--check-only", altered.to_str().expect("utf-8 path")]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("is not the file size"),
        "{}",
        text(&out)
    );

    let out = run(&[
        "--check-only",
        dir.0.join("missing.vhd").to_str().expect("utf-8"),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("no such file"), "{}", text(&out));
}

#[test]
fn the_dry_run_prints_the_page_blob_gallery_and_image_id_and_runs_nothing() {
    if !have_qemu_img() {
        return;
    }
    let dir = Scratch::new("dry");
    let fixed = vhd(&dir.0, "fixed", 2 << 20, "subformat=fixed,force_size");
    let out = dry_run(&fixed, &[]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "az storage blob upload",
        "--type page",
        "--name podvm-1.2.3.vhd",
        "az sig image-definition create",
        "--features SecurityType=ConfidentialVmSupported",
        "--hyper-v-generation V2",
        "--os-state Generalized",
        "az sig image-version create",
        "--os-vhd-uri https://acct1.blob.core.windows.net/podvm/podvm-1.2.3.vhd",
        "AZURE_IMAGE_ID=\"/subscriptions/0000-sub/resourceGroups/rg1/providers/Microsoft.Compute/galleries/peerpods/images/peerpod-podvm/versions/1.2.3\"",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing from:\n{all}"
        );
    }
    assert!(all.contains("dry run"), "{all}");
}

#[test]
fn a_secure_boot_certificate_becomes_the_image_versions_uefi_db_and_a_bad_one_is_refused() {
    if !have_qemu_img() {
        return;
    }
    let dir = Scratch::new("sb");
    let fixed = vhd(&dir.0, "fixed", 2 << 20, "subformat=fixed,force_size");
    let (key, cert) = (dir.0.join("db.key"), dir.0.join("db.pem"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=peerpod test db"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(made.status.success(), "{}", text(&made));
    let der = Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(der.status.success());
    let out = dry_run(&fixed, &[("AZURE_SB_CERT", &cert)]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "--features SecurityType=TrustedLaunchAndConfidentialVmSupported",
        "az rest --method put --url https://management.azure.com/subscriptions/0000-sub/resourceGroups/rg1/providers/Microsoft.Compute/galleries/peerpods/images/peerpod-podvm/versions/1.2.3\\?api-version=2023-07-03",
        "ENABLE_SECURE_BOOT=\"true\"",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing from:\n{all}"
        );
    }
    assert!(
        !stdout.contains("az sig image-version create"),
        "the CLI cannot set UEFI keys:\n{all}"
    );
    let body: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.0.join("image-version-1.2.3.json")).expect("the body file"),
    )
    .expect("the body is JSON");
    let uefi = &body["properties"]["securityProfile"]["uefiSettings"];
    assert_eq!(
        uefi["signatureTemplateNames"],
        serde_json::json!(["NoSignatureTemplate"]),
        "only the given certificate is trusted by default"
    );
    let db = &uefi["additionalSignatures"]["db"][0];
    assert_eq!(db["type"], "x509");
    assert_eq!(
        db["value"][0].as_str(),
        Some(
            base64::engine::general_purpose::STANDARD
                .encode(&der.stdout)
                .as_str()
        ),
        "the db holds the certificate's DER"
    );
    assert_eq!(
        body["properties"]["storageProfile"]["osDiskImage"]["source"]["uri"],
        "https://acct1.blob.core.windows.net/podvm/podvm-1.2.3.vhd"
    );

    // Two templates are listed in order; a name that is not a word (a glob, a quote) is refused.
    let two = dry_run(
        &fixed,
        &[
            ("AZURE_SB_CERT", &cert),
            (
                "AZURE_SB_TEMPLATES",
                Path::new("NoSignatureTemplate,MicrosoftUefiCertificateAuthorityTemplate"),
            ),
        ],
    );
    assert!(two.status.success(), "{}", text(&two));
    let body: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.0.join("image-version-1.2.3.json")).expect("the body file"),
    )
    .expect("the body is JSON");
    assert_eq!(
        body["properties"]["securityProfile"]["uefiSettings"]["signatureTemplateNames"],
        serde_json::json!([
            "NoSignatureTemplate",
            "MicrosoftUefiCertificateAuthorityTemplate"
        ])
    );
    for hostile in ["*", "No\"Signature", "a b", "NoSignatureTemplate,,x"] {
        let out = dry_run(
            &fixed,
            &[
                ("AZURE_SB_CERT", &cert),
                ("AZURE_SB_TEMPLATES", Path::new(hostile)),
            ],
        );
        assert!(
            !out.status.success(),
            "{hostile:?} accepted: {}",
            text(&out)
        );
        assert!(text(&out).contains("AZURE_SB_TEMPLATES"), "{}", text(&out));
    }

    // Not a certificate (the key): refused, naming the variable.
    let out = dry_run(&fixed, &[("AZURE_SB_CERT", &key)]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("AZURE_SB_CERT") && text(&out).contains("not a PEM X.509 certificate"),
        "{}",
        text(&out)
    );
}

#[test]
fn the_built_image_vhd_passes_the_check() {
    let vhd = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/podvm-image/out/podvm.vhd");
    if !vhd.exists() {
        eprintln!(
            "\n*** SKIPPED: {} is not built (make podvm); the check ran on qemu-img's VHDs only ***",
            vhd.display()
        );
        return;
    }
    let out = run(&["--check-only", vhd.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "{}", text(&out));
    eprintln!("{}", text(&out));
}
