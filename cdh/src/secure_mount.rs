//! `SecureMount` of `block-device` volumes: a block device encrypted with LUKS2 through
//! `cryptsetup` (Debian's `cryptsetup-bin`), then either exposed as a device or formatted
//! (ext4) and mounted. This is what the kata agent asks for an encrypted emptyDir or the pod
//! VM's encrypted scratch space.
//!
//! Options (upstream's keys, values are strings):
//!
//! | key | values |
//! |---|---|
//! | `devicePath` or `deviceId` | a block device, or its `MAJ:MIN` (resolved through `/sys/dev/block`) |
//! | `sourceType` | `empty` (format it: its contents are lost) or `encrypted` (open an existing LUKS2 volume) |
//! | `encryptionType` | `luks2` (default) |
//! | `targetType` | `fileSystem` (default: mount it) or `device` (a symlink to the mapper device) |
//! | `filesystemType` | `ext4` (default, the only one) |
//! | `mkfsOpts` | extra `mkfs.ext4` arguments, space-separated, when formatting |
//! | `key` | `sealed.…`, `kbs:///…` or `file:///…`; absent: a random 4096-byte key (the data dies with the VM) |
//! | `dataIntegrity` | `true` adds dm-integrity (HMAC-SHA256) under the encryption |
//! | `mapperName` | the device-mapper name (default: a random one) |
//!
//! Upstream's older form (`encryptType=LUKS`, `encryptKey`, `dataIntegrity`) is accepted too.
//!
//! With `dataIntegrity=true` and a file system to make, the volume is formatted without
//! dm-integrity's initial wipe (`--integrity-no-wipe`, as upstream does): [`integrity`] writes
//! the few sectors `mkfs.ext4` reads before it has written them, so no read ever meets a
//! sector without a valid tag, and the set-up no longer grows with the disk's size. A volume
//! exposed as a device (`targetType=device`) is still wiped whole: what its user reads first
//! is unknown. A volume with a random key is opened without dm-integrity's journal
//! (`--integrity-no-journal`, as upstream opens every volume): it dies with the VM, so there is
//! no crash to recover from, and the journal doubles every write. A volume with a named key
//! keeps the journal, so a crash cannot leave data and tags torn apart.
//!
//! Keys go to `cryptsetup` on its standard input, never on a command line or to disk. A volume
//! with a random key gets a detached LUKS header in the hub's header directory (in the VM's
//! memory), so the device holds nothing but ciphertext; a volume with a named key keeps its
//! header on the device, so `sourceType=encrypted` can open it again later. The keys are
//! machine keys (random, or from the KBS), not passphrases: PBKDF2 with few iterations is used
//! instead of Argon2's deliberate cost.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use base64::Engine;
use tokio::io::AsyncWriteExt;
use zeroize::Zeroizing;

use crate::error::CdhError;

pub mod integrity;

fn invalid(reason: &'static str) -> CdhError {
    CdhError::Mount { reason }
}

fn bad_path(what: &'static str, path: &Path, reason: &'static str) -> CdhError {
    CdhError::BadPath {
        what,
        path: path.to_path_buf(),
        reason,
    }
}

/// The option keys, upstream's current and older forms.
const KNOWN: [&str; 12] = [
    "deviceId",
    "devicePath",
    "sourceType",
    "encryptionType",
    "targetType",
    "filesystemType",
    "mkfsOpts",
    "key",
    "dataIntegrity",
    "mapperName",
    "encryptType",
    "encryptKey",
];

/// Where the key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A fresh random 4096-byte key.
    Random,
    /// A sealed secret, a `kbs://` resource or a `file://` path, as given.
    Named(String),
}

/// A parsed `block-device` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDevice {
    /// The device path (after resolving `deviceId`).
    pub device: PathBuf,
    /// Format (`true`) or open an existing volume.
    pub format: bool,
    /// Mount a file system (`true`) or expose the device.
    pub file_system: bool,
    /// Extra mkfs arguments.
    pub mkfs_opts: Vec<String>,
    /// The key.
    pub key: KeySource,
    /// dm-integrity under the encryption.
    pub integrity: bool,
    /// The device-mapper name.
    pub mapper_name: String,
}

fn flag(reason: &'static str, value: Option<&String>) -> Result<bool, CdhError> {
    match value.map(|v| v.to_ascii_lowercase()) {
        None => Ok(false),
        Some(v) if v == "true" => Ok(true),
        Some(v) if v == "false" => Ok(false),
        Some(_) => Err(invalid(reason)),
    }
}

fn random_name() -> Result<String, CdhError> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|_| CdhError::Random)?;
    Ok(format!(
        "cdh-{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    ))
}

impl BlockDevice {
    /// Parses the options. `sys_dev_block` is `/sys/dev/block` (to resolve `deviceId`).
    pub fn parse(
        options: &HashMap<String, String>,
        sys_dev_block: &Path,
    ) -> Result<Self, CdhError> {
        if let Some(k) = options.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(CdhError::UnknownMountOption {
                option: k.chars().take(100).collect(),
                known: "deviceId, devicePath, sourceType, encryptionType, targetType, \
                        filesystemType, mkfsOpts, key, dataIntegrity, mapperName, encryptType, \
                        encryptKey",
            });
        }
        let get = |k: &str| options.get(k).filter(|v| !v.is_empty());
        let device = match (get("deviceId"), get("devicePath")) {
            (Some(id), _) => resolve_device_id(id, sys_dev_block)?,
            (None, Some(p)) => PathBuf::from(p),
            (None, None) => return Err(invalid("devicePath or deviceId is required")),
        };
        if !device.is_absolute() {
            return Err(bad_path(
                "secure mount: device",
                &device,
                "is not an absolute path",
            ));
        }
        let legacy = get("encryptType").is_some();
        if let Some(t) = get("encryptType")
            && !t.eq_ignore_ascii_case("luks")
        {
            return Err(invalid("encryptType is not LUKS"));
        }
        if let Some(t) = get("encryptionType")
            && t != "luks2"
        {
            return Err(CdhError::Unsupported {
                what: "secure mount: encryptionType",
                value: t.clone(),
                supported: "luks2",
            });
        }
        let key = match get("key").or(get("encryptKey")) {
            Some(k) => KeySource::Named(k.clone()),
            None => KeySource::Random,
        };
        let format = match get("sourceType").map(String::as_str) {
            Some("empty") => true,
            Some("encrypted") => false,
            Some(_) => return Err(invalid("sourceType is not empty or encrypted")),
            // The older form formats a volume unless a key to an existing one is given.
            None if legacy => key == KeySource::Random,
            None => return Err(invalid("sourceType (empty or encrypted) is required")),
        };
        if !format && key == KeySource::Random {
            return Err(invalid("sourceType=encrypted needs the volume's key"));
        }
        let file_system = match get("targetType").map(String::as_str) {
            None | Some("fileSystem") => true,
            Some("device") => false,
            Some(_) => return Err(invalid("targetType is not fileSystem or device")),
        };
        if let Some(fs) = get("filesystemType")
            && fs != "ext4"
        {
            return Err(CdhError::Unsupported {
                what: "secure mount: filesystemType",
                value: fs.clone(),
                supported: "ext4",
            });
        }
        let mapper_name = match get("mapperName") {
            Some(n)
                if n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_')) =>
            {
                n.clone()
            }
            Some(_) => return Err(invalid("mapperName must be [A-Za-z0-9_-]")),
            None => random_name()?,
        };
        Ok(Self {
            device,
            format,
            file_system,
            mkfs_opts: get("mkfsOpts")
                .map(|o| o.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default(),
            key,
            integrity: flag(
                "dataIntegrity is not true or false",
                options.get("dataIntegrity"),
            )?,
            mapper_name,
        })
    }
}

fn resolve_device_id(id: &str, sys_dev_block: &Path) -> Result<PathBuf, CdhError> {
    let ok = id.split_once(':').is_some_and(|(a, b)| {
        !a.is_empty() && !b.is_empty() && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit())
    });
    if !ok {
        return Err(invalid("deviceId is not MAJOR:MINOR"));
    }
    let uevent = sys_dev_block.join(id).join("uevent");
    let what = "secure mount: deviceId's";
    let text = std::fs::read_to_string(&uevent)
        .map_err(|_| bad_path(what, &uevent, "cannot be read (no such block device?)"))?;
    let name = text
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .ok_or_else(|| bad_path(what, &uevent, "has no DEVNAME"))?;
    if name.split('/').any(|s| s == "..") {
        return Err(bad_path(what, &uevent, "has a DEVNAME with .."));
    }
    Ok(Path::new("/dev").join(name))
}

/// Runs `program args`, feeding `stdin`, and returns its standard output (the first 64 KiB);
/// a failure names the command and its stderr.
async fn run(
    program: &'static str,
    args: &[String],
    stdin: Option<&[u8]>,
) -> Result<String, CdhError> {
    let tool = |detail: String| CdhError::Tool {
        program,
        step: args.first().cloned().unwrap_or_default(),
        detail,
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            tool(format!(
                "cannot run it ({e}): install it in the pod VM image (cryptsetup-bin, e2fsprogs)"
            ))
        })?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(data)
            .await
            .map_err(|e| tool(format!("writing its standard input: {e}")))?;
        drop(pipe);
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| tool(format!("waiting for it: {e}")))?;
    if out.status.success() {
        let stdout = &out.stdout[..out.stdout.len().min(64 << 10)];
        return Ok(String::from_utf8_lossy(stdout).into_owned());
    }
    // Its standard error: cryptsetup reads the key from standard input and never prints it.
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(tool(format!(
        "({}): {}",
        out.status,
        stderr.trim().chars().take(2000).collect::<String>()
    )))
}

/// One copy of a detached LUKS2 header's metadata (cryptsetup's default and minimum; the header
/// holds two copies).
const DETACHED_METADATA_BYTES: u64 = 16 << 10;
/// A detached header's keyslot area. A keyslot holds the volume key split into 4,000
/// anti-forensic stripes: the largest key here (512-bit XTS with a 256-bit HMAC key for
/// integrity, 96 bytes) needs 375 KiB, so 1 MiB holds two. cryptsetup's default is 16 MiB, and
/// the header directory of a random-key volume is memory (`/run`): 15 MiB saved per volume.
const DETACHED_KEYSLOTS_BYTES: u64 = 1 << 20;
/// The whole detached header file.
const DETACHED_HEADER_BYTES: u64 = 2 * DETACHED_METADATA_BYTES + DETACHED_KEYSLOTS_BYTES;

/// Sets up `dev` at `mount_point` with `key`; `header_dir` holds detached headers.
pub async fn mount(
    dev: &BlockDevice,
    key: &[u8],
    mount_point: &Path,
    header_dir: &Path,
) -> Result<(), CdhError> {
    let device = dev.device.display().to_string();
    if !dev.device.exists() {
        return Err(bad_path(
            "secure mount: device",
            &dev.device,
            "does not exist",
        ));
    }
    if !mount_point.is_absolute() {
        return Err(bad_path(
            "secure mount: mount point",
            mount_point,
            "is not absolute",
        ));
    }
    let header = (dev.key == KeySource::Random).then(|| {
        header_dir.join(format!(
            "{}.header",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&device)
        ))
    });
    let s = |v: &str| v.to_string();
    if dev.format {
        let mut args = vec![
            s("luksFormat"),
            s("--type"),
            s("luks2"),
            s("--batch-mode"),
            s("--cipher"),
            s("aes-xts-plain64"),
            s("--key-size"),
            s("512"),
            s("--sector-size"),
            s("4096"),
            s("--pbkdf"),
            s("pbkdf2"),
            s("--pbkdf-force-iterations"),
            s("1000"),
            s("--key-file"),
            s("-"),
        ];
        if dev.integrity {
            args.extend([s("--integrity"), s("hmac-sha256")]);
            if dev.file_system {
                // The sectors mkfs.ext4 reads are written before it runs (see `integrity`).
                args.push(s("--integrity-no-wipe"));
            }
        }
        if let Some(h) = &header {
            let io = |action: &'static str, path: &Path| {
                let path = path.to_path_buf();
                move |source| CdhError::Io {
                    action,
                    path,
                    source,
                }
            };
            std::fs::create_dir_all(header_dir).map_err(io("create", header_dir))?;
            let f = std::fs::File::create(h).map_err(io("create", h))?;
            f.set_len(DETACHED_HEADER_BYTES)
                .map_err(io("size the LUKS header file", h))?;
            args.extend([
                s("--header"),
                h.display().to_string(),
                s("--luks2-metadata-size"),
                format!("{}k", DETACHED_METADATA_BYTES >> 10),
                s("--luks2-keyslots-size"),
                format!("{}k", DETACHED_KEYSLOTS_BYTES >> 10),
            ]);
        }
        args.push(device.clone());
        run("cryptsetup", &args, Some(key)).await?;
        tracing::info!(device = %device, integrity = dev.integrity, "LUKS2 volume formatted");
    }
    let mut args = vec![s("open"), s("--type"), s("luks2"), s("--key-file"), s("-")];
    if dev.integrity && dev.key == KeySource::Random {
        // The volume dies with its key (this VM): nothing is ever replayed after a crash, so
        // dm-integrity's journal, which doubles every write, buys nothing (upstream opens
        // every volume without it).
        args.push(s("--integrity-no-journal"));
    }
    if let Some(h) = &header {
        args.extend([s("--header"), h.display().to_string()]);
    }
    args.extend([device.clone(), dev.mapper_name.clone()]);
    run("cryptsetup", &args, Some(key)).await?;
    let mapped = format!("/dev/mapper/{}", dev.mapper_name);
    let result = async {
        if dev.file_system {
            if dev.format {
                let opts = if dev.integrity {
                    let opts = integrity::mkfs_args(&dev.mkfs_opts);
                    integrity::prepare(&mapped, &opts).await?;
                    opts
                } else {
                    dev.mkfs_opts.clone()
                };
                let mut mkfs = vec![s("-F"), s("-q")];
                mkfs.extend(opts);
                mkfs.push(mapped.clone());
                run("mkfs.ext4", &mkfs, None).await?;
            }
            std::fs::create_dir_all(mount_point).map_err(|source| CdhError::Io {
                action: "create",
                path: mount_point.to_path_buf(),
                source,
            })?;
            run(
                "mount",
                &[
                    s("-t"),
                    s("ext4"),
                    s("-o"),
                    s("noatime"),
                    mapped.clone(),
                    mount_point.display().to_string(),
                ],
                None,
            )
            .await
            .map(drop)
        } else {
            if let Some(parent) = mount_point.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            let _ = std::fs::remove_file(mount_point);
            std::os::unix::fs::symlink(&mapped, mount_point).map_err(|source| CdhError::Io {
                action: "link",
                path: mount_point.to_path_buf(),
                source,
            })
        }
    }
    .await;
    if result.is_err() {
        let _ = run("cryptsetup", &[s("close"), dev.mapper_name.clone()], None).await;
    }
    result?;
    tracing::info!(device = %device, mapper = %mapped, mount_point = %mount_point.display(), "secure mount ready");
    Ok(())
}

/// A random 4096-byte key.
pub fn random_key() -> Result<Zeroizing<Vec<u8>>, CdhError> {
    let mut k = Zeroizing::new(vec![0u8; 4096]);
    getrandom::fill(&mut k).map_err(|_| CdhError::Random)?;
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn current_and_older_forms() {
        let sys = Path::new("/nonexistent");
        let d = BlockDevice::parse(
            &opts(&[
                ("devicePath", "/dev/vdb"),
                ("sourceType", "empty"),
                ("encryptionType", "luks2"),
                ("targetType", "fileSystem"),
                ("mkfsOpts", "-E lazy_itable_init=0  -m 0"),
                ("key", "kbs:///default/key/disk"),
                ("dataIntegrity", "True"),
                ("mapperName", "scratch"),
            ]),
            sys,
        )
        .expect("parses");
        assert_eq!(d.device, PathBuf::from("/dev/vdb"));
        assert!(d.format && d.file_system && d.integrity);
        assert_eq!(d.mkfs_opts, ["-E", "lazy_itable_init=0", "-m", "0"]);
        assert_eq!(d.key, KeySource::Named("kbs:///default/key/disk".into()));
        assert_eq!(d.mapper_name, "scratch");

        let old = BlockDevice::parse(
            &opts(&[
                ("devicePath", "/dev/vdc"),
                ("encryptType", "LUKS"),
                ("dataIntegrity", "false"),
            ]),
            sys,
        )
        .expect("older form");
        assert!(old.format && old.file_system && old.key == KeySource::Random);
        assert!(old.mapper_name.starts_with("cdh-"));
    }

    #[test]
    fn device_ids_resolve_through_sysfs() {
        let dir = std::env::temp_dir().join(format!("cdh-sys-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("253:16")).expect("dir");
        std::fs::write(
            dir.join("253:16/uevent"),
            "MAJOR=253\nMINOR=16\nDEVNAME=vdb\n",
        )
        .expect("uevent");
        let d = BlockDevice::parse(
            &opts(&[("deviceId", "253:16"), ("sourceType", "empty")]),
            &dir,
        )
        .expect("parses");
        assert_eq!(d.device, PathBuf::from("/dev/vdb"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_options_say_what_is_wrong() {
        let sys = Path::new("/nonexistent");
        for (pairs, needle) in [
            (vec![("sourceType", "empty")], "devicePath or deviceId"),
            (vec![("devicePath", "/dev/x")], "sourceType"),
            (
                vec![("devicePath", "/dev/x"), ("sourceType", "full")],
                "not empty or encrypted",
            ),
            (
                vec![("devicePath", "/dev/x"), ("sourceType", "encrypted")],
                "needs the volume's key",
            ),
            (
                vec![("devicePath", "dev/x"), ("sourceType", "empty")],
                "not an absolute path",
            ),
            (
                vec![("deviceId", "8-1"), ("sourceType", "empty")],
                "MAJOR:MINOR",
            ),
            (
                vec![
                    ("devicePath", "/dev/x"),
                    ("sourceType", "empty"),
                    ("targetType", "dir"),
                ],
                "targetType",
            ),
            (
                vec![
                    ("devicePath", "/dev/x"),
                    ("sourceType", "empty"),
                    ("dataIntegrity", "yes"),
                ],
                "dataIntegrity",
            ),
            (
                vec![
                    ("devicePath", "/dev/x"),
                    ("sourceType", "empty"),
                    ("mapperName", "../x"),
                ],
                "mapperName",
            ),
            (
                vec![
                    ("devicePath", "/dev/x"),
                    ("sourceType", "empty"),
                    ("colour", "red"),
                ],
                "unknown option",
            ),
        ] {
            let err = BlockDevice::parse(&opts(&pairs), sys).expect_err(needle);
            assert!(err.to_string().contains(needle), "{needle}: {err}");
        }
        let err = BlockDevice::parse(
            &opts(&[
                ("devicePath", "/dev/x"),
                ("sourceType", "empty"),
                ("encryptionType", "zfs"),
            ]),
            sys,
        )
        .expect_err("zfs");
        assert!(matches!(err, CdhError::Unsupported { .. }), "{err}");
    }
}
