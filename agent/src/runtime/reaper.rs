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
    /// The status WaitProcess reports: the exit code, or 128 + the signal number for a killed
    /// process, as a shell reports it and as the upstream agent does since 3.32 (Kubernetes
    /// then shows 137 for a SIGKILL, such as the OOM killer's).
    pub fn status(self) -> i32 {
        match self {
            Self::Code(code) => code,
            Self::Signal(signal) => 128 + signal,
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

    /// The slot for a new child `pid`. Register a child's pid as soon as it is known; an exit
    /// that already happened is delivered at once. A slot left for an earlier process with the
    /// same pid (one that has exited) is never reused: the kernel recycles pids, and the new
    /// process must not look dead from the start.
    pub fn register(&self, pid: i32) -> Arc<ExitSlot> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let live = state
            .slots
            .get(&pid)
            .filter(|slot| slot.exit().is_none())
            .cloned();
        let slot = live.unwrap_or_else(|| {
            let fresh = Arc::new(ExitSlot::new());
            state.slots.insert(pid, Arc::clone(&fresh));
            fresh
        });
        if let Some((exit, _)) = state.unclaimed.remove(&pid) {
            slot.tx.send_replace(Some(exit));
        }
        slot
    }

    /// Forgets `slot`, registered for `pid`, once nobody needs its exit any more (a newer
    /// registration of the same pid stays).
    pub fn forget(&self, pid: i32, slot: &Arc<ExitSlot>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.slots.get(&pid).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            state.slots.remove(&pid);
        }
    }

    /// How many pids have a slot: for tests of the agent's own bookkeeping.
    #[doc(hidden)]
    pub fn registered(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .slots
            .len()
    }

    /// Sends `signal` to the child `pid` registered with `slot`, unless its exit has been seen:
    /// returns whether it was sent. The reaper's lock is held across the check and the `kill`,
    /// and across each `waitpid` and the delivery of its exit, so the pid signalled is still
    /// this child (alive or a zombie), never a process that recycled its pid.
    pub fn signal(
        &self,
        pid: i32,
        slot: &ExitSlot,
        signal: nix::sys::signal::Signal,
    ) -> nix::Result<bool> {
        let _state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.exit().is_some() {
            return Ok(false);
        }
        match nix::sys::signal::kill(Pid::from_raw(pid), signal) {
            Ok(()) => Ok(true),
            Err(Errno::ESRCH) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Collects every child that has exited.
    fn reap_all(&self) {
        loop {
            // Held from the wait to the delivery: see `signal`.
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
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
            deliver_locked(&mut state, pid.as_raw(), exit);
        }
    }

    #[cfg(test)]
    fn deliver(&self, pid: i32, exit: Exit) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        deliver_locked(&mut state, pid, exit);
    }
}

fn deliver_locked(state: &mut State, pid: i32, exit: Exit) {
    tracing::debug!(pid, ?exit, "child exited");
    // A slot that already holds an exit belongs to an earlier process with this pid: this exit
    // is a newer process's, not yet registered.
    match state.slots.get(&pid).filter(|slot| slot.exit().is_none()) {
        Some(slot) => {
            slot.tx.send_replace(Some(exit));
        }
        None => {
            state.slots.remove(&pid);
            let now = Instant::now();
            state
                .unclaimed
                .retain(|_, (_, at)| now.duration_since(*at) < UNCLAIMED_TTL);
            state.unclaimed.insert(pid, (exit, now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recycled_pid_gets_a_fresh_slot() {
        let reaper = Reaper::default();
        let old = reaper.register(100);
        reaper.deliver(100, Exit::Code(3));
        // Never forgotten; the kernel hands pid 100 to a new process.
        let new = reaper.register(100);
        assert!(!Arc::ptr_eq(&old, &new));
        assert_eq!(new.exit(), None, "the new process is alive");
        reaper.deliver(100, Exit::Signal(9));
        assert_eq!(new.exit(), Some(Exit::Signal(9)));
        assert_eq!(
            old.exit(),
            Some(Exit::Code(3)),
            "the old status is not overwritten"
        );
    }

    #[test]
    fn a_recycled_pid_that_exits_before_it_is_registered_keeps_its_exit() {
        let reaper = Reaper::default();
        let old = reaper.register(200);
        reaper.deliver(200, Exit::Code(1));
        reaper.deliver(200, Exit::Code(2));
        assert_eq!(old.exit(), Some(Exit::Code(1)));
        assert_eq!(reaper.register(200).exit(), Some(Exit::Code(2)));
    }

    #[test]
    fn forgetting_an_old_slot_keeps_the_new_registration() {
        let reaper = Reaper::default();
        let old = reaper.register(300);
        reaper.deliver(300, Exit::Code(0));
        let new = reaper.register(300);
        reaper.forget(300, &old);
        assert_eq!(reaper.registered(), 1);
        reaper.forget(300, &new);
        assert_eq!(reaper.registered(), 0);
    }

    #[test]
    fn a_killed_process_reports_128_plus_the_signal() {
        assert_eq!(Exit::Signal(9).status(), 137);
        assert_eq!(Exit::Signal(15).status(), 143);
        assert_eq!(Exit::Code(7).status(), 7);
    }
}
