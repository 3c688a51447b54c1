//! How a container's process finally runs its program: the last step, inside the container,
//! after its namespaces, mounts, user and capabilities are set (runs in the runtime helper's
//! descendants only).
//!
//! Two things differ from libcontainer's default: a program is found even when the process's
//! environment has no `PATH` (a default search path is used, as other runtimes do), and an
//! exec'd process gets its container's seccomp profile, which libcontainer leaves out for
//! processes joining a running container. Where the process has neither `no_new_privs` nor
//! `CAP_SYS_ADMIN`, `no_new_privs` is set so the filter can be installed: stricter than other
//! runtimes, never weaker.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use oci_spec::runtime::{LinuxSeccomp, Spec};

/// The search path when the process's environment sets none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The agent's executor.
#[derive(Clone)]
pub(crate) struct AgentExecutor {
    /// The container's seccomp profile, for exec'd processes (an init gets it from libcontainer).
    pub(crate) seccomp: Option<LinuxSeccomp>,
}

fn search_path(spec: &Spec) -> String {
    spec.process()
        .as_ref()
        .and_then(|p| p.env().as_ref())
        .and_then(|env| {
            env.iter()
                .find_map(|e| e.strip_prefix("PATH=").map(str::to_owned))
        })
        .unwrap_or_else(|| DEFAULT_PATH.to_owned())
}

fn resolve(program: &str, path: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    path.split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| candidate.is_file())
}

impl Executor for AgentExecutor {
    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        let args = spec
            .process()
            .as_ref()
            .and_then(|p| p.args().as_ref())
            .filter(|a| !a.is_empty())
            .ok_or_else(|| {
                ExecutorValidationError::ArgValidationError("the process has no args".into())
            })?;
        let found = resolve(&args[0], &search_path(spec)).filter(|p| p.is_file());
        if found.is_none() {
            return Err(ExecutorValidationError::ArgValidationError(format!(
                "executable '{}' not found in $PATH",
                args[0]
            )));
        }
        Ok(())
    }

    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        let args = spec
            .process()
            .as_ref()
            .and_then(|p| p.args().clone())
            .filter(|a| !a.is_empty())
            .ok_or(ExecutorError::InvalidArg)?;
        let program = resolve(&args[0], &search_path(spec))
            .ok_or_else(|| ExecutorError::Execution(format!("'{}' not found", args[0]).into()))?;
        let program = CString::new(program.into_os_string().into_encoded_bytes())
            .map_err(|_| ExecutorError::InvalidArg)?;
        let argv: Vec<CString> = args
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<_, _>>()
            .map_err(|_| ExecutorError::InvalidArg)?;

        if let Some(seccomp) = &self.seccomp {
            let admin = caps::has_cap(
                None,
                caps::CapSet::Effective,
                caps::Capability::CAP_SYS_ADMIN,
            )
            .unwrap_or(false);
            if !admin {
                nix::sys::prctl::set_no_new_privs().map_err(|e| {
                    ExecutorError::Execution(format!("cannot set no_new_privs: {e}").into())
                })?;
            }
            libcontainer::seccomp::initialize_seccomp(seccomp).map_err(|e| {
                ExecutorError::Execution(format!("cannot load the seccomp profile: {e}").into())
            })?;
        }
        let error = nix::unistd::execv(&program, &argv).err();
        Err(ExecutorError::Execution(
            format!(
                "cannot execute {:?}: {}",
                args[0],
                error.map(|e| e.to_string()).unwrap_or_default()
            )
            .into(),
        ))
    }
}
