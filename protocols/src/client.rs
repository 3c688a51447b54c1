//! A ttrpc client connection to a peer on a Unix socket, made on first use and remade once when
//! it breaks; every call has a deadline. The kata agent (to the CDH), the CDH (to the
//! attestation agent) and api-server-rest (to both) each hold one per peer.

use std::time::Duration;

/// Why a call did not return a reply.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No connection could be made in time.
    #[error("{0}")]
    Unreachable(String),
    /// The peer answered with an error status.
    #[error("{}", .0.message())]
    Status(ttrpc::Status),
    /// The connection failed, and again after reconnecting.
    #[error("{0}")]
    Transport(String),
}

/// A connection to one peer.
pub struct Connection {
    peer: &'static str,
    hint: &'static str,
    addr: String,
    timeout: Duration,
    client: tokio::sync::Mutex<Option<ttrpc::r#async::Client>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.peer)
            .field("addr", &self.addr)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// `peer` names it in errors ("the attestation agent") and `hint` says where its address
    /// is configured; `addr` is `unix:///…`; each call times out after `timeout`.
    pub fn new(
        peer: &'static str,
        hint: &'static str,
        addr: impl Into<String>,
        timeout: Duration,
    ) -> Self {
        Self {
            peer,
            hint,
            addr: addr.into(),
            timeout,
            client: tokio::sync::Mutex::new(None),
        }
    }

    /// The peer's name, for messages.
    pub fn peer(&self) -> &'static str {
        self.peer
    }

    async fn client(&self) -> Result<ttrpc::r#async::Client, CallError> {
        let mut guard = self.client.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let c = tokio::time::timeout(self.timeout, ttrpc::r#async::Client::connect(&self.addr))
            .await
            .map_err(|_| {
                CallError::Unreachable(format!(
                    "{} at {} did not accept a connection within {:?}",
                    self.peer, self.addr, self.timeout
                ))
            })?
            .map_err(|e| {
                CallError::Unreachable(format!(
                    "cannot reach {} at {} ({e}): is it running? ({})",
                    self.peer, self.addr, self.hint
                ))
            })?;
        *guard = Some(c.clone());
        Ok(c)
    }

    /// Runs one call with the deadline, remaking the connection once if it broke.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, CallError>
    where
        F: Fn(ttrpc::r#async::Client, ttrpc::context::Context) -> Fut,
        Fut: std::future::Future<Output = ttrpc::Result<T>>,
    {
        let nanos = i64::try_from(self.timeout.as_nanos()).unwrap_or(i64::MAX);
        let mut last = String::new();
        for _ in 0..2 {
            let client = self.client().await?;
            match f(client, ttrpc::context::with_timeout(nanos)).await {
                Ok(v) => return Ok(v),
                Err(ttrpc::Error::RpcStatus(s)) => return Err(CallError::Status(s)),
                Err(e) => {
                    tracing::warn!(peer = self.peer, error = %e, "connection failed; reconnecting");
                    last = e.to_string();
                    *self.client.lock().await = None;
                }
            }
        }
        Err(CallError::Transport(format!("{}: {last}", self.peer)))
    }
}
