//! RemoveContainer: kill, wait, delete, release.

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use super::helper::Request;
use super::{Container, Process, Runtime, storage};
use crate::error::AgentError;

impl Runtime {
    /// RemoveContainer: kills every process, waits for them, deletes the container's cgroup
    /// and state, releases its storages and bundle. A zero timeout waits as long as it takes.
    pub async fn remove_container(&self, id: &str, timeout: Duration) -> Result<(), AgentError> {
        let container = self.container(id)?;
        let removal = self.remove_inner(&container);
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
        self.containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
        Ok(())
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
        let _ = std::fs::remove_dir_all(&container.bundle);
        Ok(())
    }
}
