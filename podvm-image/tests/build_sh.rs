//! `podvm-image/build.sh` refuses a bad Secure Boot key or certificate before it builds
//! anything, naming the variable and the fix: one of the two alone, an encrypted key (sbsign
//! would wait for a pass phrase), a file that is no certificate, a certificate of another key.
//! Runs as root (the script's own requirement) with Debian's `ovmf` (its snakeoil key is an
//! encrypted key at hand) and openssl.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("build.sh")
}

fn build(env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(script());
    // Should a check let it through, the build stops at once: no binaries there.
    cmd.arg("--no-cargo")
        .env("PODVM_BIN_DIR", "/nonexistent/podvm-bin")
        .env_remove("PODVM_SB_KEY")
        .env_remove("PODVM_SB_CERT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("build.sh runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

#[test]
fn bad_secure_boot_keys_are_refused_before_anything_is_built() {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    let snakeoil = Path::new(peerpod_podvm::secure_boot::SNAKEOIL_KEY);
    let tools = Command::new("openssl").arg("version").output().is_ok()
        && Command::new("sbsign").arg("--help").output().is_ok()
        && snakeoil.is_file();
    if !root || !tools {
        let message = "SKIPPED: build.sh's Secure Boot checks need root, openssl, sbsigntool \
                       and ovmf (make deps)";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{message} (CI=true: a skip fails)");
        }
        eprintln!("\n*** {message} ***");
        return;
    }
    let dir = std::env::temp_dir().join(format!("podvm-build-sh-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch");
    for name in ["a", "b"] {
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                &format!("/CN=db {name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
            ],
            &dir,
        );
    }
    let (a_key, a_pem, b_pem) = (dir.join("a.key"), dir.join("a.pem"), dir.join("b.pem"));

    let cases: [(&[(&str, &Path)], &str); 5] = [
        (&[("PODVM_SB_KEY", &a_key)], "set both PODVM_SB_KEY"),
        (&[("PODVM_SB_CERT", &a_pem)], "set both PODVM_SB_KEY"),
        (
            &[("PODVM_SB_KEY", snakeoil), ("PODVM_SB_CERT", &a_pem)],
            "decrypt it first",
        ),
        (
            &[("PODVM_SB_KEY", &a_key), ("PODVM_SB_CERT", &a_key)],
            "is not a PEM X.509 certificate",
        ),
        (
            &[("PODVM_SB_KEY", &a_key), ("PODVM_SB_CERT", &b_pem)],
            "is not the certificate of PODVM_SB_KEY's key",
        ),
    ];
    for (env, expected) in cases {
        let out = build(env);
        assert!(!out.status.success(), "{env:?} was accepted");
        let err = stderr(&out);
        assert!(err.contains(expected), "{env:?}: {expected:?} not in {err}");
        assert!(
            !err.contains("cargo build"),
            "{env:?}: it started building: {err}"
        );
    }
    // The matching pair passes the checks: the script goes on and stops at the missing binaries.
    let out = build(&[("PODVM_SB_KEY", &a_key), ("PODVM_SB_CERT", &a_pem)]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("/nonexistent/podvm-bin") && !err.contains("PODVM_SB"),
        "a matching key and certificate were refused: {err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
