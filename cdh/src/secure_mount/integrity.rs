//! An ext4 file system on LUKS2 + dm-integrity without the initial wipe.
//!
//! `cryptsetup luksFormat --integrity` normally writes every sector of the device once, so
//! that each has a valid authentication tag: on a 256 MiB disk that is most of the
//! scratch space's set-up time, and it grows with the disk. Formatted with
//! `--integrity-no-wipe`, a sector that was never written has no valid tag and reading it
//! fails (`EILSEQ`, logged by dm-crypt as an AEAD error). That is harmless for a file
//! system, which never reads a block it has not written, with three exceptions this module
//! takes care of before `mkfs.ext4` runs:
//!
//! - `mkfs.ext4` (and its `blkid` signature probe) reads the start and the end of the
//!   device, and writes superblocks of 1 KiB into 4 KiB sectors, which the kernel does as
//!   read-modify-write. The first [`HEAD_BYTES`], the last [`TAIL_BYTES`] and every 4 KiB
//!   sector holding a backup superblock (found by a dry run, `mkfs.ext4 -n`, with the same
//!   options) are written with zeros first, as whole sectors.
//! - Inode tables initialised lazily by the kernel could be read (by `e2fsck` for one)
//!   before they are written: `lazy_itable_init=0` is added unless the caller set it.
//! - A discard could be taken to mean "reads return zeros": `nodiscard` is added unless the
//!   caller set `discard`/`nodiscard`.
//!
//! The journal is zeroed by `mkfs.ext4` unless the caller asks for `lazy_journal_init=1`
//! (fine for a volume that is never opened again after a crash, such as the scratch space
//! with its random key: a clean journal is never read).

use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use crate::error::CdhError;

/// Zeroed at the start of the mapped device: blkid's probes (the farthest, a LUKS2
/// secondary header, at 4 MiB) with the page cache's readahead (128 KiB), the primary
/// superblock and group descriptors.
pub const HEAD_BYTES: u64 = (4 << 20) + (128 << 10);
/// Zeroed at the end of the mapped device (RAID/ZFS/GPT signatures blkid looks for there).
pub const TAIL_BYTES: u64 = 1 << 20;
/// The LUKS2 sector size the volume is formatted with: all I/O to the mapper is in these.
const SECTOR: u64 = 4096;
/// More backup superblocks than any ext4 file system has (a 16 TiB one has 23).
const MAX_BACKUPS: usize = 4096;

/// What `mkfs.ext4 -n` says the file system will look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DryRun {
    /// The file system's block size in bytes.
    pub block_size: u64,
    /// The blocks holding backup superblocks (none on a file system of one block group).
    pub backups: Vec<u64>,
}

fn parse_error(detail: String) -> CdhError {
    CdhError::Tool {
        program: "mkfs.ext4",
        step: "-n".into(),
        detail,
    }
}

/// Reads `mkfs.ext4 -n`'s report: "Creating filesystem with N Xk blocks ..." and the list
/// after "Superblock backups stored on blocks:".
pub fn parse_dry_run(out: &str) -> Result<DryRun, CdhError> {
    let block_size = out
        .lines()
        .find_map(|l| {
            let rest = l.trim().strip_prefix("Creating filesystem with ")?;
            let mut words = rest.split_whitespace();
            let _count = words.next()?;
            let size = words.next()?.strip_suffix('k')?.parse::<u64>().ok()?;
            (words.next() == Some("blocks")).then_some(size * 1024)
        })
        .filter(|s| s.is_power_of_two() && (1024..=65536).contains(s))
        .ok_or_else(|| {
            parse_error(format!(
                "no block size in the dry run's report: {}",
                out.chars().take(500).collect::<String>()
            ))
        })?;
    let mut backups = Vec::new();
    if let Some((_, tail)) = out.split_once("Superblock backups stored on blocks:") {
        // The list is indented lines of comma-separated numbers; it ends at the next line
        // that is neither (a blank line, then "Allocating group tables...").
        for line in tail.lines().skip_while(|l| l.trim().is_empty()) {
            let line = line.trim();
            if line.is_empty() || !line.starts_with(|c: char| c.is_ascii_digit()) {
                break;
            }
            for number in line.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                let block = number
                    .parse::<u64>()
                    .map_err(|_| parse_error(format!("bad backup superblock {number:?}")))?;
                if backups.len() == MAX_BACKUPS {
                    return Err(parse_error(format!(
                        "more than {MAX_BACKUPS} backup superblocks"
                    )));
                }
                backups.push(block);
            }
        }
    }
    Ok(DryRun {
        block_size,
        backups,
    })
}

/// The caller's `mkfs.ext4` arguments with `nodiscard` and `lazy_itable_init=0` merged into
/// the extended options (`-E`), unless the caller set those keys. `mkfs.ext4` keeps only the
/// last `-E`, so they go into the last one.
pub fn mkfs_args(user: &[String]) -> Vec<String> {
    let mut args = user.to_vec();
    // Where the last -E's value is: its index and whether it is attached ("-Efoo").
    let last = args.iter().enumerate().rev().find_map(|(i, a)| {
        if a == "-E" {
            (i + 1 < user.len()).then_some((i + 1, 0))
        } else if a.starts_with("-E") {
            Some((i, 2))
        } else {
            None
        }
    });
    let existing = last.map(|(i, skip)| args[i][skip..].to_string());
    let keys: Vec<&str> = existing
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(|o| o.split('=').next().unwrap_or(o).trim())
        .collect();
    let mut added = Vec::new();
    if !keys.iter().any(|k| *k == "discard" || *k == "nodiscard") {
        added.push("nodiscard");
    }
    if !keys.contains(&"lazy_itable_init") {
        added.push("lazy_itable_init=0");
    }
    if added.is_empty() {
        return args;
    }
    let extra = added.join(",");
    match last {
        Some((i, skip)) => {
            let value = &args[i][skip..];
            let sep = if value.is_empty() || value.ends_with(',') {
                ""
            } else {
                ","
            };
            args[i] = format!("{}{sep}{extra}", args[i]);
        }
        None => args.extend(["-E".to_string(), extra]),
    }
    args
}

/// The byte ranges to zero on a mapped device of `size` bytes: the head, the tail and the
/// 4 KiB sectors holding each backup superblock, merged and sector-aligned.
pub fn ranges(size: u64, dry: &DryRun) -> Vec<(u64, u64)> {
    let down = |v: u64| v / SECTOR * SECTOR;
    let up = |v: u64| v.div_ceil(SECTOR) * SECTOR;
    let size = down(size);
    let mut ranges = vec![
        (0, size.min(HEAD_BYTES)),
        (size.saturating_sub(TAIL_BYTES), size),
    ];
    for &block in &dry.backups {
        let start = block.saturating_mul(dry.block_size);
        // The superblock is the block's first 1 KiB; the whole block is zeroed.
        let end = start.saturating_add(dry.block_size);
        if start < size {
            ranges.push((down(start), up(end).min(size)));
        }
    }
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (s, e) in ranges.into_iter().filter(|(s, e)| s < e) {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CdhError {
    let path = path.to_path_buf();
    move |source| CdhError::Io {
        action,
        path,
        source,
    }
}

/// The size of the block device at `path`, in bytes.
pub fn device_size(path: &Path) -> Result<u64, CdhError> {
    use std::io::Seek as _;
    let mut f = std::fs::File::open(path).map_err(io_error("open", path))?;
    f.seek(std::io::SeekFrom::End(0))
        .map_err(io_error("find the size of", path))
}

/// Writes zeros over `ranges` of the device at `path` (whole sectors only, so no sector is
/// read first), then flushes them to the device.
pub fn zero(path: &Path, ranges: &[(u64, u64)]) -> Result<(), CdhError> {
    const CHUNK: u64 = 1 << 20;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_error("open for writing", path))?;
    let zeros = vec![0u8; CHUNK as usize];
    for &(start, end) in ranges {
        let mut at = start;
        while at < end {
            let n = (end - at).min(CHUNK);
            f.write_all_at(&zeros[..n as usize], at)
                .map_err(io_error("write zeros to", path))?;
            at += n;
        }
    }
    f.sync_all().map_err(io_error("flush", path))
}

/// Everything before `mkfs.ext4 args mapped` on an unwiped integrity volume: the head and the
/// tail zeroed, a dry run with the same arguments, its backup superblocks zeroed.
pub async fn prepare(mapped: &str, args: &[String]) -> Result<(), CdhError> {
    let path = PathBuf::from(mapped);
    let size = device_size(&path)?;
    let head_tail = ranges(
        size,
        &DryRun {
            block_size: SECTOR,
            backups: Vec::new(),
        },
    );
    let p = path.clone();
    blocking(move || zero(&p, &head_tail)).await?;
    // The dry run reports the layout; -q would silence it.
    let mut dry = vec!["-F".to_string(), "-n".to_string()];
    dry.extend(args.iter().filter(|a| *a != "-q").cloned());
    dry.push(mapped.to_string());
    let out = super::run("mkfs.ext4", &dry, None).await?;
    let layout = parse_dry_run(&out)?;
    let backups = ranges(size, &layout);
    tracing::debug!(
        device = mapped,
        backups = layout.backups.len(),
        "zeroing what mkfs.ext4 reads on an unwiped integrity volume"
    );
    blocking(move || zero(&path, &backups)).await
}

async fn blocking(
    f: impl FnOnce() -> Result<(), CdhError> + Send + 'static,
) -> Result<(), CdhError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CdhError::Tool {
            program: "secure mount",
            step: "zeroing".into(),
            detail: e.to_string(),
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "mke2fs 1.47.0 (5-Feb-2023)\n\
        Creating filesystem with 268435456 4k blocks and 67108864 inodes\n\
        Filesystem UUID: 4a5ff012-91c0-47d9-b4bb-8f83e830825f\n\
        Superblock backups stored on blocks: \n\
        \t32768, 98304, 163840, 229376, 294912, 819200, 884736, 1605632, 2654208, \n\
        \t4096000, 7962624, 11239424, 20480000, 23887872, 71663616, 78675968, \n\
        \t102400000, 214990848\n\
        \n\
        Allocating group tables: done\n";

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn the_dry_run_gives_block_size_and_backups() {
        let d = parse_dry_run(REPORT).expect("parses");
        assert_eq!(d.block_size, 4096);
        assert_eq!(d.backups.len(), 18);
        assert_eq!(d.backups[0], 32768);
        assert_eq!(d.backups[17], 214990848);
        // One block group: no backups at all.
        let one = parse_dry_run("Creating filesystem with 12032 4k blocks and 12032 inodes\n")
            .expect("one group");
        assert!(one.backups.is_empty());
        let k1 = parse_dry_run(
            "Creating filesystem with 65536 1k blocks and 16384 inodes\n\
             Superblock backups stored on blocks: \n\t8193, 24577, 40961, 57345\n\n",
        )
        .expect("1k");
        assert_eq!((k1.block_size, k1.backups.len()), (1024, 4));
    }

    #[test]
    fn a_report_it_cannot_read_is_refused() {
        for bad in [
            "",
            "Creating filesystem with 10 3k blocks\n",
            "Creating filesystem with 10 4k blocks\nSuperblock backups stored on blocks: \n\t12, x\n",
        ] {
            assert!(parse_dry_run(bad).is_err(), "{bad:?}");
        }
        let many = format!(
            "Creating filesystem with 10 4k blocks\nSuperblock backups stored on blocks:\n\t{}\n",
            vec!["7"; MAX_BACKUPS + 1].join(", ")
        );
        assert!(parse_dry_run(&many).is_err());
    }

    #[test]
    fn extended_options_are_merged_into_the_last_e() {
        assert_eq!(mkfs_args(&[]), s(&["-E", "nodiscard,lazy_itable_init=0"]));
        assert_eq!(
            mkfs_args(&s(&["-m", "0", "-E", "lazy_journal_init=1"])),
            s(&[
                "-m",
                "0",
                "-E",
                "lazy_journal_init=1,nodiscard,lazy_itable_init=0"
            ])
        );
        assert_eq!(
            mkfs_args(&s(&["-Estride=8"])),
            s(&["-Estride=8,nodiscard,lazy_itable_init=0"])
        );
        // The caller's own choice is kept.
        assert_eq!(
            mkfs_args(&s(&["-E", "lazy_itable_init=1,discard"])),
            s(&["-E", "lazy_itable_init=1,discard"])
        );
        // Only the last -E counts for mkfs.ext4.
        assert_eq!(
            mkfs_args(&s(&["-E", "nodiscard", "-E", "stride=8"])),
            s(&[
                "-E",
                "nodiscard",
                "-E",
                "stride=8,nodiscard,lazy_itable_init=0"
            ])
        );
        // A trailing -E with no value is left to mkfs.ext4 to refuse; ours go in a new one.
        assert_eq!(
            mkfs_args(&s(&["-E"])),
            s(&["-E", "-E", "nodiscard,lazy_itable_init=0"])
        );
    }

    #[test]
    fn ranges_cover_head_tail_and_backups_aligned() {
        let mib = 1u64 << 20;
        let dry = DryRun {
            block_size: 4096,
            backups: vec![32768, 98304],
        };
        let r = ranges(1024 * mib, &dry);
        assert_eq!(
            r,
            vec![
                (0, HEAD_BYTES),
                (32768 * 4096, 32769 * 4096),
                (98304 * 4096, 98305 * 4096),
                (1023 * mib, 1024 * mib)
            ]
        );
        // A small device: head and tail overlap and merge; a backup past the end is dropped.
        let small = ranges(
            3 * mib + 100,
            &DryRun {
                block_size: 1024,
                backups: vec![8193, 1 << 40],
            },
        );
        assert_eq!(small, vec![(0, 3 * mib)]);
        // 1 KiB blocks: the 4 KiB sector around the backup.
        let k1 = ranges(
            64 * mib,
            &DryRun {
                block_size: 1024,
                backups: vec![40961],
            },
        );
        assert!(k1.contains(&(40960 * 1024, 40964 * 1024)), "{k1:?}");
    }

    #[test]
    fn zero_writes_only_the_ranges() -> Result<(), CdhError> {
        let path = std::env::temp_dir().join(format!("cdh-zero-{}", std::process::id()));
        std::fs::write(&path, vec![0xAAu8; 64 * 1024]).map_err(io_error("write", &path))?;
        zero(&path, &[(4096, 8192), (16384, 20480)])?;
        let data = std::fs::read(&path).map_err(io_error("read", &path))?;
        let _ = std::fs::remove_file(&path);
        assert!(data[..4096].iter().all(|&b| b == 0xAA));
        assert!(data[4096..8192].iter().all(|&b| b == 0));
        assert!(data[8192..16384].iter().all(|&b| b == 0xAA));
        assert!(data[16384..20480].iter().all(|&b| b == 0));
        assert!(data[20480..].iter().all(|&b| b == 0xAA));
        assert!(device_size(&path).is_err(), "removed");
        Ok(())
    }
}
