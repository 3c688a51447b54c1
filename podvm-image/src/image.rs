//! The image `make podvm` builds (`podvm-image/build.sh`): where it is and what it says about
//! itself (`image.env`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::PodvmError;

/// A built pod VM image: the disk, and the kernel, initramfs and command line for direct boot.
#[derive(Debug, Clone)]
pub struct PodvmImage {
    /// The output directory.
    pub dir: PathBuf,
    /// The facts `build.sh` wrote to `image.env` (sizes, root hash, kernel version).
    pub facts: BTreeMap<String, String>,
}

impl PodvmImage {
    /// The repository root (this crate is `podvm-image/` in it).
    pub fn repo_root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }

    /// Where `build.sh` writes: `$PEERPOD_PODVM_IMAGE_DIR`, else `podvm-image/out` under the
    /// Cargo target directory.
    pub fn default_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("PEERPOD_PODVM_IMAGE_DIR") {
            return PathBuf::from(dir);
        }
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Self::repo_root().join("target"));
        target.join("podvm-image/out")
    }

    /// Opens the image in `dir`.
    pub fn open(dir: &Path) -> Result<Self, PodvmError> {
        let env = dir.join("image.env");
        let text = match std::fs::read_to_string(&env) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(PodvmError::NotBuilt(env));
            }
            Err(e) => return Err(PodvmError::io(format!("read {}", env.display()), e)),
        };
        let facts = parse_env(&text).map_err(|reason| PodvmError::BadImage {
            path: env.clone(),
            reason,
        })?;
        let image = Self {
            dir: dir.to_path_buf(),
            facts,
        };
        for p in [
            image.qcow2(),
            image.vhd(),
            image.kernel(),
            image.initrd(),
            image.uki(),
        ] {
            if !p.is_file() {
                return Err(PodvmError::NotBuilt(p));
            }
        }
        if image.cmdline().is_none() || image.roothash().is_none() {
            return Err(PodvmError::BadImage {
                path: env,
                reason: "CMDLINE or ROOTHASH is missing: rebuild with `make podvm`".into(),
            });
        }
        Ok(image)
    }

    /// Runs `podvm-image/build.sh` (its `podvm`-profile cargo build included unless `skip_cargo`),
    /// nice'd.
    pub fn build(skip_cargo: bool) -> Result<Self, PodvmError> {
        let script = Self::repo_root().join("podvm-image/build.sh");
        let mut cmd = Command::new(&script);
        if skip_cargo {
            cmd.arg("--no-cargo");
        }
        let status = cmd
            .status()
            .map_err(|e| PodvmError::io(format!("run {}", script.display()), e))?;
        if !status.success() {
            return Err(PodvmError::Command {
                command: script.display().to_string(),
                output: format!("{status} (its output is above)"),
            });
        }
        Self::open(&Self::default_dir())
    }

    /// Runs `podvm-image/build.sh --no-cargo` with the binaries already built in `bin_dir` (for
    /// the tests: the test profile's `target/debug`, so no optimised build is needed), nice'd;
    /// `signing` (key, certificate) signs the UKI for Secure Boot.
    pub fn build_from(bin_dir: &Path, signing: Option<(&Path, &Path)>) -> Result<Self, PodvmError> {
        let script = Self::repo_root().join("podvm-image/build.sh");
        let mut cmd = Command::new(&script);
        cmd.arg("--no-cargo").env("PODVM_BIN_DIR", bin_dir);
        if let Some((key, cert)) = signing {
            cmd.env("PODVM_SB_KEY", key).env("PODVM_SB_CERT", cert);
        }
        let status = cmd
            .status()
            .map_err(|e| PodvmError::io(format!("run {}", script.display()), e))?;
        if !status.success() {
            return Err(PodvmError::Command {
                command: format!(
                    "PODVM_BIN_DIR={} {} --no-cargo",
                    bin_dir.display(),
                    script.display()
                ),
                output: format!("{status} (its output is above)"),
            });
        }
        Self::open(&Self::default_dir())
    }

    /// The qcow2 disk.
    pub fn qcow2(&self) -> PathBuf {
        self.dir.join("podvm.qcow2")
    }

    /// The fixed-size VHD (Azure).
    pub fn vhd(&self) -> PathBuf {
        self.dir.join("podvm.vhd")
    }

    /// The unified kernel image (also on the disk's ESP).
    pub fn uki(&self) -> PathBuf {
        self.dir.join("podvm.efi")
    }

    /// The kernel, for direct boot.
    pub fn kernel(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }

    /// The initramfs, for direct boot.
    pub fn initrd(&self) -> PathBuf {
        self.dir.join("initrd.img")
    }

    /// The kernel command line (with the dm-verity root hash).
    pub fn cmdline(&self) -> Option<&str> {
        self.facts.get("CMDLINE").map(String::as_str)
    }

    /// Who signed the UKI for Secure Boot (the certificate's subject), if anyone did.
    pub fn uki_signer(&self) -> Option<&str> {
        self.facts
            .get("UKI_SIGNER")
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    /// The dm-verity root hash.
    pub fn roothash(&self) -> Option<&str> {
        self.facts.get("ROOTHASH").map(String::as_str)
    }

    /// A numeric fact (`QCOW2_BYTES`, `DISK_MIB`...).
    pub fn number(&self, key: &str) -> Option<u64> {
        self.facts.get(key).and_then(|v| v.parse().ok())
    }
}

/// Parses `KEY=value` lines (no quoting; the value is the rest of the line).
fn parse_env(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut facts = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("line {} is not KEY=value", n + 1))?;
        if k.is_empty()
            || !k
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b == b'_' || b.is_ascii_digit())
        {
            return Err(format!("line {}: bad key", n + 1));
        }
        facts.insert(k.to_string(), v.to_string());
    }
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_lines_parse_and_bad_ones_are_refused() {
        let f = parse_env("A=1\nCMDLINE=console=ttyS0 roothash=ab\n\n").expect("parses");
        assert_eq!(
            f.get("CMDLINE").map(String::as_str),
            Some("console=ttyS0 roothash=ab")
        );
        assert!(parse_env("no equals sign").is_err());
        assert!(parse_env("lower=1").is_err());
    }

    #[test]
    fn a_missing_image_names_make_podvm() {
        let dir = std::env::temp_dir().join(format!("podvm-none-{}", std::process::id()));
        let err = PodvmImage::open(&dir).expect_err("no image there");
        assert!(err.to_string().contains("make podvm"), "{err}");
    }
}
