//! A ttrpc client connection to a peer on a Unix socket, made on first use and remade when it
//! breaks; every call has a deadline. The kata agent (to the CDH), the CDH (to the attestation
//! agent) and api-server-rest (to both) each hold one per peer.
//!
//! A call is sent at most once: calls such as `PullImage` or `CreateContainer` are not
//! idempotent, so a call that reached its deadline, or failed after its request may have been
//! written to the socket, is never sent again (the error says so). Only a request that provably
//! never left this process (the cached connection was already closed, so the request could not
//! be queued on it) is sent again, once, on a new connection.

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
    /// The connection failed, or the peer did not answer within the deadline; the call was not
    /// sent again.
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

    /// Runs one call with the deadline. The call is sent at most once; it is sent again on a new
    /// connection only when the cached connection was closed before the request could be queued
    /// on it (see the module's documentation).
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, CallError>
    where
        F: Fn(ttrpc::r#async::Client, ttrpc::context::Context) -> Fut,
        Fut: std::future::Future<Output = ttrpc::Result<T>>,
    {
        let nanos = i64::try_from(self.timeout.as_nanos()).unwrap_or(i64::MAX);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let client = self.client().await?;
            let e = match f(client, ttrpc::context::with_timeout(nanos)).await {
                Ok(v) => return Ok(v),
                Err(ttrpc::Error::RpcStatus(s)) => return Err(CallError::Status(s)),
                Err(e) => e,
            };
            match Failure::of(&e) {
                Failure::Deadline => {
                    return Err(CallError::Transport(format!(
                        "{} did not answer within {:?}: not sent again (the call may still \
                         complete there); raise the timeout if the peer is slow, or check the \
                         peer's log",
                        self.peer, self.timeout
                    )));
                }
                Failure::NotSent if attempt == 1 => {
                    tracing::info!(peer = self.peer, error = %e, "connection closed before the call was sent; reconnecting");
                    *self.client.lock().await = None;
                }
                Failure::NotSent | Failure::MaybeSent => {
                    tracing::warn!(peer = self.peer, error = %e, "call failed on the connection; not sent again");
                    *self.client.lock().await = None;
                    return Err(CallError::Transport(format!(
                        "{}: {e} (the call was not sent again: it may have reached the peer; \
                         the next call reconnects)",
                        self.peer
                    )));
                }
            }
        }
    }
}

/// What a failed call says about its request.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// The call's deadline passed (while queued, being written, or waiting for the answer).
    Deadline,
    /// The request was never queued on the connection: its writer had already stopped, as it
    /// does when the connection broke before this call.
    NotSent,
    /// Anything else: the request may have been written, so it may run at the peer.
    MaybeSent,
}

impl Failure {
    /// ttrpc has no variants for these; its messages are the only signal. An unknown message
    /// is [`Failure::MaybeSent`], so a change in ttrpc's wording never causes a second call.
    fn of(e: &ttrpc::Error) -> Self {
        match e {
            ttrpc::Error::Others(m) if m.contains("deadline elapsed") || m.contains("timeout") => {
                Self::Deadline
            }
            ttrpc::Error::Others(m) if m.starts_with("reserve channel capacity failed") => {
                Self::NotSent
            }
            _ => Self::MaybeSent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Failure;

    #[test]
    fn only_an_unqueued_request_counts_as_not_sent() {
        let others = |m: &str| ttrpc::Error::Others(m.to_owned());
        assert_eq!(
            Failure::of(&others("Request deadline elapsed")),
            Failure::Deadline
        );
        assert_eq!(
            Failure::of(&others("reserve channel capacity failed: channel closed")),
            Failure::NotSent
        );
        for e in [
            ttrpc::Error::RemoteClosed,
            ttrpc::Error::LocalClosed,
            ttrpc::Error::Eof,
            ttrpc::Error::Socket("Broken pipe".into()),
            others("writer task dropped result channel"),
            others("something ttrpc may say one day"),
        ] {
            assert_eq!(Failure::of(&e), Failure::MaybeSent, "{e:?}");
        }
    }
}
