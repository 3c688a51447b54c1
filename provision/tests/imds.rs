//! User data from an Azure IMDS stand-in on a veth between two network namespaces: the
//! stand-in listens on 169.254.169.254:80 in one, `process-user-data` runs in the other with
//! its default URL. The stand-in answers only upstream's request (path, query and the
//! `Metadata: true` header, else 400 as Azure does) with base64 user data. A slow start is
//! retried within the deadline; user data that is not YAML (or not base64) is retried, then
//! the run fails with nothing written.

mod common;

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd as _;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use peerpod_tests::scratch::ScratchDir;

static SEQ: AtomicUsize = AtomicUsize::new(0);

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

/// Two namespaces joined by a veth: the server's holds 169.254.169.254/16.
struct Link {
    server: String,
    client: String,
}

impl Link {
    fn new() -> Option<Link> {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}x{n}", std::process::id() % 100_000);
        let link = Link {
            server: format!("ppimds-s{tag}"),
            client: format!("ppimds-c{tag}"),
        };
        let (vs, vc) = (format!("pis{tag}"), format!("pic{tag}"));
        let ok = ip(&["netns", "add", &link.server])
            && ip(&["netns", "add", &link.client])
            && ip(&["link", "add", &vs, "type", "veth", "peer", "name", &vc])
            && ip(&["link", "set", &vs, "netns", &link.server])
            && ip(&["link", "set", &vc, "netns", &link.client])
            && ip(&[
                "-n",
                &link.server,
                "addr",
                "add",
                "169.254.169.254/16",
                "dev",
                &vs,
            ])
            && ip(&[
                "-n",
                &link.client,
                "addr",
                "add",
                "169.254.0.2/16",
                "dev",
                &vc,
            ])
            && ip(&["-n", &link.server, "link", "set", &vs, "up"])
            && ip(&["-n", &link.client, "link", "set", &vc, "up"])
            && ip(&["-n", &link.server, "link", "set", "lo", "up"])
            && ip(&["-n", &link.client, "link", "set", "lo", "up"]);
        if require(ok, "network namespaces with veth (root and iproute2)") {
            Some(link)
        } else {
            None
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.server]);
        let _ = ip(&["netns", "del", &self.client]);
    }
}

/// What the stand-in saw.
#[derive(Default)]
struct Seen {
    requests: usize,
    without_header: usize,
}

/// The stand-in: after `delay_bind`, answers `bodies[i]` (the last one repeated) to the i-th
/// well-formed request, with status `statuses[i]` (200 past the list's end).
fn serve(netns: &str, delay_bind: Duration, statuses: Vec<u16>, body: String) -> Arc<Mutex<Seen>> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let seen2 = seen.clone();
    let ns = std::fs::File::open(format!("/run/netns/{netns}")).expect("netns file");
    std::thread::spawn(move || {
        // This thread alone moves into the server's namespace.
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        std::thread::sleep(delay_bind);
        let listener = TcpListener::bind("169.254.169.254:80").expect("bind the stand-in");
        for stream in listener.incoming().flatten() {
            handle(stream, &seen2, &statuses, &body);
        }
    });
    seen
}

fn handle(stream: TcpStream, seen: &Mutex<Seen>, statuses: &[u16], body: &str) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut metadata = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if line
            .split_once(':')
            .is_some_and(|(k, v)| k.trim().eq_ignore_ascii_case("metadata") && v.trim() == "true")
        {
            metadata = true;
        }
    }
    let expected = "GET /metadata/instance/compute/userData?api-version=2021-01-01&format=text ";
    let (status, reply) = {
        let mut seen = seen.lock().expect("seen");
        if !metadata {
            seen.without_header += 1;
            (
                400,
                "Bad request. Required metadata header not specified".to_string(),
            )
        } else if !request_line.starts_with(expected) {
            (404, "not found".to_string())
        } else {
            seen.requests += 1;
            let status = statuses.get(seen.requests - 1).copied().unwrap_or(200);
            (status, body.to_string())
        }
    };
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
        reply.len()
    );
}

fn provision_in(link: &Link, root: &std::path::Path, timeout: &str) -> std::process::Output {
    Command::new("ip")
        .args(["netns", "exec", &link.client, BIN, "provision-files", "--root"])
        .arg(root)
        // Not on Azure and no cidata here: the explicit URL (upstream's) picks IMDS.
        .args([
            "--user-data-file",
            "/nonexistent/user-data",
            "--imds-url",
            "http://169.254.169.254/metadata/instance/compute/userData?api-version=2021-01-01&format=text",
            "-t",
            timeout,
        ])
        .output()
        .expect("run process-user-data in the client namespace")
}

fn user_data_b64() -> (String, String) {
    let doc = initdata_doc("sha256");
    let ud = cloud_config(&[
        ("/run/peerpod/apf.json", "{}"),
        ("/run/peerpod/initdata", &encoded(&doc)),
    ]);
    (b64(ud.as_bytes()), doc)
}

#[test]
fn imds_user_data_is_provisioned() {
    let Some(link) = Link::new() else { return };
    let (body, doc) = user_data_b64();
    let seen = serve(&link.server, Duration::ZERO, vec![], body);
    std::thread::sleep(Duration::from_millis(200));
    let dir = ScratchDir::new("imds-ok").expect("scratch");
    let out = provision_in(&link, dir.path(), "20");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(peerpod(dir.path(), "initdata.digest")).expect("digest"),
        digest_hex(&doc)
    );
    let seen = seen.lock().expect("seen");
    assert_eq!(seen.requests, 1);
    assert_eq!(seen.without_header, 0);
}

#[test]
fn a_slow_imds_is_retried_within_the_deadline() {
    let Some(link) = Link::new() else { return };
    let (body, doc) = user_data_b64();
    // Nothing listens for 1.5 s, then two 500s, then the user data.
    let seen = serve(
        &link.server,
        Duration::from_millis(1500),
        vec![500, 503],
        body,
    );
    let dir = ScratchDir::new("imds-slow").expect("scratch");
    let out = provision_in(&link, dir.path(), "30");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(peerpod(dir.path(), "initdata.digest")).expect("digest"),
        digest_hex(&doc)
    );
    assert_eq!(seen.lock().expect("seen").requests, 3);
    assert!(stderr(&out).contains("retrying"), "{}", stderr(&out));
}

#[test]
fn non_yaml_user_data_is_retried_then_fails() {
    for (what, body) in [
        ("not YAML", b64(b"write_files: [\n  {{{")),
        ("not base64", "#cloud-config\nwrite_files: []\n".to_string()),
    ] {
        let Some(link) = Link::new() else { return };
        let seen = serve(&link.server, Duration::ZERO, vec![], body);
        std::thread::sleep(Duration::from_millis(200));
        let dir = ScratchDir::new("imds-bad").expect("scratch");
        let out = provision_in(&link, dir.path(), "3");
        assert!(!out.status.success(), "{what}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("no valid user data"), "{what}: {err}");
        assert!(seen.lock().expect("seen").requests >= 3, "{what}: retried");
        assert_eq!(written(dir.path()), Vec::<String>::new(), "{what}");
    }
}
