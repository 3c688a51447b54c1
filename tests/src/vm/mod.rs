//! A QEMU test VM running the agent under test, reached over a forwarded TCP port.
//!
//! [`TestVm::boot`] builds (or reuses) a [`VmImage`], starts `qemu-system-x86_64` under TCG with
//! the initramfs as the whole guest, forwards a free port on 127.0.0.1 to the agent's TCP port
//! in the guest (QEMU user networking, restricted: the guest reaches nothing outside), and returns
//! once the agent answers a ttrpc health check. Dropping the [`TestVm`] powers it off.
//! See `docs/testing-vm.md` for the image's layout and how to boot it by hand.

mod cpio;
mod error;
mod host;
mod image;
mod kernel;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use peerpod_protocols::kata::{health, health_ttrpc};

pub use error::VmError;
pub use image::{
    AGENT_PORT, GUEST_AGENT, GUEST_AGENT_CONFIG, GUEST_BUSYBOX_ROOTFS, GUEST_GATEWAY, GUEST_IP,
    GUEST_POLICY, VmImage,
};
pub use kernel::KERNEL_METAPACKAGE;

/// The QEMU binary, and the Debian package it comes from.
pub const QEMU: &str = "qemu-system-x86_64";
/// The Debian package that provides [`QEMU`].
pub const QEMU_PACKAGE: &str = "qemu-system-x86";

/// The modules every test VM loads (those built into the kernel are skipped): the virtio NIC,
/// and the TPM interfaces a later vTPM needs (built into Debian's cloud kernel).
pub const DEFAULT_MODULES: &[&str] = &["virtio_pci", "virtio_net", "tpm_tis", "tpm_crb"];

/// How to build and start a test VM. [`VmOptions::new`] gives the defaults; change fields as
/// needed.
#[derive(Debug, Clone)]
pub struct VmOptions {
    /// The `kata-agent` binary to run in the guest (tests pass
    /// `env!("CARGO_BIN_EXE_kata-agent")`). Its shared libraries are found with `ldd`.
    pub agent_binary: PathBuf,
    /// The agent policy copied into the guest; default: the repository's
    /// `policy/examples/allow-all.rego`.
    pub policy_file: PathBuf,
    /// The agent's `log_level` (its log goes to the serial console); default `info`.
    pub log_level: String,
    /// Kernel modules to load, by name; their dependencies are added and those built into the
    /// kernel are skipped. Default: [`DEFAULT_MODULES`].
    pub modules: Vec<String>,
    /// More files for the initramfs, as (path in the guest, file on the host); the host file's
    /// permissions are kept, and executables bring the shared libraries `ldd` lists for them.
    pub extra_files: Vec<(String, PathBuf)>,
    /// Guest memory; default 768 MiB.
    pub memory_mib: u32,
    /// Virtual CPUs; default 2.
    pub cpus: u32,
    /// QEMU's accelerator (`-accel`); default `tcg`, which works anywhere. `kvm` needs a usable
    /// `/dev/kvm`. The environment variable `PEERPOD_VM_ACCEL` overrides the default.
    pub accel: String,
    /// Arguments appended to QEMU's command line (devices such as a vTPM:
    /// `-chardev socket,...`, `-tpmdev emulator,...`, `-device tpm-tis,...`).
    pub extra_args: Vec<String>,
    /// Arguments appended to the kernel command line.
    pub extra_kernel_args: Vec<String>,
    /// Shell commands the guest runs once its network is up, before the agent starts; their
    /// output goes to the serial console (see [`TestVm::serial_log`]).
    pub boot_commands: Vec<String>,
    /// Guest TCP addresses forwarded to host ports: `("10.0.2.100:8080", 40123)` makes the
    /// guest's connections to 10.0.2.100:8080 reach 127.0.0.1:40123 (QEMU `guestfwd`, through
    /// the `tcp-relay` binary next to the agent binary); the guest reaches nothing else.
    pub guest_forwards: Vec<(String, u16)>,
    /// How long to wait for the agent to answer after QEMU starts; default 90 s (TCG on a
    /// slow 2-core machine), or `PEERPOD_VM_BOOT_TIMEOUT` seconds.
    pub boot_timeout: Duration,
    /// Where the kernel, images and run logs are kept. Default: `PEERPOD_VM_CACHE`, else
    /// `peerpod-vm/` in the Cargo target directory the agent binary was built in.
    pub cache_dir: Option<PathBuf>,
}

impl VmOptions {
    /// The defaults, for the agent binary at `agent_binary`.
    pub fn new(agent_binary: impl Into<PathBuf>) -> Self {
        let env_secs = std::env::var("PEERPOD_VM_BOOT_TIMEOUT")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        Self {
            agent_binary: agent_binary.into(),
            policy_file: Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../policy/examples/allow-all.rego"),
            log_level: "info".into(),
            modules: DEFAULT_MODULES.iter().map(|m| (*m).to_owned()).collect(),
            extra_files: Vec::new(),
            memory_mib: 768,
            cpus: 2,
            accel: std::env::var("PEERPOD_VM_ACCEL").unwrap_or_else(|_| "tcg".into()),
            extra_args: Vec::new(),
            extra_kernel_args: Vec::new(),
            boot_commands: Vec::new(),
            guest_forwards: Vec::new(),
            boot_timeout: Duration::from_secs(env_secs.unwrap_or(90)),
            cache_dir: None,
        }
    }

    /// The `kata-agent` binary cargo built in the target directory of the running test binary
    /// (`target/<profile>/deps/<test>` → `target/<profile>/kata-agent`); panics with what to
    /// build when it is missing. For integration tests of other crates that boot a VM.
    pub fn built_agent_binary() -> PathBuf {
        let exe = std::env::current_exe().unwrap_or_default();
        let agent = exe
            .parent()
            .and_then(|d| d.parent())
            .unwrap_or(Path::new("."))
            .join("kata-agent");
        assert!(
            agent.exists(),
            "{} is missing: build it first (cargo build -p kata-agent; make test does)",
            agent.display()
        );
        agent
    }

    /// The `tcp-relay` binary serving [`VmOptions::guest_forwards`]: the one cargo built next
    /// to the agent binary.
    pub fn relay_binary(&self) -> PathBuf {
        self.agent_binary
            .parent()
            .unwrap_or(Path::new("."))
            .join("tcp-relay")
    }

    /// The cache directory in force (see [`VmOptions::cache_dir`]), made absolute.
    pub fn cache_dir(&self) -> PathBuf {
        let dir = if let Some(dir) = &self.cache_dir {
            dir.clone()
        } else if let Some(dir) = std::env::var_os("PEERPOD_VM_CACHE") {
            PathBuf::from(dir)
        } else {
            // Cargo marks its target directory with CACHEDIR.TAG.
            self.agent_binary
                .ancestors()
                .skip(1)
                .find(|dir| dir.join("CACHEDIR.TAG").is_file())
                .map(Path::to_path_buf)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
                .join("peerpod-vm")
        };
        std::fs::canonicalize(&dir)
            .or_else(|_| std::path::absolute(&dir))
            .unwrap_or(dir)
    }
}

/// A running test VM; powered off when dropped.
#[derive(Debug)]
pub struct TestVm {
    qemu: Child,
    port: u16,
    run_dir: PathBuf,
    serial_log: PathBuf,
    boot_time: Duration,
    image: VmImage,
    /// Keep the run's logs when dropped (the boot failed).
    keep_logs: bool,
}

/// Attempts at a free forwarded port, should another process take the one picked meanwhile.
const PORT_ATTEMPTS: u32 = 3;

impl TestVm {
    /// Builds the image if needed, starts QEMU, and waits until the agent in the guest answers
    /// a health check over the forwarded port. Fails with the end of the serial console when
    /// QEMU exits or the agent does not answer within [`VmOptions::boot_timeout`].
    pub fn boot(options: &VmOptions) -> Result<TestVm, VmError> {
        check_qemu()?;
        if !options.guest_forwards.is_empty() && !options.relay_binary().exists() {
            return Err(VmError::MissingFile {
                what: "the guestfwd relay",
                path: options.relay_binary(),
                hint: " (cargo build -p peerpod-tests --bin tcp-relay; make test builds it)",
            });
        }
        let image = VmImage::build(options)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let started = Instant::now();
            let mut vm = Self::start(options, &image)?;
            match vm.wait_for_agent(options.boot_timeout) {
                Ok(()) => {
                    vm.boot_time = started.elapsed();
                    return Ok(vm);
                }
                // The port was taken between picking it and QEMU binding it: pick another.
                Err(VmError::QemuExited { qemu_log, .. })
                    if attempt < PORT_ATTEMPTS && qemu_log.contains("host forwarding rule") =>
                {
                    continue;
                }
                Err(e) => {
                    vm.keep_logs = true;
                    return Err(e);
                }
            }
        }
    }

    /// Starts QEMU, not waiting for the guest.
    fn start(options: &VmOptions, image: &VmImage) -> Result<TestVm, VmError> {
        static RUNS: AtomicU32 = AtomicU32::new(0);
        let runs = options.cache_dir().join("runs");
        prune_runs(&runs, KEEP_RUNS);
        let run_dir = runs.join(format!(
            "{}-{}",
            std::process::id(),
            RUNS.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&run_dir);
        std::fs::create_dir_all(&run_dir)
            .map_err(VmError::io(format!("cannot create {}", run_dir.display())))?;
        let serial_log = run_dir.join("serial.log");
        let port = free_port()?;
        let args = qemu_args(options, image, port, &serial_log);
        std::fs::write(run_dir.join("qemu.cmdline"), shell_words(&args))
            .map_err(VmError::io("cannot write qemu.cmdline"))?;
        let qemu_log = std::fs::File::create(run_dir.join("qemu.log"))
            .map_err(VmError::io("cannot create qemu.log"))?;
        let qemu = Command::new(QEMU)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(
                qemu_log
                    .try_clone()
                    .map_err(VmError::io("cannot share qemu.log"))?,
            )
            .stderr(qemu_log)
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => VmError::MissingProgram {
                    program: QEMU.into(),
                    package: QEMU_PACKAGE.into(),
                },
                _ => VmError::Io {
                    context: format!("cannot start {QEMU}"),
                    source: e,
                },
            })?;
        Ok(TestVm {
            qemu,
            port,
            run_dir,
            serial_log,
            boot_time: Duration::ZERO,
            image: image.clone(),
            keep_logs: false,
        })
    }

    /// Probes the agent until it answers, QEMU exits, or `timeout` passes. The probes run on a
    /// thread of their own with its own async runtime, so `boot` may be called from sync code
    /// and from inside an async runtime alike.
    fn wait_for_agent(&mut self, timeout: Duration) -> Result<(), VmError> {
        let addr = self.agent_addr();
        let deadline = Instant::now() + timeout;
        let qemu = &mut self.qemu;
        let outcome = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(e) => {
                            return Probe::GaveUp(format!("cannot start an async runtime: {e}"));
                        }
                    };
                    let mut last_error = String::from("no attempt yet");
                    loop {
                        if let Ok(Some(status)) = qemu.try_wait() {
                            return Probe::QemuExited(status.to_string());
                        }
                        if Instant::now() >= deadline {
                            return Probe::GaveUp(last_error);
                        }
                        match runtime.block_on(health_check(&addr)) {
                            Ok(()) => return Probe::Answered,
                            Err(e) => last_error = e,
                        }
                        std::thread::sleep(Duration::from_millis(250));
                    }
                })
                .join()
                .unwrap_or_else(|_| Probe::GaveUp("the probe thread panicked".into()))
        });
        match outcome {
            Probe::Answered => Ok(()),
            Probe::QemuExited(status) => Err(VmError::QemuExited {
                status,
                qemu_log: std::fs::read_to_string(self.run_dir.join("qemu.log"))
                    .unwrap_or_default()
                    .trim()
                    .to_owned(),
                serial_tail: self.serial_tail(40),
                logs: self.run_dir.clone(),
            }),
            Probe::GaveUp(last_error) => Err(VmError::BootTimeout {
                addr,
                timeout,
                last_error,
                serial_tail: self.serial_tail(40),
                logs: self.run_dir.clone(),
            }),
        }
    }

    /// The agent's address as a ttrpc client takes it: `tcp://127.0.0.1:<port>`, forwarded to
    /// the agent's port in the guest.
    pub fn agent_addr(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// The host port forwarded to the agent.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Everything the guest printed on its serial console so far (firmware, kernel warnings,
    /// init, the agent's log), without terminal control sequences. The raw bytes are in the
    /// file at [`TestVm::serial_log_path`].
    pub fn serial_log(&self) -> String {
        printable(&String::from_utf8_lossy(
            &std::fs::read(&self.serial_log).unwrap_or_default(),
        ))
    }

    /// The last `lines` lines of [`TestVm::serial_log`].
    pub fn serial_tail(&self, lines: usize) -> String {
        tail(&self.serial_log(), lines)
    }

    /// The serial console's log file.
    pub fn serial_log_path(&self) -> &Path {
        &self.serial_log
    }

    /// From starting QEMU to the agent's first answer.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// The image this VM booted.
    pub fn image(&self) -> &VmImage {
        &self.image
    }

    /// Powers the VM off: SIGTERM to QEMU, SIGKILL if it has not exited after a few seconds.
    fn power_off(&mut self) {
        if let Ok(Some(_)) = self.qemu.try_wait() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.qemu.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.qemu.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}

impl Drop for TestVm {
    /// Powers the VM off. When the thread is panicking (a failed test), the end of the serial
    /// console is printed and the run's logs are kept, as they are when the boot failed;
    /// otherwise they are removed.
    fn drop(&mut self) {
        self.power_off();
        if self.keep_logs {
            return;
        }
        if std::thread::panicking() {
            eprintln!(
                "--- test VM serial console (last lines; whole log: {}) ---\n{}\n---",
                self.serial_log.display(),
                self.serial_tail(60)
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.run_dir);
        }
    }
}

/// How waiting for the agent ended.
enum Probe {
    /// It answered a health check.
    Answered,
    /// QEMU exited, with this status.
    QemuExited(String),
    /// Time ran out (or the probe could not run); the last failure.
    GaveUp(String),
}

/// How many finished runs' logs (kept when a test failed) are kept.
const KEEP_RUNS: usize = 10;

/// Removes the logs of all but the `keep` newest runs whose test process has ended (best effort;
/// a run directory is named `<pid>-<n>`).
fn prune_runs(runs: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(runs) else {
        return;
    };
    let mut finished: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name.split('-').next().unwrap_or_default().to_owned();
            !pid.is_empty() && !Path::new("/proc").join(pid).exists()
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    finished.sort_by_key(|run| std::cmp::Reverse(run.0));
    for (_, dir) in finished.into_iter().skip(keep) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Fails, naming the package, when QEMU is not installed.
fn check_qemu() -> Result<(), VmError> {
    match Command::new(QEMU)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(VmError::MissingProgram {
            program: QEMU.into(),
            package: QEMU_PACKAGE.into(),
        }),
        Err(e) => Err(VmError::Io {
            context: format!("cannot run {QEMU}"),
            source: e,
        }),
    }
}

/// A port on 127.0.0.1 that nothing listens on now.
fn free_port() -> Result<u16, VmError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(VmError::io("cannot find a free port on 127.0.0.1"))
}

/// QEMU's command line.
fn qemu_args(options: &VmOptions, image: &VmImage, port: u16, serial_log: &Path) -> Vec<String> {
    let mut append = vec![
        "console=ttyS0".to_owned(),
        "panic=-1".to_owned(),
        "loglevel=4".to_owned(),
        "edd=off".to_owned(),
    ];
    append.extend(options.extra_kernel_args.iter().cloned());
    let mut netdev = format!("user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:{AGENT_PORT}");
    // One relay process per guest connection (a chardev target would carry one stream only).
    let relay = options.relay_binary();
    for (guest, host_port) in &options.guest_forwards {
        netdev.push_str(&format!(
            ",guestfwd=tcp:{guest}-cmd:{} 127.0.0.1:{host_port}",
            relay.display()
        ));
    }
    let mut args: Vec<String> = [
        "-machine",
        "q35",
        "-accel",
        &options.accel,
        "-cpu",
        "max",
        "-m",
        &options.memory_mib.to_string(),
        "-smp",
        &options.cpus.to_string(),
        "-nographic",
        "-no-reboot",
        "-monitor",
        "none",
        "-serial",
        &format!("file:{}", serial_log.display()),
        "-kernel",
        &image.kernel().display().to_string(),
        "-initrd",
        &image.initramfs().display().to_string(),
        "-append",
        &append.join(" "),
        // User networking, restricted: the guest can reach nothing but the forwarded ports.
        "-netdev",
        &netdev,
        "-device",
        // No option ROM: the kernel is loaded directly, nothing boots from the network.
        "virtio-net-pci,netdev=n0,romfile=",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.extend(options.extra_args.iter().cloned());
    args
}

/// `args` quoted for a shell, for the record kept beside the logs.
fn shell_words(args: &[String]) -> String {
    let quoted: Vec<String> = std::iter::once(QEMU.to_owned())
        .chain(args.iter().map(|a| {
            if a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        }))
        .collect();
    quoted.join(" ") + "\n"
}

/// One health check: connect, ask, and wait at most a few seconds (QEMU's forwarder accepts
/// the connection before the guest listens, then drops it).
async fn health_check(addr: &str) -> Result<(), String> {
    let attempt = async {
        let client = ttrpc::r#async::Client::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let health = health_ttrpc::HealthClient::new(client);
        let context = ttrpc::context::with_timeout(2_000_000_000);
        health
            .check(context, &health::CheckRequest::new())
            .await
            .map(|_| ())
            .map_err(|e| format!("health check: {e}"))
    };
    tokio::time::timeout(Duration::from_secs(3), attempt)
        .await
        .unwrap_or_else(|_| Err("health check: no answer within 3 s".into()))
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `text` without terminal escape sequences (the firmware's screen clearing, colours) and
/// carriage returns.
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                // CSI: ESC [ parameters, then a final byte in @..~; otherwise ESC and one byte.
                if chars.next_if_eq(&'[').is_some() {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\r' => {}
            c if c.is_control() && c != '\n' && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_output_loses_escapes_and_keeps_text() {
        let raw = "\u{1b}c\u{1b}[?7l\u{1b}[2J\u{1b}[0mSeaBIOS\r\n\u{1b}[32m INFO\u{1b}[0m agent serving\r\n";
        assert_eq!(printable(raw), "SeaBIOS\n INFO agent serving\n");
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }

    #[test]
    fn the_command_line_forwards_the_agent_port_and_appends_extra_arguments() {
        let mut options = VmOptions::new("/nonexistent/kata-agent");
        options.extra_args = vec!["-device".into(), "tpm-tis,tpmdev=tpm0".into()];
        options.extra_kernel_args = vec!["peerpod.debug_shell".into()];
        let image = VmImage::from_parts("/k".into(), "/i".into(), "6.1.0-test".into());
        let args = qemu_args(&options, &image, 4321, Path::new("/tmp/serial.log"));
        let joined = args.join(" ");
        assert!(
            joined.contains("hostfwd=tcp:127.0.0.1:4321-:15150"),
            "{joined}"
        );
        assert!(joined.contains("-accel tcg") || std::env::var_os("PEERPOD_VM_ACCEL").is_some());
        assert!(joined.ends_with("-device tpm-tis,tpmdev=tpm0"), "{joined}");
        let append = args
            .iter()
            .skip_while(|a| *a != "-append")
            .nth(1)
            .expect("-append");
        assert!(append.starts_with("console=ttyS0 panic=-1"), "{append}");
        assert!(append.ends_with("peerpod.debug_shell"), "{append}");
    }
}
