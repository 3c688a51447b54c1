//! The shim side of 15150: a TLS connection presenting (or not) the shim's certificate, and the
//! agent's ttrpc clients over it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use peerpod_protocols::kata::{agent_ttrpc, health, health_ttrpc};
use rustls::pki_types::ServerName;
use tokio::io::AsyncReadExt as _;

use crate::{PodPki, PodvmError};

/// The agent's clients on one connection.
pub struct ShimClient {
    /// AgentService.
    pub agent: agent_ttrpc::AgentServiceClient,
    /// Health.
    pub health: health_ttrpc::HealthClient,
}

/// A ttrpc context with a timeout.
pub fn ctx(timeout: Duration) -> ttrpc::context::Context {
    ttrpc::context::with_timeout(i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX))
}

/// Connects over TLS (the server name is 127.0.0.1, which the test server certificate has).
/// With TLS 1.3 a server refusing the client's certificate is seen on the first read, so this
/// waits briefly for such a refusal before handing the stream over.
pub async fn connect(
    addr: SocketAddr,
    pki: &PodPki,
    with_identity: bool,
) -> Result<ShimClient, PodvmError> {
    let mut tls = handshake(addr, pki, with_identity).await?;
    match tokio::time::timeout(Duration::from_millis(500), tls.read(&mut [0u8; 1])).await {
        Ok(Ok(0)) => {
            return Err(PodvmError::Tls(
                "closed by the server after the handshake".into(),
            ));
        }
        Ok(Err(e)) => return Err(PodvmError::Tls(format!("refused after the handshake: {e}"))),
        Ok(Ok(_)) => return Err(PodvmError::Tls("the server sent unexpected data".into())),
        Err(_) => {}
    }
    Ok(clients(tls))
}

type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

fn clients(tls: TlsStream) -> ShimClient {
    let client = ttrpc::r#async::Client::new(ttrpc::r#async::transport::Socket::new(tls));
    ShimClient {
        agent: agent_ttrpc::AgentServiceClient::new(client.clone()),
        health: health_ttrpc::HealthClient::new(client),
    }
}

/// TCP connect and TLS handshake.
async fn handshake(
    addr: SocketAddr,
    pki: &PodPki,
    with_identity: bool,
) -> Result<TlsStream, PodvmError> {
    let config = pki.client_config(with_identity)?;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| PodvmError::io(format!("connect to {addr}"), e))?;
    let name = ServerName::try_from("127.0.0.1").map_err(|e| PodvmError::Tls(e.to_string()))?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| PodvmError::Tls(format!("handshake with {addr}: {e}")))
}

/// How long one attempt of [`wait_serving`] may take to connect and complete the TLS
/// handshake. QEMU's user networking accepts the host's connection at once and then sends the
/// guest SYNs with exponential backoff while nothing answers (before the guest has its address,
/// its SYNs are dropped): an attempt left waiting is only answered at the next retransmission,
/// seconds after 15150 opened. A fresh connection each second keeps the measurement within
/// about a second of the port opening. After [`PATIENT_AFTER`] each attempt gets
/// [`PATIENT_ATTEMPT_TIMEOUT`] instead, for a guest so loaded that a handshake takes longer.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// See [`ATTEMPT_TIMEOUT`].
pub const PATIENT_AFTER: Duration = Duration::from_secs(90);
/// See [`ATTEMPT_TIMEOUT`].
pub const PATIENT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects and sends Check until it is answered SERVING or `timeout` passes; returns the
/// client and when the answer came. `still_running` is polled between attempts (QEMU alive).
pub async fn wait_serving(
    addr: SocketAddr,
    pki: &PodPki,
    timeout: Duration,
    mut still_running: impl FnMut() -> Result<(), PodvmError>,
) -> Result<(ShimClient, Instant), PodvmError> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut last = String::from("no attempt");
    while Instant::now() < deadline {
        still_running()?;
        // No wait for a certificate refusal here (connect's 500 ms): a refused client's Check
        // fails, and the wait would be counted in the time to the first answer.
        let limit = if start.elapsed() < PATIENT_AFTER {
            ATTEMPT_TIMEOUT
        } else {
            PATIENT_ATTEMPT_TIMEOUT
        };
        let attempt = match tokio::time::timeout(limit, handshake(addr, pki, true)).await {
            Ok(r) => r.map(clients),
            Err(_) => Err(PodvmError::Tls(format!(
                "no TLS handshake within {limit:?}"
            ))),
        };
        match attempt {
            Ok(c) => match c
                .health
                .check(ctx(Duration::from_secs(10)), &health::CheckRequest::new())
                .await
            {
                Ok(r)
                    if r.status.enum_value_or_default()
                        == health::health_check_response::ServingStatus::SERVING =>
                {
                    return Ok((c, Instant::now()));
                }
                Ok(r) => last = format!("Check answered {:?}", r.status),
                Err(e) => last = format!("Check failed: {e}"),
            },
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(PodvmError::Timeout {
        what: format!("Check answered SERVING on {addr} (last: {last})"),
        secs: timeout.as_secs(),
        tail: String::new(),
    })
}
