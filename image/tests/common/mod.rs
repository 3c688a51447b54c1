//! Fixtures for the pull tests: Debian's `docker-registry` on 127.0.0.1 (plain, htpasswd, TLS
//! with a test CA), images built from busybox-static with `umoci` and pushed with `skopeo`, and
//! a layer store that records what the pipeline hands it.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{Read, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use peerpod_image::{Digest, Layers};

pub mod fake;
pub mod raw;
pub mod setup;

pub use setup::*;

pub const BUSYBOX: &str = "/bin/busybox";

/// Whether the tools are installed; outside CI a missing one skips the test loudly, under
/// `CI=true` it fails.
pub fn tools_present() -> bool {
    let missing: Vec<&str> = ["docker-registry", "umoci", "skopeo", "htpasswd", "openssl"]
        .into_iter()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    let missing: Vec<&str> = if Path::new(BUSYBOX).exists() {
        missing
    } else {
        [missing, vec!["busybox-static"]].concat()
    };
    if missing.is_empty() {
        return true;
    }
    let message = format!(
        "{} missing: run scripts/install-test-deps.sh",
        missing.join(", ")
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message} (CI=true: a missing tool fails)");
    }
    let _ = std::io::stderr().write_all(format!("\n*** SKIPPED: {message} ***\n").as_bytes());
    false
}

pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("spawn {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "peerpod-image-{name}-{}-{}",
            std::process::id(),
            free_port()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("scratch");
        Self(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Default, Clone)]
pub struct RegistryOptions {
    pub auth: Option<(String, String)>,
    pub tls: bool,
}

/// `docker-registry` serving from a scratch directory.
pub struct Registry {
    pub addr: String,
    pub ca_pem: Option<String>,
    pub cert_dir: Option<PathBuf>,
    pub options: RegistryOptions,
    child: Child,
    dir: Scratch,
}

impl Registry {
    pub fn start(options: RegistryOptions) -> Result<Self> {
        let dir = Scratch::new("registry");
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut yml = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        let mut ca_pem = None;
        let mut cert_dir = None;
        if options.tls {
            let d = dir.path();
            let sh = format!(
                "set -e; cd {d}; \
                 openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=peerpod-test-ca 2>/dev/null; \
                 openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout key.pem -out srv.csr -subj /CN=127.0.0.1 2>/dev/null; \
                 printf 'subjectAltName=IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\n' > ext; \
                 openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cert.pem -days 2 -extfile ext 2>/dev/null; \
                 mkdir -p certs; cp ca.pem certs/ca.crt",
                d = d.display()
            );
            run(Command::new("sh").args(["-c", &sh]))?;
            yml.push_str(&format!(
                "  tls:\n    certificate: {0}/cert.pem\n    key: {0}/key.pem\n",
                d.display()
            ));
            ca_pem = Some(std::fs::read_to_string(d.join("ca.pem"))?);
            cert_dir = Some(d.join("certs"));
        }
        if let Some((user, pass)) = &options.auth {
            let htpasswd = run(Command::new("htpasswd").args(["-Bbn", user, pass]))?;
            std::fs::write(dir.path().join("htpasswd"), htpasswd)?;
            yml.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: peerpod-test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            ));
        }
        let config = dir.path().join("config.yml");
        std::fs::write(&config, yml)?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("registry.log"))?)
            .spawn()
            .context("start docker-registry")?;
        let registry = Self {
            addr,
            ca_pem,
            cert_dir,
            options,
            child,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&registry.addr).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "docker-registry did not listen on {}: {}",
                    registry.addr,
                    std::fs::read_to_string(registry.dir.path().join("registry.log"))
                        .unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(registry)
    }

    /// Pushes the OCI layout `layout:tag` as `repo:dest_tag` (`format`: `oci` or `v2s2`).
    pub fn push(
        &self,
        layout: &Path,
        tag: &str,
        repo: &str,
        dest_tag: &str,
        format: &str,
    ) -> Result<()> {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--insecure-policy", "--quiet", "--format", format]);
        if let Some(d) = &self.cert_dir {
            cmd.arg("--dest-cert-dir").arg(d);
        } else {
            cmd.arg("--dest-tls-verify=false");
        }
        if let Some((u, p)) = &self.options.auth {
            cmd.arg("--dest-creds").arg(format!("{u}:{p}"));
        }
        cmd.arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{repo}:{dest_tag}", self.addr));
        run(&mut cmd).map(|_| ())
    }

    pub fn url(&self) -> String {
        format!(
            "{}://{}",
            if self.options.tls { "https" } else { "http" },
            self.addr
        )
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One change to the image's root filesystem, repacked as one layer.
pub enum Step<'a> {
    /// busybox with a few applets.
    Busybox,
    /// Writes a file (creating parents).
    Write(&'a str, &'a [u8]),
    /// Removes a path (a whiteout in the next layer).
    Remove(&'a str),
    /// Random bytes of the given size (incompressible) at a path.
    Random(&'a str, usize),
    /// Pseudo-random bytes from a seed (the same each run: layers can be rebuilt equal).
    Seeded(&'a str, usize, u64),
}

/// Builds `layout:tag` with umoci: one layer per group of steps.
pub fn build_image(layout: &Path, tag: &str, layers: &[Vec<Step<'_>>]) -> Result<()> {
    if !layout.join("index.json").exists() {
        run(Command::new("umoci")
            .arg("init")
            .arg("--layout")
            .arg(layout))?;
    }
    let image = format!("{}:{tag}", layout.display());
    run(Command::new("umoci").args(["new", "--image", &image]))?;
    extend_image(layout, tag, tag, layers)
}

/// `layout:to` made of `layout:from`'s layers (shared, byte for byte) with one more layer per
/// group of steps on top.
pub fn extend_image(layout: &Path, from: &str, to: &str, layers: &[Vec<Step<'_>>]) -> Result<()> {
    let source = format!("{}:{from}", layout.display());
    let image = format!("{}:{to}", layout.display());
    let bundle = layout.with_extension(format!("bundle-{to}"));
    let _ = std::fs::remove_dir_all(&bundle);
    run(Command::new("umoci")
        .args(["unpack", "--image", &source])
        .arg(&bundle))?;
    let rootfs = bundle.join("rootfs");
    for steps in layers {
        for step in steps {
            match step {
                Step::Busybox => {
                    std::fs::create_dir_all(rootfs.join("bin"))?;
                    std::fs::copy(BUSYBOX, rootfs.join("bin/busybox"))?;
                    for a in ["sh", "cat", "ls", "echo", "sleep", "true"] {
                        let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a));
                    }
                }
                Step::Write(path, bytes) => {
                    let p = rootfs.join(path.trim_start_matches('/'));
                    if let Some(parent) = p.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    std::fs::write(p, bytes)?;
                }
                Step::Remove(path) => {
                    let p = rootfs.join(path.trim_start_matches('/'));
                    if p.is_dir() {
                        std::fs::remove_dir_all(p)?;
                    } else {
                        std::fs::remove_file(p)?;
                    }
                }
                Step::Seeded(path, size, seed) => {
                    let p = rootfs.join(path.trim_start_matches('/'));
                    if let Some(parent) = p.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    // xorshift64*: cheap, incompressible, the same bytes for a seed.
                    let mut x = *seed | 1;
                    let mut bytes = Vec::with_capacity(*size + 8);
                    while bytes.len() < *size {
                        x ^= x >> 12;
                        x ^= x << 25;
                        x ^= x >> 27;
                        bytes.extend_from_slice(
                            &x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes(),
                        );
                    }
                    bytes.truncate(*size);
                    std::fs::write(p, bytes)?;
                }
                Step::Random(path, size) => {
                    let p = rootfs.join(path.trim_start_matches('/'));
                    if let Some(parent) = p.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    let mut f = std::fs::File::create(p)?;
                    let mut urandom = std::fs::File::open("/dev/urandom")?;
                    let mut left = *size;
                    let mut buf = vec![0u8; 1 << 20];
                    while left > 0 {
                        let n = left.min(buf.len());
                        urandom.read_exact(&mut buf[..n])?;
                        f.write_all(&buf[..n])?;
                        left -= n;
                    }
                }
            }
        }
        run(Command::new("umoci")
            .args(["repack", "--refresh-bundle", "--image", &image])
            .arg(&bundle))?;
    }
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.cmd",
        "/bin/sh",
        "--architecture",
        peerpod_image::manifest::guest_architecture(),
        "--os",
        "linux",
    ]))?;
    let _ = std::fs::remove_dir_all(&bundle);
    Ok(())
}

/// A store that records each layer's tar entries (read to EOF, as the real store does) and
/// the bundles mounted.
#[derive(Default)]
pub struct RecordingStore {
    pub layers: Mutex<HashMap<Digest, Vec<String>>>,
    pub installs: Mutex<Vec<Digest>>,
    pub mounts: Mutex<HashMap<PathBuf, Vec<Digest>>>,
    pub gcs: Mutex<Vec<Vec<Digest>>>,
}

impl Layers for RecordingStore {
    fn contains(&self, diff_id: &Digest) -> bool {
        self.layers.lock().unwrap().contains_key(diff_id)
    }
    fn install(
        &self,
        diff_id: &Digest,
        tar: &mut dyn Read,
        _charge: peerpod_image::ChargeHook,
    ) -> std::io::Result<()> {
        let mut names = Vec::new();
        {
            let mut archive = tar::Archive::new(&mut *tar);
            for entry in archive.entries()? {
                let mut entry = entry?;
                names.push(entry.path()?.to_string_lossy().into_owned());
                std::io::copy(&mut entry, &mut std::io::sink())?;
            }
        }
        // To EOF: the reader checks the digests there.
        std::io::copy(tar, &mut std::io::sink())?;
        self.installs.lock().unwrap().push(diff_id.clone());
        self.layers.lock().unwrap().insert(diff_id.clone(), names);
        Ok(())
    }
    fn mount_rootfs(&self, diff_ids: &[Digest], bundle: &Path) -> std::io::Result<()> {
        self.mounts
            .lock()
            .unwrap()
            .insert(bundle.to_path_buf(), diff_ids.to_vec());
        Ok(())
    }
    fn unmount_rootfs(&self, bundle: &Path) -> std::io::Result<()> {
        self.mounts.lock().unwrap().remove(bundle);
        Ok(())
    }
    fn gc(&self) -> std::io::Result<()> {
        let in_use: Vec<Digest> = self
            .mounts
            .lock()
            .unwrap()
            .values()
            .flatten()
            .cloned()
            .collect();
        self.gcs.lock().unwrap().push(in_use.clone());
        self.layers
            .lock()
            .unwrap()
            .retain(|d, _| in_use.contains(d));
        Ok(())
    }
}

/// `[image]` for tests: work_dir in scratch, quick retries.
pub fn test_config(work_dir: &Path) -> peerpod_image::ImageConfig {
    let mut c = peerpod_image::ImageConfig {
        work_dir: work_dir.to_path_buf(),
        ..Default::default()
    };
    c.transfer.backoff = Duration::from_millis(50);
    c.transfer.read_timeout = Duration::from_secs(2);
    c.transfer.connect_timeout = Duration::from_secs(2);
    c.transfer.attempts = 3;
    c
}

/// A `file://` resource written into `dir`.
pub fn file_uri(dir: &Path, name: &str, content: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, content).expect("write resource");
    format!("file://{}", p.display())
}

/// registries.conf marking `addr` insecure (plain HTTP).
pub fn insecure_conf(addr: &str) -> String {
    format!("[[registry]]\nlocation = \"{addr}\"\ninsecure = true\n")
}
