//! The in-agent dispatch (`peerpod_forwarder::dispatch`) over an in-memory connection, with the
//! stand-in agent's services: the rewrites happen before the service sees the request, requests
//! on one connection stay concurrent, ttrpc's statuses for what cannot be served, and hostile
//! framing ends the connection without reaching any service.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use peerpod_forwarder::dispatch::Dispatcher;
use peerpod_forwarder::proxy::ConnectionError;
use peerpod_forwarder::rewrite::Rewriter;
use peerpod_protocols::kata::{agent, agent_ttrpc, health, health_ttrpc, oci};
use protobuf::Message as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

fn dispatcher(stand_in: &StandIn) -> Arc<Dispatcher> {
    let mut services = agent_ttrpc::create_agent_service(Arc::new(stand_in.clone()));
    services.extend(health_ttrpc::create_health(Arc::new(stand_in.clone())));
    Arc::new(Dispatcher::new(Rewriter::default(), services))
}

/// A client end, with the dispatcher serving the other end; the serving task's result.
fn connect(
    d: &Arc<Dispatcher>,
) -> (
    DuplexStream,
    tokio::task::JoinHandle<Result<(), ConnectionError>>,
) {
    let (client, server) = tokio::io::duplex(1 << 20);
    let d = Arc::clone(d);
    let task = tokio::spawn(async move { d.serve_connection(server).await });
    (client, task)
}

async fn send_frame(c: &mut DuplexStream, stream: u32, kind: u8, payload: &[u8]) {
    let mut out = Vec::new();
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(&[kind, 0]);
    out.extend_from_slice(payload);
    c.write_all(&out).await.unwrap();
}

async fn read_response(c: &mut DuplexStream) -> (u32, ttrpc::Response) {
    let mut header = [0u8; 10];
    tokio::time::timeout(TIMEOUT, c.read_exact(&mut header))
        .await
        .unwrap()
        .unwrap();
    let len = u32::from_be_bytes(header[0..4].try_into().unwrap()) as usize;
    let stream = u32::from_be_bytes(header[4..8].try_into().unwrap());
    assert_eq!(header[8], 2, "a response frame");
    let mut body = vec![0u8; len];
    c.read_exact(&mut body).await.unwrap();
    (stream, ttrpc::Response::parse_from_bytes(&body).unwrap())
}

fn request(service: &str, method: &str, payload: Vec<u8>) -> Vec<u8> {
    let mut r = ttrpc::Request::new();
    r.service = service.into();
    r.method = method.into();
    r.payload = payload;
    r.write_to_bytes().unwrap()
}

fn code(r: &ttrpc::Response) -> (ttrpc::Code, String) {
    let s = r.status.as_ref().cloned().unwrap_or_default();
    (s.code(), s.message().to_owned())
}

#[tokio::test]
async fn services_see_the_rewritten_requests() {
    let stand_in = StandIn::default();
    let d = dispatcher(&stand_in);
    let (client, _task) = connect(&d);
    let (agent, health) = ttrpc_clients(client);

    let mut req = agent::CreateContainerRequest::new();
    req.container_id = "c1".into();
    let mut spec = oci::Spec::new();
    let mut ns = oci::LinuxNamespace::new();
    ns.Type = "network".into();
    ns.Path = "/proc/1/ns/net".into();
    spec.Linux.mut_or_insert_default().Namespaces.push(ns);
    req.OCI = Some(spec).into();
    agent.create_container(ctx(), &req).await.unwrap();
    let mut sandbox = agent::CreateSandboxRequest::new();
    sandbox.dns = vec!["nameserver 10.96.0.10".into()];
    agent.create_sandbox(ctx(), &sandbox).await.unwrap();
    let answer = health
        .check(ctx(), &health::CheckRequest::new())
        .await
        .unwrap();
    assert_eq!(
        answer.status,
        health::health_check_response::ServingStatus::SERVING.into()
    );

    let recorded = stand_in.recorded.lock().unwrap();
    let namespaces = &recorded.containers[0].OCI.Linux.Namespaces;
    assert_eq!(namespaces.len(), 1, "{namespaces:?}");
    assert_eq!(namespaces[0].Path, "/run/netns/podns");
    assert!(recorded.sandboxes[0].dns.is_empty());
}

#[tokio::test]
async fn a_slow_request_does_not_hold_up_the_others_and_deadlines_hold() {
    let stand_in = StandIn::default();
    let d = dispatcher(&stand_in);
    let (client, _task) = connect(&d);
    let (agent, health) = ttrpc_clients(client);
    let mut slow = agent::StartContainerRequest::new();
    slow.container_id = "slow".into();
    let slow_call = {
        let agent = agent.clone();
        let slow = slow.clone();
        tokio::spawn(async move { agent.start_container(ctx(), &slow).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    health
        .check(ctx(), &health::CheckRequest::new())
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "Check waited for the slow request"
    );
    assert!(!slow_call.is_finished());
    slow_call.await.unwrap().unwrap();

    // A client deadline shorter than the call (the raw request: ttrpc's client gives up on
    // its own): the dispatcher answers DEADLINE_EXCEEDED, as ttrpc's server does.
    drop(agent);
    drop(health);
    let (mut c, _task) = connect(&d);
    let mut r = ttrpc::Request::new();
    r.service = "grpc.AgentService".into();
    r.method = "StartContainer".into();
    r.payload = slow.write_to_bytes().unwrap();
    r.timeout_nano = 100_000_000;
    send_frame(&mut c, 1, 1, &r.write_to_bytes().unwrap()).await;
    let (stream, answer) = read_response(&mut c).await;
    assert_eq!(stream, 1);
    assert_eq!(
        code(&answer),
        (ttrpc::Code::DEADLINE_EXCEEDED, "timeout".into())
    );
}

#[tokio::test]
async fn what_cannot_be_served_gets_ttrpcs_statuses_on_its_stream() {
    let stand_in = StandIn::default();
    let d = dispatcher(&stand_in);
    let (mut c, _task) = connect(&d);

    send_frame(&mut c, 2, 1, &request("grpc.Health", "Check", vec![])).await;
    let (stream, r) = read_response(&mut c).await;
    assert_eq!(stream, 2);
    assert_eq!(
        code(&r),
        (
            ttrpc::Code::INVALID_ARGUMENT,
            "stream id must be odd".into()
        )
    );

    send_frame(&mut c, 3, 1, &request("grpc.Nope", "Check", vec![])).await;
    let (stream, r) = read_response(&mut c).await;
    assert_eq!(stream, 3);
    assert_eq!(
        code(&r),
        (
            ttrpc::Code::INVALID_ARGUMENT,
            "grpc.Nope service does not exist".into()
        )
    );

    send_frame(&mut c, 5, 1, &request("grpc.Health", "Nope", vec![])).await;
    let (_, r) = read_response(&mut c).await;
    assert_eq!(code(&r), (ttrpc::Code::UNIMPLEMENTED, "Nope method".into()));

    send_frame(&mut c, 7, 3, b"data").await;
    let (stream, r) = read_response(&mut c).await;
    assert_eq!(stream, 7);
    assert_eq!(code(&r).0, ttrpc::Code::INVALID_ARGUMENT);

    // A request envelope that does not decode.
    send_frame(&mut c, 9, 1, &[0xff, 0xff, 0xff]).await;
    let (stream, r) = read_response(&mut c).await;
    assert_eq!(stream, 9);
    assert_eq!(code(&r).0, ttrpc::Code::INVALID_ARGUMENT);

    // A CreateContainer whose body does not decode: refused, never served unrewritten.
    send_frame(
        &mut c,
        11,
        1,
        &request("grpc.AgentService", "CreateContainer", vec![0x0a, 0xff]),
    )
    .await;
    let (stream, r) = read_response(&mut c).await;
    assert_eq!(stream, 11);
    let (status, message) = code(&r);
    assert_eq!(status, ttrpc::Code::INVALID_ARGUMENT);
    assert!(message.contains("CreateContainer"), "{message}");
    assert!(stand_in.recorded.lock().unwrap().containers.is_empty());

    // The connection still serves.
    let check = health::CheckRequest::new().write_to_bytes().unwrap();
    send_frame(&mut c, 13, 1, &request("grpc.Health", "Check", check)).await;
    let (stream, r) = read_response(&mut c).await;
    assert_eq!(stream, 13);
    assert!(r.status.is_none() || r.status.code() == ttrpc::Code::OK);
}

#[tokio::test]
async fn hostile_framing_ends_the_connection_before_any_service() {
    let stand_in = StandIn::default();
    let d = dispatcher(&stand_in);

    // A frame announcing more than ttrpc's 4 MiB: the connection ends before the payload.
    let (mut c, task) = connect(&d);
    let mut header = Vec::new();
    header.extend_from_slice(&((4u32 << 20) + 1).to_be_bytes());
    header.extend_from_slice(&1u32.to_be_bytes());
    header.extend_from_slice(&[1, 0]);
    c.write_all(&header).await.unwrap();
    let ended = tokio::time::timeout(TIMEOUT, task).await.unwrap().unwrap();
    let err = ended.expect_err("an oversized frame ends the connection");
    assert!(
        peerpod_text::error_chain(&err).contains("4194304"),
        "{}",
        peerpod_text::error_chain(&err)
    );

    // A frame of a type ttrpc does not define.
    let (mut c, task) = connect(&d);
    send_frame(&mut c, 1, 9, b"x").await;
    let ended = tokio::time::timeout(TIMEOUT, task).await.unwrap().unwrap();
    assert!(ended.is_err(), "an unknown frame type ends the connection");
    assert!(stand_in.recorded.lock().unwrap().containers.is_empty());
    assert!(stand_in.recorded.lock().unwrap().sandboxes.is_empty());
}

/// A Health service whose Check never returns; `live` counts the calls still running (a call
/// aborted with its task drops its guard).
#[derive(Clone, Default)]
struct Hang {
    live: Arc<std::sync::atomic::AtomicUsize>,
}

struct Live(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl health_ttrpc::Health for Hang {
    async fn check(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        _: health::CheckRequest,
    ) -> ttrpc::Result<health::HealthCheckResponse> {
        self.live.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _guard = Live(Arc::clone(&self.live));
        std::future::pending::<()>().await;
        Ok(health::HealthCheckResponse::new())
    }
}

/// A client that floods one connection with requests that never finish gets
/// RESOURCE_EXHAUSTED beyond `MAX_IN_FLIGHT`, and closing the connection ends every one of
/// its requests (nothing keeps running for a client that is gone).
#[tokio::test]
async fn in_flight_requests_are_capped_and_end_with_their_connection() {
    use peerpod_forwarder::dispatch::MAX_IN_FLIGHT;
    use std::sync::atomic::Ordering;
    let hang = Hang::default();
    let services = health_ttrpc::create_health(Arc::new(hang.clone()));
    let d = Arc::new(Dispatcher::new(Rewriter::default(), services));
    let (mut c, task) = connect(&d);
    let check = request(
        "grpc.Health",
        "Check",
        health::CheckRequest::new().write_to_bytes().unwrap(),
    );
    for i in 0..=MAX_IN_FLIGHT as u32 {
        send_frame(&mut c, 2 * i + 1, 1, &check).await;
    }
    let (stream, answer) = read_response(&mut c).await;
    assert_eq!(
        stream,
        2 * MAX_IN_FLIGHT as u32 + 1,
        "the request over the cap"
    );
    let (code, message) = code(&answer);
    assert_eq!(code, ttrpc::Code::RESOURCE_EXHAUSTED, "{message}");
    assert!(message.contains("already running"), "{message}");
    let deadline = std::time::Instant::now() + TIMEOUT;
    while hang.live.load(Ordering::SeqCst) < MAX_IN_FLIGHT {
        assert!(
            std::time::Instant::now() < deadline,
            "the calls did not start"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(hang.live.load(Ordering::SeqCst), MAX_IN_FLIGHT);

    drop(c);
    tokio::time::timeout(TIMEOUT, task)
        .await
        .expect("the connection ends")
        .unwrap()
        .unwrap();
    while hang.live.load(Ordering::SeqCst) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} calls still running after the client left",
            hang.live.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Over 4 MiB once rewritten: refused with the separate forwarder's status, and the service
/// never sees it.
#[tokio::test]
async fn a_request_over_4_mib_once_rewritten_is_refused_as_the_forwarder_does() {
    let stand_in = StandIn::default();
    let d = dispatcher(&stand_in);
    let (mut c, _task) = connect(&d);
    let env = create_container_just_under_the_limit();
    assert!(env.len() > (4 << 20) - 100 && env.len() <= 4 << 20);
    send_frame(&mut c, 1, 1, &env).await;
    let (stream, answer) = read_response(&mut c).await;
    assert_eq!(stream, 1);
    assert_eq!(
        code(&answer),
        (
            ttrpc::Code::INVALID_ARGUMENT,
            format!(
                "agent-protocol-forwarder: {}",
                peerpod_forwarder::rewrite::REWRITTEN_TOO_LARGE
            )
        )
    );
    assert!(stand_in.recorded.lock().unwrap().containers.is_empty());
}
