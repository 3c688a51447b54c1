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

/// The policy rule that must allow a CopyFile symlink whose target is absolute or has a `..`
/// component (a peerpod-guest rule: upstream's agent makes such symlinks whenever the
/// CopyFileRequest rule allows the request). Its input is the CopyFile policy input.
pub const UNSAFE_SYMLINK_ENTRYPOINT: &str = "CopyFileUnsafeSymlinkRequest";

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
    ///
    /// A symlink whose target leaves the directory it is made in (absolute, or with a `..`
    /// component) must also be allowed by the policy's [`UNSAFE_SYMLINK_ENTRYPOINT`] rule, on
    /// the same input: policies that do not declare that rule (upstream's, the examples) never
    /// get such a symlink made, whatever their CopyFileRequest rule says.
    pub async fn check_copy_file(&self, request: &CopyFileRequest) -> Result<(), AgentError> {
        let view = copy_file_view(request)?;
        let unsafe_target = view["symlink_target"]
            .as_str()
            .is_some_and(|target| !crate::files::is_contained_symlink_target(target));
        self.check_input("CopyFile", view.clone()).await?;
        if !unsafe_target {
            return Ok(());
        }
        let policy = Arc::clone(&self.policy);
        let decision =
            tokio::task::spawn_blocking(move || policy.decide(UNSAFE_SYMLINK_ENTRYPOINT, &view))
                .await
                .map_err(|e| AgentError::internal("policy evaluation did not finish; denied", e))?;
        if decision.is_allowed() {
            return Ok(());
        }
        tracing::warn!(
            rpc = "CopyFile",
            entrypoint = UNSAFE_SYMLINK_ENTRYPOINT,
            "symlink leading outside its directory refused"
        );
        Err(AgentError::Denied(format!(
            "CopyFile: a symlink target that is absolute or has a '..' component is refused \
             unless the policy allows it in {UNSAFE_SYMLINK_ENTRYPOINT}"
        )))
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
            // An evaluation error or a rule's odd result may quote the input: left out.
            let cause = crate::error::loggable(&cause.to_string());
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
/// the file type read from the mode bits (`Regular`, `Directory`, `Symlink`; anything else,
/// devices, fifos and sockets included, is `Unknown`) and, for a symlink, its target (which
/// CopyFile carries in the data). A symlink target that is not UTF-8 is refused before the
/// policy is asked, as upstream does.
pub fn copy_file_view(request: &CopyFileRequest) -> Result<Value, AgentError> {
    const S_IFMT: u32 = 0o170_000;
    let file_type = match request.file_mode & S_IFMT {
        0o040_000 => "Directory",
        0o120_000 => "Symlink",
        0o100_000 => "Regular",
        _ => "Unknown",
    };
    let symlink_target = match file_type {
        "Symlink" => Some(String::from_utf8(request.data.clone()).map_err(|_| {
            AgentError::InvalidArgument("a CopyFile symlink target must be UTF-8".to_owned())
        })?),
        _ => None,
    };
    Ok(json!({
        "path": request.path,
        "file_size": request.file_size,
        "file_mode": request.file_mode,
        "dir_mode": request.dir_mode,
        "uid": request.uid,
        "gid": request.gid,
        "offset": request.offset,
        "file_type": file_type,
        "symlink_target": symlink_target,
    }))
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
        let view = copy_file_view(&request).expect("view");
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
        let view = copy_file_view(&request).expect("view");
        assert_eq!(view["file_type"], "Symlink");
        assert_eq!(view["symlink_target"], "/etc/target");
    }

    #[test]
    fn special_files_are_unknown_and_non_utf8_targets_refused() {
        let mut request = CopyFileRequest::new();
        for mode in [
            0o010_644, 0o020_644, 0o060_644, 0o140_644, 0, 0o170_000, 0o050_000,
        ] {
            request.file_mode = mode;
            let view = copy_file_view(&request).expect("view");
            assert_eq!(view["file_type"], "Unknown", "{mode:o}");
            assert_eq!(view["symlink_target"], Value::Null);
        }
        request.file_mode = 0o120_777;
        request.data = vec![0x2e, 0xff, 0xfe, 0x00];
        assert!(matches!(
            copy_file_view(&request),
            Err(AgentError::InvalidArgument(_))
        ));
        // Bytes that are not a target are never read for other types.
        request.file_mode = 0o100_644;
        assert!(copy_file_view(&request).is_ok());
    }

    #[tokio::test]
    async fn escaping_symlinks_need_their_own_rule() {
        let allow_all = "package agent_policy\ndefault CopyFileRequest := true\n";
        let gate = PolicyGate::new(AgentPolicy::load(allow_all).expect("policy"));
        let mut request = CopyFileRequest::new();
        request.path = "/run/kata-containers/shared/containers/x/link".into();
        request.file_mode = 0o120_777;
        for (target, allowed) in [
            ("..data/token", true),
            ("/etc/shadow", false),
            ("../../../etc", false),
        ] {
            request.data = target.as_bytes().to_vec();
            let result = gate.check_copy_file(&request).await;
            assert_eq!(result.is_ok(), allowed, "{target}: {result:?}");
        }
        let explicit = format!(
            "{allow_all}{UNSAFE_SYMLINK_ENTRYPOINT} if {{ input.symlink_target == \"/etc/shadow\" }}\n"
        );
        let gate = PolicyGate::new(AgentPolicy::load(&explicit).expect("policy"));
        request.data = b"/etc/shadow".to_vec();
        gate.check_copy_file(&request)
            .await
            .expect("allowed by the rule");
        request.data = b"/etc/passwd".to_vec();
        assert!(matches!(
            gate.check_copy_file(&request).await,
            Err(AgentError::Denied(_))
        ));
    }
}
