//! api-server-rest inside the pod's network namespace, started as the pod VM starts it
//! (`ip netns exec podns api-server-rest`, its default address 127.0.0.1:8006): a process in that
//! namespace (as a container is) fetches a resource through it from the real
//! confidential-data-hub (offline_fs_kbc), over the CDH's unix socket; a process in another
//! namespace cannot reach it.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use peerpod_forwarder::podnet::netns;

/// Killed and reaped on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A named network namespace with `lo` up (as `netns@podns.service` makes it), deleted on drop.
struct Ns(String);

impl Ns {
    fn new(name: String) -> Self {
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        for args in [
            vec!["netns", "add", name.as_str()],
            vec!["-n", name.as_str(), "link", "set", "lo", "up"],
        ] {
            let status = Command::new("ip").args(&args).status().unwrap();
            assert!(status.success(), "ip {}", args.join(" "));
        }
        Self(name)
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.0)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

/// `GET path` on 127.0.0.1:8006 from inside `ns`: the whole HTTP answer, or why not.
async fn get_in(ns: &Ns, path: &'static str, wait: Duration) -> Result<String, String> {
    netns::run_in(Some(&ns.path()), move || async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let started = Instant::now();
        let mut stream = loop {
            match tokio::net::TcpStream::connect("127.0.0.1:8006").await {
                Ok(s) => break s,
                Err(e) if started.elapsed() >= wait => return Err(e.to_string()),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:8006\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(20), stream.read_to_string(&mut answer))
            .await
            .map_err(|_| "no answer within 20 s".to_owned())?
            .map_err(|e| e.to_string())?;
        Ok(answer)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_process_in_the_pod_namespace_reaches_api_server_rest_on_its_loopback() {
    let (Some(rest_bin), Some(cdh_bin)) = (
        common::workspace_binary(
            "api-server-rest",
            "API_SERVER_REST_BIN",
            "confidential-data-hub",
        ),
        common::workspace_binary("confidential-data-hub", "CDH_BIN", "confidential-data-hub"),
    ) else {
        return;
    };
    let dir = common::scratch("rest-podns");
    let d = dir.display();
    // "pod-secret: 42", base64, as offline_fs_kbc's files hold resources.
    std::fs::write(
        dir.join("resources.json"),
        r#"{"default/key/pod": "cG9kLXNlY3JldDogNDI="}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("cdh.toml"),
        format!(
            "socket = \"unix://{d}/cdh.sock\"\n[kbc]\nname = \"offline_fs_kbc\"\n\
             [aa]\naa_socket = \"unix://{d}/aa.sock\"\n\
             [peerpod]\noffline_fs_kbc_files = [\"{d}/resources.json\"]\n"
        ),
    )
    .unwrap();
    let _cdh = Running(
        Command::new(&cdh_bin)
            .arg("-c")
            .arg(dir.join("cdh.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("cdh.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while !dir.join("cdh.sock").exists() {
        let log = std::fs::read_to_string(dir.join("cdh.log")).unwrap_or_default();
        assert!(
            started.elapsed() < common::TIMEOUT,
            "the CDH never made its socket: {log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let id = std::process::id() % 100_000;
    let podns = Ns::new(format!("fw-rest{id}"));
    let other = Ns::new(format!("fw-other{id}"));
    // As api-server-rest.service does: in the pod namespace, on its default address.
    let _rest = Running(
        Command::new("ip")
            .args(["netns", "exec", &podns.0])
            .arg(&rest_bin)
            .arg("-c")
            .arg(format!("unix://{d}/cdh.sock"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("rest.log")).unwrap())
            .spawn()
            .unwrap(),
    );

    let answer = get_in(&podns, "/cdh/resource/default/key/pod", common::TIMEOUT).await;
    let log = std::fs::read_to_string(dir.join("rest.log")).unwrap_or_default();
    let answer = answer.unwrap_or_else(|e| panic!("from the pod namespace: {e}; log: {log}"));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("\r\n\r\npod-secret: 42"), "{answer}");
    // A resource the CDH does not hold is the CDH's 404, through the same path.
    let missing = get_in(&podns, "/cdh/resource/default/key/none", common::TIMEOUT)
        .await
        .unwrap();
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");

    // Another namespace's loopback is another loopback: nothing listens there.
    let refused = get_in(&other, "/cdh/resource/default/key/pod", Duration::ZERO).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("refused") || e.contains("Connection")),
        "{refused:?}"
    );
}
