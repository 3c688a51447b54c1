//! The `attestation-agent` binary serving `attestation_agent.AttestationAgentService` on a real
//! Unix socket, called by a ttrpc client as the kata agent and the CDH call it: every method,
//! runtime measurements replayed from the event log against the vTPM's PCR 23, initdata bound
//! at start and over ttrpc, a clean stop on SIGTERM, a restart that neither extends PCR 8 again
//! nor loses the log, concurrent GetToken calls against a stalled KBS answered
//! DEADLINE_EXCEEDED within `attestation_deadline_secs` after one handshake — and a bare SEV-SNP
//! guest through a configfs-tsm provider.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use attestation_agent::attester::{DetectOptions, Tsm, TsmProvider, detect};
use attestation_agent::eventlog;
use base64::Engine;
use peerpod_policy::initdata::InitData;
use peerpod_protocols::aa::attestation_agent::{
    BindInitDataRequest, ExtendRuntimeMeasurementRequest, GetAdditionalEvidenceRequest,
    GetAdditionalTeesRequest, GetEvidenceRequest, GetTeeTypeRequest, GetTokenRequest,
    RuntimeMeasurementResult,
};
use peerpod_protocols::aa::attestation_agent_ttrpc::AttestationAgentServiceClient;
use peerpod_tee::tdx::TdQuote;
use peerpod_tests::cvm::Flavour;
use peerpod_tests::cvm::platform::{SnpChip, SnpConfig, TdxConfig, TdxPlatform};
use peerpod_tests::kbs::RunningKbs;
use peerpod_tpm::{PcrBank, Tpm};
use serde_json::{Value, json};
use ttrpc::context::{self, Context};

mod common;
use common::*;

/// The binary, serving on a socket in `dir`; its log (JSON lines) in `dir/aa-<n>.log`.
struct Served {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Served {
    fn start(dir: &Path, run: u32, args: &[&str]) -> Self {
        let socket = dir.join("aa.sock");
        let log = dir.join(format!("aa-{run}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_attestation-agent"))
            .arg("-c")
            .arg(dir.join("aa.toml"))
            .arg("-a")
            .arg(format!("unix://{}", socket.display()))
            .args(["--log-format", "json"])
            .args(args)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("attestation-agent starts");
        let mut served = Self { child, socket, log };
        let started = Instant::now();
        while !served.socket.exists() {
            if let Ok(Some(status)) = served.child.try_wait() {
                panic!(
                    "attestation-agent exited ({status}):\n{}",
                    served.log_text()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no socket after 20 s:\n{}",
                served.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        served
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn client(&self) -> AttestationAgentServiceClient {
        let c = ttrpc::r#async::Client::connect(&format!("unix://{}", self.socket.display()))
            .await
            .expect("connect to the socket");
        AttestationAgentServiceClient::new(c)
    }

    /// SIGTERM, then the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(killed.success());
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no exit 10 s after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ctx() -> Context {
    context::with_timeout(Duration::from_secs(30).as_nanos() as i64)
}

fn code(e: &ttrpc::Error) -> ttrpc::Code {
    match e {
        ttrpc::Error::RpcStatus(s) => s.code(),
        other => panic!("not a status: {other:?}"),
    }
}

fn pcr(spec: &str, index: u8) -> [u8; 32] {
    let mut tpm = Tpm::open(spec).expect("vTPM");
    let value = tpm
        .pcr_read(PcrBank::Sha256, &[index])
        .expect("PCR read")
        .pop()
        .expect("value");
    value.as_slice().try_into().expect("32 bytes")
}

async fn measure(client: &AttestationAgentServiceClient, domain: &str, content: &str) -> i32 {
    let reply = client
        .extend_runtime_measurement(
            ctx(),
            &ExtendRuntimeMeasurementRequest {
                Domain: domain.into(),
                Operation: "pull-image".into(),
                Content: content.into(),
                ..Default::default()
            },
        )
        .await
        .expect("ExtendRuntimeMeasurement");
    reply.Result.value()
}

fn assert_log_replays(path: &Path, spec: &str, entries: usize) {
    let log = eventlog::parse(path, &std::fs::read(path).expect("event log")).expect("parses");
    assert_eq!(log.len(), entries, "entries in the event log");
    assert!(log.iter().all(|e| e.register == 23), "default register");
    assert_eq!(
        eventlog::replay(&log, 23, [0; 32]),
        pcr(spec, 23),
        "the event log replays to the vTPM's PCR 23"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_every_method_over_its_socket() {
    let (dir, cvm) = cvm(Flavour::Snp, "aa-service");
    let doc = initdata("sha384");
    let digest = InitData::parse(doc.as_bytes()).expect("initdata").digest();
    let mut options = kbs_options(Some(&cvm));
    options.reference_values.insert(
        "init_data".into(),
        json!([hex::encode(digest.azure_vtpm_pcr8())]),
    );
    let stats = Arc::clone(&options.stats);
    let kbs = RunningKbs::start(options, "127.0.0.1:0", None).expect("KBS");
    let eventlog_path = dir.path().join("state/aael");
    std::fs::write(dir.path().join("initdata.toml"), &doc).expect("initdata file");
    std::fs::write(
        dir.path().join("aa.toml"),
        format!(
            "[token_configs.kbs]\nurl = \"{}\"\n\n[eventlog_config]\nenable_eventlog = true\n\n\
             [peerpod]\ntpm = \"{}\"\nimds_url = \"{}\"\ntsm_root = \"/nonexistent-tsm\"\n\
             allow_sample = false\ninsecure_http = true\neventlog_path = \"{}\"\n",
            kbs.url(),
            cvm.tpm_spec(),
            cvm.imds_url(),
            eventlog_path.display()
        ),
    )
    .expect("aa.toml");
    let initdata_arg = dir.path().join("initdata.toml");
    let initdata_arg = initdata_arg.to_str().expect("path");
    let aa = Served::start(dir.path(), 1, &["-t", initdata_arg]);
    let client = aa.client().await;

    // Initdata was bound at start: PCR 8 holds its first 32 bytes' extension.
    let pcr8 = pcr(&cvm.tpm_spec(), 8);
    assert_eq!(pcr8, digest.azure_vtpm_pcr8());

    let tee = client
        .get_tee_type(ctx(), &GetTeeTypeRequest::default())
        .await
        .expect("GetTeeType");
    assert_eq!(tee.tee, "az-snp-vtpm");

    let evidence = client
        .get_evidence(
            ctx(),
            &GetEvidenceRequest {
                RuntimeData: vec![0x5a; 64],
                ..Default::default()
            },
        )
        .await
        .expect("GetEvidence");
    let v: Value = serde_json::from_slice(&evidence.Evidence).expect("evidence JSON");
    assert_eq!(v["version"], 2);
    assert_eq!(v["tpm_quote"]["pcrs"].as_array().map(Vec::len), Some(24));
    let err = client
        .get_evidence(
            ctx(),
            &GetEvidenceRequest {
                RuntimeData: vec![0; 65],
                ..Default::default()
            },
        )
        .await
        .expect_err("65 bytes of report data");
    assert_eq!(code(&err), ttrpc::Code::INVALID_ARGUMENT, "{err:?}");

    // Tokens: one attestation serves both calls; the reply unlocks the resource.
    let token_request = GetTokenRequest {
        TokenType: "kbs".into(),
        ..Default::default()
    };
    let first = client
        .get_token(ctx(), &token_request)
        .await
        .expect("GetToken");
    let second = client
        .get_token(ctx(), &token_request)
        .await
        .expect("GetToken again");
    assert_eq!(first.Token, second.Token, "the cached token is reused");
    assert_eq!(stats.attestations.load(Ordering::Relaxed), 1);
    assert_eq!(use_token(&kbs, &first.Token).await, SECRET);
    let err = client
        .get_token(
            ctx(),
            &GetTokenRequest {
                TokenType: "vault".into(),
                ..Default::default()
            },
        )
        .await
        .expect_err("unknown token type");
    assert_eq!(code(&err), ttrpc::Code::INVALID_ARGUMENT, "{err:?}");

    // Runtime measurements go to PCR 23 and the event log replays to it.
    let spec = cvm.tpm_spec();
    assert_eq!(
        measure(&client, "github.com", "image-a").await,
        RuntimeMeasurementResult::OK as i32
    );
    assert_eq!(
        measure(&client, "example.org", "image b with spaces").await,
        RuntimeMeasurementResult::OK as i32
    );
    assert_log_replays(&eventlog_path, &spec, 2);
    let err = client
        .extend_runtime_measurement(
            ctx(),
            &ExtendRuntimeMeasurementRequest {
                Domain: "two words".into(),
                Operation: "op".into(),
                Content: "c".into(),
                ..Default::default()
            },
        )
        .await
        .expect_err("a domain with a space");
    assert_eq!(code(&err), ttrpc::Code::INVALID_ARGUMENT, "{err:?}");

    // BindInitData: the same digest again is fine, another is refused.
    client
        .bind_init_data(
            ctx(),
            &BindInitDataRequest {
                Digest: digest.as_bytes().to_vec(),
                ..Default::default()
            },
        )
        .await
        .expect("the bound digest again");
    let err = client
        .bind_init_data(
            ctx(),
            &BindInitDataRequest {
                Digest: vec![0x42; 32],
                ..Default::default()
            },
        )
        .await
        .expect_err("other initdata");
    assert_eq!(code(&err), ttrpc::Code::FAILED_PRECONDITION, "{err:?}");
    assert_eq!(pcr(&spec, 8), pcr8, "a refused digest changes nothing");

    let tees = client
        .get_additional_tees(ctx(), &GetAdditionalTeesRequest::default())
        .await
        .expect("GetAdditionalTees");
    assert!(tees.additional_tees.is_empty());
    let extra = client
        .get_additional_evidence(ctx(), &GetAdditionalEvidenceRequest::default())
        .await
        .expect("GetAdditionalEvidence");
    assert!(extra.Evidence.is_empty());

    // SIGTERM: a clean exit that removes the socket.
    drop(client);
    let socket = aa.socket.clone();
    let log_one = aa.log.clone();
    let status = aa.stop();
    assert!(status.success(), "exit status {status}");
    assert!(!socket.exists(), "the socket is removed");

    // A restart binds the same initdata without extending PCR 8 again and appends to the log.
    let aa = Served::start(dir.path(), 2, &["-t", initdata_arg]);
    assert_eq!(pcr(&spec, 8), pcr8, "restart must not extend PCR 8 again");
    let client = aa.client().await;
    assert_eq!(
        measure(&client, "github.com", "image-c").await,
        RuntimeMeasurementResult::OK as i32
    );
    assert_log_replays(&eventlog_path, &spec, 3);
    let token = serde_json::from_slice::<Value>(&first.Token).expect("JSON")["token"]
        .as_str()
        .expect("token")
        .to_string();
    let key_pem = serde_json::from_slice::<Value>(&first.Token).expect("JSON")["tee_keypair"]
        .as_str()
        .expect("key")
        .to_string();
    let logs = format!(
        "{}{}",
        std::fs::read_to_string(&log_one).expect("log"),
        aa.log_text()
    );
    assert!(logs.contains("attestation agent serving"), "{logs}");
    for (what, secret) in [
        ("token", token.as_str()),
        ("TEE key", key_pem.lines().nth(1).expect("PEM body")),
        ("resource", std::str::from_utf8(SECRET).expect("text")),
    ] {
        assert!(!logs.contains(secret), "the {what} leaked into the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_initdata_at_start_stops_the_binary_with_the_reason() {
    let (dir, cvm) = cvm(Flavour::Tdx, "aa-service-wrong");
    std::fs::write(
        dir.path().join("aa.toml"),
        format!(
            "[peerpod]\ntpm = \"{}\"\nimds_url = \"{}\"\ntsm_root = \"/nonexistent-tsm\"\n",
            cvm.tpm_spec(),
            cvm.imds_url()
        ),
    )
    .expect("aa.toml");
    let bound = InitData::parse(initdata("sha256").as_bytes())
        .expect("initdata")
        .digest();
    let mut tpm = Tpm::open(&cvm.tpm_spec()).expect("vTPM");
    tpm.pcr_extend(8, PcrBank::Sha256, &bound.azure_vtpm_extend_value())
        .expect("the host's launch binds one initdata");
    drop(tpm);
    let other = "version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n\"x\" = \"y\"\n";
    std::fs::write(dir.path().join("other.toml"), other).expect("initdata");
    let out = Command::new(env!("CARGO_BIN_EXE_attestation-agent"))
        .arg("-c")
        .arg(dir.path().join("aa.toml"))
        .arg("-a")
        .arg(format!("unix://{}/aa.sock", dir.path().display()))
        .arg("--initdata-toml")
        .arg(dir.path().join("other.toml"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the initdata does not match this TEE") && stderr.contains("PCR 8"),
        "{stderr}"
    );
}

/// A user-space stand-in for the kernel's configfs-tsm: every report directory gets its
/// attributes, and report data written to `inblob` comes back in `outblob` (and `auxblob`) as
/// `make` produces them — a report signed by the simulated SNP chip, or a TD quote.
struct FakeTsm {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn aux_table(vcek: &[u8]) -> Vec<u8> {
    // VCEK GUID 63da758d-e664-4564-adc5-f4b93be8accd, mixed-endian as in the GHCB spec.
    let guid: [u8; 16] = [
        0x8d, 0x75, 0xda, 0x63, 0x64, 0xe6, 0x64, 0x45, 0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac,
        0xcd,
    ];
    let mut t = guid.to_vec();
    t.extend_from_slice(&48u32.to_le_bytes());
    t.extend_from_slice(&(vcek.len() as u32).to_le_bytes());
    t.extend_from_slice(&[0; 24]);
    t.extend_from_slice(vcek);
    t
}

fn write_atomically(path: &Path, data: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

impl FakeTsm {
    fn start(
        root: &Path,
        provider: &'static str,
        make: impl Fn([u8; 64]) -> (Vec<u8>, Vec<u8>) + Send + 'static,
    ) -> Self {
        std::fs::create_dir_all(root).expect("root");
        let (root, stop) = (root.to_path_buf(), Arc::new(AtomicBool::new(false)));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
                    let d = entry.path();
                    if !d.join("provider").exists() {
                        write_atomically(&d.join("generation"), b"0\n");
                        write_atomically(&d.join("outblob"), b"");
                        write_atomically(&d.join("provider"), format!("{provider}\n").as_bytes());
                    }
                    let inblob = std::fs::read(d.join("inblob")).unwrap_or_default();
                    let done = std::fs::metadata(d.join("outblob")).map(|m| m.len() > 0);
                    if inblob.len() == 64 && done.ok() == Some(false) {
                        let data: [u8; 64] = inblob.try_into().expect("64");
                        let (out, aux) = make(data);
                        write_atomically(&d.join("generation"), b"1\n");
                        write_atomically(&d.join("auxblob"), &aux);
                        write_atomically(&d.join("outblob"), &out);
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeTsm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_snp_through_configfs_tsm() {
    let dir = peerpod_tests::scratch::ScratchDir::new("aa-tsm").expect("scratch");
    let root = dir.path().join("tsm/report");
    let host_data = [0x3c; 32];
    let chip = SnpChip::new(SnpConfig {
        host_data,
        ..SnpConfig::default()
    })
    .expect("chip");
    let measurement = chip.config().measurement;
    let aux = aux_table(&chip.vcek_der().expect("VCEK"));
    let _tsm = FakeTsm::start(&root, "sev_guest", move |data| {
        (chip.report(data).to_bytes().to_vec(), aux.clone())
    });

    // Detection: no vTPM, a sev_guest provider → snp.
    let attester = detect(&DetectOptions {
        tsm_root: root.clone(),
        allow_sample: false,
        azure: attestation_agent::attester::AzureOptions {
            tpm: format!("unix:{}/no-tpm.sock", dir.path().display()),
            ..Default::default()
        },
    })
    .expect("detected");
    assert_eq!(attester.tee(), "snp");
    assert_eq!(Tsm::probe(&root), Some(TsmProvider::SevGuest));

    let data: Vec<u8> = (0u8..64).collect();
    let v = attester.evidence(&data).await.expect("evidence");
    let report = &v["attestation_report"];
    let bytes = |field: &str| -> Vec<u8> {
        serde_json::from_value(report[field].clone()).unwrap_or_else(|e| panic!("{field}: {e}"))
    };
    assert_eq!(bytes("report_data"), data);
    assert_eq!(bytes("measurement"), measurement.to_vec());
    assert_eq!(bytes("host_data"), host_data.to_vec());
    // Current firmware: version 3, with the CPUID fields Trustee picks the AMD chain by.
    assert_eq!(report["version"], 3);
    let milan = peerpod_tee::snp::Generation::Milan.cpuid();
    assert_eq!(
        [
            &report["cpuid_fam_id"],
            &report["cpuid_mod_id"],
            &report["cpuid_step"]
        ],
        [&json!(milan[0]), &json!(milan[1]), &json!(milan[2])]
    );
    assert_eq!(v["cert_chain"][0]["cert_type"], "VCEK");

    attester
        .bind_init_data(&host_data)
        .await
        .expect("HOSTDATA matches");
    let err = attester
        .bind_init_data(&[0x11; 48])
        .await
        .expect_err("HOSTDATA differs");
    assert!(err.to_string().contains("HOSTDATA"), "{err}");
    let err = attester.evidence(&[0; 65]).await.expect_err("too long");
    assert!(err.to_string().contains("at most 64"), "{err}");
}

#[test]
fn no_tee_and_no_sample_is_an_error_that_says_what_to_check() {
    let dir = peerpod_tests::scratch::ScratchDir::new("aa-no-tee").expect("scratch");
    let options = DetectOptions {
        tsm_root: dir.path().join("none"),
        allow_sample: false,
        azure: attestation_agent::attester::AzureOptions {
            tpm: format!("unix:{}/no-tpm.sock", dir.path().display()),
            ..Default::default()
        },
    };
    let err = match detect(&options) {
        Ok(a) => panic!("detected {}", a.tee()),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("sample"), "{err}");
    let sample = detect(&DetectOptions {
        allow_sample: true,
        ..options
    })
    .expect("sample allowed");
    assert_eq!(sample.tee(), "sample");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_tdx_through_configfs_tsm() {
    let dir = peerpod_tests::scratch::ScratchDir::new("aa-tsm-tdx").expect("scratch");
    let root = dir.path().join("tsm/report");
    let digest = InitData::parse(initdata("sha384").as_bytes())
        .expect("initdata")
        .digest();
    let mut config = TdxConfig::default();
    config.measurements.mr_config_id = digest.tdx_mrconfigid();
    let platform = TdxPlatform::new(config).expect("TDX");
    let _tsm = FakeTsm::start(&root, "tdx_guest", move |data| {
        let report = platform.td_report(data).to_bytes();
        (platform.quote(&report).expect("quote"), Vec::new())
    });

    // TDX comes first in detection, before any vTPM.
    let attester = detect(&DetectOptions {
        tsm_root: root.clone(),
        allow_sample: false,
        azure: attestation_agent::attester::AzureOptions {
            tpm: format!("unix:{}/no-tpm.sock", dir.path().display()),
            ..Default::default()
        },
    })
    .expect("detected");
    assert_eq!(attester.tee(), "tdx");
    let data = [0x42u8; 64];
    let v = attester.evidence(&data).await.expect("evidence");
    assert!(v["cc_eventlog"].is_null());
    let quote = base64::engine::general_purpose::STANDARD
        .decode(v["quote"].as_str().expect("quote"))
        .expect("base64");
    let quote = TdQuote::parse(&quote).expect("a TD quote");
    assert_eq!(quote.body.report_data, data);
    attester
        .bind_init_data(digest.as_bytes())
        .await
        .expect("MRCONFIGID holds the sha384 digest");
    let err = attester
        .bind_init_data(&[0x11; 32])
        .await
        .expect_err("MRCONFIGID differs");
    assert!(err.to_string().contains("MRCONFIGID"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_token_callers_of_the_binary_share_one_attestation_bounded_by_the_deadline() {
    // A KBS the host stalls: it accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = Arc::clone(&connections);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(conn);
        }
    });
    let dir = peerpod_tests::scratch::ScratchDir::new("aa-deadline").expect("scratch");
    std::fs::write(
        dir.path().join("aa.toml"),
        format!(
            "[token_configs.kbs]\nurl = \"http://{addr}\"\n[peerpod]\nallow_sample = true\n\
             insecure_http = true\ntpm = \"unix:{d}/no-tpm.sock\"\ntsm_root = \"{d}/no-tsm\"\n\
             kbs_request_timeout_secs = 30\nkbs_attempts = 3\nattestation_deadline_secs = 2\n",
            d = dir.path().display()
        ),
    )
    .expect("aa.toml");
    let served = Served::start(dir.path(), 0, &[]);
    let client = served.client().await;
    let started = Instant::now();
    let mut calls = Vec::new();
    for _ in 0..8 {
        let client = client.clone();
        calls.push(tokio::spawn(async move {
            client
                .get_token(
                    context::with_timeout(Duration::from_secs(60).as_nanos() as i64),
                    &GetTokenRequest {
                        TokenType: "kbs".into(),
                        ..Default::default()
                    },
                )
                .await
        }));
    }
    for call in calls {
        let err = call
            .await
            .expect("call")
            .expect_err("a stalled KBS gives no token");
        assert_eq!(code(&err), ttrpc::Code::DEADLINE_EXCEEDED, "{err:?}");
        let text = format!("{err:?}");
        assert!(
            text.contains("[peerpod] attestation_deadline_secs")
                && text.contains("within 2 s")
                && text.contains("auth reply"),
            "{text}"
        );
    }
    // Without the deadline: 3 attempts of 30 s each, for the first caller alone.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "answered in {:?}",
        started.elapsed()
    );
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "one handshake for 8 calls"
    );
    assert_eq!(served.stop().code(), Some(0));
}
