//! The forwarding itself: each client connection gets its own connection to the agent's unix
//! socket, and frames are relayed whole in both directions, so ttrpc's stream ids and their
//! interleaving pass through unchanged (many concurrent requests on one connection stay
//! concurrent). Client-to-agent requests go through the [`Rewriter`]; a request it refuses is
//! answered on its own stream with `INVALID_ARGUMENT` and not forwarded. A frame over ttrpc's
//! 4 MiB, or of a type ttrpc does not define, ends the connection with a log line saying so.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use crate::frame::{self, FrameError, Header, TYPE_REQUEST, TYPE_RESPONSE};
use crate::rewrite::Rewriter;

/// Why a connection ended other than by the client closing it.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The client sent a frame the forwarder will not relay.
    #[error("the client broke the ttrpc framing")]
    Client(#[source] FrameError),
    /// The agent's side broke.
    #[error("the agent connection failed")]
    Agent(#[source] FrameError),
    /// Writing to a side failed.
    #[error("writing to the {side} failed")]
    Write {
        /// `client` or `agent`.
        side: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The agent could not be reached.
    #[error(
        "the agent socket {path} did not accept a connection within {waited:?}: is kata-agent \
         running, with server_addr = \"unix://{path}\"?"
    )]
    AgentUnreachable {
        /// The socket.
        path: String,
        /// How long the forwarder tried.
        waited: Duration,
    },
}

/// Connects to the agent's socket, retrying with backoff (50 ms doubling to 1 s) until
/// `deadline` passes; `None` waits as long as it takes, logging every 10 s.
pub async fn connect_agent(
    path: &Path,
    deadline: Option<Duration>,
) -> Result<UnixStream, ConnectionError> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(50);
    let mut last_log = start;
    loop {
        match UnixStream::connect(path).await {
            Ok(s) => return Ok(s),
            Err(e) => {
                let waited = start.elapsed();
                if deadline.is_some_and(|d| waited >= d) {
                    return Err(ConnectionError::AgentUnreachable {
                        path: path.display().to_string(),
                        waited,
                    });
                }
                if last_log.elapsed() >= Duration::from_secs(10) {
                    info!(socket = %path.display(), error = %e, waited = ?waited, "still waiting for the agent's socket");
                    last_log = Instant::now();
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

/// Relays client connections to the agent.
#[derive(Debug)]
pub struct Forwarder {
    rewriter: Rewriter,
    agent_socket: PathBuf,
    agent_timeout: Duration,
}

impl Forwarder {
    /// Forwards to the agent at `agent_socket`, waiting up to `agent_timeout` for it per
    /// connection (upstream waits 150 s).
    pub fn new(rewriter: Rewriter, agent_socket: PathBuf, agent_timeout: Duration) -> Self {
        Self {
            rewriter,
            agent_socket,
            agent_timeout,
        }
    }

    /// Serves one client connection until either side closes it.
    pub async fn serve_connection<S>(&self, client: S) -> Result<(), ConnectionError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let agent = connect_agent(&self.agent_socket, Some(self.agent_timeout)).await?;
        self.relay(client, agent).await
    }

    /// Relays between a connected client and agent.
    pub async fn relay<S, A>(&self, client: S, agent: A) -> Result<(), ConnectionError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
        A: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (client_r, client_w) = tokio::io::split(client);
        let (agent_r, mut agent_w) = tokio::io::split(agent);
        let client_w = Mutex::new(client_w);

        // Both directions are polled by this one task: a reply wakes the task that relays it,
        // with no hand-over between threads.
        let to_client = &client_w;
        let back = async move {
            let mut reader = BufReader::with_capacity(64 << 10, agent_r);
            let mut payload = Vec::new();
            let mut out = Vec::new();
            loop {
                let header = match frame::read_frame(&mut reader, &mut payload).await {
                    Ok(Some(h)) => h,
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(ConnectionError::Agent(e)),
                };
                encode(&mut out, header, &payload);
                let mut w = to_client.lock().await;
                write(&mut *w, &out, "client").await?;
            }
        };

        let forth = async {
            let mut reader = BufReader::with_capacity(64 << 10, client_r);
            let mut payload = Vec::new();
            let mut out = Vec::new();
            loop {
                let header = match frame::read_frame(&mut reader, &mut payload).await {
                    Ok(Some(h)) => h,
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(ConnectionError::Client(e)),
                };
                if header.kind == TYPE_REQUEST {
                    match self.rewriter.rewrite(&payload) {
                        Ok(None) => encode(&mut out, header, &payload),
                        Ok(Some(new)) => {
                            if new.len() > frame::MAX_PAYLOAD as usize {
                                refuse(
                                    &client_w,
                                    header.stream_id,
                                    crate::rewrite::REWRITTEN_TOO_LARGE,
                                )
                                .await?;
                                continue;
                            }
                            let header = Header {
                                length: new.len() as u32,
                                ..header
                            };
                            encode(&mut out, header, &new);
                        }
                        Err(e) => {
                            warn!(stream = header.stream_id, error = %e, "request refused, not forwarded");
                            refuse(&client_w, header.stream_id, &e.to_string()).await?;
                            continue;
                        }
                    }
                } else {
                    encode(&mut out, header, &payload);
                }
                write(&mut agent_w, &out, "agent").await?;
            }
        };

        let result = tokio::select! {
            r = forth => r,
            r = back => r,
        };
        debug!("connection closed");
        result
    }
}

pub(crate) fn encode(out: &mut Vec<u8>, header: Header, payload: &[u8]) {
    out.clear();
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(payload);
}

pub(crate) async fn write<W: AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &[u8],
    side: &'static str,
) -> Result<(), ConnectionError> {
    w.write_all(bytes)
        .await
        .map_err(|source| ConnectionError::Write { side, source })?;
    w.flush()
        .await
        .map_err(|source| ConnectionError::Write { side, source })
}

/// Answers `stream_id` with `INVALID_ARGUMENT` and `message`.
async fn refuse<W: AsyncWrite + Unpin>(
    client_w: &Mutex<W>,
    stream_id: u32,
    message: &str,
) -> Result<(), ConnectionError> {
    let status = ttrpc::get_status(
        ttrpc::Code::INVALID_ARGUMENT,
        format!("agent-protocol-forwarder: {message}"),
    );
    let mut response = ttrpc::Response::new();
    response.status = Some(status).into();
    let body = response.write_to_bytes().unwrap_or_default();
    let header = Header {
        length: body.len() as u32,
        stream_id,
        kind: TYPE_RESPONSE,
        flags: 0,
    };
    let mut out = Vec::with_capacity(frame::HEADER_LEN + body.len());
    encode(&mut out, header, &body);
    let mut w = client_w.lock().await;
    write(&mut *w, &out, "client").await
}
