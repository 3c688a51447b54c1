//! The guest kernel: Debian's cloud kernel package, downloaded with `apt-get download` and
//! unpacked with `dpkg-deb -x` into a cache directory (never installed on the host), and the
//! modules the guest needs, ordered so each loads after what it depends on.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::VmError;
use super::host::run;

/// The Debian metapackage that depends on the current cloud kernel.
pub const KERNEL_METAPACKAGE: &str = "linux-image-cloud-amd64";

/// Written last into an unpacked kernel's directory: its presence means the unpack finished.
const COMPLETE: &str = ".complete";

/// An unpacked kernel package.
#[derive(Debug, Clone)]
pub(crate) struct Kernel {
    /// The kernel release (`uname -r`), e.g. `6.1.0-56-cloud-amd64`.
    pub(crate) release: String,
    /// The package's files (`boot/`, `lib/modules/`).
    pub(crate) root: PathBuf,
}

impl Kernel {
    /// The compressed kernel image.
    pub(crate) fn vmlinuz(&self) -> PathBuf {
        self.root
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
    }

    /// `lib/modules/<release>` in the package.
    pub(crate) fn modules_dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }

    /// Finds the current kernel package with apt, and downloads and unpacks it under `cache` unless
    /// that version is there already. Missing or stale package lists are refreshed once (`apt-get
    /// update`, as root); when apt still cannot help (no network), the newest kernel already in
    /// the cache is used.
    pub(crate) fn fetch(cache: &Path) -> Result<Kernel, VmError> {
        let cache = cache.join("kernel");
        std::fs::create_dir_all(&cache)
            .map_err(VmError::io(format!("cannot create {}", cache.display())))?;
        match Self::fetch_current(&cache) {
            Ok(kernel) => Ok(kernel),
            Err(first) => {
                if refresh_package_lists()
                    && let Ok(kernel) = Self::fetch_current(&cache)
                {
                    return Ok(kernel);
                }
                newest_cached(&cache).ok_or(first)
            }
        }
    }

    /// The kernel apt's lists name now, downloaded unless cached.
    fn fetch_current(cache: &Path) -> Result<Kernel, VmError> {
        let (package, version) = resolve_package()?;
        let release = package
            .strip_prefix("linux-image-")
            .ok_or_else(|| VmError::Kernel(format!("{package} is not a linux-image package")))?
            .to_owned();
        // Debian versions may hold ':' (an epoch); keep directory names plain.
        let key = format!("{package}_{}", version.replace(':', "%3a"));
        let root = cache.join(&key);
        if !root.join(COMPLETE).exists() {
            download(&package, &version, cache, &root)?;
        }
        let kernel = Kernel { release, root };
        if !kernel.vmlinuz().is_file() || !kernel.modules_dir().is_dir() {
            return Err(VmError::Kernel(format!(
                "{} has no boot/vmlinuz-{} or lib/modules/{}",
                kernel.root.display(),
                kernel.release,
                kernel.release
            )));
        }
        Ok(kernel)
    }

    /// The modules to load for `wanted` (names as `modprobe` takes them), each after its
    /// dependencies. Modules built into the kernel are left out.
    pub(crate) fn modules_for(&self, wanted: &[String]) -> Result<Vec<Module>, VmError> {
        let dir = self.modules_dir();
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .map_err(VmError::io(format!("cannot read {}/{name}", dir.display())))
        };
        let builtin: HashSet<String> = read("modules.builtin")?
            .lines()
            .filter_map(module_name)
            .collect();
        let shipped: BTreeMap<String, String> = read("modules.order")?
            .lines()
            .filter_map(|line| Some((module_name(line)?, line.trim().to_owned())))
            .collect();
        let mut walk = Walk {
            builtin,
            shipped,
            seen: HashSet::new(),
            index: HashMap::new(),
            order: Vec::new(),
        };
        for module in wanted {
            self.visit(&module.replace('-', "_"), &mut walk)?;
        }
        Ok(walk.order)
    }

    /// Depth-first: dependencies before the module itself.
    fn visit(&self, module: &str, walk: &mut Walk) -> Result<(), VmError> {
        if walk.builtin.contains(module) || !walk.seen.insert(module.to_owned()) {
            return Ok(());
        }
        let relative = walk
            .shipped
            .get(module)
            .ok_or_else(|| VmError::UnknownModule {
                module: module.to_owned(),
                release: self.release.clone(),
            })?
            .clone();
        let path = self.modules_dir().join(&relative);
        let data =
            std::fs::read(&path).map_err(VmError::io(format!("cannot read {}", path.display())))?;
        let depends = modinfo(&data, "depends").map_err(|reason| VmError::BadModule {
            path: path.clone(),
            reason,
        })?;
        let mut needs = BTreeSet::new();
        for dependency in depends.iter().flat_map(|d| d.split(',')) {
            if dependency.is_empty() {
                continue;
            }
            let dependency = dependency.replace('-', "_");
            self.visit(&dependency, walk)?;
            if let Some(&at) = walk.index.get(&dependency) {
                needs.insert(at);
                needs.extend(walk.order[at].needs.iter().copied());
            }
        }
        walk.index.insert(module.to_owned(), walk.order.len());
        walk.order.push(Module {
            path: relative,
            needs: needs.into_iter().collect(),
        });
        Ok(())
    }
}

/// A kernel module to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Module {
    /// Its file, relative to `lib/modules/<release>`.
    pub(crate) path: String,
    /// What it needs, directly or not, as positions in the load order (all before its own).
    pub(crate) needs: Vec<usize>,
}

/// The state of [`Kernel::modules_for`]'s walk.
struct Walk {
    builtin: HashSet<String>,
    shipped: BTreeMap<String, String>,
    seen: HashSet<String>,
    /// Module name to position in `order`.
    index: HashMap<String, usize>,
    order: Vec<Module>,
}

/// The module name of a `modules.order`/`modules.builtin` line (`kernel/drivers/net/foo-bar.ko`
/// is `foo_bar`).
fn module_name(line: &str) -> Option<String> {
    let file = line.trim().rsplit('/').next()?;
    let stem = file.strip_suffix(".ko").or_else(|| {
        file.strip_suffix(".ko.xz")
            .or_else(|| file.strip_suffix(".ko.zst"))
    })?;
    Some(stem.replace('-', "_"))
}

/// The value of `key` in a module's `.modinfo` section (`key=value` strings separated by NULs), or
/// None when the key is absent. Reads the ELF64 little-endian section headers.
pub(crate) fn modinfo(elf: &[u8], key: &str) -> Result<Option<String>, String> {
    let u16_at = |at: usize| -> Result<usize, String> {
        elf.get(at..at + 2)
            .and_then(|b| b.try_into().ok())
            .map(|b| usize::from(u16::from_le_bytes(b)))
            .ok_or_else(|| format!("truncated at byte {at}"))
    };
    let u64_at = |at: usize| -> Result<usize, String> {
        elf.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| format!("truncated at byte {at}"))
    };
    let u32_at = |at: usize| -> Result<usize, String> {
        elf.get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| format!("truncated at byte {at}"))
    };
    // ELF magic, 64-bit class, little-endian.
    if elf.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28)?, u16_at(0x3a)?, u16_at(0x3c)?, u16_at(0x3e)?);
    if shentsize < 64 {
        return Err(format!("section header size {shentsize}"));
    }
    // (offset, size) of section `index`, and the offset of its name in the names section.
    let section = |index: usize| -> Result<(usize, usize, usize), String> {
        let header = shoff + index * shentsize;
        Ok((u64_at(header + 24)?, u64_at(header + 32)?, u32_at(header)?))
    };
    let slice = |offset: usize, size: usize| {
        offset
            .checked_add(size)
            .and_then(|end| elf.get(offset..end))
            .ok_or_else(|| format!("section at {offset}+{size} is outside the file"))
    };
    let (names_offset, names_size, _) = section(shstrndx)?;
    let names = slice(names_offset, names_size)?;
    for index in 0..shnum {
        let (offset, size, name_at) = section(index)?;
        let name = names
            .get(name_at..)
            .and_then(|n| n.split(|&b| b == 0).next())
            .unwrap_or_default();
        if name != b".modinfo" {
            continue;
        }
        let prefix = format!("{key}=");
        return Ok(slice(offset, size)?
            .split(|&b| b == 0)
            .find_map(|entry| entry.strip_prefix(prefix.as_bytes()))
            .map(|value| String::from_utf8_lossy(value).into_owned()));
    }
    Err("no .modinfo section".into())
}

/// The versioned kernel package the metapackage depends on, and its candidate version.
fn resolve_package() -> Result<(String, String), VmError> {
    let depends = run(
        Command::new("apt-cache")
            .args(["depends", KERNEL_METAPACKAGE])
            .env("LC_ALL", "C"),
        "apt",
    )?;
    let package = depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(|p| p.trim().trim_matches(['<', '>']))
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_owned)
        .ok_or_else(|| {
            VmError::Kernel(format!(
                "apt-cache knows no {KERNEL_METAPACKAGE} with a linux-image dependency: run `apt-get update`"
            ))
        })?;
    let show = run(
        Command::new("apt-cache")
            .args(["show", "--no-all-versions", &package])
            .env("LC_ALL", "C"),
        "apt",
    )?;
    let version = show
        .lines()
        .find_map(|l| l.strip_prefix("Version:"))
        .map(|v| v.trim().to_owned())
        .ok_or_else(|| VmError::Kernel(format!("apt-cache shows no version of {package}")))?;
    Ok((package, version))
}

/// Runs `apt-get update` when root; whether it succeeded.
fn refresh_package_lists() -> bool {
    nix::unistd::geteuid().is_root()
        && run(
            Command::new("apt-get")
                .args(["update", "-qq"])
                .env("LC_ALL", "C"),
            "apt",
        )
        .is_ok()
}

/// The most recently unpacked complete kernel in the cache.
fn newest_cached(cache: &Path) -> Option<Kernel> {
    std::fs::read_dir(cache)
        .ok()?
        .flatten()
        .filter(|e| e.path().join(COMPLETE).exists())
        .filter_map(|e| {
            let modified = e.path().join(COMPLETE).metadata().ok()?.modified().ok()?;
            let name = e.file_name().into_string().ok()?;
            let release = name.split('_').next()?.strip_prefix("linux-image-")?;
            Some((
                modified,
                Kernel {
                    release: release.to_owned(),
                    root: e.path(),
                },
            ))
        })
        .max_by_key(|(modified, _)| *modified)
        .map(|(_, kernel)| kernel)
}

/// Downloads `package=version` and unpacks it at `root`, through a temporary directory renamed
/// into place so an interrupted run leaves nothing that looks complete.
fn download(package: &str, version: &str, cache: &Path, root: &Path) -> Result<(), VmError> {
    let work = cache.join(format!(".download-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)
        .map_err(VmError::io(format!("cannot create {}", work.display())))?;
    let result = (|| {
        run(
            Command::new("apt-get")
                .args(["download", "-q", &format!("{package}={version}")])
                .current_dir(&work)
                .env("LC_ALL", "C"),
            "apt",
        )?;
        let deb = std::fs::read_dir(&work)
            .map_err(VmError::io(format!("cannot list {}", work.display())))?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .ok_or_else(|| VmError::Kernel(format!("apt-get download {package} left no .deb")))?;
        let unpacked = work.join("root");
        run(
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked),
            "dpkg",
        )?;
        std::fs::write(unpacked.join(COMPLETE), format!("{package} {version}\n"))
            .map_err(VmError::io("cannot mark the kernel unpacked"))?;
        match std::fs::rename(&unpacked, root) {
            // Another test run unpacked the same version meanwhile.
            Err(_) if root.join(COMPLETE).exists() => Ok(()),
            other => other.map_err(VmError::io(format!(
                "cannot move the kernel to {}",
                root.display()
            ))),
        }
    })();
    let _ = std::fs::remove_dir_all(&work);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_follow_modprobe() {
        assert_eq!(
            module_name("kernel/drivers/char/hw_random/virtio-rng.ko").as_deref(),
            Some("virtio_rng")
        );
        assert_eq!(
            module_name("kernel/net/core/failover.ko.xz").as_deref(),
            Some("failover")
        );
        assert_eq!(module_name("modules.order"), None);
    }

    /// An ELF64 file with a `.modinfo` section holding `modinfo`, and a section-name table.
    fn elf_with_modinfo(modinfo: &[u8]) -> Vec<u8> {
        let names = b"\0.modinfo\0.shstrtab\0";
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let modinfo_at = elf.len();
        elf.extend_from_slice(modinfo);
        let names_at = elf.len();
        elf.extend_from_slice(names);
        let shoff = elf.len();
        for (name, offset, size) in [
            (0u32, 0usize, 0usize),
            (1, modinfo_at, modinfo.len()),
            (10, names_at, names.len()),
        ] {
            let mut header = [0u8; 64];
            header[..4].copy_from_slice(&name.to_le_bytes());
            header[24..32].copy_from_slice(&(offset as u64).to_le_bytes());
            header[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            elf.extend_from_slice(&header);
        }
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        elf
    }

    #[test]
    fn modinfo_reads_a_key_of_the_modinfo_section() {
        let elf = elf_with_modinfo(b"license=GPL\0depends=virtio_ring,virtio\0vermagic=6.1\0");
        assert_eq!(
            modinfo(&elf, "depends"),
            Ok(Some("virtio_ring,virtio".to_owned()))
        );
        assert_eq!(modinfo(&elf, "alias"), Ok(None));
        let empty = elf_with_modinfo(b"depends=\0");
        assert_eq!(modinfo(&empty, "depends"), Ok(Some(String::new())));
        // Section headers cut off: an error, not a panic.
        assert!(modinfo(&elf[..elf.len() - 40], "depends").is_err());
    }

    #[test]
    fn modules_load_after_their_dependencies_and_builtins_are_skipped() {
        let root = std::env::temp_dir().join(format!("peerpod-modules-{}", std::process::id()));
        let kernel = Kernel {
            release: "6.1.0-test".into(),
            root: root.clone(),
        };
        let dir = kernel.modules_dir();
        std::fs::create_dir_all(dir.join("kernel")).expect("temp dir");
        std::fs::write(dir.join("modules.builtin"), "kernel/tpm/tpm_tis.ko\n").expect("write");
        let modules = [
            ("ring", ""),
            ("core-a", "ring"),
            ("net", "core_a,ring,tpm_tis"),
        ];
        let mut order = String::new();
        for (name, depends) in modules {
            let path = format!("kernel/{name}.ko");
            let info = format!("depends={depends}\0");
            std::fs::write(dir.join(&path), elf_with_modinfo(info.as_bytes())).expect("write");
            order.push_str(&path);
            order.push('\n');
        }
        std::fs::write(dir.join("modules.order"), order).expect("write");

        let wanted = ["net", "tpm_tis", "ring"].map(String::from);
        let loaded = kernel.modules_for(&wanted);
        let unknown = kernel.modules_for(&["nope".to_owned()]);
        let _ = std::fs::remove_dir_all(&root);
        let loaded = loaded.expect("modules");
        let paths: Vec<&str> = loaded.iter().map(|m| m.path.as_str()).collect();
        assert_eq!(
            paths,
            ["kernel/ring.ko", "kernel/core-a.ko", "kernel/net.ko"]
        );
        assert_eq!(loaded[2].needs, [0, 1]);
        assert!(matches!(unknown, Err(VmError::UnknownModule { .. })));
    }

    #[test]
    fn modinfo_refuses_what_is_not_elf() {
        assert!(modinfo(b"not elf", "depends").is_err());
        assert!(modinfo(b"\x7fELF\x02\x01\x01", "depends").is_err());
    }
}
