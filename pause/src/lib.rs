//! The sandbox (pause) container's process for the pod VM.
//!
//! Every pod's sandbox container runs one process that holds the pod's namespaces and does
//! nothing else. The pod VM image bakes it, with its OCI `config.json`, into `/pause_bundle`
//! (see `podvm-image/build.sh`), from which the agent's `image_guest_pull` storage builds the
//! sandbox container (agent/src/guest_pull.rs) instead of pulling `registry.k8s.io/pause`.
//!
//! As upstream's pause: it waits for signals; SIGINT or SIGTERM end it with status 0; SIGCHLD
//! reaps every exited child (as PID 1 of its PID namespace it inherits orphans). [`run`] is the
//! whole program; the `pause` binary only calls it.
//! The bundle's root filesystem holds nothing but `/pause`, so `podvm-image/build.sh` links it
//! statically (`cargo rustc -- -C target-feature=+crt-static`); a plain `cargo build` links it
//! dynamically like every other binary of the workspace.

use nix::errno::Errno;
use nix::sys::signal::{
    SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal, sigaction, sigprocmask,
};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};

/// Why [`run`] could not wait for signals.
#[derive(Debug)]
pub struct PauseError(pub Errno);

impl std::fmt::Display for PauseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pause: cannot wait for signals ({})", self.0)
    }
}

impl std::error::Error for PauseError {}

/// The signals the process handles: SIGINT and SIGTERM end it, SIGCHLD reaps.
fn handled() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGCHLD);
    set
}

/// Reaps every child that has exited; returns how many.
pub fn reap_children() -> usize {
    let mut reaped = 0;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return reaped,
            Ok(_) => reaped += 1,
            Err(Errno::EINTR) => {}
            Err(_) => return reaped,
        }
    }
}

/// Never runs (the signals stay blocked); its presence is what counts, see [`run`].
extern "C" fn never_called(_: nix::libc::c_int) {}

/// Waits for signals until SIGINT or SIGTERM (then returns `Ok`), reaping children on SIGCHLD.
///
/// The signals are blocked and taken with `sigwait`, so no code runs in signal context. A
/// handler is still installed for each: the kernel drops signals without one that are sent to
/// the init of a PID namespace, and the agent (as upstream's) turns SIGTERM into SIGKILL for a
/// container's init whose `SigCgt` lacks it.
pub fn run() -> Result<(), PauseError> {
    let set = handled();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None).map_err(PauseError)?;
    let action = SigAction::new(
        SigHandler::Handler(never_called),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in set.iter() {
        // SAFETY: the handler does nothing, so it is async-signal-safe; it never runs anyway
        // while the signals are blocked.
        #[allow(unsafe_code)]
        unsafe { sigaction(signal, &action) }.map_err(PauseError)?;
    }
    // Children that exited before the mask was set.
    reap_children();
    loop {
        match set.wait() {
            Ok(Signal::SIGINT | Signal::SIGTERM) => return Ok(()),
            Ok(_) => {
                reap_children();
            }
            Err(Errno::EINTR) => {}
            Err(e) => return Err(PauseError(e)),
        }
    }
}
