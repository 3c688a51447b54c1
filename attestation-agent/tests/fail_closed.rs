//! The attestation agent fails closed: outside a TEE it refuses to start unless the sample TEE is
//! configured; a vTPM that exists but fails is an error, not "another TEE"; a plain-HTTP KBS
//! needs an explicit opt-in; oversized KBS and IMDS replies are refused. And `[log] level`
//! takes any tracing filter, as upstream's.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use attestation_agent::AttestationAgent;
use attestation_agent::attester::{AzureOptions, DetectOptions, detect};
use peerpod_tests::cvm::Flavour;
use peerpod_tests::kbs::RunningKbs;
use peerpod_tests::scratch::ScratchDir;

mod common;
use common::*;

use peerpod_kbs_client::error_chain as chain;

/// Runs `attestation-agent -c <dir>/aa.toml <args>` without RUST_LOG: (success, stdout, stderr).
fn run(dir: &Path, toml: &str, args: &[&str]) -> (bool, String, String) {
    std::fs::write(dir.join("aa.toml"), toml).expect("aa.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_attestation-agent"))
        .arg("-c")
        .arg(dir.join("aa.toml"))
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("AA_KBC_PARAMS")
        .output()
        .expect("attestation-agent runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn no_tee_toml(dir: &Path, extra: &str) -> String {
    format!(
        "[peerpod]\ntpm = \"unix:{d}/no-tpm.sock\"\ntsm_root = \"{d}/no-tsm\"\n{extra}",
        d = dir.display()
    )
}

#[test]
fn outside_a_tee_the_sample_tee_needs_the_configuration() {
    let dir = ScratchDir::new("aa-no-tee-default").expect("scratch");
    let (ok, stdout, stderr) = run(dir.path(), &no_tee_toml(dir.path(), ""), &["tee"]);
    assert!(!ok, "started outside a TEE without allow_sample: {stdout}");
    assert!(
        stderr.contains("no TEE found") && stderr.contains("[peerpod] allow_sample = true"),
        "the error must name the fix: {stderr}"
    );
    let (ok, stdout, stderr) = run(
        dir.path(),
        &no_tee_toml(dir.path(), "allow_sample = true\n"),
        &["tee"],
    );
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "sample");
    assert!(stderr.contains("NO TEE FOUND"), "{stderr}");
}

/// A TPM on a Unix socket that answers every command with `TPM_RC_FAILURE`.
fn failing_tpm(path: &Path) -> std::thread::JoinHandle<()> {
    let listener = UnixListener::bind(path).expect("bind");
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            loop {
                let mut header = [0u8; 10];
                if conn.read_exact(&mut header).is_err() {
                    break;
                }
                let size = u32::from_be_bytes([header[2], header[3], header[4], header[5]]);
                let mut rest = vec![0u8; (size as usize).saturating_sub(10)];
                if conn.read_exact(&mut rest).is_err() {
                    break;
                }
                let failure = [0x80, 0x01, 0, 0, 0, 10, 0, 0, 0x01, 0x01];
                if conn.write_all(&failure).is_err() {
                    break;
                }
            }
        }
    })
}

#[test]
fn a_tpm_that_exists_but_fails_is_an_error_not_another_tee() {
    let dir = ScratchDir::new("aa-failing-tpm").expect("scratch");
    let socket = dir.path().join("tpm.sock");
    let _tpm = failing_tpm(&socket);
    let options = |tpm: String| DetectOptions {
        tsm_root: dir.path().join("no-tsm"),
        // Even with the sample TEE allowed: a failing vTPM must not become "not Azure".
        allow_sample: true,
        azure: AzureOptions {
            tpm,
            ..Default::default()
        },
    };
    let err = match detect(&options(format!("unix:{}", socket.display()))) {
        Ok(a) => panic!("a failing vTPM was taken for {}", a.tee()),
        Err(e) => chain(&e),
    };
    assert!(
        err.contains("HCL report") && err.contains("TPM_RC_FAILURE"),
        "{err}"
    );

    // A TPM device that exists but cannot be opened.
    let err = match detect(&options(format!("device:{}", dir.path().display()))) {
        Ok(a) => panic!("an unopenable vTPM was taken for {}", a.tee()),
        Err(e) => chain(&e),
    };
    assert!(err.contains("opening the vTPM"), "{err}");

    // No TPM at all is still "not Azure": with the sample TEE allowed, the sample.
    let sample =
        detect(&options(format!("unix:{}/none.sock", dir.path().display()))).expect("no TPM");
    assert_eq!(sample.tee(), "sample");
}

#[test]
fn log_level_takes_any_tracing_filter() {
    let dir = ScratchDir::new("aa-log-filter").expect("scratch");
    let (ok, _, stderr) = run(
        dir.path(),
        &format!(
            "[log]\nlevel = \"error,attestation_agent::attester=warn\"\n{}",
            no_tee_toml(dir.path(), "allow_sample = true\n")
        ),
        &["tee"],
    );
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("NO TEE FOUND"),
        "directive not applied: {stderr}"
    );
    let (ok, _, stderr) = run(
        dir.path(),
        &format!(
            "[log]\nlevel = \"off\"\n{}",
            no_tee_toml(dir.path(), "allow_sample = true\n")
        ),
        &["tee"],
    );
    assert!(ok, "{stderr}");
    assert!(stderr.is_empty(), "off still logged: {stderr}");
}

#[tokio::test]
async fn a_plain_http_kbs_needs_the_opt_in() {
    let kbs = RunningKbs::start(kbs_options(None), "127.0.0.1:0", None).expect("KBS");
    let mut config = aa_config(&kbs.url(), None);
    config.insecure_http = false;
    let err = match AttestationAgent::with_attester(
        &config,
        std::sync::Arc::new(attestation_agent::attester::Sample::default()),
        None,
    ) {
        Ok(_) => panic!("a plain-HTTP KBS was accepted without insecure_http"),
        Err(e) => chain(&e),
    };
    assert!(
        err.contains(&kbs.url()) && err.contains("[peerpod] insecure_http"),
        "{err}"
    );
    config.insecure_http = true;
    let reply = sample_aa(&config).get_token("kbs").await.expect("opted in");
    assert_eq!(use_token(&kbs, &reply).await, SECRET);

    // The binary says the same at start.
    let dir = ScratchDir::new("aa-plain-http").expect("scratch");
    let (ok, _, stderr) = run(
        dir.path(),
        &format!(
            "[token_configs.kbs]\nurl = \"{}\"\n{}",
            kbs.url(),
            no_tee_toml(dir.path(), "allow_sample = true\n")
        ),
        &["token"],
    );
    assert!(!ok);
    assert!(stderr.contains("insecure_http"), "{stderr}");
    // Opted in: it works, and says loudly what that costs.
    let (ok, stdout, stderr) = run(
        dir.path(),
        &format!(
            "[token_configs.kbs]\nurl = \"{}\"\n{}",
            kbs.url(),
            no_tee_toml(dir.path(), "allow_sample = true\ninsecure_http = true\n")
        ),
        &["token"],
    );
    assert!(ok, "{stderr}");
    assert_eq!(use_token(&kbs, stdout.as_bytes()).await, SECRET);
    assert!(
        stderr.contains("INSECURE") && stderr.contains("plain HTTP"),
        "{stderr}"
    );
}

/// An HTTP server on loopback answering every request with `body` (and `status`).
fn server(status: u16, body: Vec<u8>) -> peerpod_tests::http::ServerThread {
    let app = axum::Router::new().fallback(move || {
        let body = body.clone();
        async move {
            (
                axum::http::StatusCode::from_u16(status).expect("status"),
                [("content-type", "application/json")],
                body,
            )
        }
    });
    peerpod_tests::http::ServerThread::spawn("oversized", "127.0.0.1:0", move |l, stop| {
        peerpod_tests::http::serve_axum(l, app, stop)
    })
    .expect("server")
}

/// Valid JSON: `{"nonce": "n", <extra>, "padding": "xxxx…"}` of about `size` bytes.
fn padded_json(extra: &str, size: usize) -> Vec<u8> {
    format!(
        "{{\"nonce\": \"n\", {extra} \"padding\": \"{}\"}}",
        "x".repeat(size)
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_kbs_and_imds_replies_are_refused() {
    let limit = peerpod_kbs_client::MAX_KBS_REPLY;
    // A challenge a little over the cap: refused, not parsed.
    let big = server(200, padded_json("\"extra-params\": {},", limit + 1024));
    let config = aa_config(&format!("http://{}", big.addr()), None);
    let started = Instant::now();
    let err = sample_aa(&config)
        .get_token("kbs")
        .await
        .expect_err("too big");
    let text = chain(&err);
    assert!(
        text.contains(&format!("larger than {limit} bytes")),
        "{text}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));

    // An error body far over the cap is described, not buffered.
    let big_error = server(500, vec![b'e'; 3 * limit]);
    let mut config = aa_config(&format!("http://{}", big_error.addr()), None);
    config.kbs_attempts = 1;
    let text = chain(&sample_aa(&config).get_token("kbs").await.expect_err("500"));
    assert!(
        text.contains("500") && text.contains("larger than"),
        "{text}"
    );

    // IMDS: the simulated CVM's own VCEK reply, padded past the IMDS cap.
    let (_dir, cvm) = cvm(Flavour::Snp, "aa-imds-oversized");
    let real: serde_json::Value = peerpod_tests::http::client()
        .get(format!(
            "{}/metadata/THIM/amd/certification",
            cvm.imds_url()
        ))
        .header("Metadata", "true")
        .send()
        .await
        .expect("IMDS")
        .json()
        .await
        .expect("JSON");
    let mut padded = real.clone();
    padded["padding"] = serde_json::json!("x".repeat(peerpod_kbs_client::MAX_IMDS_REPLY));
    let imds = server(200, padded.to_string().into_bytes());
    let mut config = aa_config("http://unused", Some(&cvm));
    config.imds_url = format!("http://{}", imds.addr());
    let aa = AttestationAgent::new(&config, None).expect("AA");
    let text = chain(&aa.get_evidence(&[1; 64]).await.expect_err("too big"));
    assert!(
        text.contains(&format!(
            "larger than {} bytes",
            peerpod_kbs_client::MAX_IMDS_REPLY
        )),
        "{text}"
    );
    // The same reply without the padding is accepted: the cap, not the content, refused it.
    let fine = server(200, real.to_string().into_bytes());
    config.imds_url = format!("http://{}", fine.addr());
    let aa = AttestationAgent::new(&config, None).expect("AA");
    aa.get_evidence(&[2; 64]).await.expect("evidence");
}

/// IMDS never redirects: an IMDS answering 307 to the simulated CVM's real IMDS (which would
/// give a valid VCEK) is refused with the redirect named, not followed.
#[tokio::test]
async fn an_imds_redirect_is_not_followed() {
    let (_dir, cvm) = cvm(Flavour::Snp, "aa-imds-redirect");
    let real = cvm.imds_url();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let target = format!("{real}{uri}");
        async move { axum::response::Redirect::temporary(&target) }
    });
    let imds = peerpod_tests::http::ServerThread::spawn("imds", "127.0.0.1:0", move |l, stop| {
        peerpod_tests::http::serve_axum(l, app, stop)
    })
    .expect("server");
    let mut config = aa_config("http://unused", Some(&cvm));
    config.imds_url = format!("http://{}", imds.addr());
    let aa = AttestationAgent::new(&config, None).expect("AA");
    let text = chain(&aa.get_evidence(&[3; 64]).await.expect_err("redirected"));
    let to = cvm.imds_url();
    let origin = to.trim_end_matches('/');
    assert!(
        text.contains(&format!(
            "IMDS at http://{} answered 307 with a redirect to {origin}, not followed",
            imds.addr()
        )),
        "{text}"
    );
}
