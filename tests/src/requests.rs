//! Agent requests as the kata shim sends them, for busybox containers, and small client helpers:
//! what every test that drives an agent (on the host or in a [`crate::TestVm`]) needs.
//!
//! Requests are written as the JSON the agent policy sees and converted to the protobuf messages
//! with [`peerpod_protocols::json::from_json`]; a conversion error is returned, never a panic.

use std::time::Duration;

use peerpod_protocols::json::{JsonError, from_json};
use peerpod_protocols::kata::{agent, agent_ttrpc, health, health_ttrpc};
use serde_json::{Value, json};
use ttrpc::context::{self, Context};

/// How long a request may take: generous, for an agent in a VM under TCG.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A ttrpc context with [`REQUEST_TIMEOUT`].
pub fn ctx() -> Context {
    context::with_timeout(i64::try_from(REQUEST_TIMEOUT.as_nanos()).unwrap_or(i64::MAX))
}

/// The agent's clients on one connection to `addr` (`unix://`, `vsock://` or `tcp://`).
pub async fn connect(
    addr: &str,
) -> Result<(agent_ttrpc::AgentServiceClient, health_ttrpc::HealthClient), ttrpc::Error> {
    let client = ttrpc::r#async::Client::connect(addr).await?;
    Ok((
        agent_ttrpc::AgentServiceClient::new(client.clone()),
        health_ttrpc::HealthClient::new(client),
    ))
}

/// A health check request.
pub fn health_check() -> health::CheckRequest {
    health::CheckRequest::new()
}

/// CreateSandbox with `hostname` and one ephemeral (tmpfs) storage at `shm_mount_point`, as
/// the shim sends for the pod's /dev/shm.
pub fn sandbox(
    id: &str,
    hostname: &str,
    shm_mount_point: &str,
) -> Result<agent::CreateSandboxRequest, JsonError> {
    let value = json!({
        "sandbox_id": id,
        "hostname": hostname,
        "storages": [{
            "driver": "ephemeral", "source": "shm", "fstype": "tmpfs",
            "mount_point": shm_mount_point,
            "options": ["noexec", "nosuid", "nodev", "mode=1777", "size=1048576"]
        }]
    });
    message(&value)
}

/// CreateContainer for `args` in the busybox root filesystem at `rootfs` (a path in the
/// agent's file system), limited to 64 processes. Its environment has `PATH=/bin` and
/// `GREETING=hello`.
pub fn container(
    id: &str,
    rootfs: &str,
    args: &[&str],
) -> Result<agent::CreateContainerRequest, JsonError> {
    container_with(id, rootfs, args, json!({"Pids": {"Limit": 64}}))
}

/// [`container`] with the OCI `Linux.Resources` given (policy-input JSON names: `Pids`,
/// `Memory`, ...).
pub fn container_with(
    id: &str,
    rootfs: &str,
    args: &[&str],
    resources: Value,
) -> Result<agent::CreateContainerRequest, JsonError> {
    let value = json!({
        "container_id": id,
        "exec_id": id,
        "OCI": {
            "Version": "1.1.0",
            "Hostname": "busybox",
            "Root": {"Path": rootfs, "Readonly": false},
            "Process": {
                "Args": args,
                "Env": ["PATH=/bin", "GREETING=hello"],
                "Cwd": "/",
                "User": {"UID": 0, "GID": 0},
                "NoNewPrivileges": true,
                "Capabilities": {
                    "Bounding": ["CAP_KILL"], "Effective": ["CAP_KILL"], "Permitted": ["CAP_KILL"]
                }
            },
            "Mounts": [
                {"destination": "/proc", "type_": "proc", "source": "proc",
                 "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/dev", "type_": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type_": "devpts", "source": "devpts",
                 "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
                {"destination": "/sys", "type_": "sysfs", "source": "sysfs",
                 "options": ["nosuid", "noexec", "nodev", "ro"]},
                {"destination": "/sys/fs/cgroup", "type_": "cgroup", "source": "cgroup",
                 "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
            ],
            "Linux": {
                "Namespaces": [
                    {"Type": "pid"}, {"Type": "mount"}, {"Type": "ipc"}, {"Type": "uts"},
                    {"Type": "network"}
                ],
                "MaskedPaths": ["/proc/kcore"],
                "ReadonlyPaths": ["/proc/sys"],
                "Resources": resources
            }
        }
    });
    message(&value)
}

/// StartContainer.
pub fn start(container: &str) -> agent::StartContainerRequest {
    let mut request = agent::StartContainerRequest::new();
    request.container_id = container.into();
    request
}

/// ExecProcess of `args` in `container`, without a terminal.
pub fn exec(
    container: &str,
    exec_id: &str,
    args: &[&str],
) -> Result<agent::ExecProcessRequest, JsonError> {
    let value = json!({
        "container_id": container,
        "exec_id": exec_id,
        "process": {
            "Terminal": false,
            "Args": args,
            "Env": ["PATH=/bin"],
            "Cwd": "/",
            "User": {"UID": 0, "GID": 0},
            "NoNewPrivileges": true
        }
    });
    message(&value)
}

/// WriteStdin of `data`.
pub fn write_stdin(container: &str, exec_id: &str, data: &[u8]) -> agent::WriteStreamRequest {
    let mut request = agent::WriteStreamRequest::new();
    request.container_id = container.into();
    request.exec_id = exec_id.into();
    request.data = data.to_vec();
    request
}

/// CloseStdin.
pub fn close_stdin(container: &str, exec_id: &str) -> agent::CloseStdinRequest {
    let mut request = agent::CloseStdinRequest::new();
    request.container_id = container.into();
    request.exec_id = exec_id.into();
    request
}

/// SignalProcess with signal number `signal`.
pub fn signal(container: &str, exec_id: &str, signal: u32) -> agent::SignalProcessRequest {
    let mut request = agent::SignalProcessRequest::new();
    request.container_id = container.into();
    request.exec_id = exec_id.into();
    request.signal = signal;
    request
}

/// RemoveContainer, waiting up to 10 s.
pub fn remove(container: &str) -> agent::RemoveContainerRequest {
    let mut request = agent::RemoveContainerRequest::new();
    request.container_id = container.into();
    request.timeout = 10;
    request
}

/// Which output stream of a process to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// ReadStdout.
    Stdout,
    /// ReadStderr.
    Stderr,
}

/// Reads a process's stream until the agent reports its end (any error ends the read), as
/// text.
pub async fn read_all(
    client: &agent_ttrpc::AgentServiceClient,
    container: &str,
    exec_id: &str,
    stream: Stream,
) -> String {
    let mut out = Vec::new();
    loop {
        let mut request = agent::ReadStreamRequest::new();
        request.container_id = container.into();
        request.exec_id = exec_id.into();
        request.len = 4096;
        let reply = match stream {
            Stream::Stdout => client.read_stdout(ctx(), &request).await,
            Stream::Stderr => client.read_stderr(ctx(), &request).await,
        };
        match reply {
            Ok(reply) if !reply.data.is_empty() => out.extend(reply.data),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// WaitProcess: the process's exit status (128 + the signal number when a signal ended it).
pub async fn wait(
    client: &agent_ttrpc::AgentServiceClient,
    container: &str,
    exec_id: &str,
) -> Result<i32, ttrpc::Error> {
    let mut request = agent::WaitProcessRequest::new();
    request.container_id = container.into();
    request.exec_id = exec_id.into();
    Ok(client.wait_process(ctx(), &request).await?.status)
}

fn message<M: protobuf::MessageFull>(value: &Value) -> Result<M, JsonError> {
    let mut message = M::new();
    from_json(value, &mut message)?;
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_fit_the_protos() {
        let request = container("c", "/containers/busybox", &["/bin/true"]).expect("container");
        assert_eq!(request.container_id, "c");
        let spec = request.OCI.as_ref().expect("spec");
        assert_eq!(spec.Root.Path, "/containers/busybox");
        assert_eq!(spec.Mounts.len(), 5);
        let request = sandbox("sb", "pod", "/run/shm").expect("sandbox");
        assert_eq!(request.storages[0].mount_point, "/run/shm");
        let request = exec("c", "e", &["/bin/cat"]).expect("exec");
        assert_eq!(request.process.Args, ["/bin/cat"]);
    }
}
