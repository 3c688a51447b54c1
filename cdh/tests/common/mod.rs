//! Helpers shared by the CDH's integration tests: the attestation agent in this process on its
//! real socket, the CDH binary on its socket with its log, a cdh.toml for them, and ttrpc calls.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use attestation_agent::AttestationAgent;
use attestation_agent::config::{AaConfig, KbsSection};
use peerpod_protocols::cdh::api::{GetResourceRequest, UnsealSecretInput};
use peerpod_protocols::cdh::api_ttrpc::{GetResourceServiceClient, SealedSecretServiceClient};
use peerpod_protocols::cdh::keyprovider::KeyProviderKeyWrapProtocolInput;
use peerpod_protocols::cdh::keyprovider_ttrpc::KeyProviderServiceClient;
use peerpod_tests::cvm::SimulatedCvm;
use ttrpc::context::{self, Context};

pub(crate) fn ctx() -> Context {
    context::with_timeout(Duration::from_secs(60).as_nanos() as i64)
}

pub(crate) fn code(e: &ttrpc::Error) -> ttrpc::Code {
    match e {
        ttrpc::Error::RpcStatus(s) => s.code(),
        other => panic!("not a status: {other:?}"),
    }
}

/// The attestation agent, in this process, serving its real socket.
pub(crate) struct Aa {
    pub(crate) socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Aa {
    pub(crate) async fn start(dir: &Path, kbs_url: &str, cvm: &SimulatedCvm) -> Self {
        let config = AaConfig {
            kbs: Some(KbsSection {
                url: kbs_url.to_string(),
                cert: None,
                tee_key_algorithm: Default::default(),
            }),
            tpm: cvm.tpm_spec(),
            imds_url: cvm.imds_url(),
            tsm_root: "/nonexistent-tsm".into(),
            allow_sample: false,
            insecure_http: true,
            kbs_request_timeout: Duration::from_secs(5),
            kbs_attempts: 1,
            enable_eventlog: true,
            eventlog_path: dir.join("aa-eventlog"),
            ..AaConfig::default()
        };
        let aa = Arc::new(AttestationAgent::new(&config, None).expect("attestation agent"));
        let socket = dir.join("aa.sock");
        let addr = format!("unix://{}", socket.display());
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            attestation_agent::server::serve(&addr, aa, async {
                let _ = rx.await;
            })
            .await
            .expect("AA serves");
        });
        // The socket file exists from bind(), before listen(): wait for a connect to succeed
        // (a connection refused in between made tests fail under load).
        let started = Instant::now();
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the AA does not accept on {}",
                socket.display()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Self {
            socket,
            stop: Some(tx),
        }
    }
}

impl Drop for Aa {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// The CDH binary on `dir/cdh.sock`, logging JSON (everything, at debug) to `dir/cdh.log`.
pub(crate) struct Cdh {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Cdh {
    pub(crate) fn start(dir: &Path, toml: &str) -> Self {
        std::fs::write(dir.join("cdh.toml"), toml).expect("cdh.toml");
        let socket = dir.join("cdh.sock");
        let log = dir.join("cdh.log");
        let child = Command::new(env!("CARGO_BIN_EXE_confidential-data-hub"))
            .arg("-c")
            .arg(dir.join("cdh.toml"))
            .args(["--log-format", "json"])
            .env("RUST_LOG", "debug")
            .env_remove("AA_KBC_PARAMS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("confidential-data-hub starts");
        let mut cdh = Self { child, socket, log };
        let started = Instant::now();
        // A connect, not the socket file: the file exists before listen(), and a stopped CDH's
        // file stays behind.
        while std::os::unix::net::UnixStream::connect(&cdh.socket).is_err() {
            if let Ok(Some(status)) = cdh.child.try_wait() {
                panic!("the CDH exited ({status}):\n{}", cdh.log_text());
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the CDH does not accept on its socket:\n{}",
                cdh.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        cdh
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) async fn connect(&self) -> ttrpc::r#async::Client {
        ttrpc::r#async::Client::connect(&format!("unix://{}", self.socket.display()))
            .await
            .expect("connect to the CDH")
    }
}

impl Drop for Cdh {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn cdh_toml(dir: &Path, kbs_url: &str, aa_socket: &Path, extra: &str) -> String {
    format!(
        "socket = \"unix://{dir}/cdh.sock\"\n{extra}\n[kbc]\nname = \"cc_kbc\"\nurl = \"{kbs_url}\"\n\n\
         [aa]\naa_socket = \"unix://{aa}\"\n\n[peerpod]\ncredentials_root = \"{dir}/cdh-root\"\n\
         sealed_secret_key_dir = \"{dir}/keys\"\nrequest_timeout_secs = 5\n\
         insecure_http = true\nsealed_secret_verification_keys = [\"kbs:///default/sign/\"]\n",
        dir = dir.display(),
        aa = aa_socket.display()
    )
}

pub(crate) async fn get(client: &GetResourceServiceClient, uri: &str) -> ttrpc::Result<Vec<u8>> {
    client
        .get_resource(
            ctx(),
            &GetResourceRequest {
                ResourcePath: uri.into(),
                ..Default::default()
            },
        )
        .await
        .map(|r| r.Resource)
}

pub(crate) async fn unseal(
    client: &SealedSecretServiceClient,
    secret: &str,
) -> ttrpc::Result<Vec<u8>> {
    client
        .unseal_secret(
            ctx(),
            &UnsealSecretInput {
                secret: secret.as_bytes().to_vec(),
                ..Default::default()
            },
        )
        .await
        .map(|r| r.plaintext)
}

/// UnWrapKey with `request` (the key provider's JSON input); the reply's JSON bytes.
pub(crate) async fn unwrap_key(
    client: &ttrpc::r#async::Client,
    request: &serde_json::Value,
) -> ttrpc::Result<Vec<u8>> {
    KeyProviderServiceClient::new(client.clone())
        .un_wrap_key(
            ctx(),
            &KeyProviderKeyWrapProtocolInput {
                KeyProviderKeyWrapProtocolInput: request.to_string().into_bytes(),
                ..Default::default()
            },
        )
        .await
        .map(|r| r.KeyProviderKeyWrapProtocolOutput)
}
