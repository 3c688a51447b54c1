//! A ttrpc connection to a peer (the attestation agent, or the CDH for the REST endpoint), made
//! on first use and remade once when it breaks; each call has a deadline.

use std::time::Duration;

use crate::error::CdhError;

/// A connection to one peer.
pub struct Connection {
    peer: &'static str,
    hint: &'static str,
    addr: String,
    timeout: Duration,
    client: tokio::sync::Mutex<Option<ttrpc::r#async::Client>>,
}

impl Connection {
    /// `peer` names it in errors ("the attestation agent") and `hint` says where its address
    /// is configured; `addr` is `unix:///…`.
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

    /// The peer's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    async fn client(&self) -> Result<ttrpc::r#async::Client, CdhError> {
        let mut guard = self.client.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let c = tokio::time::timeout(self.timeout, ttrpc::r#async::Client::connect(&self.addr))
            .await
            .map_err(|_| {
                CdhError::Unavailable(format!(
                    "{} at {} did not accept a connection within {:?}",
                    self.peer, self.addr, self.timeout
                ))
            })?
            .map_err(|e| {
                CdhError::Unavailable(format!(
                    "cannot reach {} at {} ({e}): is it running? ({})",
                    self.peer, self.addr, self.hint
                ))
            })?;
        *guard = Some(c.clone());
        Ok(c)
    }

    /// Runs one call with the deadline, remaking the connection once if it broke. A status from
    /// the peer keeps its kind; the peer's INTERNAL becomes `internal`'s kind.
    pub async fn call<T, F, Fut>(
        &self,
        what: &str,
        internal: fn(String) -> CdhError,
        f: F,
    ) -> Result<T, CdhError>
    where
        F: Fn(ttrpc::r#async::Client, ttrpc::context::Context) -> Fut,
        Fut: std::future::Future<Output = ttrpc::Result<T>>,
    {
        let nanos = i64::try_from(self.timeout.as_nanos()).unwrap_or(i64::MAX);
        for attempt in 0..2 {
            let client = self.client().await?;
            match f(client, ttrpc::context::with_timeout(nanos)).await {
                Ok(v) => return Ok(v),
                Err(ttrpc::Error::RpcStatus(s)) => {
                    let message = format!("{}'s {what} failed: {}", self.peer, s.message());
                    return Err(match s.code() {
                        ttrpc::Code::INVALID_ARGUMENT | ttrpc::Code::FAILED_PRECONDITION => {
                            CdhError::InvalidArgument(message)
                        }
                        ttrpc::Code::NOT_FOUND => CdhError::NotFound(message),
                        ttrpc::Code::PERMISSION_DENIED => CdhError::PermissionDenied(message),
                        ttrpc::Code::UNIMPLEMENTED => CdhError::Unimplemented(message),
                        ttrpc::Code::INTERNAL => internal(message),
                        _ => CdhError::Unavailable(message),
                    });
                }
                Err(e) if attempt == 0 => {
                    tracing::warn!(peer = self.peer, error = %e, "connection failed; reconnecting");
                    *self.client.lock().await = None;
                }
                Err(e) => {
                    return Err(CdhError::Unavailable(format!(
                        "{}'s {what} failed: {e}",
                        self.peer
                    )));
                }
            }
        }
        Err(CdhError::Internal("unreachable retry loop".into()))
    }
}
