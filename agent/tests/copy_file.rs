//! CopyFile through the `kata-agent` binary over its real socket, against a shared directory in
//! which the host planted symlinks and hard links to a file and a directory outside it: nothing
//! outside is written, chmod-ed or chown-ed; escaping symlink targets need the policy's own
//! rule; the policy sees special files as `Unknown`; non-UTF-8 symlink targets are refused.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::{Agent, ctx, repo_file, status_of};
use peerpod_protocols::kata::{agent, agent_ttrpc};
use ttrpc::Code;

fn policy_line(path: &str) -> String {
    format!("policy_file = '{}'\n", repo_file(path).display())
}

fn request(path: &Path, data: &[u8], offset: i64, size: i64, mode: u32) -> agent::CopyFileRequest {
    let mut r = agent::CopyFileRequest::new();
    r.path = path.display().to_string();
    r.data = data.to_vec();
    r.offset = offset;
    r.file_size = size;
    r.file_mode = mode;
    r.dir_mode = 0o40_755;
    r.uid = 4242;
    r.gid = 4242;
    r
}

/// `outside/secret` (0640, "original") and `outside/` (0750), next to the shared directory.
fn outside(agent: &Agent) -> PathBuf {
    let outside = agent.dir.join("outside");
    std::fs::create_dir_all(&outside).expect("outside");
    std::fs::write(outside.join("secret"), "original").expect("secret");
    std::fs::set_permissions(outside.join("secret"), PermissionsExt::from_mode(0o640))
        .expect("mode");
    std::fs::set_permissions(&outside, PermissionsExt::from_mode(0o750)).expect("mode");
    outside
}

fn assert_untouched(outside: &Path) {
    let secret = outside.join("secret");
    assert_eq!(
        std::fs::read_to_string(&secret).expect("secret"),
        "original"
    );
    let meta = std::fs::metadata(&secret).expect("meta");
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    let dir = std::fs::metadata(outside).expect("meta");
    assert_eq!(dir.permissions().mode() & 0o7777, 0o750);
    assert_eq!((dir.uid(), dir.gid()), (0, 0));
    let names: Vec<_> = std::fs::read_dir(outside)
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["secret"], "nothing new outside");
}

async fn copy(
    client: &agent_ttrpc::AgentServiceClient,
    request: &agent::CopyFileRequest,
) -> Result<(), (Code, String)> {
    match client.copy_file(ctx(), request).await {
        Ok(_) => Ok(()),
        Err(e) => Err(status_of(Err::<(), _>(e))),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn planted_symlinks_and_hard_links_lead_nowhere_outside() {
    let mut agent = Agent::start(
        "copy-tricks",
        None,
        &policy_line("policy/examples/allow-all.rego"),
    );
    let (client, _) = agent.connect().await;
    let outside = outside(&agent);
    let shared = agent.dir.join("shared");
    std::fs::create_dir_all(&shared).expect("shared");
    let secret = outside.join("secret");
    std::os::unix::fs::symlink(&outside, shared.join("dir-link")).expect("plant");
    std::os::unix::fs::symlink(&secret, shared.join("file-link")).expect("plant");
    std::os::unix::fs::symlink(&secret, shared.join("f.part")).expect("plant");
    std::os::unix::fs::symlink(&secret, shared.join("f.tmp")).expect("plant");
    std::os::unix::fs::symlink(&outside, shared.join("sub")).expect("plant");
    std::fs::hard_link(&secret, shared.join("hard")).expect("plant");
    std::fs::hard_link(&secret, shared.join("hard-dir")).expect("plant");

    // The symlinked final component, as a directory and as a file.
    copy(
        &client,
        &request(&shared.join("dir-link"), b"", 0, 0, 0o40_777),
    )
    .await
    .expect("a directory replaces the link");
    assert!(
        std::fs::symlink_metadata(shared.join("dir-link"))
            .expect("meta")
            .is_dir()
    );
    copy(
        &client,
        &request(&shared.join("file-link"), b"new", 0, 3, 0o100_666),
    )
    .await
    .expect("a file replaces the link");
    // A planted NAME.part (and NAME.tmp) next to a file received in two chunks.
    let f = shared.join("f");
    copy(&client, &request(&f, b"chunk-", 0, 11, 0o100_666))
        .await
        .expect("first chunk");
    copy(&client, &request(&f, b"two\n\n", 6, 11, 0o100_666))
        .await
        .expect("last chunk");
    assert_eq!(std::fs::read_to_string(&f).expect("f"), "chunk-two\n\n");
    assert_eq!(std::fs::metadata(&f).expect("meta").uid(), 4242);
    // A symlinked intermediate directory.
    for r in [
        request(&shared.join("sub/x"), b"x", 0, 1, 0o100_644),
        request(&shared.join("sub/secret"), b"x", 0, 1, 0o100_644),
        request(&shared.join("sub/d"), b"", 0, 0, 0o40_777),
    ] {
        let (code, message) = copy(&client, &r).await.expect_err("refused");
        assert_eq!(code, Code::INVALID_ARGUMENT, "{message}");
        assert!(message.contains("does not follow symlinks"), "{message}");
    }
    // Hard links, as a file and as a directory.
    copy(
        &client,
        &request(&shared.join("hard"), b"changed", 0, 7, 0o100_666),
    )
    .await
    .expect("file");
    copy(
        &client,
        &request(&shared.join("hard-dir"), b"", 0, 0, 0o40_777),
    )
    .await
    .expect("dir");
    assert_untouched(&outside);
    assert_eq!(std::fs::metadata(&secret).expect("meta").nlink(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn symlink_targets_and_file_types_as_the_policy_sees_them() {
    let mut agent = Agent::start(
        "copy-symlinks",
        None,
        &policy_line("policy/examples/allow-all.rego"),
    );
    let (client, _) = agent.connect().await;
    let shared = agent.dir.join("shared/containers/c1");

    // A Kubernetes volume's relative link is made.
    let link = shared.join("token");
    copy(&client, &request(&link, b"..data/token", 0, 12, 0o120_777))
        .await
        .expect("relative link");
    assert_eq!(
        std::fs::read_link(&link).expect("link"),
        Path::new("..data/token")
    );
    // Absolute and `..` targets: the allow-all policy has no CopyFileUnsafeSymlinkRequest rule.
    for target in ["/etc/shadow", "../../../../etc/shadow", "a/../../x"] {
        let r = request(&shared.join("escape"), target.as_bytes(), 0, 1, 0o120_777);
        let (code, message) = copy(&client, &r).await.expect_err(target);
        assert_eq!(code, Code::PERMISSION_DENIED, "{target}: {message}");
        assert!(
            message.contains("CopyFileUnsafeSymlinkRequest"),
            "{message}"
        );
        assert!(std::fs::symlink_metadata(shared.join("escape")).is_err());
    }
    // A target that is not UTF-8 is refused before the policy.
    let r = request(&shared.join("bytes"), &[0x2e, 0xff, 0x00], 0, 3, 0o120_777);
    let (code, message) = copy(&client, &r).await.expect_err("not UTF-8");
    assert_eq!(code, Code::INVALID_ARGUMENT, "{message}");
    assert!(std::fs::symlink_metadata(shared.join("bytes")).is_err());

    // A policy that allows only what it sees as Unknown, and escaping links explicitly.
    let mut set = agent::SetPolicyRequest::new();
    set.policy = "package agent_policy\n\
        CopyFileRequest if { input.file_type == \"Unknown\" }\n\
        CopyFileRequest if { input.symlink_target == \"/etc/hostname\" }\n\
        CopyFileUnsafeSymlinkRequest if { input.symlink_target == \"/etc/hostname\" }\n"
        .to_owned();
    client.set_policy(ctx(), &set).await.expect("set policy");
    for (mode, what) in [
        (0o010_644, "fifo"),
        (0o020_644, "char device"),
        (0o060_644, "block device"),
        (0o140_644, "socket"),
    ] {
        let r = request(&shared.join(what), b"", 0, 0, mode);
        let (code, message) = copy(&client, &r).await.expect_err(what);
        // Past the policy (it saw Unknown), refused by CopyFile itself.
        assert_eq!(code, Code::INVALID_ARGUMENT, "{what}: {message}");
        assert!(message.contains("not file type"), "{message}");
        assert!(std::fs::symlink_metadata(shared.join(what)).is_err());
    }
    let (code, _) = copy(
        &client,
        &request(&shared.join("plain"), b"x", 0, 1, 0o100_644),
    )
    .await
    .expect_err("regular files are not Unknown");
    assert_eq!(code, Code::PERMISSION_DENIED);
    let allowed = shared.join("hostname");
    copy(
        &client,
        &request(&allowed, b"/etc/hostname", 0, 13, 0o120_777),
    )
    .await
    .expect("allowed by the policy's own rule");
    assert_eq!(
        std::fs::read_link(&allowed).expect("link"),
        Path::new("/etc/hostname")
    );
}
