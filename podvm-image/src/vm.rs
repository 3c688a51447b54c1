//! One pod VM under QEMU: the image's disk (through a throw-away qcow2 overlay), direct kernel
//! boot with the image's command line (dm-verity root hash included), the simulated Azure SNP
//! vTPM as a TPM TIS device, a cidata ISO, user-mode networking with 15150 forwarded to a host
//! port, and the serial console captured with timestamps.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use peerpod_tests::cvm::{CvmOptions, Flavour, SimulatedCvm};

use crate::secure_boot::{OVMF_CODE_SECBOOT, TrustedKeys};
use crate::{Console, PodvmError, PodvmImage};

/// How to boot a pod VM.
#[derive(Debug, Clone)]
pub struct PodVmOptions {
    /// The image.
    pub image: PodvmImage,
    /// The cloud-config user data put on the cidata ISO.
    pub user_data: String,
    /// A directory for this VM's files (overlay disk, ISO, vTPM state, console log).
    pub dir: PathBuf,
    /// Guest memory.
    pub memory_mib: u32,
    /// Guest CPUs.
    pub cpus: u32,
    /// Appended to the image's kernel command line (direct boot only).
    pub extra_cmdline: String,
    /// Boot the disk's UKI through UEFI firmware (OVMF) instead of the kernel directly: the
    /// command line is then the UKI's own, root hash included.
    pub uefi: bool,
    /// Boot through UEFI firmware with Secure Boot on, trusting these keys (implies
    /// [`uefi`](Self::uefi)): the SMM build of OVMF, whose variable store the guest cannot
    /// rewrite.
    pub secure_boot: Option<TrustedKeys>,
    /// Changes to the disk before boot: (byte offset in the disk, bytes) written into the
    /// overlay with `qemu-io` (the image itself is never touched). For attacker tests.
    pub tamper: Vec<(u64, Vec<u8>)>,
}

/// OVMF's code, and the variable store template copied per VM.
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

impl PodVmOptions {
    /// Defaults: 1 GiB, 2 CPUs.
    pub fn new(image: PodvmImage, user_data: String, dir: impl Into<PathBuf>) -> Self {
        Self {
            image,
            user_data,
            dir: dir.into(),
            memory_mib: 1024,
            cpus: 2,
            extra_cmdline: String::new(),
            uefi: false,
            secure_boot: None,
            tamper: Vec::new(),
        }
    }
}

/// A running pod VM; dropping it stops QEMU and the vTPM.
pub struct PodVm {
    child: Child,
    console: Console,
    port: u16,
    started: Instant,
    dir: PathBuf,
    // Dropped after QEMU (fields drop in order), so the guest never loses its TPM mid-run.
    cvm: SimulatedCvm,
}

fn free_port() -> Result<u16, PodvmError> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| PodvmError::io("pick a free port", e))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| PodvmError::io("pick a free port", e))
}

fn run(cmd: &mut Command) -> Result<(), PodvmError> {
    let out = cmd
        .output()
        .map_err(|e| PodvmError::io(format!("run {cmd:?}"), e))?;
    if out.status.success() {
        return Ok(());
    }
    Err(PodvmError::Command {
        command: format!("{cmd:?}"),
        output: format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    })
}

fn require(tool: &'static str, package: &'static str) -> Result<(), PodvmError> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    if found {
        Ok(())
    } else {
        Err(PodvmError::MissingTool { tool, package })
    }
}

impl PodVm {
    /// Boots the VM (returns once QEMU runs; the guest is still booting) with a fresh
    /// simulated Azure SNP CVM (vTPM, paravisor, IMDS) in `options.dir/cvm`.
    pub fn boot(options: &PodVmOptions) -> Result<Self, PodvmError> {
        std::fs::create_dir_all(&options.dir)
            .map_err(|e| PodvmError::io("create the VM directory", e))?;
        let cvm =
            SimulatedCvm::start_for_vm(CvmOptions::new(Flavour::Snp, options.dir.join("cvm")))?;
        Self::boot_with_cvm(options, cvm)
    }

    /// [`PodVm::boot`] with a CVM the caller started (`SimulatedCvm::start_for_vm`), so that a
    /// KBS trusting its roots and its IMDS address can be set up before the guest boots.
    pub fn boot_with_cvm(options: &PodVmOptions, cvm: SimulatedCvm) -> Result<Self, PodvmError> {
        require("qemu-system-x86_64", "qemu-system-x86")?;
        require("qemu-img", "qemu-utils")?;
        require("swtpm", "swtpm")?;
        let dir = &options.dir;
        std::fs::create_dir_all(dir).map_err(|e| PodvmError::io("create the VM directory", e))?;
        let disk = dir.join("disk.qcow2");
        let _ = std::fs::remove_file(&disk);
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(options.image.qcow2())
            .arg(&disk))?;
        for (offset, bytes) in &options.tamper {
            let data = dir.join(format!("tamper-{offset}"));
            std::fs::write(&data, bytes).map_err(|e| PodvmError::io("write tamper data", e))?;
            run(Command::new("qemu-io")
                .args(["-f", "qcow2", "-c"])
                .arg(format!(
                    "write -s {} {offset} {}",
                    data.display(),
                    bytes.len()
                ))
                .arg(&disk))?;
        }
        let iso = crate::cidata::cidata_iso(dir, &options.user_data)?;
        let port = free_port()?;
        let cmdline = format!(
            "{} {}",
            options.image.cmdline().unwrap_or_default(),
            options.extra_cmdline
        );
        let mut cmd = Command::new("qemu-system-x86_64");
        let machine = if options.secure_boot.is_some() {
            "q35,smm=on"
        } else {
            "q35"
        };
        cmd.args(["-machine", machine, "-accel", "tcg", "-cpu", "max"])
            .args(["-m", &options.memory_mib.to_string()])
            .args(["-smp", &options.cpus.to_string()])
            .args([
                "-nodefaults",
                "-display",
                "none",
                "-no-reboot",
                "-monitor",
                "none",
            ])
            .args(["-serial", "stdio"]);
        if options.uefi || options.secure_boot.is_some() {
            let (code, vars_template) = match options.secure_boot {
                Some(keys) => (OVMF_CODE_SECBOOT, keys.vars()),
                None => (OVMF_CODE, OVMF_VARS),
            };
            for file in [code, vars_template] {
                if !Path::new(file).is_file() {
                    return Err(PodvmError::MissingTool {
                        tool: "OVMF's firmware files (/usr/share/OVMF)",
                        package: "ovmf",
                    });
                }
            }
            let vars = dir.join("OVMF_VARS.fd");
            std::fs::copy(vars_template, &vars).map_err(|e| PodvmError::io("copy OVMF_VARS", e))?;
            if options.secure_boot.is_some() {
                // Only SMM code may write the variable store (the keys and the Secure Boot
                // switch).
                cmd.args(["-global", "driver=cfi.pflash01,property=secure,value=on"]);
            }
            cmd.arg("-drive")
                .arg(format!("if=pflash,format=raw,readonly=on,file={code}"))
                .arg("-drive")
                .arg(format!("if=pflash,format=raw,file={}", vars.display()));
        } else {
            cmd.arg("-kernel")
                .arg(options.image.kernel())
                .arg("-initrd")
                .arg(options.image.initrd())
                .args(["-append", cmdline.trim()]);
        }
        cmd.arg("-drive")
            .arg(format!("file={},if=virtio,format=qcow2", disk.display()))
            .arg("-drive")
            .arg(format!(
                "file={},if=virtio,format=raw,readonly=on",
                iso.display()
            ))
            .args(["-netdev"])
            .arg(format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:15150"))
            .args(["-device", "virtio-net-pci,netdev=n0"])
            .args(["-device", "virtio-rng-pci"])
            .args(cvm.qemu_args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("qemu.stderr"))
                    .map_err(|e| PodvmError::io("create qemu.stderr", e))?,
            ));
        let _ = std::fs::write(dir.join("qemu.cmdline"), format!("{cmd:?}\n"));
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| PodvmError::io("start qemu-system-x86_64", e))?;
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            return Err(PodvmError::io(
                "QEMU's console",
                std::io::Error::other("no stdout pipe"),
            ));
        };
        let console = Console::capture(stdout, started, &dir.join("console.log"))
            .map_err(|e| PodvmError::io("capture the console", e))?;
        Ok(Self {
            child,
            console,
            port,
            started,
            dir: dir.clone(),
            cvm,
        })
    }

    /// 15150 as forwarded to the host.
    pub fn forwarder_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The console.
    pub fn console(&self) -> &Console {
        &self.console
    }

    /// When QEMU was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// This VM's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The VM's disk as the host stores it: the qcow2 overlay every guest write lands in.
    pub fn disk(&self) -> PathBuf {
        self.dir.join("disk.qcow2")
    }

    /// The simulated CVM behind the guest's vTPM.
    pub fn cvm(&self) -> &SimulatedCvm {
        &self.cvm
    }

    /// Fails if QEMU has exited (with the console's tail).
    pub fn check_running(&mut self, what: &str) -> Result<(), PodvmError> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(PodvmError::Exited {
                status: status.to_string(),
                what: what.to_string(),
                tail: self.console.tail(40),
            }),
            _ => Ok(()),
        }
    }

    /// Waits for a console line containing `needle`; returns its time since QEMU started.
    pub fn wait_console(
        &mut self,
        needle: &str,
        timeout: Duration,
    ) -> Result<Duration, PodvmError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.console.find(needle) {
                return Ok(line.at);
            }
            if let Err(e) = self.check_running(&format!("console line {needle:?}")) {
                // The console thread may still hold QEMU's last lines.
                std::thread::sleep(Duration::from_millis(300));
                return self.console.find(needle).map(|l| l.at).ok_or(e);
            }
            if Instant::now() >= deadline {
                return Err(PodvmError::Timeout {
                    what: format!("console line {needle:?}"),
                    secs: timeout.as_secs(),
                    tail: self.console.tail(40),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops QEMU.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PodVm {
    fn drop(&mut self) {
        self.stop();
    }
}
