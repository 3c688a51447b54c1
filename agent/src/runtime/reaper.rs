//! The reaper: the one place the agent waits for its children.
//!
//! Container processes are the agent's children (the runtime helper creates them as siblings of
//! itself), and the agent is a child subreaper, so orphans inside containers come back to it
//! too. One task waits for every child on `SIGCHLD` and hands each exit status to the
//! [`ExitSlot`] registered for that pid. A child that exits before its pid is registered keeps
//! its status for a while, so registration never misses an exit.
//!
//! Nothing else in the agent may wait for children (no `Child::wait`, no `tokio::process`):
//! a second waiter would steal statuses from this one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::sync::watch;

/// How long the status of a child nobody registered is kept.
const UNCLAIMED_TTL: Duration = Duration::from_secs(60);

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl Exit {
    /// The status WaitProcess reports: the exit code, or the signal number for a killed process
    /// (as the upstream agent reports it).
    pub fn status(self) -> i32 {
        match self {
            Self::Code(code) | Self::Signal(code) => code,
        }
    }
}

/// Where one process's exit is delivered; any number of waiters, before or after the exit.
#[derive(Debug)]
pub struct ExitSlot {
    tx: watch::Sender<Option<Exit>>,
}

impl ExitSlot {
    fn new() -> Self {
        Self {
            tx: watch::Sender::new(None),
        }
    }

    /// The exit, if it happened.
    pub fn exit(&self) -> Option<Exit> {
        *self.tx.borrow()
    }

    /// Waits for the exit.
    pub async fn wait(&self) -> Exit {
        let mut rx = self.tx.subscribe();
        loop {
            if let Some(exit) = *rx.borrow_and_update() {
                return exit;
            }
            if rx.changed().await.is_err() {
                // The sender lives in `self`, so this cannot happen while we borrow it.
                std::future::pending::<()>().await;
            }
        }
    }
}

#[derive(Debug, Default)]
struct State {
    slots: HashMap<i32, Arc<ExitSlot>>,
    unclaimed: HashMap<i32, (Exit, Instant)>,
}

/// Waits for every child of the agent.
#[derive(Debug, Default)]
pub struct Reaper {
    state: Mutex<State>,
}

impl Reaper {
    /// Makes the agent a child subreaper and starts reaping on `SIGCHLD`.
    pub fn start() -> std::io::Result<Arc<Self>> {
        nix::sys::prctl::set_child_subreaper(true).map_err(std::io::Error::from)?;
        let reaper = Arc::new(Self::default());
        let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
        let weak = Arc::downgrade(&reaper);
        tokio::spawn(async move {
            loop {
                let Some(reaper) = weak.upgrade() else { break };
                reaper.reap_all();
                drop(reaper);
                if sigchld.recv().await.is_none() {
                    break;
                }
            }
        });
        Ok(reaper)
    }

    /// The slot for `pid`. Register a child's pid as soon as it is known; an exit that already
    /// happened is delivered at once.
    pub fn register(&self, pid: i32) -> Arc<ExitSlot> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = Arc::clone(
            state
                .slots
                .entry(pid)
                .or_insert_with(|| Arc::new(ExitSlot::new())),
        );
        if let Some((exit, _)) = state.unclaimed.remove(&pid) {
            slot.tx.send_replace(Some(exit));
        }
        slot
    }

    /// Forgets a registered pid once nobody needs its exit any more.
    pub fn forget(&self, pid: i32) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.slots.remove(&pid);
    }

    /// Collects every child that has exited.
    fn reap_all(&self) {
        loop {
            let status = waitpid(
                Pid::from_raw(-1),
                Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL),
            );
            let (pid, exit) = match status {
                Ok(WaitStatus::Exited(pid, code)) => (pid, Exit::Code(code)),
                Ok(WaitStatus::Signaled(pid, signal, _)) => (pid, Exit::Signal(signal as i32)),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "waiting for children failed");
                    return;
                }
            };
            self.deliver(pid.as_raw(), exit);
        }
    }

    fn deliver(&self, pid: i32, exit: Exit) {
        tracing::debug!(pid, ?exit, "child exited");
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match state.slots.get(&pid) {
            Some(slot) => {
                slot.tx.send_replace(Some(exit));
            }
            None => {
                let now = Instant::now();
                state
                    .unclaimed
                    .retain(|_, (_, at)| now.duration_since(*at) < UNCLAIMED_TTL);
                state.unclaimed.insert(pid, (exit, now));
            }
        }
    }
}
