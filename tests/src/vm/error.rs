//! What can go wrong while building the test VM's image or booting it.

use std::path::PathBuf;
use std::time::Duration;

/// An error of the test VM harness. Each says what to install or look at.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A program the harness runs is not installed.
    #[error("`{program}` is not installed: install Debian's {package} (`make deps` does)")]
    MissingProgram {
        /// The program looked for.
        program: String,
        /// The Debian package that provides it.
        package: String,
    },

    /// A program the harness ran failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line, for people.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on standard error.
        stderr: String,
    },

    /// A file or directory could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A file the image needs is missing.
    #[error("{what} {} does not exist{hint}", path.display())]
    MissingFile {
        /// What the file is for.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// How to get it (may be empty; starts with a separator when not).
        hint: &'static str,
    },

    /// The kernel package could not be found or does not look like a kernel package.
    #[error("kernel package: {0}")]
    Kernel(String),

    /// A kernel module is neither built into the kernel nor shipped as a module.
    #[error("kernel module {module:?} is neither built into {release} nor one of its modules")]
    UnknownModule {
        /// The module's name.
        module: String,
        /// The kernel release (`uname -r`).
        release: String,
    },

    /// A kernel module file could not be parsed.
    #[error("kernel module {}: {reason}", path.display())]
    BadModule {
        /// The module file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The shared libraries of a binary could not be listed.
    #[error("cannot list the shared libraries of {}: {reason}", path.display())]
    Libraries {
        /// The binary.
        path: PathBuf,
        /// What `ldd` said.
        reason: String,
    },

    /// QEMU stopped before the agent answered.
    #[error(
        "qemu exited ({status}) before the agent answered{}\n--- serial console (last lines; logs kept in {}) ---\n{serial_tail}",
        qemu_section(qemu_log),
        logs.display()
    )]
    QemuExited {
        /// QEMU's exit status.
        status: String,
        /// What QEMU printed itself.
        qemu_log: String,
        /// The end of the guest's console output.
        serial_tail: String,
        /// The run's directory: QEMU's command line and output, the serial log.
        logs: PathBuf,
    },

    /// The agent did not answer a health check in time.
    #[error(
        "the agent in the VM did not answer a health check on {addr} within {:.0?} (last try: {last_error})\n--- serial console (last lines; logs kept in {}) ---\n{serial_tail}",
        timeout,
        logs.display()
    )]
    BootTimeout {
        /// The forwarded address probed.
        addr: String,
        /// How long the harness waited.
        timeout: Duration,
        /// The last probe's failure.
        last_error: String,
        /// The end of the guest's console output.
        serial_tail: String,
        /// The run's directory: QEMU's command line and output, the serial log.
        logs: PathBuf,
    },
}

/// QEMU's own output as a section of a message, or nothing when it printed nothing.
fn qemu_section(qemu_log: &str) -> String {
    if qemu_log.is_empty() {
        String::new()
    } else {
        format!("\n--- qemu ---\n{qemu_log}")
    }
}

impl VmError {
    /// An I/O error with what was being done.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}
