//! The unpack loop: tar members in, files beneath the destination out.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::Timespec;
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, Timestamps, XattrFlags};
use rustix::io::Errno;

use crate::dirtimes::DirTimes;
use crate::entry::{self, Kind, Meta, Pending};
use crate::error::{LayerError, quote, show};
use crate::fsops;
use crate::options::{Charge, UnpackOptions, UnpackStats};
use crate::tree::{Tree, path_error};

/// The AUFS whiteout prefix OCI layers use for deletions.
const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// The member that marks its directory opaque.
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// The xattr overlayfs reads to treat a directory as opaque.
const OVERLAY_OPAQUE: &str = "trusted.overlay.opaque";

/// Unpacks the tar stream `tar` (uncompressed: decompress and verify before this) into the
/// directory `dest`, created if missing (its parent must exist).
///
/// Every member is written beneath `dest` and nothing is followed: absolute names (and absolute
/// hard link targets) are anchored at `dest`, as GNU tar does; a name with `..`, a name that
/// crosses a symbolic link or a non-directory, a hard link whose
/// target is not an earlier member of this archive, a device node (unless
/// [`UnpackOptions::allow_devices`]), a sparse file or an unknown member type is refused, and the
/// unpack stops at the first refusal (what was written so far stays: unpack into a private
/// directory and remove it on error, as [`LayerStore::install`](crate::LayerStore::install) does).
///
/// OCI whiteouts become what overlayfs expects in a lower layer: `.wh.<name>` a character
/// device 0:0 named `<name>`, `.wh..wh..opq` the `trusted.overlay.opaque=y` xattr on its
/// directory. Modes (setuid included; see [`UnpackOptions::keep_ownership`] for when it is
/// not), owners, mtimes and extended attributes (PAX `SCHILY.xattr.*`) are kept, except forged
/// overlayfs attributes (`trusted.overlay.*`, `user.overlay.*`), which are dropped and counted.
/// A member deeper than [`UnpackOptions::max_depth`] is refused.
///
/// After the end-of-archive marker the stream is read to its end, so a reader that checks a
/// digest at EOF can still fail the unpack; anything but zero padding there is refused (a
/// second archive appended would be members other readers see and this one does not).
pub fn unpack(
    tar: impl Read,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackStats, LayerError> {
    let root = match open_root(dest) {
        Err(Errno::NOENT) => {
            std::fs::create_dir(dest).map_err(|e| LayerError::io("create", show(dest), e))?;
            open_root(dest)
        }
        other => other,
    }
    .map_err(|e| LayerError::io("open the destination directory", show(dest), e))?;
    let block = rfs::fstatvfs(&root).map_or(4096, |s| s.f_bsize.clamp(512, 1 << 20));
    let mut unpacker = Unpacker {
        tree: Tree {
            root,
            cache: None,
            implicit: 0,
            inherit: None,
            root_inherit: None,
        },
        euid: rustix::process::geteuid().as_raw(),
        egid: rustix::process::getegid().as_raw(),
        umask: fsops::process_umask(),
        opts,
        dir_times: DirTimes::default(),
        buf: vec![0; 256 << 10],
        stats: UnpackStats::default(),
        block,
    };
    let mut archive = tar::Archive::new(tar);
    let mut index = 0u64;
    let mut consumed = 0u64;
    {
        let entries = archive
            .entries()
            .map_err(|source| LayerError::Archive { entry: 0, source })?
            .raw(true);
        let mut pending = Pending::default();
        for next in entries {
            let mut member = next.map_err(|source| LayerError::Archive {
                entry: index,
                source,
            })?;
            if index >= opts.max_entries {
                return Err(LayerError::Limit {
                    what: "tar entries",
                    limit: opts.max_entries,
                    field: "max_entries",
                });
            }
            let size = member
                .header()
                .entry_size()
                .map_err(|source| LayerError::Archive {
                    entry: index,
                    source,
                })?;
            consumed = consumed.saturating_add(size);
            if consumed > opts.max_total_bytes {
                return Err(LayerError::Limit {
                    what: "archive data bytes",
                    limit: opts.max_total_bytes,
                    field: "max_total_bytes",
                });
            }
            let entry_type = member.header().entry_type();
            let slot = match entry_type {
                tar::EntryType::GNULongName => Some(&mut pending.long_name),
                tar::EntryType::GNULongLink => Some(&mut pending.long_link),
                tar::EntryType::XHeader => Some(&mut pending.pax),
                _ => None,
            };
            if let Some(slot) = slot {
                if slot.is_some() {
                    return Err(LayerError::Malformed {
                        entry: index,
                        reason: "two extension records of one kind describe the same member".into(),
                    });
                }
                *slot = Some(read_record(&mut member, size, index, opts)?);
                index += 1;
                continue;
            }
            if entry_type == tar::EntryType::XGlobalHeader {
                // Global PAX records (`git archive` writes a comment there) change nothing we
                // write; read and drop them.
                read_record(&mut member, size, index, opts)?;
                index += 1;
                continue;
            }
            let meta = entry::meta(member.header(), std::mem::take(&mut pending), index, opts)?;
            unpacker.apply(&meta, &mut member, index)?;
            index += 1;
        }
        if !pending.is_empty() {
            return Err(LayerError::Malformed {
                entry: index,
                reason: "extension records at the end of the archive describe no member".into(),
            });
        }
    }
    unpacker.finish_dirs()?;
    // Drain the rest of the stream: padding after the end-of-archive marker, and the point
    // where a verifying reader reports a digest mismatch.
    let allowance = opts.max_total_bytes.saturating_sub(consumed);
    let mut rest = archive.into_inner().take(allowance.saturating_add(1));
    let trailing =
        drain_zeros(&mut rest, &mut unpacker.buf).map_err(|source| LayerError::Archive {
            entry: index,
            source,
        })?;
    let Some(trailing) = trailing else {
        return Err(LayerError::Malformed {
            entry: index,
            reason: "data after the end-of-archive marker (concatenated archives are not \
                     accepted: other readers would see members this unpacker does not)"
                .into(),
        });
    };
    if trailing > allowance {
        return Err(LayerError::Limit {
            what: "archive data bytes (with the padding after the end-of-archive marker)",
            limit: opts.max_total_bytes,
            field: "max_total_bytes",
        });
    }
    unpacker.stats.trailing_bytes = trailing;
    unpacker.stats.implicit_dirs = unpacker.tree.implicit;
    Ok(unpacker.stats)
}

/// Reads `reader` to its end; answers how many bytes, or `None` when one of them is not zero.
fn drain_zeros(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<Option<u64>> {
    let mut total = 0u64;
    loop {
        let n = match reader.read(buf) {
            Ok(0) => return Ok(Some(total)),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(None);
        }
        total += n as u64;
    }
}

fn open_root(dest: &Path) -> Result<OwnedFd, Errno> {
    rfs::open(
        dest,
        rfs::OFlags::RDONLY | rfs::OFlags::DIRECTORY | rfs::OFlags::NOFOLLOW | rfs::OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Reads an extension record into memory, refusing one over the metadata limit before reading.
fn read_record(
    member: &mut impl Read,
    size: u64,
    index: u64,
    opts: &UnpackOptions,
) -> Result<Vec<u8>, LayerError> {
    if size > opts.max_metadata_bytes {
        return Err(LayerError::Limit {
            what: "bytes of one PAX or GNU long-name record",
            limit: opts.max_metadata_bytes,
            field: "max_metadata_bytes",
        });
    }
    let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    member
        .take(size)
        .read_to_end(&mut data)
        .map_err(|source| LayerError::Archive {
            entry: index,
            source,
        })?;
    if data.len() as u64 != size {
        return Err(LayerError::Malformed {
            entry: index,
            reason: "archive ends inside an extension record".into(),
        });
    }
    Ok(data)
}

struct Unpacker<'o> {
    tree: Tree,
    opts: &'o UnpackOptions,
    /// Who new files belong to, and the umask, to skip a chown or chmod that would change
    /// nothing.
    euid: u32,
    egid: u32,
    umask: Option<u32>,
    /// Directories whose mtime is set once everything below them is written.
    dir_times: DirTimes,
    buf: Vec<u8>,
    stats: UnpackStats,
    /// The destination filesystem's block size, for [`Charge`]s.
    block: u64,
}

/// What the member `meta` (last name component `last`, `None` for the layer root) costs the
/// filesystem: see [`Charge`]. Charged whether or not the member replaces an existing one (an
/// overcount, never an undercount).
fn member_charge(meta: &Meta, last: Option<&[u8]>, block: u64) -> Charge {
    let xattrs = meta
        .xattrs
        .iter()
        .map(|(n, v)| (n.len() + v.len()) as u64)
        .fold(0u64, u64::saturating_add);
    let Some(last) = last else {
        return Charge {
            bytes: xattrs,
            inodes: 0,
        };
    };
    if last == OPAQUE_MARKER {
        return Charge {
            bytes: (OVERLAY_OPAQUE.len() + 1) as u64,
            inodes: 0,
        };
    }
    if let Some(hidden) = last.strip_prefix(WHITEOUT_PREFIX) {
        // A whiteout is a device node; AUFS's own `.wh..wh.*` records make nothing.
        let inodes = u64::from(!hidden.starts_with(WHITEOUT_PREFIX));
        return Charge {
            bytes: block * inodes,
            inodes,
        };
    }
    let (data, inodes) = match meta.kind {
        Kind::File => (meta.size.div_ceil(block).saturating_mul(block), 1),
        // A name in a directory, no new inode.
        Kind::Hardlink => (0, 0),
        Kind::Dir | Kind::Symlink | Kind::Char | Kind::Block | Kind::Fifo => (0, 1),
    };
    Charge {
        bytes: data.saturating_add(block).saturating_add(xattrs),
        inodes,
    }
}

fn timestamps(meta: &Meta) -> Timestamps {
    let t = Timespec {
        tv_sec: meta.mtime_sec,
        tv_nsec: meta.mtime_nsec.into(),
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

impl Unpacker<'_> {
    fn apply(&mut self, meta: &Meta, data: &mut impl Read, index: u64) -> Result<(), LayerError> {
        let parts =
            entry::components(&meta.name).map_err(|why| LayerError::refused(&meta.name, why))?;
        if parts.len() > self.opts.max_depth {
            return Err(LayerError::Limit {
                what: "path components in an entry name (directory depth)",
                limit: u64::try_from(self.opts.max_depth).unwrap_or(u64::MAX),
                field: "max_depth",
            });
        }
        if let Some(hook) = &self.opts.charge {
            let charge = member_charge(meta, parts.last().copied(), self.block);
            hook.call(charge).map_err(|reason| LayerError::Charge {
                path: quote(&meta.name),
                reason,
            })?;
        }
        self.stats.entries += 1;
        let Some((&last, parents)) = parts.split_last() else {
            // `./`: the layer's root directory itself.
            if meta.kind != Kind::Dir {
                return Err(LayerError::refused(
                    &meta.name,
                    "the layer root must be a directory",
                ));
            }
            let root = rfs::openat(
                &self.tree.root,
                ".",
                rfs::OFlags::RDONLY | rfs::OFlags::DIRECTORY | rfs::OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| LayerError::io("open", "the layer root", e))?;
            set_attrs(root.as_fd(), meta, self.opts, &mut self.stats, Skip::NONE)?;
            self.record_times(root.as_fd(), &[], b"", meta)?;
            self.stats.dirs += 1;
            self.tree.forget();
            return Ok(());
        };
        if last == OPAQUE_MARKER {
            let dir = self.tree.parent(parents, &meta.name)?;
            set_xattr(dir, OVERLAY_OPAQUE, b"y")
                .map_err(|e| LayerError::io("mark opaque", quote(&meta.name), e))?;
            self.stats.opaque_dirs += 1;
            return Ok(());
        }
        if let Some(hidden) = last.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.starts_with(WHITEOUT_PREFIX) {
                // `.wh..wh.*` other than the opaque marker are AUFS's own bookkeeping
                // (hard-link directories); they hide nothing.
                return Ok(());
            }
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(LayerError::refused(
                    &meta.name,
                    "whiteout of an invalid name",
                ));
            }
            let dir = self.tree.parent(parents, &meta.name)?;
            match rfs::mknodat(
                dir,
                hidden,
                FileType::CharacterDevice,
                Mode::empty(),
                rfs::makedev(0, 0),
            ) {
                // A member of this same layer already has that name: the whiteout applies to
                // lower layers only, so the member stays.
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(path_error("make whiteout", &meta.name, e)),
            }
            self.stats.whiteouts += 1;
            return Ok(());
        }
        match meta.kind {
            Kind::Dir => self.dir(parents, last, meta),
            Kind::File => self.file(parents, last, meta, data, index),
            Kind::Symlink => self.symlink(parents, last, meta),
            Kind::Hardlink => self.hardlink(parents, last, meta),
            Kind::Char | Kind::Block | Kind::Fifo => self.special(parents, last, meta),
        }
    }

    fn dir(&mut self, parents: &[&[u8]], last: &[u8], meta: &Meta) -> Result<(), LayerError> {
        let dir = self.tree.parent(parents, &meta.name)?;
        match rfs::mkdirat(dir, last, Mode::from_bits_retain(0o700)) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                if fsops::file_type_at(dir, last)
                    .map_err(|e| path_error("inspect", &meta.name, e))?
                    != FileType::Directory
                {
                    self.clear(parents, last, &meta.name)?;
                    let dir = self.tree.parent(parents, &meta.name)?;
                    rfs::mkdirat(dir, last, Mode::from_bits_retain(0o700))
                        .map_err(|e| path_error("create", &meta.name, e))?;
                }
            }
            Err(e) => return Err(path_error("create", &meta.name, e)),
        }
        let dir = self.tree.parent(parents, &meta.name)?;
        let fd =
            fsops::open_dir_beneath(dir, last).map_err(|e| path_error("open", &meta.name, e))?;
        set_attrs(fd.as_fd(), meta, self.opts, &mut self.stats, Skip::NONE)?;
        self.record_times(fd.as_fd(), parents, last, meta)?;
        self.stats.dirs += 1;
        self.tree.forget();
        Ok(())
    }

    fn file(
        &mut self,
        parents: &[&[u8]],
        last: &[u8],
        meta: &Meta,
        data: &mut impl Read,
        index: u64,
    ) -> Result<(), LayerError> {
        let inherit = self.tree.inherit(parents, &meta.name, self.egid)?;
        let dir = self.tree.parent(parents, &meta.name)?;
        let fd = match fsops::create_file(dir, last, meta.mode) {
            Err(Errno::EXIST) => {
                self.clear(parents, last, &meta.name)?;
                let dir = self.tree.parent(parents, &meta.name)?;
                fsops::create_file(dir, last, meta.mode)
            }
            other => other,
        }
        .map_err(|e| path_error("create", &meta.name, e))?;
        let mut file = File::from(fd);
        let mut left = meta.size;
        while left > 0 {
            let want = usize::try_from(left)
                .unwrap_or(usize::MAX)
                .min(self.buf.len());
            let n = data
                .read(&mut self.buf[..want])
                .map_err(|source| LayerError::Archive {
                    entry: index,
                    source,
                })?;
            if n == 0 {
                return Err(LayerError::Malformed {
                    entry: index,
                    reason: format!("archive ends inside the data of {}", quote(&meta.name)),
                });
            }
            file.write_all(&self.buf[..n])
                .map_err(|e| LayerError::io("write", quote(&meta.name), e))?;
            left -= n as u64;
        }
        // Created with its permission bits: a chown or chmod that would change nothing is
        // skipped (most files of an image are root's, 0644 or 0755).
        let skip = Skip {
            owner: (meta.uid, meta.gid) == (self.euid, inherit.gid),
            mode: meta.mode & 0o7000 == 0
                && !inherit.default_acl
                && self.umask.is_some_and(|umask| meta.mode & umask == 0),
        };
        set_attrs(file.as_fd(), meta, self.opts, &mut self.stats, skip)?;
        rfs::futimens(&file, &timestamps(meta))
            .map_err(|e| LayerError::io("set the mtime of", quote(&meta.name), e))?;
        self.stats.files += 1;
        self.stats.bytes += meta.size;
        Ok(())
    }

    fn symlink(&mut self, parents: &[&[u8]], last: &[u8], meta: &Meta) -> Result<(), LayerError> {
        if meta.link.is_empty() || meta.link.contains(&0) {
            return Err(LayerError::refused(
                &meta.name,
                "symbolic link with an empty target or a NUL byte",
            ));
        }
        let dir = self.tree.parent(parents, &meta.name)?;
        match rfs::symlinkat(meta.link.as_slice(), dir, last) {
            Err(Errno::EXIST) => {
                self.clear(parents, last, &meta.name)?;
                let dir = self.tree.parent(parents, &meta.name)?;
                rfs::symlinkat(meta.link.as_slice(), dir, last)
            }
            other => other,
        }
        .map_err(|e| path_error("create the symbolic link", &meta.name, e))?;
        let dir = self.tree.parent(parents, &meta.name)?;
        if self.opts.keep_ownership {
            rfs::chownat(
                dir,
                last,
                Some(rfs::Uid::from_raw(meta.uid)),
                Some(rfs::Gid::from_raw(meta.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| LayerError::io("set the owner of", quote(&meta.name), e))?;
        }
        let mut dropped = 0;
        if !meta.xattrs.is_empty() {
            let path = fsops::proc_path(dir, last);
            for (name, value) in &meta.xattrs {
                if is_overlay_xattr(name) {
                    dropped += 1;
                    continue;
                }
                match rfs::lsetxattr(
                    OsStr::from_bytes(&path),
                    OsStr::from_bytes(name),
                    value,
                    XattrFlags::empty(),
                ) {
                    Ok(()) => {}
                    // Only security.* and trusted.* exist on symbolic links.
                    Err(Errno::OPNOTSUPP | Errno::PERM) => dropped += 1,
                    Err(e) => {
                        return Err(LayerError::io(
                            "set an extended attribute of",
                            quote(&meta.name),
                            e,
                        ));
                    }
                }
            }
        }
        rfs::utimensat(dir, last, &timestamps(meta), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| LayerError::io("set the mtime of", quote(&meta.name), e))?;
        self.stats.xattrs_dropped += dropped;
        self.stats.symlinks += 1;
        Ok(())
    }

    fn hardlink(&mut self, parents: &[&[u8]], last: &[u8], meta: &Meta) -> Result<(), LayerError> {
        let target = entry::components(&meta.link)
            .map_err(|why| LayerError::refused(&meta.name, format!("hard link target: {why}")))?;
        let Some((&target_last, target_parents)) = target.split_last() else {
            return Err(LayerError::refused(
                &meta.name,
                "hard link to the layer root",
            ));
        };
        if target_parents == parents && target_last == last {
            return Ok(());
        }
        // The target's directory must already exist in this layer: never created for a link.
        let target_dir =
            fsops::open_dir_beneath(self.tree.root.as_fd(), &target_parents.join(&b'/'))
                .map_err(|e| link_error(meta, e))?;
        let dir = self.tree.parent(parents, &meta.name)?;
        // Flags empty: a target that is a symbolic link is linked itself, never followed.
        match rfs::linkat(&target_dir, target_last, dir, last, AtFlags::empty()) {
            Err(Errno::EXIST) => {
                self.clear(parents, last, &meta.name)?;
                let dir = self.tree.parent(parents, &meta.name)?;
                rfs::linkat(&target_dir, target_last, dir, last, AtFlags::empty())
            }
            other => other,
        }
        .map_err(|e| link_error(meta, e))?;
        self.stats.hardlinks += 1;
        Ok(())
    }
}

fn link_error(meta: &Meta, e: Errno) -> LayerError {
    match e {
        Errno::NOENT => LayerError::refused(
            &meta.name,
            format!(
                "hard link target {} is not in this layer",
                quote(&meta.link)
            ),
        ),
        Errno::PERM => LayerError::refused(
            &meta.name,
            format!("hard link target {} is a directory", quote(&meta.link)),
        ),
        Errno::LOOP | Errno::NOTDIR | Errno::XDEV => LayerError::refused(
            &meta.name,
            format!(
                "hard link target {} is not reachable inside this layer without a symbolic link",
                quote(&meta.link)
            ),
        ),
        _ => LayerError::io("create the hard link", quote(&meta.name), e),
    }
}

impl Unpacker<'_> {
    fn special(&mut self, parents: &[&[u8]], last: &[u8], meta: &Meta) -> Result<(), LayerError> {
        let (file_type, dev) = match meta.kind {
            Kind::Char | Kind::Block if !self.opts.allow_devices => {
                return Err(LayerError::refused(
                    &meta.name,
                    "device node (UnpackOptions::allow_devices is off)",
                ));
            }
            Kind::Char => (
                FileType::CharacterDevice,
                rfs::makedev(meta.dev_major, meta.dev_minor),
            ),
            Kind::Block => (
                FileType::BlockDevice,
                rfs::makedev(meta.dev_major, meta.dev_minor),
            ),
            _ => (FileType::Fifo, 0),
        };
        let dir = self.tree.parent(parents, &meta.name)?;
        match rfs::mknodat(dir, last, file_type, Mode::from_bits_retain(0o600), dev) {
            Err(Errno::EXIST) => {
                self.clear(parents, last, &meta.name)?;
                let dir = self.tree.parent(parents, &meta.name)?;
                rfs::mknodat(dir, last, file_type, Mode::from_bits_retain(0o600), dev)
            }
            other => other,
        }
        .map_err(|e| path_error("create", &meta.name, e))?;
        let dir = self.tree.parent(parents, &meta.name)?;
        // The node was just made by us in a directory only we write: the name is that node.
        if self.opts.keep_ownership {
            rfs::chownat(
                dir,
                last,
                Some(rfs::Uid::from_raw(meta.uid)),
                Some(rfs::Gid::from_raw(meta.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| LayerError::io("set the owner of", quote(&meta.name), e))?;
        }
        let mode = kept_mode(meta, self.opts, || {
            rfs::statat(dir, last, AtFlags::SYMLINK_NOFOLLOW).map(|st| (st.st_uid, st.st_gid))
        })
        .map_err(|e| LayerError::io("inspect", quote(&meta.name), e))?;
        rfs::chmodat(dir, last, Mode::from_bits_retain(mode), AtFlags::empty())
            .map_err(|e| LayerError::io("set the mode of", quote(&meta.name), e))?;
        rfs::utimensat(dir, last, &timestamps(meta), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| LayerError::io("set the mtime of", quote(&meta.name), e))?;
        self.stats.special += 1;
        Ok(())
    }

    /// Sets directory mtimes last, once nothing more is written below them.
    fn finish_dirs(&mut self) -> Result<(), LayerError> {
        self.tree.cache = None;
        self.dir_times.apply(self.tree.root.as_fd())
    }

    /// Notes the times of the directory open as `fd`, at `parents`/`last` (the root when
    /// both are empty), applied by [`Self::finish_dirs`].
    fn record_times(
        &mut self,
        fd: BorrowedFd<'_>,
        parents: &[&[u8]],
        last: &[u8],
        meta: &Meta,
    ) -> Result<(), LayerError> {
        let path = || {
            let mut path = parents.join(&b'/');
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(last);
            path
        };
        self.dir_times
            .note(fd, path, timestamps(meta))
            .map_err(|e| LayerError::io("inspect", quote(&meta.name), e))
    }

    /// Removes what is at `last` so a member can take its place, forgetting the times noted
    /// for it when it is a directory (its inode may be reused by a directory made later).
    fn clear(&mut self, parents: &[&[u8]], last: &[u8], name: &[u8]) -> Result<(), LayerError> {
        if !self.dir_times.is_empty() {
            let dir = self.tree.parent(parents, name)?;
            self.dir_times.forget(dir, last);
        }
        self.tree.clear(parents, last, name)
    }
}

/// The permission bits to give an entry: the archive's, except that when ownership is not
/// kept the setuid (setgid) bit stays only if the entry's owner (group), as `owner` reads it,
/// is the archive's.
fn kept_mode(
    meta: &Meta,
    opts: &UnpackOptions,
    owner: impl FnOnce() -> Result<(u32, u32), Errno>,
) -> Result<u32, Errno> {
    const SUID: u32 = 0o4000;
    const SGID: u32 = 0o2000;
    let mut mode = meta.mode;
    if !opts.keep_ownership && mode & (SUID | SGID) != 0 {
        let (uid, gid) = owner()?;
        if uid != meta.uid {
            mode &= !SUID;
        }
        if gid != meta.gid {
            mode &= !SGID;
        }
    }
    Ok(mode)
}

/// Owner, then mode (a chown clears setuid and setgid), then extended attributes.
/// Attribute changes known to change nothing.
#[derive(Clone, Copy)]
struct Skip {
    owner: bool,
    mode: bool,
}

impl Skip {
    const NONE: Self = Self {
        owner: false,
        mode: false,
    };
}

fn set_attrs(
    fd: BorrowedFd<'_>,
    meta: &Meta,
    opts: &UnpackOptions,
    stats: &mut UnpackStats,
    skip: Skip,
) -> Result<(), LayerError> {
    if opts.keep_ownership && !skip.owner {
        rfs::fchown(
            fd,
            Some(rfs::Uid::from_raw(meta.uid)),
            Some(rfs::Gid::from_raw(meta.gid)),
        )
        .map_err(|e| LayerError::io("set the owner of", quote(&meta.name), e))?;
    }
    if !skip.mode {
        let mode = kept_mode(meta, opts, || {
            rfs::fstat(fd).map(|st| (st.st_uid, st.st_gid))
        })
        .map_err(|e| LayerError::io("inspect", quote(&meta.name), e))?;
        rfs::fchmod(fd, Mode::from_bits_retain(mode))
            .map_err(|e| LayerError::io("set the mode of", quote(&meta.name), e))?;
    }
    for (name, value) in &meta.xattrs {
        if is_overlay_xattr(name) {
            tracing::warn!(entry = %quote(&meta.name), xattr = %quote(name), "dropped an overlayfs attribute carried by the layer");
            stats.xattrs_dropped += 1;
            continue;
        }
        match rfs::fsetxattr(fd, OsStr::from_bytes(name), value, XattrFlags::empty()) {
            Ok(()) => {}
            Err(Errno::OPNOTSUPP) => {
                tracing::warn!(entry = %quote(&meta.name), xattr = %quote(name), "extended attribute not supported here; dropped");
                stats.xattrs_dropped += 1;
            }
            Err(e) => {
                return Err(LayerError::io(
                    "set an extended attribute of",
                    quote(&meta.name),
                    e,
                ));
            }
        }
    }
    Ok(())
}

fn is_overlay_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")
}

fn set_xattr(fd: BorrowedFd<'_>, name: &str, value: &[u8]) -> Result<(), Errno> {
    rfs::fsetxattr(fd, name, value, XattrFlags::empty())
}
