//! The front door inside the agent, without an extra hop: each client connection's ttrpc
//! frames go through the same [`Rewriter`] as the separate forwarder's, then straight to the
//! agent's registered services (`ttrpc::r#async::Service`, as the agent's own ttrpc server
//! holds them), so the agent policy sees exactly the request it would see behind
//! `agent-protocol-forwarder`. No socket, no copy to another process.
//!
//! The ttrpc server behaviour is kept: requests on one connection run concurrently (one task
//! each, at most [`MAX_IN_FLIGHT`] at once: more are answered `RESOURCE_EXHAUSTED`; the tasks
//! are aborted when the connection ends), answers go on the request's stream; even stream
//! ids, unknown services and methods, requests that do not decode, requests over 4 MiB once
//! rewritten (answered as the separate forwarder answers them) and answers over 4 MiB get
//! ttrpc's statuses; a client deadline (`timeout_nano`) ends the call with
//! `DEADLINE_EXCEEDED`. Streaming methods are not served (the agent API has none): a data
//! frame is answered `INVALID_ARGUMENT`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use protobuf::Message as _;
use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, warn};
use ttrpc::r#async::{Service, TtrpcContext};

use crate::frame::{self, FrameError, Header, TYPE_DATA, TYPE_REQUEST, TYPE_RESPONSE};
use crate::proxy::{ConnectionError, encode, write};
use crate::rewrite::Rewriter;

/// The most requests one connection may have running at once.
pub const MAX_IN_FLIGHT: usize = 256;

/// Serves registered ttrpc services on client connections, after the rewrites.
pub struct Dispatcher {
    rewriter: Rewriter,
    services: Arc<HashMap<String, Service>>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("rewriter", &self.rewriter)
            .field("services", &self.services.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Dispatcher {
    /// Serves `services` (as built by the generated `create_*` functions) after `rewriter`.
    pub fn new(rewriter: Rewriter, services: HashMap<String, Service>) -> Self {
        Self {
            rewriter,
            services: Arc::new(services),
        }
    }

    /// Serves one client connection until the client closes it or breaks the framing.
    ///
    /// This task alone reads and writes the connection; each request runs in a task of its
    /// own and hands its answer back over a channel. The request tasks belong to the
    /// connection: when it ends (or this future is dropped), they are aborted.
    pub async fn serve_connection<S>(&self, client: S) -> Result<(), ConnectionError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (reader, mut writer) = tokio::io::split(client);
        let (answers, mut answered) = mpsc::unbounded_channel::<Answer>();
        let reader = BufReader::with_capacity(64 << 10, reader);
        // The read in progress survives the answers written meanwhile (a frame is never
        // half-read and dropped).
        let mut read = Box::pin(next_frame(reader, Vec::new()));
        let mut out = Vec::new();
        let mut tasks = JoinSet::new();
        loop {
            tokio::select! {
                biased;
                Some((stream_id, answer)) = answered.recv() => {
                    encode_answer(&mut out, stream_id, answer);
                    write(&mut writer, &out, "client").await?;
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                (reader, payload, result) = &mut read => {
                    let header = match result {
                        Ok(Some(h)) => h,
                        Ok(None) => {
                            debug!("connection closed");
                            return Ok(());
                        }
                        Err(e) => return Err(ConnectionError::Client(e)),
                    };
                    self.take(header, &payload, &answers, &mut tasks);
                    read = Box::pin(next_frame(reader, payload));
                }
            }
        }
    }

    /// Answers a frame that cannot be served at once, or starts its request's task.
    fn take(
        &self,
        header: Header,
        payload: &[u8],
        answers: &mpsc::UnboundedSender<Answer>,
        tasks: &mut JoinSet<()>,
    ) {
        let refuse = |message: String| {
            let status = ttrpc::get_status(ttrpc::Code::INVALID_ARGUMENT, message);
            let _ = answers.send((header.stream_id, Err(status)));
        };
        if header.stream_id % 2 != 1 {
            return refuse("stream id must be odd".into());
        }
        match header.kind {
            TYPE_REQUEST => {}
            TYPE_DATA => return refuse("Stream is no longer active".into()),
            _ => {
                warn!(header = ?header, "a frame of a type the agent does not serve: ignored");
                return;
            }
        }
        // Before the rewrite: a refused request creates no bind-mount source.
        if tasks.len() >= MAX_IN_FLIGHT {
            warn!(
                stream = header.stream_id,
                "request refused: {MAX_IN_FLIGHT} requests already running on this connection"
            );
            let status = ttrpc::get_status(
                ttrpc::Code::RESOURCE_EXHAUSTED,
                format!(
                    "agent-protocol-forwarder: {MAX_IN_FLIGHT} requests are already running on this connection"
                ),
            );
            let _ = answers.send((header.stream_id, Err(status)));
            return;
        }
        let request = match self.rewriter.rewrite(payload) {
            Ok(None) => ttrpc::Request::parse_from_bytes(payload),
            Ok(Some(new)) if new.len() > frame::MAX_PAYLOAD as usize => {
                warn!(
                    stream = header.stream_id,
                    size = new.len(),
                    "request refused, not served: {}",
                    crate::rewrite::REWRITTEN_TOO_LARGE
                );
                return refuse(format!(
                    "agent-protocol-forwarder: {}",
                    crate::rewrite::REWRITTEN_TOO_LARGE
                ));
            }
            Ok(Some(new)) => ttrpc::Request::parse_from_bytes(&new),
            Err(e) => {
                warn!(stream = header.stream_id, error = %e, "request refused, not served");
                return refuse(format!("agent-protocol-forwarder: {e}"));
            }
        };
        let request = match request {
            Ok(r) => r,
            Err(e) => return refuse(e.to_string()),
        };
        let services = Arc::clone(&self.services);
        let answers = answers.clone();
        tasks.spawn(async move {
            let answer = call(&services, header, request).await;
            let _ = answers.send((header.stream_id, answer));
        });
    }
}

/// A stream id and what to answer on it.
type Answer = (u32, Result<ttrpc::Response, ttrpc::Status>);

/// Reads the next frame, handing back the reader and the buffer with the result.
async fn next_frame<R: AsyncRead + Unpin>(
    mut reader: R,
    mut payload: Vec<u8>,
) -> (R, Vec<u8>, Result<Option<Header>, FrameError>) {
    let result = frame::read_frame(&mut reader, &mut payload).await;
    (reader, payload, result)
}

/// Runs the request's method, as ttrpc's server does.
async fn call(
    services: &HashMap<String, Service>,
    header: Header,
    request: ttrpc::Request,
) -> Result<ttrpc::Response, ttrpc::Status> {
    let Some(service) = services.get(&request.service) else {
        return Err(ttrpc::get_status(
            ttrpc::Code::INVALID_ARGUMENT,
            format!("{} service does not exist", request.service),
        ));
    };
    let Some(method) = service.methods.get(&request.method) else {
        return Err(ttrpc::get_status(
            ttrpc::Code::UNIMPLEMENTED,
            format!("{} method", request.method),
        ));
    };
    let mut metadata: HashMap<String, Vec<String>> = HashMap::new();
    for kv in &request.metadata {
        metadata
            .entry(kv.key.clone())
            .or_default()
            .push(kv.value.clone());
    }
    let timeout_nano = request.timeout_nano;
    let ctx = TtrpcContext {
        mh: ttrpc::MessageHeader {
            length: header.length,
            stream_id: header.stream_id,
            type_: header.kind,
            flags: header.flags,
        },
        metadata,
        timeout_nano,
        ..TtrpcContext::default()
    };
    let path = format!("/{}/{}", request.service, request.method);
    let unknown = |e: ttrpc::Error| {
        warn!(method = %path, error = %e, "the method failed");
        ttrpc::get_status(ttrpc::Code::UNKNOWN, e.to_string())
    };
    if timeout_nano <= 0 {
        method.handler(ctx, request).await.map_err(unknown)
    } else {
        match tokio::time::timeout(
            Duration::from_nanos(timeout_nano as u64),
            method.handler(ctx, request),
        )
        .await
        {
            Ok(r) => r.map_err(unknown),
            Err(_) => Err(ttrpc::get_status(ttrpc::Code::DEADLINE_EXCEEDED, "timeout")),
        }
    }
}

/// The response frame for `answer` on `stream_id`, in `out`.
fn encode_answer(
    out: &mut Vec<u8>,
    stream_id: u32,
    answer: Result<ttrpc::Response, ttrpc::Status>,
) {
    let status_only = |status: ttrpc::Status| {
        let mut r = ttrpc::Response::new();
        r.status = Some(status).into();
        r
    };
    let response = answer.unwrap_or_else(status_only);
    let mut body = response.write_to_bytes().unwrap_or_default();
    if body.len() > frame::MAX_PAYLOAD as usize {
        let status = ttrpc::get_status(
            ttrpc::Code::INVALID_ARGUMENT,
            format!(
                "message length {} exceed maximum message size of {}",
                body.len(),
                frame::MAX_PAYLOAD
            ),
        );
        body = status_only(status).write_to_bytes().unwrap_or_default();
    }
    let header = Header {
        length: body.len() as u32,
        stream_id,
        kind: TYPE_RESPONSE,
        flags: 0,
    };
    encode(out, header, &body);
}
