//! Shared by the agent's integration tests: running the `kata-agent` binary and talking to it.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use peerpod_protocols::kata::{agent_ttrpc, health, health_ttrpc};
use ttrpc::Code;
use ttrpc::context::{self, Context};

pub const TIMEOUT: Duration = Duration::from_secs(20);

pub fn ctx() -> Context {
    context::with_timeout(i64::try_from(TIMEOUT.as_nanos()).unwrap_or(i64::MAX))
}

pub fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

/// A running agent in a temporary directory; killed on drop.
pub struct Agent {
    pub child: Child,
    pub addr: String,
    pub dir: PathBuf,
}

impl Agent {
    /// Starts the agent with `config_extra` appended to a config that sets `server_addr`.
    pub fn start(name: &str, server_addr: Option<&str>, config_extra: &str) -> Self {
        Self::launch(name, server_addr, config_extra, &[])
    }

    /// Starts the agent in a network namespace of its own, as in a peer-pod VM, where it runs in
    /// the pod's (the pod's network settings then stay off the test machine).
    pub fn start_in_own_netns(name: &str, config_extra: &str) -> Self {
        Self::launch(name, None, config_extra, &["unshare", "--net", "--"])
    }

    /// Starts the agent through `wrapper` (a program and its arguments, which ends by executing
    /// the agent, e.g. `["setpriv", "--bounding-set", "-sys_time", "unshare", "--net", "--"]`).
    pub fn start_wrapped(name: &str, config_extra: &str, wrapper: &[&str]) -> Self {
        Self::launch(name, None, config_extra, wrapper)
    }

    fn launch(name: &str, server_addr: Option<&str>, config_extra: &str, wrapper: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("agent-api-{}-{name}", std::process::id()));
        // Never through a mount a killed run left inside (remove_tree does not enter one).
        let _ = kata_agent::tree::remove_tree(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let addr = server_addr
            .map(str::to_owned)
            .unwrap_or_else(|| format!("unix://{}", dir.join("run/agent.sock").display()));
        let config = dir.join("agent.toml");
        std::fs::write(
            &config,
            format!("server_addr = '{addr}'\nlog_level = 'debug'\n{config_extra}"),
        )
        .expect("write config");
        let log = std::fs::File::create(dir.join("agent.log")).expect("log file");
        let agent = env!("CARGO_BIN_EXE_kata-agent");
        let (program, prefix) = match wrapper.split_first() {
            Some((program, rest)) => (*program, [rest, &[agent]].concat()),
            None => (agent, Vec::new()),
        };
        let child = Command::new(program)
            .args(prefix)
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--copy-root")
            .arg(dir.join("shared"))
            .arg("--resolv-conf")
            .arg(dir.join("resolv.conf"))
            .arg("--cgroup-parent")
            .arg(format!("/kata-agent-test-{}-{name}", std::process::id()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("kata-agent starts");
        Self { child, addr, dir }
    }

    /// A connected client, retrying until the agent listens.
    pub async fn connect(
        &mut self,
    ) -> (agent_ttrpc::AgentServiceClient, health_ttrpc::HealthClient) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Ok(client) = ttrpc::r#async::Client::connect(&self.addr).await {
                let health = health_ttrpc::HealthClient::new(client.clone());
                if health
                    .check(ctx(), &health::CheckRequest::new())
                    .await
                    .is_ok()
                {
                    return (agent_ttrpc::AgentServiceClient::new(client), health);
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the agent exited with {status}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not listen on {}: {}",
                self.addr,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }
}

impl Drop for Agent {
    /// SIGTERM first, so the agent removes its containers, mounts and cgroups even when a test
    /// fails; SIGKILL if it does not stop in time. Then the agent's directory goes (log,
    /// config, state), without entering a mount left in it: such a mount, and the directories
    /// holding it, stay and are named on stderr.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut stopped = false;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                stopped = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() && std::env::var_os("AGENT_TEST_KEEP").is_some() {
            eprintln!("*** kept {} (AGENT_TEST_KEEP)", self.dir.display());
            return;
        }
        if let Err(e) = kata_agent::tree::remove_tree(&self.dir) {
            eprintln!("*** {} left behind: {e}", self.dir.display());
        }
    }
}

pub fn status_of(result: Result<impl std::fmt::Debug, ttrpc::Error>) -> (Code, String) {
    match result {
        Err(ttrpc::Error::RpcStatus(s)) => (s.code(), s.message().to_owned()),
        other => panic!("expected an RPC status, got {other:?}"),
    }
}

pub const BUSYBOX: &str = "/bin/busybox";

/// A root filesystem under `dir` holding Debian's static busybox, its applets the tests run, and
/// the directories a container needs.
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    assert!(
        Path::new(BUSYBOX).is_file(),
        "{BUSYBOX} is missing: install Debian's busybox-static (make deps does)"
    );
    let rootfs = dir.join("rootfs");
    for sub in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(sub)).expect("rootfs dir");
    }
    std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).expect("copy busybox");
    for applet in [
        "sh", "echo", "cat", "sleep", "id", "hostname", "ls", "wc", "true", "kill", "stty", "tty",
        "grep", "tail", "readlink",
    ] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))
            .expect("applet link");
    }
    rootfs
}
