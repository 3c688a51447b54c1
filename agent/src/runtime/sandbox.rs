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
        let storages = storage::prepare_all(&request.storages, &self.config.state_dir)?;
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

    /// DestroySandbox: removes every container, then the sandbox's storages, namespaces and
    /// pause process.
    ///
    /// A container another request took first (a concurrent RemoveContainer: NOT_FOUND here)
    /// is gone either way; its removal is waited for (bounded) so the sandbox's storages are
    /// not pulled from under it. A container that cannot be removed does not stop the rest of
    /// the teardown; the first such failure is the answer.
    pub async fn destroy_sandbox(&self) -> Result<(), AgentError> {
        let ids: Vec<String> = self
            .containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        let mut first_error = None;
        let mut taken = Vec::new();
        for id in ids {
            match self.remove_container(&id, Duration::from_secs(10)).await {
                Ok(()) => {}
                Err(AgentError::NotFound { .. }) => taken.push(id),
                Err(e) => {
                    tracing::warn!(container = %id, error = %e, "DestroySandbox cannot remove a container");
                    first_error.get_or_insert(e);
                }
            }
        }
        self.wait_for_removals(&taken, Duration::from_secs(15))
            .await;
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
        first_error.map_or(Ok(()), Err)
    }

    /// Waits, at most `bound`, until none of `ids` is claimed by a removal (or creation) still
    /// in progress.
    async fn wait_for_removals(&self, ids: &[String], bound: Duration) {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let busy = {
                let claimed = self.creating.lock().unwrap_or_else(PoisonError::into_inner);
                ids.iter().filter(|id| claimed.contains(*id)).count()
            };
            if busy == 0 {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    containers = busy,
                    "DestroySandbox goes on while other removals are still running"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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

/// Unmounts and removes the pinned sandbox namespaces. The paths are the agent's own, but an
/// unmount never follows a symlink found there (defence in depth: a link planted at `ipc`
/// would otherwise have the mount it points at undone).
fn release_namespaces(dir: &std::path::Path) {
    use nix::mount::MntFlags;
    for kind in ["ipc", "uts", "pid"] {
        let target = dir.join(kind);
        let _ = nix::mount::umount2(&target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW);
        let _ = std::fs::remove_file(&target);
    }
    let _ = std::fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::release_namespaces;
    use nix::mount::{MntFlags, MsFlags, mount, umount2};

    fn is_mount_point(path: &std::path::Path) -> bool {
        std::fs::read_to_string("/proc/self/mountinfo")
            .expect("mountinfo")
            .lines()
            .any(|line| line.split(' ').nth(4) == path.to_str())
    }

    /// Symlinks planted at the namespace paths, pointing at a mounted tmpfs: releasing the
    /// namespaces removes the links and leaves the mount they point at mounted.
    #[test]
    fn a_symlink_at_a_namespace_path_is_not_followed() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!(
                "\n*** SKIPPED: a_symlink_at_a_namespace_path_is_not_followed needs root ***\n"
            );
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "CI=true needs root"
            );
            return;
        }
        let base = std::env::temp_dir().join(format!("agent-sandbox-{}-ns", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let victim = base.join("victim");
        let dir = base.join("sandbox-ns");
        std::fs::create_dir_all(&victim).expect("victim");
        std::fs::create_dir_all(&dir).expect("namespace dir");
        mount(
            Some("tmpfs"),
            &victim,
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .expect("tmpfs");
        for kind in ["ipc", "uts", "pid"] {
            std::os::unix::fs::symlink(&victim, dir.join(kind)).expect("link");
        }
        release_namespaces(&dir);
        let still_mounted = is_mount_point(&victim);
        let _ = umount2(&victim, MntFlags::MNT_DETACH);
        let links_gone = !dir.exists();
        let _ = std::fs::remove_dir_all(&base);
        assert!(
            still_mounted,
            "an unmount followed a symlink at a namespace path"
        );
        assert!(links_gone, "the namespace directory was left");
    }
}
