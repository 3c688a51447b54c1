//! The agent's client of the confidential data hub: in CreateContainer, an environment value
//! that starts with `sealed.` is replaced by the secret the CDH unseals from it.
//!
//! Unlike upstream, which logs a warning and starts the container with the sealed text still in
//! its environment, a value that cannot be unsealed fails the request with the variable's name
//! and the CDH's reason: a workload should not run with a secret it did not get. The policy
//! decides on the request as sent (sealed values); plaintext is never logged.

use std::time::Duration;

use peerpod_protocols::cdh::api::UnsealSecretInput;
use peerpod_protocols::cdh::api_ttrpc::SealedSecretServiceClient;
use peerpod_protocols::kata::agent::CreateContainerRequest;

use crate::error::AgentError;

/// The CDH's default socket.
pub const DEFAULT_CDH_SOCKET: &str = "unix:///run/confidential-containers/cdh.sock";
/// The prefix of a sealed secret.
pub const SEALED_PREFIX: &str = "sealed.";

/// A connection to the CDH, made when first needed.
pub struct CdhClient {
    addr: String,
    timeout: Duration,
    client: tokio::sync::Mutex<Option<ttrpc::r#async::Client>>,
}

impl std::fmt::Debug for CdhClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CdhClient")
            .field("addr", &self.addr)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl CdhClient {
    /// The CDH at `addr`; each call times out after `timeout` (`cdh_api_timeout`).
    pub fn new(addr: impl Into<String>, timeout: Duration) -> Self {
        Self {
            addr: addr.into(),
            timeout,
            client: tokio::sync::Mutex::new(None),
        }
    }

    async fn client(&self) -> Result<ttrpc::r#async::Client, String> {
        let mut guard = self.client.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let c = tokio::time::timeout(self.timeout, ttrpc::r#async::Client::connect(&self.addr))
            .await
            .map_err(|_| {
                format!(
                    "the confidential data hub at {} did not answer in time",
                    self.addr
                )
            })?
            .map_err(|e| {
                format!(
                    "cannot reach the confidential data hub at {} ({e})",
                    self.addr
                )
            })?;
        *guard = Some(c.clone());
        Ok(c)
    }

    /// Unseals one value.
    async fn unseal(&self, sealed: &str) -> Result<String, String> {
        let nanos = i64::try_from(self.timeout.as_nanos()).unwrap_or(i64::MAX);
        let req = UnsealSecretInput {
            secret: sealed.as_bytes().to_vec(),
            ..Default::default()
        };
        let mut last = String::new();
        for _ in 0..2 {
            let client = SealedSecretServiceClient::new(self.client().await?);
            match client
                .unseal_secret(ttrpc::context::with_timeout(nanos), &req)
                .await
            {
                Ok(reply) => {
                    return String::from_utf8(reply.plaintext)
                        .map_err(|_| "the secret is not UTF-8 text".to_string());
                }
                Err(ttrpc::Error::RpcStatus(s)) => return Err(s.message().to_string()),
                Err(e) => {
                    // A broken connection: make a new one, once.
                    last = e.to_string();
                    *self.client.lock().await = None;
                }
            }
        }
        Err(format!("the confidential data hub failed: {last}"))
    }

    /// Replaces every `sealed.` environment value of the container's process with its secret;
    /// the number replaced. Requests without sealed values never contact the CDH.
    pub async fn unseal_env(&self, req: &mut CreateContainerRequest) -> Result<usize, AgentError> {
        let Some(process) = req.OCI.as_mut().and_then(|spec| spec.Process.as_mut()) else {
            return Ok(0);
        };
        let mut count = 0;
        for entry in process.Env.iter_mut() {
            let Some((name, value)) = entry.split_once('=') else {
                continue;
            };
            if !value.starts_with(SEALED_PREFIX) {
                continue;
            }
            let name = name.to_string();
            let secret = self.unseal(value).await.map_err(|reason| {
                AgentError::FailedPrecondition(format!(
                    "CreateContainer: cannot unseal the sealed secret in environment variable {name}: {reason}"
                ))
            })?;
            *entry = format!("{name}={secret}");
            count += 1;
            tracing::info!(variable = %name, "environment variable unsealed");
        }
        Ok(count)
    }
}
