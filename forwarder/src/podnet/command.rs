//! How the pod network runs `iptables`: through a [`CommandRunner`], so that a process that
//! reaps its own children (the kata agent is its containers' subreaper, and only its reaper may
//! wait for a child) can run and wait for the command its own way. [`StdRunner`] is
//! `Command::output`.

use std::fmt::Debug;
use std::process::{Command, Output};
use std::sync::Arc;

/// Runs a command to completion, capturing its output.
pub trait CommandRunner: Send + Sync + Debug {
    /// As [`Command::output`].
    fn output(&self, command: &mut Command) -> std::io::Result<Output>;
}

/// [`Command::output`] itself.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdRunner;

impl CommandRunner for StdRunner {
    fn output(&self, command: &mut Command) -> std::io::Result<Output> {
        command.output()
    }
}

/// The runner used when none is given.
pub fn std_runner() -> Arc<dyn CommandRunner> {
    Arc::new(StdRunner)
}
