//! The `peerpod-webhook` binary as a Deployment runs it: certificates in --cert-dir, settings
//! from the environment, reviews over HTTPS, a clean exit on SIGTERM; bad settings stop it at
//! start with the reason.

mod common;

use std::time::Duration;

use common::{Certs, Conn, TempDir, TestResult, client_config, container, patched, pod, review_of};
use serde_json::json;

fn free_port() -> Result<u16, std::io::Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[tokio::test]
async fn the_binary_serves_reviews_with_its_environment_and_stops_on_sigterm() -> TestResult {
    common::install_provider();
    let dir = TempDir::new("bin");
    let certs = Certs::generate("webhook");
    certs.write(&dir.0);
    let port = free_port()?;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_peerpod-webhook"))
        .arg("--bind-address")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--cert-dir")
        .arg(&dir.0)
        .env_clear()
        .env("TARGET_RUNTIMECLASS", "kata-remote-azure")
        .env("POD_VM_EXTENDED_RESOURCE", "kata.peerpods.io/vm-azure")
        .env("TLS_MIN_VERSION", "VersionTLS13")
        .kill_on_drop(true)
        .spawn()?;
    let addr = format!("127.0.0.1:{port}").parse()?;
    let mut conn = common::connect_when_up(addr, &certs.ca_pem, "the webhook").await?;
    let p = pod(
        Some("kata-remote-azure"),
        vec![],
        vec![container("c", &[("cpu", "1500m")], &[])],
    );
    let answer = conn.review(&review_of(p.clone())).await?.json();
    let out = patched(&p, &answer);
    assert_eq!(
        out["metadata"]["annotations"]["io.katacontainers.config.hypervisor.default_vcpus"],
        "2"
    );
    assert_eq!(
        out["spec"]["containers"][0]["resources"],
        json!({"requests": {"kata.peerpods.io/vm-azure": "1"}, "limits": {"kata.peerpods.io/vm-azure": "1"}})
    );
    // TLS_MIN_VERSION=VersionTLS13 reached the server.
    let tls12 = Conn::connect(
        addr,
        client_config(&certs.ca_pem, Some(&rustls::version::TLS12), None),
    )
    .await;
    assert!(tls12.is_err(), "a TLS 1.2 client got in");

    let pid = child.id().ok_or("no pid")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid)?),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await??;
    assert!(status.success(), "{status}");
    Ok(())
}

async fn start_fails(
    env: &[(&str, &str)],
    cert_dir: &std::path::Path,
) -> Result<String, common::BoxError> {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_peerpod-webhook"));
    cmd.arg("--bind-address")
        .arg(format!("127.0.0.1:{}", free_port()?))
        .arg("--cert-dir")
        .arg(cert_dir)
        .env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(10), cmd.output()).await??;
    assert!(!out.status.success(), "it started");
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn bad_settings_stop_the_binary_at_start_with_the_reason() -> TestResult {
    let dir = TempDir::new("bad");
    let e = start_fails(&[], &dir.0).await?;
    assert!(
        e.contains("tls.crt") && e.contains("mount the webhook's TLS Secret"),
        "{e}"
    );
    Certs::generate("webhook").write(&dir.0);
    let e = start_fails(&[("TLS_MIN_VERSION", "VersionTLS10")], &dir.0).await?;
    assert!(e.contains("TLS 1.0 and 1.1 are not supported"), "{e}");
    let e = start_fails(&[("TLS_CIPHER_SUITES", "TLS_RSA_WITH_RC4_128_SHA")], &dir.0).await?;
    assert!(
        e.contains("TLS_RSA_WITH_RC4_128_SHA") && e.contains("not offered"),
        "{e}"
    );
    Ok(())
}
