//! A created container's life: start, OOM events, statistics, resource updates, pause/resume.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use peerpod_protocols::kata::agent;

use super::helper::Request;
use super::{Container, Runtime, Status, error_chain, resources, spec};
use crate::error::AgentError;

impl Runtime {
    /// StartContainer: lets the created container's process run.
    pub async fn start_container(&self, id: &str) -> Result<(), AgentError> {
        let container = self.container(id)?;
        let mut status = container.lifecycle.lock().await;
        if *status != Status::Created {
            return Err(AgentError::FailedPrecondition(format!(
                "container {id:?} was already started"
            )));
        }
        self.helper
            .call(
                Request::Start {
                    id: id.to_owned(),
                    root: self.root(),
                },
                Vec::new(),
            )
            .await
            .map_err(|e| AgentError::internal(format!("cannot start container {id:?}"), e))?;
        *status = Status::Running;
        self.watch_oom(&container);
        Ok(())
    }

    /// Polls the container's OOM-kill counter while the container exists; each new kill is an
    /// event for GetOOMEvent. (Polling every second works the same on cgroup v1 and v2.)
    fn watch_oom(&self, container: &Arc<Container>) {
        let files = oom_counter_files(&container.cgroup);
        if files.is_empty() {
            return;
        }
        let weak = Arc::downgrade(container);
        let tx = self.oom_tx.clone();
        tokio::spawn(async move {
            // The cgroup was made with the container: every kill in it counts, even one that
            // happened before this task first looked.
            let mut seen = 0;
            loop {
                let Some(container) = weak.upgrade() else {
                    break;
                };
                let exited = container.init.exit.exit().is_some();
                let now = read_oom_kills(&files);
                if now > seen {
                    tracing::warn!(container = %container.id, kills = now - seen, "out-of-memory kill in container");
                    if tx.send(container.id.clone()).is_err() {
                        break;
                    }
                }
                seen = now;
                // One last look after the init exits, since the kill may be what ended it.
                if exited {
                    break;
                }
                drop(container);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// GetOOMEvent: waits for the next OOM kill in any container and names the container.
    pub async fn next_oom_event(&self) -> Result<String, AgentError> {
        self.oom_rx
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| AgentError::FailedPrecondition("the agent is shutting down".to_owned()))
    }

    /// StatsContainer: the container's cgroup statistics and the guest's network counters.
    pub async fn stats_container(
        &self,
        id: &str,
    ) -> Result<agent::StatsContainerResponse, AgentError> {
        let container = self.container(id)?;
        let cgroup = container.cgroup.clone();
        let id = container.id.clone();
        let pid = container.init.pid;
        tokio::task::spawn_blocking(move || {
            let mut reply = agent::StatsContainerResponse::new();
            reply.cgroup_stats = protobuf::MessageField::some(resources::stats(&cgroup, &id)?);
            reply.network_stats = network_stats(pid);
            Ok(reply)
        })
        .await
        .map_err(|e| AgentError::internal("stats", e))?
    }

    /// UpdateContainer: new resource limits for a running container.
    pub async fn update_container(
        &self,
        request: &agent::UpdateContainerRequest,
    ) -> Result<(), AgentError> {
        let container = self.container(&request.container_id)?;
        let limits = spec::oci_resources(&request.resources)
            .map_err(|e| AgentError::InvalidArgument(error_chain(&e)))?;
        let _status = container.lifecycle.lock().await;
        let cgroup = container.cgroup.clone();
        let id = container.id.clone();
        tokio::task::spawn_blocking(move || resources::update(&cgroup, &id, &limits))
            .await
            .map_err(|e| AgentError::internal("update", e))?
    }

    /// PauseContainer / ResumeContainer: freezes or thaws every process of the container.
    pub async fn pause_container(&self, id: &str, pause: bool) -> Result<(), AgentError> {
        let container = self.container(id)?;
        let mut status = container.lifecycle.lock().await;
        let (from, to) = if pause {
            (Status::Running, Status::Paused)
        } else {
            (Status::Paused, Status::Running)
        };
        if *status != from {
            let state = if pause { "running" } else { "paused" };
            return Err(AgentError::FailedPrecondition(format!(
                "container {id:?} is not {state}"
            )));
        }
        let request = if pause {
            Request::Pause {
                id: id.to_owned(),
                root: self.root(),
            }
        } else {
            Request::Resume {
                id: id.to_owned(),
                root: self.root(),
            }
        };
        let verb = if pause { "pause" } else { "resume" };
        self.helper
            .call(request, Vec::new())
            .await
            .map_err(|e| AgentError::internal(format!("cannot {verb} container {id:?}"), e))?;
        *status = to;
        Ok(())
    }
}

/// The files that count OOM kills in a cgroup: `memory.events` (v2) or `memory.oom_control`
/// (v1), whichever exist.
fn oom_counter_files(cgroup: &std::path::Path) -> Vec<PathBuf> {
    let relative = cgroup.strip_prefix("/").unwrap_or(cgroup);
    [
        PathBuf::from("/sys/fs/cgroup")
            .join(relative)
            .join("memory.events"),
        PathBuf::from("/sys/fs/cgroup/memory")
            .join(relative)
            .join("memory.oom_control"),
    ]
    .into_iter()
    .filter(|p| p.exists())
    .collect()
}

fn read_oom_kills(files: &[PathBuf]) -> u64 {
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| {
                    l.strip_prefix("oom_kill ")
                        .and_then(|n| n.trim().parse::<u64>().ok())
                })
                .collect::<Vec<_>>()
        })
        .sum()
}

/// Interface counters as the container's init sees them (`/proc/<pid>/net/dev`).
fn network_stats(pid: i32) -> Vec<agent::NetworkStats> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/dev")) else {
        return Vec::new();
    };
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let n: Vec<u64> = counters
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            if n.len() < 12 {
                return None;
            }
            let mut stats = agent::NetworkStats::new();
            stats.name = name.trim().to_owned();
            stats.rx_bytes = n[0];
            stats.rx_packets = n[1];
            stats.rx_errors = n[2];
            stats.rx_dropped = n[3];
            stats.tx_bytes = n[8];
            stats.tx_packets = n[9];
            stats.tx_errors = n[10];
            stats.tx_dropped = n[11];
            Some(stats)
        })
        .collect()
}
