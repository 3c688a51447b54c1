//! Provisioning start → files written, with user data from an IMDS stand-in on loopback.
//!
//! A: IMDS ready at once. `process-user-data provision-files` (fetch, base64, strict YAML,
//!    allow-list, initdata decode + check + digest, atomic writes) against the least a
//!    provisioner must do, measured in the same run: `curl -H Metadata:true | base64 -d >
//!    file` (no parsing, no initdata).
//! B: IMDS answering 503 for its first second (user data set late by the host). Ours (pauses
//!    from 100 ms, doubling to 2 s) against upstream's published retry policy (a fixed 5 s
//!    pause between attempts, `retry.Delay(5s)` with `FixedDelay`) run as a curl loop.
//!
//! Run: `cargo bench -p peerpod-provision` (about 40 s).

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;

const BIN: &str = env!("CARGO_BIN_EXE_process-user-data");
const PATH: &str = "/metadata/instance/compute/userData?api-version=2021-01-01&format=text";

fn user_data() -> String {
    let doc = "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"aa.toml\" = '''\n\
               [token_configs.kbs]\nurl = \"https://kbs.example.com\"\n'''\n\"cdh.toml\" = '''\n\
               socket = \"unix:///run/confidential-containers/cdh.sock\"\n[kbc]\nname = \"cc_kbc\"\n\
               url = \"https://kbs.example.com\"\n'''\n\"policy.rego\" = '''\npackage agent_policy\n\n\
               default CreateContainerRequest := true\n'''\n";
    let initdata = peerpod_policy::initdata::encode_annotation(doc.as_bytes());
    let ud = format!(
        "#cloud-config\nwrite_files:\n- path: /run/peerpod/apf.json\n  content: |\n    \
         {{\"pod-network\":{{\"podip\":\"10.0.0.2/24\"}}}}\n- path: /run/peerpod/initdata\n  \
         content: {initdata}\n"
    );
    base64::engine::general_purpose::STANDARD.encode(ud)
}

/// Serves `body` to requests with `Metadata: true`; 503 until `ready` is in the past.
fn serve(body: String, ready: Arc<Mutex<Instant>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut metadata = false;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                metadata |= line.split_once(':').is_some_and(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("metadata") && v.trim() == "true"
                });
            }
            let ok = metadata && Instant::now() >= *ready.lock().expect("ready");
            let (status, reply) = if ok { (200, body.as_str()) } else { (503, "") };
            let mut s = stream;
            let _ = write!(
                s,
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                reply.len()
            );
        }
    });
    port
}

fn ours(url: &str, root: &Path) -> Duration {
    let _ = std::fs::remove_dir_all(root);
    std::fs::create_dir_all(root).expect("root");
    let start = Instant::now();
    let out = Command::new(BIN)
        .args([
            "--log-level",
            "error",
            "provision-files",
            "--user-data-file",
        ])
        .arg("/nonexistent/user-data")
        .args(["--imds-url", url, "-t", "60", "--root"])
        .arg(root)
        .output()
        .expect("process-user-data");
    let t = start.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(root.join("run/peerpod/initdata.digest").exists());
    t
}

fn baseline(url: &str, root: &Path, retry_pause: &str) -> Duration {
    let _ = std::fs::remove_dir_all(root);
    std::fs::create_dir_all(root).expect("root");
    let file = root.join("user-data");
    let script = format!(
        "until curl -sf -H 'Metadata: true' '{url}' > '{f}.b64'; do sleep {retry_pause}; done; \
         base64 -d < '{f}.b64' > '{f}'",
        f = file.display()
    );
    let start = Instant::now();
    let ok = Command::new("sh")
        .args(["-c", &script])
        .status()
        .is_ok_and(|s| s.success());
    let t = start.elapsed();
    assert!(ok && file.exists(), "the curl baseline failed");
    t
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("*** SKIPPED: curl is needed for the baseline ***");
        return;
    }
    let ready = Arc::new(Mutex::new(Instant::now()));
    let port = serve(user_data(), ready.clone());
    let url = format!("http://127.0.0.1:{port}{PATH}");
    let dir = std::env::temp_dir().join(format!("pp-prov-bench-{}", std::process::id()));

    let runs = 20;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        a.push(ours(&url, &dir.join("ours")));
        b.push(baseline(&url, &dir.join("curl"), "5"));
    }
    let (a, b) = (median(a), median(b));
    println!(
        "A  IMDS ready:  process-user-data {:.1} ms  curl|base64 {:.1} ms  ratio {:.2}x  \
         (median of {runs})",
        ms(a),
        ms(b),
        a.as_secs_f64() / b.as_secs_f64()
    );

    let late = Duration::from_secs(1);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        *ready.lock().expect("ready") = Instant::now() + late;
        a.push(ours(&url, &dir.join("ours")));
        *ready.lock().expect("ready") = Instant::now() + late;
        b.push(baseline(&url, &dir.join("curl"), "5"));
    }
    let (a, b) = (median(a), median(b));
    println!(
        "B  IMDS 1 s late:  process-user-data {:.0} ms  upstream's fixed 5 s retry (curl loop) \
         {:.0} ms  ratio {:.2}x  (median of 3)",
        ms(a),
        ms(b),
        a.as_secs_f64() / b.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
