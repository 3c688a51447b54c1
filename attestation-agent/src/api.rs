//! The attestation agent's operations, independent of the transport that serves them.

use std::sync::Arc;

use serde_json::json;

use crate::attester::{AttestError, Attester, DetectOptions, Measured, detect};
use crate::config::AaConfig;
use crate::eventlog::{EventLog, EventLogError};
use crate::kbs::{KbsClient, KbsConfig, KbsError};

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AaError {
    /// The TEE failed.
    #[error(transparent)]
    Attester(#[from] AttestError),
    /// The KBS failed.
    #[error(transparent)]
    Kbs(#[from] KbsError),
    /// The event log failed.
    #[error(transparent)]
    EventLog(#[from] EventLogError),
    /// The caller asked for something unsupported or unconfigured.
    #[error("{0}")]
    Request(String),
    /// The attestation service failed, or a step of ours did.
    #[error("{0}")]
    Service(String),
    /// A step did not finish within `[peerpod] attestation_deadline_secs`.
    #[error(
        "{what} did not finish within {secs} s; if the TEE is this slow, raise [peerpod] \
         attestation_deadline_secs in aa.toml"
    )]
    Deadline {
        /// The step.
        what: &'static str,
        /// The deadline, in seconds.
        secs: u64,
    },
}

/// The outcome of a runtime measurement request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeasurementResult {
    /// Extended and logged.
    Ok,
    /// The TEE has no runtime measurement register.
    NotSupported,
    /// `enable_eventlog` is off.
    NotEnabled,
}

/// The attestation agent: one TEE, one KBS client, one event log.
pub struct AttestationAgent {
    attester: Arc<dyn Attester>,
    kbs: Option<KbsClient>,
    coco_as: Option<(String, reqwest::Client)>,
    eventlog: Option<EventLog>,
    init_pcr: u64,
    deadline: std::time::Duration,
}

impl AttestationAgent {
    /// Detects the TEE and sets up the configured clients. `init_data` is the initdata document
    /// to send with attestations.
    pub fn new(config: &AaConfig, init_data: Option<String>) -> Result<Self, AaError> {
        let detect_options = DetectOptions {
            azure: crate::attester::AzureOptions {
                tpm: config.tpm.clone(),
                imds_url: config.imds_url.clone(),
                refresh_timeout: config.report_refresh_timeout,
                ..Default::default()
            },
            tsm_root: config.tsm_root.clone(),
            allow_sample: config.allow_sample,
        };
        let attester = detect(&detect_options)?;
        Self::with_attester(config, attester, init_data)
    }

    /// Uses a given attester.
    pub fn with_attester(
        config: &AaConfig,
        attester: Arc<dyn Attester>,
        init_data: Option<String>,
    ) -> Result<Self, AaError> {
        let kbs = match &config.kbs {
            Some(k) => {
                let mut kc = KbsConfig::new(&k.url);
                kc.cert = k.cert.clone();
                kc.key_algorithm = k.tee_key_algorithm;
                kc.init_data = init_data;
                kc.request_timeout = config.kbs_request_timeout;
                kc.attempts = config.kbs_attempts;
                kc.refresh_margin = config.token_refresh_margin;
                kc.deadline = config.attestation_deadline;
                kc.insecure_http = config.insecure_http;
                Some(KbsClient::new(kc, Arc::clone(&attester))?)
            }
            None => None,
        };
        let coco_as = match &config.coco_as_url {
            Some(url) => Some((
                url.clone(),
                peerpod_kbs_client::http_builder(url)
                    .timeout(config.kbs_request_timeout)
                    .build()
                    .map_err(|e| {
                        AaError::Service(format!(
                            "attestation service HTTP client: {}",
                            peerpod_kbs_client::error_chain(&e)
                        ))
                    })?,
            )),
            None => None,
        };
        Ok(Self {
            attester,
            kbs,
            coco_as,
            eventlog: config
                .enable_eventlog
                .then(|| EventLog::new(&config.eventlog_path)),
            init_pcr: config.init_pcr,
            deadline: config.attestation_deadline,
        })
    }

    /// Finishes start-up: resolves an event-log record interrupted by a crash.
    pub async fn init(&self) -> Result<(), AaError> {
        if let Some(log) = &self.eventlog {
            log.recover(self.attester.as_ref()).await?;
        }
        Ok(())
    }

    /// The TEE's name.
    pub fn tee(&self) -> &'static str {
        self.attester.tee()
    }

    /// The KBS client, when a KBS is configured.
    pub fn kbs(&self) -> Option<&KbsClient> {
        self.kbs.as_ref()
    }

    /// Evidence binding `runtime_data` as the TEE's report data, as JSON bytes.
    pub async fn get_evidence(&self, runtime_data: &[u8]) -> Result<Vec<u8>, AaError> {
        let evidence = self.evidence(runtime_data).await?;
        Ok(evidence.to_string().into_bytes())
    }

    /// The attester's evidence, within `[peerpod] attestation_deadline_secs`.
    async fn evidence(&self, report_data: &[u8]) -> Result<serde_json::Value, AaError> {
        tokio::time::timeout(self.deadline, self.attester.evidence(report_data))
            .await
            .map_err(|_| AaError::Deadline {
                what: "making evidence in the TEE",
                secs: self.deadline.as_secs(),
            })?
            .map_err(AaError::from)
    }

    /// A token: `kbs` gives `{"token", "tee_keypair"}` (the TEE key as PEM), `coco_as` the
    /// attestation service's reply.
    pub async fn get_token(&self, token_type: &str) -> Result<Vec<u8>, AaError> {
        match token_type {
            "kbs" => {
                let kbs = self.kbs.as_ref().ok_or_else(|| {
                    AaError::Request(
                        "no KBS configured: set [token_configs.kbs] url in aa.toml, or agent.aa_kbc_params=cc_kbc::<url>".into(),
                    )
                })?;
                let session = kbs.session().await?;
                let pem = session
                    .key
                    .to_pem()
                    .map_err(|e| AaError::Service(format!("cannot encode the TEE key: {e}")))?;
                let reply = json!({"token": session.token, "tee_keypair": pem.as_str()});
                Ok(reply.to_string().into_bytes())
            }
            "coco_as" => self.coco_as_token().await,
            other => Err(AaError::Request(format!(
                "unsupported token type {other:?} (kbs or coco_as)"
            ))),
        }
    }

    async fn coco_as_token(&self) -> Result<Vec<u8>, AaError> {
        use base64::Engine;
        let (url, http) = self.coco_as.as_ref().ok_or_else(|| {
            AaError::Request(
                "no attestation service configured: set [token_configs.coco_as] url".into(),
            )
        })?;
        let evidence = self.evidence(&[]).await?;
        let body = json!({
            "verification_requests": [{
                "tee": self.attester.tee(),
                "evidence": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(evidence.to_string()),
            }],
            "policy_ids": [],
        });
        let resp = http
            .post(format!("{}/attestation", url.trim_end_matches('/')))
            .json(&body)
            .send()
            .await
            .map_err(|e| AaError::Service(format!("attestation service request failed: {e}")))?;
        if let Some(why) = peerpod_kbs_client::refused_redirect(&resp, "the attestation service") {
            return Err(AaError::Service(why));
        }
        let status = resp.status();
        let bytes = peerpod_kbs_client::read_body(resp, peerpod_kbs_client::MAX_KBS_REPLY)
            .await
            .map_err(|e| {
                AaError::Service(format!(
                    "attestation service reply: {}",
                    peerpod_kbs_client::error_chain(&e)
                ))
            })?;
        if !status.is_success() {
            return Err(AaError::Service(format!(
                "attestation service answered {status}: {}",
                peerpod_kbs_client::printable(&String::from_utf8_lossy(&bytes), 200)
            )));
        }
        Ok(bytes.to_vec())
    }

    /// Binds an initdata digest to the TEE (see [`Attester::bind_init_data`]).
    pub async fn bind_init_data(&self, digest: &[u8]) -> Result<(), AaError> {
        if digest.is_empty() {
            return Err(AaError::Request("the initdata digest is empty".into()));
        }
        Ok(self.attester.bind_init_data(digest).await?)
    }

    /// Records a runtime event and extends `register` (default: `init_pcr`) with its digest.
    pub async fn extend_runtime_measurement(
        &self,
        domain: &str,
        operation: &str,
        content: &str,
        register: Option<u64>,
    ) -> Result<MeasurementResult, AaError> {
        let Some(log) = &self.eventlog else {
            return Ok(MeasurementResult::NotEnabled);
        };
        let index = register.unwrap_or(self.init_pcr);
        let index = u32::try_from(index)
            .map_err(|_| AaError::Request(format!("register {index} does not exist")))?;
        Ok(
            match log
                .measure(self.attester.as_ref(), index, domain, operation, content)
                .await?
            {
                Measured::Extended => MeasurementResult::Ok,
                Measured::NotSupported => MeasurementResult::NotSupported,
            },
        )
    }
}
