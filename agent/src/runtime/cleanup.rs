//! RemoveContainer: kill, wait, delete, release.

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use super::helper::Request;
use super::{Container, Process, Runtime, storage};
use crate::error::AgentError;

impl Runtime {
    /// RemoveContainer: kills every process, waits for them, deletes the container's cgroup
    /// and state, releases its storages and bundle. A zero timeout waits as long as it takes.
    ///
    /// The removal owns the container from its start: the container leaves the map and its id
    /// stays claimed (as a CreateContainer in progress claims it) until the removal ends. A
    /// second RemoveContainer of the same id meanwhile answers NOT_FOUND instead of running
    /// the delete and the storage release again (on a container re-made under that id by
    /// then); a CreateContainer of it answers ALREADY_EXISTS until the removal is done. A
    /// removal that fails, times out or is dropped puts the container back.
    pub async fn remove_container(&self, id: &str, timeout: Duration) -> Result<(), AgentError> {
        let claim = self.claim_removal(id)?;
        let removal = self.remove_inner(&claim.container);
        if timeout.is_zero() {
            removal.await?;
        } else {
            tokio::time::timeout(timeout, removal).await.map_err(|_| {
                AgentError::internal(
                    format!("cannot remove container {id:?}"),
                    format!("its processes did not exit within {timeout:?}"),
                )
            })??;
        }
        claim.done();
        Ok(())
    }

    /// Takes the container `id` out of the map, its id claimed, for one removal.
    fn claim_removal(&self, id: &str) -> Result<Removal<'_>, AgentError> {
        // The same lock order as `reserve`: containers, then creating.
        let mut containers = self
            .containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut creating = self.creating.lock().unwrap_or_else(PoisonError::into_inner);
        let not_found = || AgentError::NotFound {
            what: format!("container {id:?}"),
        };
        // Present in both only while its CreateContainer finishes: not removable yet.
        if creating.contains(id) {
            return Err(not_found());
        }
        let container = containers.remove(id).ok_or_else(not_found)?;
        creating.insert(id.to_owned());
        Ok(Removal {
            runtime: self,
            container,
            removed: false,
        })
    }

    async fn remove_inner(&self, container: &Container) -> Result<(), AgentError> {
        let _status = container.lifecycle.lock().await;
        let id = container.id.clone();
        if container.init.exit.exit().is_none() {
            let kill = Request::Kill {
                id: id.clone(),
                root: self.root(),
                signal: nix::sys::signal::Signal::SIGKILL as i32,
                all: true,
            };
            if let Err(e) = self.helper.call(kill, Vec::new()).await {
                // The init may have exited meanwhile; killing it directly is the fallback.
                tracing::debug!(container = %id, error = %e, "kill through libcontainer failed");
                let _ = self.reaper.signal(
                    container.init.pid,
                    &container.init.exit,
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        container.init.exit.wait().await;
        let execs: Vec<Arc<Process>> = container
            .execs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        for process in execs {
            process.exit.wait().await;
            self.reaper.forget(process.pid, &process.exit);
        }
        self.reaper.forget(container.init.pid, &container.init.exit);
        let delete = Request::Delete {
            id: id.clone(),
            root: self.root(),
            force: true,
        };
        self.helper
            .call(delete, Vec::new())
            .await
            .map_err(|e| AgentError::internal(format!("cannot delete container {id:?}"), e))?;
        container
            .storages
            .iter()
            .for_each(storage::Mounted::release);
        if let Err(e) = crate::tree::remove_tree(&container.bundle) {
            tracing::warn!(container = %id, error = %e, "cannot remove the container's bundle");
        }
        Ok(())
    }
}

/// One removal's hold on a container: out of the map, its id claimed; on drop the claim goes,
/// and the container comes back unless the removal succeeded.
struct Removal<'a> {
    runtime: &'a Runtime,
    container: Arc<Container>,
    removed: bool,
}

impl Removal<'_> {
    fn done(mut self) {
        self.removed = true;
    }
}

impl Drop for Removal<'_> {
    fn drop(&mut self) {
        let mut containers = self
            .runtime
            .containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut creating = self
            .runtime
            .creating
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !self.removed {
            containers.insert(self.container.id.clone(), Arc::clone(&self.container));
        }
        creating.remove(&self.container.id);
    }
}
