//! The agent's client of the confidential data hub: in CreateContainer, an environment value
//! that starts with `sealed.` is replaced by the secret the CDH unseals from it.
//!
//! Unlike upstream, which logs a warning and starts the container with the sealed text still in
//! its environment, a value that cannot be unsealed fails the request with the variable's name
//! and the CDH's reason: a workload should not run with a secret it did not get. The policy
//! decides on the request as sent (sealed values); plaintext is never logged.

use std::time::Duration;

use peerpod_protocols::cdh::api::{ImagePullRequest, UnsealSecretInput};
use peerpod_protocols::cdh::api_ttrpc::{ImagePullServiceClient, SealedSecretServiceClient};
use peerpod_protocols::client::Connection;
use peerpod_protocols::kata::agent::CreateContainerRequest;

use crate::error::AgentError;

/// The CDH's default socket.
pub const DEFAULT_CDH_SOCKET: &str = "unix:///run/confidential-containers/cdh.sock";
/// The prefix of a sealed secret.
pub const SEALED_PREFIX: &str = "sealed.";

/// The agent's connection to the CDH, made when first needed.
#[derive(Debug)]
pub struct CdhClient {
    conn: Connection,
    /// The same socket for `PullImage`, with `image_pull_timeout` plus [`PULL_GRACE`].
    pull: Connection,
    /// `image_pull_timeout`: when the agent gives up on a pull.
    pull_timeout: Duration,
    addr: String,
}

/// How long the agent still waits for the CDH after giving up on a pull at
/// `image_pull_timeout`, before it cleans the bundle up: the CDH may still be pulling, and
/// would mount the image into the bundle after the agent removed it (a mount nobody unmounts).
/// The CDH is told the whole deadline (`image_pull_timeout` plus this), as its ttrpc timeout.
pub const PULL_GRACE: Duration = Duration::from_secs(120);

/// Why `PullImage` did not give a root filesystem.
#[derive(Debug)]
pub enum PullFailure {
    /// The CDH answered an error (its reason).
    Refused(String),
    /// `image_pull_timeout` passed; the agent then waited for the CDH's answer (`late`: the
    /// CDH's reason, or that it pulled after all, or that it did not answer within
    /// [`PULL_GRACE`]).
    TimedOut {
        /// `image_pull_timeout`.
        after: Duration,
        /// What the CDH did after that.
        late: String,
    },
}

impl std::fmt::Display for PullFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PullFailure::Refused(reason) => f.write_str(reason),
            PullFailure::TimedOut { after, late } => write!(
                f,
                "not pulled within image_pull_timeout ({} s; raise it in the agent configuration \
                 for large images or a slow registry); {late}",
                after.as_secs()
            ),
        }
    }
}

impl CdhClient {
    /// The CDH at `addr`; each call times out after `timeout` (`cdh_api_timeout`).
    pub fn new(addr: impl Into<String>, timeout: Duration) -> Self {
        let addr = addr.into();
        Self {
            conn: Connection::new(
                "the confidential data hub",
                "cdh_socket in the agent configuration",
                addr.clone(),
                timeout,
            ),
            pull: Connection::new(
                "the confidential data hub",
                "cdh_socket in the agent configuration",
                addr.clone(),
                Duration::from_secs(1200) + PULL_GRACE,
            ),
            pull_timeout: Duration::from_secs(1200),
            addr,
        }
    }

    /// `PullImage` calls time out after `timeout` (`image_pull_timeout`).
    pub fn with_image_pull_timeout(mut self, timeout: Duration) -> Self {
        self.pull = Connection::new(
            "the confidential data hub",
            "cdh_socket in the agent configuration",
            self.addr.clone(),
            timeout.saturating_add(PULL_GRACE),
        );
        self.pull_timeout = timeout;
        self
    }

    /// `PullImage`: the CDH pulls `image` and mounts it at `bundle/rootfs`; the digest it
    /// answers. At `image_pull_timeout` the pull has failed, but this returns only once the
    /// CDH has answered (or [`PULL_GRACE`] has passed too), so that the caller's clean-up of
    /// the bundle (and the unmount of a late root filesystem) comes after the CDH is done with
    /// it and the container id stays claimed until then.
    pub async fn pull_image(&self, image: &str, bundle: &str) -> Result<String, PullFailure> {
        let req = ImagePullRequest {
            image_url: image.to_owned(),
            bundle_path: bundle.to_owned(),
            ..Default::default()
        };
        let call = self.pull.call(|c, ctx| {
            let req = req.clone();
            async move {
                ImagePullServiceClient::new(c)
                    .pull_image(ctx, &req)
                    .await
                    .map(|r| r.manifest_digest)
            }
        });
        tokio::pin!(call);
        match tokio::time::timeout(self.pull_timeout, &mut call).await {
            Ok(answer) => answer.map_err(|e| PullFailure::Refused(e.to_string())),
            Err(_) => {
                tracing::warn!(
                    image,
                    bundle,
                    timeout_secs = self.pull_timeout.as_secs(),
                    "image_pull_timeout passed; waiting for the CDH to finish before the bundle is removed"
                );
                let late = match call.await {
                    Ok(_) => "the CDH pulled it later; its root filesystem is removed".to_owned(),
                    Err(e) => format!("the CDH then answered: {e}"),
                };
                Err(PullFailure::TimedOut {
                    after: self.pull_timeout,
                    late,
                })
            }
        }
    }

    /// Unseals one value; the error is the CDH's reason.
    async fn unseal(&self, sealed: &str) -> Result<String, String> {
        let req = UnsealSecretInput {
            secret: sealed.as_bytes().to_vec(),
            ..Default::default()
        };
        let plaintext = self
            .conn
            .call(|c, ctx| {
                let req = req.clone();
                async move {
                    SealedSecretServiceClient::new(c)
                        .unseal_secret(ctx, &req)
                        .await
                        .map(|r| r.plaintext)
                }
            })
            .await
            .map_err(|e| e.to_string())?;
        String::from_utf8(plaintext).map_err(|_| "the secret is not UTF-8 text".to_string())
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
