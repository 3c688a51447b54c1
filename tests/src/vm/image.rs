//! The test VM's boot files: the kernel from Debian's cloud kernel package and an initramfs
//! holding busybox, the agent under test with its shared libraries, the kernel modules for a
//! virtio NIC, the init scripts, the agent's configuration and policy, and a busybox root
//! filesystem for containers.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, PoisonError};

use sha2::{Digest, Sha256};

use super::cpio::Archive;
use super::host::{run, shared_libraries};
use super::kernel::Kernel;
use super::{VmError, VmOptions};

/// The agent's TCP port in the guest.
pub const AGENT_PORT: u16 = 15150;
/// The guest's address on QEMU's user network.
pub const GUEST_IP: &str = "10.0.2.15";
/// The guest's gateway (the host) on QEMU's user network.
pub const GUEST_GATEWAY: &str = "10.0.2.2";
/// Where, in the guest, a busybox root filesystem for containers is.
pub const GUEST_BUSYBOX_ROOTFS: &str = "/containers/busybox";
/// The agent's binary in the guest.
pub const GUEST_AGENT: &str = "/usr/bin/kata-agent";
/// The agent's configuration file in the guest.
pub const GUEST_AGENT_CONFIG: &str = "/etc/agent-config.toml";
/// The agent policy in the guest (the agent's default `policy_file`).
pub const GUEST_POLICY: &str = "/etc/kata-opa/default-policy.rego";

/// The static busybox of Debian's busybox-static, used as the guest's shell and tools.
const BUSYBOX: &str = "/bin/busybox";
/// How many built images the cache keeps (the newest).
const KEEP_IMAGES: usize = 3;

/// The kernel and initramfs a test VM boots. Built by [`VmImage::build`], which reuses what the
/// cache under `target/peerpod-vm/` already holds: the kernel package per version, the
/// initramfs per content.
#[derive(Debug, Clone)]
pub struct VmImage {
    kernel: PathBuf,
    initramfs: PathBuf,
    release: String,
}

impl VmImage {
    /// Fetches the kernel (once per version) and builds the initramfs for `options`: once per
    /// process for the same options (concurrent callers wait for the first), and once per
    /// content on disk (an unchanged agent binary reuses the archive of an earlier run).
    pub fn build(options: &VmOptions) -> Result<VmImage, VmError> {
        static BUILT: Mutex<Vec<(ImageKey, VmImage)>> = Mutex::new(Vec::new());
        let key = ImageKey::of(options);
        let mut built = BUILT.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, image)) = built.iter().find(|(k, _)| *k == key) {
            return Ok(image.clone());
        }
        let image = Self::build_uncached(options)?;
        built.push((key, image.clone()));
        Ok(image)
    }

    fn build_uncached(options: &VmOptions) -> Result<VmImage, VmError> {
        let cache = options.cache_dir();
        let kernel = Kernel::fetch(&cache)?;
        let archive = initramfs(options, &kernel)?;
        let mut raw = Vec::new();
        archive
            .write_to(&mut raw)
            .map_err(VmError::io("cannot write the initramfs archive"))?;
        let digest = hex::encode(Sha256::digest(&raw));
        let dir = cache.join("initramfs");
        std::fs::create_dir_all(&dir)
            .map_err(VmError::io(format!("cannot create {}", dir.display())))?;
        let initramfs = dir.join(format!("{}.cpio.gz", &digest[..16]));
        if initramfs.is_file() {
            // Mark it recently used, so the clean-up below keeps it.
            let _ = std::fs::File::options()
                .append(true)
                .open(&initramfs)
                .and_then(|f| f.set_modified(std::time::SystemTime::now()));
        } else {
            write_gzip(&raw, &initramfs)?;
            prune(&dir, KEEP_IMAGES);
        }
        Ok(VmImage {
            kernel: kernel.vmlinuz(),
            initramfs,
            release: kernel.release,
        })
    }

    /// An image from files built elsewhere.
    pub fn from_parts(kernel: PathBuf, initramfs: PathBuf, kernel_release: String) -> VmImage {
        VmImage {
            kernel,
            initramfs,
            release: kernel_release,
        }
    }

    /// The kernel image (`vmlinuz`).
    pub fn kernel(&self) -> &Path {
        &self.kernel
    }

    /// The initramfs (newc cpio, gzip).
    pub fn initramfs(&self) -> &Path {
        &self.initramfs
    }

    /// The kernel release (`uname -r` in the guest).
    pub fn kernel_release(&self) -> &str {
        &self.release
    }
}

/// What an image is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ImageKey {
    agent_binary: PathBuf,
    policy_file: PathBuf,
    log_level: String,
    modules: Vec<String>,
    extra_files: Vec<(String, PathBuf)>,
    boot_commands: Vec<String>,
    cache: PathBuf,
}

impl ImageKey {
    fn of(options: &VmOptions) -> Self {
        Self {
            agent_binary: options.agent_binary.clone(),
            policy_file: options.policy_file.clone(),
            log_level: options.log_level.clone(),
            modules: options.modules.clone(),
            extra_files: options.extra_files.clone(),
            boot_commands: options.boot_commands.clone(),
            cache: options.cache_dir(),
        }
    }
}

/// Assembles the initramfs's contents.
fn initramfs(options: &VmOptions, kernel: &Kernel) -> Result<Archive, VmError> {
    let mut archive = Archive::default();
    for dir in [
        "/bin",
        "/sbin",
        "/usr/bin",
        "/usr/sbin",
        "/etc",
        "/proc",
        "/sys",
        "/dev",
        "/run",
        "/root",
        "/newroot",
        "/var",
    ] {
        archive.dir(dir, 0o755);
    }
    archive.dir("/tmp", 0o1777);
    // The kernel opens /dev/console for init before anything is mounted.
    archive.char_device("/dev/console", 0o600, 5, 1);
    archive.char_device("/dev/null", 0o666, 1, 3);

    // busybox, as the guest's tools and as the containers' root filesystem.
    let busybox = read_file(
        Path::new(BUSYBOX),
        "busybox",
        " (install Debian's busybox-static)",
    )?;
    let applets = run(Command::new(BUSYBOX).arg("--list"), "busybox-static")?;
    let applets: Vec<&str> = applets
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && !a.contains('/') && *a != "busybox")
        .collect();
    archive.file("/bin/busybox", 0o755, busybox.clone());
    for applet in &applets {
        archive.symlink(&format!("/bin/{applet}"), "busybox");
    }
    let rootfs = GUEST_BUSYBOX_ROOTFS;
    for dir in ["proc", "sys", "dev", "etc", "root"] {
        archive.dir(&format!("{rootfs}/{dir}"), 0o755);
    }
    archive.dir(&format!("{rootfs}/tmp"), 0o1777);
    archive.file(&format!("{rootfs}/bin/busybox"), 0o755, busybox);
    for applet in &applets {
        archive.symlink(&format!("{rootfs}/bin/{applet}"), "busybox");
    }
    archive.file(&format!("{rootfs}/etc/passwd"), 0o644, PASSWD.into());
    archive.file(&format!("{rootfs}/etc/group"), 0o644, GROUP.into());

    // The agent and what it loads.
    let agent = read_file(
        &options.agent_binary,
        "the agent binary",
        " (build it: cargo build -p kata-agent)",
    )?;
    archive.file(GUEST_AGENT, 0o755, agent);
    let mut libraries = std::collections::BTreeSet::new();
    libraries.extend(shared_libraries(&options.agent_binary)?);
    let policy = read_file(&options.policy_file, "the agent policy", "")?;
    archive.file(GUEST_POLICY, 0o644, policy);
    archive.file(
        GUEST_AGENT_CONFIG,
        0o644,
        agent_config(options).into_bytes(),
    );
    archive.file("/etc/passwd", 0o644, PASSWD.into());
    archive.file("/etc/group", 0o644, GROUP.into());
    archive.file("/etc/hostname", 0o644, b"peerpod-vm\n".to_vec());

    // Kernel modules, in load order, and a modules.dep for `modprobe` by hand.
    let modules = kernel.modules_for(&options.modules)?;
    let modules_dir = kernel.modules_dir();
    let guest_modules = format!("/lib/modules/{}", kernel.release);
    let mut depmod = String::new();
    for module in &modules {
        let data = read_file(&modules_dir.join(&module.path), "kernel module", "")?;
        archive.file(&format!("{guest_modules}/{}", module.path), 0o644, data);
        // depmod's format: the module, then everything it needs, the last-loaded first.
        let needs: Vec<&str> = module
            .needs
            .iter()
            .rev()
            .filter_map(|&at| modules.get(at).map(|m| m.path.as_str()))
            .collect();
        depmod.push_str(&format!("{}: {}\n", module.path, needs.join(" ")));
    }
    archive.file(
        &format!("{guest_modules}/modules.dep"),
        0o644,
        depmod.into_bytes(),
    );

    for (guest, host) in &options.extra_files {
        let data = read_file(host, "an extra file", "")?;
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(host)
                .map_err(VmError::io(format!("cannot stat {}", host.display())))?
                .permissions(),
        ) & 0o7777;
        archive.file(guest, mode, data);
        // Executables bring their shared libraries (cryptsetup, mkfs.ext4, our binaries).
        if mode & 0o111 != 0 {
            libraries.extend(shared_libraries(host)?);
        }
    }
    for library in &libraries {
        let data = read_file(library, "shared library", "")?;
        archive.file(&library.to_string_lossy(), 0o755, data);
    }

    archive.file("/init", 0o755, STAGE1.into());
    archive.file(
        "/sbin/peerpod-init",
        0o755,
        stage2(
            options,
            &kernel.release,
            &modules.iter().map(|m| m.path.as_str()).collect::<Vec<_>>(),
        )
        .into_bytes(),
    );
    Ok(archive)
}

fn read_file(path: &Path, what: &'static str, hint: &'static str) -> Result<Vec<u8>, VmError> {
    std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            VmError::MissingFile {
                what,
                path: path.to_owned(),
                hint,
            }
        } else {
            VmError::Io {
                context: format!("cannot read {what} {}", path.display()),
                source: e,
            }
        }
    })
}

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";

/// Stage 1: the initramfs is the kernel's rootfs, which pivot_root(2) cannot leave, and the
/// container runtime pivots into each container's root. So the image is copied to a tmpfs that
/// becomes the root, and stage 2 runs there.
const STAGE1: &str = r#"#!/bin/sh
# peerpod test VM, stage 1: move the image to a tmpfs root (pivot_root cannot leave rootfs).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t tmpfs -o mode=0755 root /newroot || exec sh
for entry in /*; do
    case "$entry" in
        /newroot|/init) ;;
        *) cp -a "$entry" /newroot/ ;;
    esac
done
exec switch_root /newroot /sbin/peerpod-init
"#;

/// The agent's configuration in the guest.
fn agent_config(options: &VmOptions) -> String {
    format!(
        "# peerpod test VM\nserver_addr = 'tcp://0.0.0.0:{AGENT_PORT}'\npolicy_file = '{GUEST_POLICY}'\nlog_level = '{}'\n",
        options.log_level
    )
}

/// Stage 2: file systems, modules, network, then the agent; the VM powers off when it exits.
fn stage2(options: &VmOptions, release: &str, modules: &[&str]) -> String {
    let modules = modules.join(" ");
    let log_level = &options.log_level;
    let boot_commands = options.boot_commands.join("\n");
    format!(
        r#"#!/bin/sh
# peerpod test VM, stage 2: file systems, kernel modules, network, then the agent.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin NO_COLOR=1
log() {{ echo "peerpod-vm: $*"; }}
mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o nosuid,noexec,ptmxmode=0666,mode=0620 devpts /dev/pts
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /dev/shm
mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs /run
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /tmp
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup
for module in {modules}; do
    insmod /lib/modules/{release}/$module || log "cannot load $module"
done
hostname peerpod-vm
ip link set lo up
n=0
while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
ip link set eth0 up
ip addr add {GUEST_IP}/24 dev eth0
ip route add default via {GUEST_GATEWAY} dev eth0
{boot_commands}
log "up $(cut -d' ' -f1 /proc/uptime)s: starting kata-agent on tcp port {AGENT_PORT} (log level {log_level})"
if grep -qw peerpod.debug_shell /proc/cmdline; then
    # For debugging by hand: the agent in the background, a shell on the console.
    {GUEST_AGENT} --config {GUEST_AGENT_CONFIG} --log-format text </dev/null &
    log "kata-agent is pid $!; shell on the console (poweroff -f to stop)"
    exec setsid cttyhack sh -l
fi
{GUEST_AGENT} --config {GUEST_AGENT_CONFIG} --log-format text </dev/null
log "kata-agent exited with status $?; powering off"
poweroff -f
"#
    )
}

fn write_gzip(raw: &[u8], path: &Path) -> Result<(), VmError> {
    static WRITES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let partial = path.with_extension(format!(
        "partial-{}-{}",
        std::process::id(),
        WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let result = (|| {
        let file = std::fs::File::create(&partial)?;
        let mut encoder = flate2::write::GzEncoder::new(
            std::io::BufWriter::new(file),
            flate2::Compression::fast(),
        );
        encoder.write_all(raw)?;
        encoder.finish()?.flush()?;
        std::fs::rename(&partial, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result.map_err(VmError::io(format!("cannot write {}", path.display())))
}

/// Removes all but the `keep` most recently modified images in `dir` (best effort).
fn prune(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut images: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".cpio.gz"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    images.sort_by_key(|image| std::cmp::Reverse(image.0));
    for (_, path) in images.into_iter().skip(keep) {
        let _ = std::fs::remove_file(path);
    }
}
