//! CreateSandbox and DestroySandbox: the pod's storages, its shared namespaces and pause process.

use std::sync::PoisonError;
use std::time::Duration;

use peerpod_protocols::kata::agent;

use super::helper::{Answer, Request};
use super::{Runtime, Sandbox, cgroups, check_id, storage};
use crate::error::AgentError;

impl Runtime {
    /// CreateSandbox: prepares the sandbox's storages and the IPC and UTS namespaces its
    /// containers share (with the sandbox's hostname).
    pub async fn create_sandbox(
        &self,
        request: &agent::CreateSandboxRequest,
    ) -> Result<(), AgentError> {
        if let Some(existing) = self
            .sandbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            return Err(AgentError::AlreadyExists {
                what: format!("sandbox {:?}", existing.id),
            });
        }
        check_id(&request.sandbox_id, "sandbox_id").or_else(|e| {
            if request.sandbox_id.is_empty() {
                Ok(())
            } else {
                Err(e)
            }
        })?;
        let storages = storage::prepare_all(&request.storages)?;
        let dir = self.config.state_dir.join("sandbox-ns");
        let made = self
            .helper
            .call(
                Request::SandboxNamespaces {
                    dir: dir.clone(),
                    hostname: request.hostname.clone(),
                    pid: request.sandbox_pidns,
                },
                Vec::new(),
            )
            .await;
        let pause = match made {
            Ok(Answer::Pid { pid }) => Some((pid, self.reaper.register(pid))),
            Ok(_) => None,
            Err(e) => {
                storages.iter().for_each(storage::Mounted::release);
                release_namespaces(&dir);
                return Err(AgentError::internal(
                    "cannot create the sandbox's namespaces",
                    e,
                ));
            }
        };
        let mut sandbox = self.sandbox.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = sandbox.as_ref() {
            storages.iter().for_each(storage::Mounted::release);
            return Err(AgentError::AlreadyExists {
                what: format!("sandbox {:?}", existing.id),
            });
        }
        *sandbox = Some(Sandbox {
            id: request.sandbox_id.clone(),
            storages,
            namespaces: Some(dir),
            pause,
        });
        Ok(())
    }

    /// DestroySandbox: removes every container, then the sandbox's storages.
    pub async fn destroy_sandbox(&self) -> Result<(), AgentError> {
        let ids: Vec<String> = self
            .containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        for id in ids {
            self.remove_container(&id, Duration::from_secs(10)).await?;
        }
        let sandbox = self
            .sandbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(sandbox) = sandbox {
            if let Some((pid, exit)) = &sandbox.pause {
                let _ = self
                    .reaper
                    .signal(*pid, exit, nix::sys::signal::Signal::SIGKILL);
                let _ = tokio::time::timeout(Duration::from_secs(5), exit.wait()).await;
                self.reaper.forget(*pid, exit);
            }
            sandbox.storages.iter().for_each(storage::Mounted::release);
            if let Some(dir) = &sandbox.namespaces {
                release_namespaces(dir);
            }
            cgroups::remove(&self.sandbox_cgroup(&sandbox.id));
        }
        Ok(())
    }

    /// At agent shutdown: destroys the sandbox, then removes the agent's own cgroup parent.
    pub async fn shutdown(&self) -> Result<(), AgentError> {
        let result = self.destroy_sandbox().await;
        cgroups::remove(&self.config.cgroup_parent);
        result
    }

    pub(super) fn sandbox_cgroup(&self, sandbox: &str) -> String {
        format!(
            "{}/{sandbox}",
            self.config.cgroup_parent.trim_end_matches('/')
        )
    }
}

/// Unmounts and removes the pinned sandbox namespaces.
fn release_namespaces(dir: &std::path::Path) {
    for kind in ["ipc", "uts", "pid"] {
        let target = dir.join(kind);
        let _ = nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&target);
    }
    let _ = std::fs::remove_dir(dir);
}
