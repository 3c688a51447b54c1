//! The policy gate: every AgentService request is decided by the agent policy before the agent
//! does anything with it.

use std::sync::Arc;

use peerpod_policy::AgentPolicy;
use peerpod_policy::engine::entrypoint_for_rpc;
use peerpod_protocols::json::to_json;
use peerpod_protocols::kata::agent::CopyFileRequest;
use protobuf::MessageDyn;
use serde_json::{Value, json};

use crate::error::AgentError;

/// Decides requests with the policy in force.
#[derive(Debug, Clone)]
pub struct PolicyGate {
    policy: Arc<AgentPolicy>,
}

impl PolicyGate {
    /// A gate deciding with `policy`.
    pub fn new(policy: AgentPolicy) -> Self {
        Self {
            policy: Arc::new(policy),
        }
    }

    /// The policy engine.
    pub fn policy(&self) -> &AgentPolicy {
        &self.policy
    }

    /// Decides `request` for the RPC named `rpc` (e.g. `"ReadStdout"`); `Err(Denied)` when the
    /// policy does not allow it.
    pub async fn check(
        &self,
        rpc: &'static str,
        request: &dyn MessageDyn,
    ) -> Result<(), AgentError> {
        self.check_input(rpc, to_json(request)).await
    }

    /// Decides a CopyFile request on upstream's view of it: the file's metadata and type, never
    /// its data.
    pub async fn check_copy_file(&self, request: &CopyFileRequest) -> Result<(), AgentError> {
        self.check_input("CopyFile", copy_file_view(request)).await
    }

    /// Decides an already-built policy input.
    pub async fn check_input(&self, rpc: &'static str, input: Value) -> Result<(), AgentError> {
        let Some(entrypoint) = entrypoint_for_rpc(rpc) else {
            return Err(AgentError::internal(
                "policy check",
                format!("no policy entrypoint is known for the RPC {rpc}; denied"),
            ));
        };
        let policy = Arc::clone(&self.policy);
        // Evaluation is CPU work (milliseconds for a large policy): keep it off the I/O threads.
        let decision = tokio::task::spawn_blocking(move || policy.decide(entrypoint, &input))
            .await
            .map_err(|e| AgentError::internal("policy evaluation did not finish; denied", e))?;
        if decision.is_allowed() {
            return Ok(());
        }
        // The request itself (and the policy's prints, which quote it) may hold secrets such as
        // environment values: log only the entrypoint and the cause.
        if let peerpod_policy::Verdict::Denied(cause) = decision.verdict() {
            tracing::warn!(rpc, entrypoint, %cause, "request denied by policy");
        }
        Err(AgentError::Denied(decision.denial_message()))
    }

    /// Replaces the policy (the SetPolicy RPC): the current policy must allow it and the new
    /// one must compile; otherwise nothing changes.
    pub async fn set_policy(&self, text: String) -> Result<(), AgentError> {
        let policy = Arc::clone(&self.policy);
        let result = tokio::task::spawn_blocking(move || policy.set_policy(&text))
            .await
            .map_err(|e| AgentError::internal("policy update did not finish", e))?;
        match result {
            Ok(()) => {
                tracing::info!("agent policy replaced by SetPolicy");
                Ok(())
            }
            Err(peerpod_policy::SetPolicyError::Denied(decision)) => {
                tracing::warn!("SetPolicy denied by the policy in force");
                Err(AgentError::Denied(decision.denial_message()))
            }
            Err(e @ peerpod_policy::SetPolicyError::Invalid(_)) => {
                let mut message = e.to_string();
                if let Some(cause) = std::error::Error::source(&e) {
                    message = format!("{message}: {cause}");
                }
                Err(AgentError::InvalidArgument(message))
            }
        }
    }
}

/// The policy input for CopyFile, as upstream builds it: the request without its data, plus
/// the file type read from the mode bits and, for a symlink, its target (which CopyFile carries
/// in the data).
pub fn copy_file_view(request: &CopyFileRequest) -> Value {
    const S_IFMT: u32 = 0o170_000;
    let file_type = match request.file_mode & S_IFMT {
        0o040_000 => "Directory",
        0o120_000 => "Symlink",
        0o100_000 => "Regular",
        0o010_000 => "Fifo",
        0o020_000 => "CharDevice",
        0o060_000 => "BlockDevice",
        0o140_000 => "Socket",
        _ => "Unknown",
    };
    let symlink_target =
        (file_type == "Symlink").then(|| String::from_utf8_lossy(&request.data).into_owned());
    json!({
        "path": request.path,
        "file_size": request.file_size,
        "file_mode": request.file_mode,
        "dir_mode": request.dir_mode,
        "uid": request.uid,
        "gid": request.gid,
        "offset": request.offset,
        "file_type": file_type,
        "symlink_target": symlink_target,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_file_view_matches_upstreams_shape() {
        // The shape of the CopyFile input in the shared genpolicy fixture.
        let mut request = CopyFileRequest::new();
        request.path = "/run/kata-containers/shared/containers/x-resolv.conf".into();
        request.file_size = 62;
        request.file_mode = 0o100_644;
        request.dir_mode = 0o40_750;
        request.data = b"nameserver 10.96.0.10\n".to_vec();
        let view = copy_file_view(&request);
        assert_eq!(
            view,
            json!({
                "dir_mode": 16872, "file_mode": 33188, "file_size": 62, "file_type": "Regular",
                "gid": 0, "offset": 0, "path": "/run/kata-containers/shared/containers/x-resolv.conf",
                "symlink_target": null, "uid": 0
            })
        );
        request.file_mode = 0o120_777;
        request.data = b"/etc/target".to_vec();
        let view = copy_file_view(&request);
        assert_eq!(view["file_type"], "Symlink");
        assert_eq!(view["symlink_target"], "/etc/target");
    }
}
