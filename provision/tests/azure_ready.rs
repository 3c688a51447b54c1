//! The `azure-ready` binary against a WireServer stand-in on 127.0.0.1 (`--wireserver`): the
//! stand-in answers only upstream's requests (path, query, `x-ms-version`; on the health post
//! also `x-ms-agent-name` and the XML content type, else 400) and records the posted Health
//! document, whose fields are checked. 500s and a slow start are retried; a WireServer that
//! never recovers, and hostile goal states, fail the run with the cause named and nothing
//! posted. The goal-state parser also runs over deterministic mutations (fuzz target
//! `azure_goal_state`).

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use peerpod_tests::mutate::{Rng, mutate};

const BIN: &str = env!("CARGO_BIN_EXE_azure-ready");

const GOAL_STATE: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<GoalState \
    xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"><Version>2012-11-30</Version>\
    <Incarnation>3</Incarnation><Machine><ExpectedState>Started</ExpectedState></Machine>\
    <Container><ContainerId>6f1c3c2a-9a1e-4b7e-8d4c-2f7b9e1a0c55</ContainerId>\
    <RoleInstanceList><RoleInstance><InstanceId>a1b2c3d4.peer-pod-vm</InstanceId>\
    <State>Started</State></RoleInstance></RoleInstanceList></Container></GoalState>";

/// One request as the stand-in saw it.
#[derive(Debug, Clone)]
struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the stand-in answers to the n-th goal-state request: a status and a body.
type Script = dyn Fn(usize) -> (u16, Vec<u8>) + Send + Sync;

struct WireServer {
    url: String,
    seen: Arc<Mutex<Vec<Request>>>,
}

impl WireServer {
    fn start(goal_state: Box<Script>) -> WireServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        std::thread::spawn(move || {
            let mut gets = 0usize;
            for stream in listener.incoming().flatten() {
                let Some(req) = read_request(&stream) else {
                    continue;
                };
                let (status, body) = answer(&req, &mut gets, &*goal_state);
                log.lock().expect("log").push(req);
                let mut s = &stream;
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(&body);
            }
        });
        WireServer { url, seen }
    }

    fn requests(&self) -> Vec<Request> {
        self.seen.lock().expect("log").clone()
    }

    fn posts(&self) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "POST")
            .collect()
    }
}

fn answer(req: &Request, gets: &mut usize, goal_state: &Script) -> (u16, Vec<u8>) {
    if req.header("x-ms-version") != Some("2012-11-30") {
        return (400, b"missing x-ms-version".to_vec());
    }
    match (req.method.as_str(), req.target.as_str()) {
        ("GET", "/machine/?comp=goalstate") => {
            *gets += 1;
            goal_state(*gets)
        }
        ("POST", "/machine/?comp=health") => {
            let ok = req.header("content-type") == Some("text/xml;charset=utf-8")
                && req.header("x-ms-agent-name").is_some_and(|v| !v.is_empty());
            if ok {
                (200, Vec::new())
            } else {
                (400, b"bad headers".to_vec())
            }
        }
        _ => (404, Vec::new()),
    }
}

fn read_request(stream: &TcpStream) -> Option<Request> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        target,
        headers,
        body,
    })
}

fn run(url: &str, timeout: u64) -> Output {
    Command::new(BIN)
        .args(["--wireserver", url, "--timeout", &timeout.to_string()])
        .output()
        .expect("run azure-ready")
}

/// The Health document's (element, text) pairs, in order.
fn health_fields(body: &[u8]) -> Vec<(String, String)> {
    let text = std::str::from_utf8(body).expect("UTF-8 health");
    let doc = roxmltree::Document::parse(text).expect("health parses");
    assert_eq!(doc.root_element().tag_name().name(), "Health");
    doc.descendants()
        .filter(|n| n.is_element())
        .filter_map(|n| {
            let t = n.text()?.trim();
            (!t.is_empty()).then(|| (n.tag_name().name().to_owned(), t.to_owned()))
        })
        .collect()
}

#[test]
fn reports_ready_with_upstream_headers_and_fields() {
    let ws = WireServer::start(Box::new(|_| (200, GOAL_STATE.as_bytes().to_vec())));
    let out = run(&ws.url, 10);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let posts = ws.posts();
    assert_eq!(posts.len(), 1, "{:?}", ws.requests());
    assert_eq!(posts[0].header("x-ms-agent-name"), Some("WALinuxAgent"));
    let fields = health_fields(&posts[0].body);
    let want = [
        ("GoalStateIncarnation", "3"),
        ("ContainerId", "6f1c3c2a-9a1e-4b7e-8d4c-2f7b9e1a0c55"),
        ("InstanceId", "a1b2c3d4.peer-pod-vm"),
        ("State", "Ready"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    assert_eq!(fields, want);

    // A rerun (systemctl restart) reports again, the same way.
    assert!(run(&ws.url, 10).status.success());
    let posts = ws.posts();
    assert_eq!(posts.len(), 2);
    assert_eq!(posts[0].body, posts[1].body);
}

#[test]
fn errors_then_slow_start_are_retried() {
    // Two 500s, then a goal state that takes 300 ms, then success.
    let ws = WireServer::start(Box::new(|n| {
        if n <= 2 {
            return (500, b"not yet".to_vec());
        }
        std::thread::sleep(Duration::from_millis(300));
        (200, GOAL_STATE.as_bytes().to_vec())
    }));
    let out = run(&ws.url, 20);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gets = ws.requests().iter().filter(|r| r.method == "GET").count();
    assert_eq!(gets, 3);
    assert_eq!(ws.posts().len(), 1);
}

#[test]
fn a_wireserver_that_stays_broken_fails_with_the_cause() {
    let ws = WireServer::start(Box::new(|_| (500, b"broken".to_vec())));
    let out = run(&ws.url, 2);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("could not report Ready"), "{err}");
    assert!(err.contains("500"), "{err}");
    assert!(err.contains(&ws.url), "{err}");
    assert!(
        ws.requests().len() >= 2,
        "retried: {:?}",
        ws.requests().len()
    );
    assert!(ws.posts().is_empty());

    // Nothing listening at all: the same clear failure, within the deadline.
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let out = run(&url, 1);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("could not report Ready"));
}

#[test]
fn hostile_goal_states_are_refused_and_nothing_is_posted() {
    let bomb = "<?xml version=\"1.0\"?><!DOCTYPE GoalState [<!ENTITY a \"aaaaaaaaaaaaaaaa\">\
        <!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;\">\
        <!ENTITY c \"&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;\">]><GoalState>\
        <Incarnation>1</Incarnation><Container><ContainerId>&c;</ContainerId><RoleInstanceList>\
        <RoleInstance><InstanceId>x</InstanceId></RoleInstance></RoleInstanceList></Container>\
        </GoalState>"
        .to_owned();
    let huge = GOAL_STATE.replace("<Machine>", &format!("<Machine>{}", " ".repeat(1 << 20)));
    let missing = GOAL_STATE.replace("<InstanceId>a1b2c3d4.peer-pod-vm</InstanceId>", "");
    let injected = GOAL_STATE.replace(
        "a1b2c3d4.peer-pod-vm",
        "x&lt;/InstanceId&gt;&lt;State&gt;Ready",
    );
    let cases = [
        (bomb, "DTD"),
        (huge, "larger than"),
        (missing, "InstanceId"),
        (injected, "InstanceId is refused"),
    ];
    for (body, cause) in cases {
        let ws = WireServer::start(Box::new(move |_| (200, body.clone().into_bytes())));
        let out = run(&ws.url, 1);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{cause}");
        assert!(err.contains(cause), "{cause}: {err}");
        assert!(ws.posts().is_empty(), "{cause}");
    }
}

#[test]
fn goal_state_parser_survives_mutations() {
    use peerpod_provision::fuzzing::goal_state;
    let seeds: Vec<Vec<u8>> = vec![
        GOAL_STATE.as_bytes().to_vec(),
        b"<GoalState><Incarnation>1</Incarnation><Container><ContainerId>c</ContainerId>\
          <RoleInstanceList><RoleInstance><InstanceId>i</InstanceId></RoleInstance>\
          </RoleInstanceList></Container></GoalState>"
            .to_vec(),
        b"<!DOCTYPE x [<!ENTITY a \"b\">]><GoalState>&a;</GoalState>".to_vec(),
    ];
    for seed in &seeds {
        goal_state(seed);
    }
    let mut rng = Rng(0x0a2e_4ead);
    for _ in 0..20000 {
        let seed = &seeds[rng.below(seeds.len())];
        goal_state(&mutate(&mut rng, seed, &seeds));
    }
}

#[test]
fn unit_runs_once_on_azure_after_the_network() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../podvm/etc/systemd/system/azure-ready.service");
    let text = std::fs::read_to_string(path).expect("azure-ready.service");
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    for want in [
        "ConditionVirtualization=microsoft",
        "After=network-online.target",
        "Wants=network-online.target",
        "Type=oneshot",
        "RemainAfterExit=yes",
        "ExecStart=/usr/local/bin/azure-ready",
        "WantedBy=multi-user.target",
    ] {
        assert!(lines.contains(&want), "{want} missing");
    }
}
