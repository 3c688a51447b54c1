//! Shared by the provisioning tests: running the binary, user data and initdata builders, and
//! a view of what landed under a root prefix.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;
use peerpod_policy::initdata::{InitData, encode_annotation};

pub const BIN: &str = env!("CARGO_BIN_EXE_process-user-data");

pub const AA_TOML: &str = "[token_configs.kbs]\nurl = \"https://kbs.example.com\"\n";
pub const CDH_TOML: &str = "socket = \"unix:///run/confidential-containers/cdh.sock\"\n\
                            [kbc]\nname = \"cc_kbc\"\nurl = \"https://kbs.example.com\"\n";
pub const POLICY: &str = "package agent_policy\n\ndefault CreateContainerRequest := true\n";

/// An initdata document with the three data keys.
pub fn initdata_doc(algorithm: &str) -> String {
    format!(
        "version = \"0.1.0\"\nalgorithm = \"{algorithm}\"\n\n[data]\n\"aa.toml\" = '''\n{AA_TOML}'''\n\
         \"cdh.toml\" = '''\n{CDH_TOML}'''\n\"policy.rego\" = '''\n{POLICY}'''\n"
    )
}

/// The library's digest of `doc` (what `initdata digest` prints).
pub fn digest_hex(doc: &str) -> String {
    InitData::parse(doc.as_bytes())
        .expect("test initdata parses")
        .digest()
        .to_hex()
}

/// A cloud-config document writing `entries` (path, content) as block scalars.
pub fn cloud_config(entries: &[(&str, &str)]) -> String {
    let mut doc = String::from("#cloud-config\nwrite_files:\n");
    for (path, content) in entries {
        doc.push_str(&format!("- path: {path}\n  content: |\n"));
        for line in content.lines() {
            doc.push_str(&format!("    {line}\n"));
        }
        if content.is_empty() {
            doc.push_str("    \n");
        }
    }
    doc
}

/// The annotation form of `doc`.
pub fn encoded(doc: &str) -> String {
    encode_annotation(doc.as_bytes())
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Runs `process-user-data provision-files` with a root prefix and extra args.
pub fn provision(root: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("provision-files")
        .arg("--root")
        .arg(root)
        .args(args)
        .env_remove("PEERPOD_IMDS_URL")
        .env("RUST_LOG", "info")
        .output()
        .expect("run process-user-data")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every file under `root` (relative path → (mode, content)); symlinks as `-> target`.
pub fn tree(root: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, (u32, Vec<u8>)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap_or(&p).display().to_string();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.file_type().is_symlink() {
                let t = std::fs::read_link(&p).unwrap_or_default();
                out.insert(rel, (0, format!("-> {}", t.display()).into_bytes()));
            } else if m.is_dir() {
                walk(base, &p, out);
            } else {
                let content = std::fs::read(&p).unwrap_or_default();
                out.insert(rel, (m.permissions().mode() & 0o7777, content));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// The names of the files in `<root>/run/peerpod`.
pub fn written(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root.join("run/peerpod"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

pub fn peerpod(root: &Path, name: &str) -> PathBuf {
    root.join("run/peerpod").join(name)
}

/// Fails under CI, else prints a loud SKIPPED line; returns whether to go on.
pub fn require(ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    let message = format!("{what} is not available here");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message} (CI=true: a missing tool fails)");
    }
    use std::io::Write as _;
    let _ = std::io::stderr().write_all(format!("\n*** SKIPPED: {message} ***\n").as_bytes());
    false
}
