//! The `initdata` binary, run as a user runs it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn initdata(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_initdata"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("initdata runs");
    let mut pipe = child.stdin.take().expect("stdin");
    pipe.write_all(stdin.unwrap_or_default())
        .expect("write stdin");
    drop(pipe);
    child.wait_with_output().expect("initdata finishes")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/initdata.toml")
}

fn temp_file(name: &str, contents: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("initdata-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write temp file");
    path
}

#[test]
fn encode_decode_and_digest_round_trip() {
    let sample = sample();
    let sample = sample.to_str().expect("utf-8 path");
    let encoded = initdata(&["encode", sample], None);
    assert!(encoded.status.success(), "{}", stderr(&encoded));
    let annotation = stdout(&encoded);
    assert!(annotation.starts_with("H4sI") && annotation.trim_end().lines().count() == 1);

    let decoded = initdata(&["decode", "-"], Some(annotation.as_bytes()));
    assert!(decoded.status.success(), "{}", stderr(&decoded));
    assert_eq!(decoded.stdout, std::fs::read(sample).expect("sample"));

    // The digest is the same whether the document is given as TOML or as its annotation.
    let from_toml = stdout(&initdata(&["digest", sample], None));
    let from_annotation = stdout(&initdata(&["digest", "-"], Some(annotation.as_bytes())));
    assert_eq!(from_toml, from_annotation);
    assert_eq!(from_toml.trim().len(), 64);

    let pcr8 = stdout(&initdata(
        &["digest", "--platform", "azure-vtpm", sample],
        None,
    ));
    let hostdata = stdout(&initdata(&["digest", "--platform", "snp", sample], None));
    let mrconfigid = stdout(&initdata(&["digest", "--platform", "tdx", sample], None));
    assert_eq!(pcr8.trim().len(), 64);
    assert_ne!(
        pcr8, from_toml,
        "PCR 8 is the extend of the digest, not the digest"
    );
    assert_eq!(hostdata, from_toml, "sha256 fits HOSTDATA exactly");
    assert_eq!(
        mrconfigid.trim(),
        format!("{}{}", from_toml.trim(), "0".repeat(32))
    );
}

#[test]
fn check_reports_problems_and_fails() {
    let ok = initdata(&["check", sample().to_str().expect("path")], None);
    assert!(ok.status.success(), "{}{}", stdout(&ok), stderr(&ok));
    assert!(stdout(&ok).contains(": ok (sha256 algorithm, 3 data key(s))"));

    let bad = temp_file(
        "bad.toml",
        b"version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"policy.rego\" = \"package agent_policy\\nx if {\"\n",
    );
    let out = initdata(&["check", bad.to_str().expect("path")], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("error: data.\"policy.rego\": the policy does not compile"));
}

#[test]
fn invalid_documents_get_errors_that_say_what_to_fix() {
    let algo = temp_file(
        "algo.toml",
        b"version = \"0.1.0\"\nalgorithm = \"sha-384\"\n",
    );
    let out = initdata(&["digest", algo.to_str().expect("path")], None);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("is not a valid initdata document"), "{err}");
    assert!(
        err.contains("use one of \"sha256\", \"sha384\", \"sha512\""),
        "{err}"
    );

    let out = initdata(&["decode", "-"], Some(b"bm90IGd6aXA=\n"));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("not of gzip data"),
        "{}",
        stderr(&out)
    );

    let out = initdata(&["digest", "/nonexistent/initdata.toml"], None);
    assert!(stderr(&out).contains("cannot read /nonexistent/initdata.toml"));
}

#[test]
fn oversized_annotations_are_refused() {
    let big = format!(
        "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\nx = \"{}\"\n",
        "a".repeat(5000)
    );
    let doc = temp_file("big.toml", big.as_bytes());
    let annotation = stdout(&initdata(&["encode", doc.to_str().expect("path")], None));
    let out = initdata(
        &["--max-size", "4096", "decode", "-"],
        Some(annotation.as_bytes()),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("more than 4096 bytes"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn eval_and_replay_decide_with_the_documents_policy() {
    let sample = sample();
    let sample = sample.to_str().expect("path");
    let requests = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/requests");
    let create = requests.join("create-pause.json");
    let out = initdata(
        &[
            "eval",
            sample,
            "CreateContainerRequest",
            create.to_str().expect("path"),
        ],
        None,
    );
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(stdout(&out).starts_with("allow: CreateContainerRequest"));

    let shell = requests.join("exec-shell.json");
    let out = initdata(
        &[
            "eval",
            sample,
            "ExecProcessRequest",
            shell.to_str().expect("path"),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).starts_with("deny: ExecProcessRequest is blocked by policy: "));

    let sequence = requests.join("sequence.json");
    let out = initdata(&["replay", sample, sequence.to_str().expect("path")], None);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(!stdout(&out).contains("MISMATCH"));

    // A wrong expectation is reported and fails the run.
    let wrong = temp_file(
        "wrong.json",
        format!(
            "[{{\"kind\": \"ExecProcessRequest\", \"file\": \"{}\", \"allowed\": true}}]",
            shell.display()
        )
        .as_bytes(),
    );
    let out = initdata(&["replay", sample, wrong.to_str().expect("path")], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("MISMATCH"));
}
