//! Test helpers: tar archives written byte by byte (so hostile names the tar crate's builder
//! refuses can be made), a sandbox with a victim outside the destination, tree listings.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Entry types.
pub const REG: u8 = b'0';
pub const HARD: u8 = b'1';
pub const SYM: u8 = b'2';
pub const CHR: u8 = b'3';
pub const BLK: u8 = b'4';
pub const DIR: u8 = b'5';
pub const FIFO: u8 = b'6';

/// One member's header fields.
#[derive(Clone)]
pub struct Member<'a> {
    pub name: &'a [u8],
    pub typ: u8,
    pub link: &'a [u8],
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub data: &'a [u8],
    pub dev: (u32, u32),
    /// When set, the header's size field (data written is still `data`).
    pub size_override: Option<u64>,
}

impl<'a> Member<'a> {
    pub fn new(name: &'a [u8], typ: u8) -> Self {
        Self {
            name,
            typ,
            link: b"",
            mode: if typ == DIR { 0o755 } else { 0o644 },
            uid: 0,
            gid: 0,
            mtime: 1_600_000_000,
            data: b"",
            dev: (0, 0),
            size_override: None,
        }
    }
    pub fn file(name: &'a [u8], data: &'a [u8]) -> Self {
        Self {
            data,
            ..Self::new(name, REG)
        }
    }
    pub fn dir(name: &'a [u8]) -> Self {
        Self::new(name, DIR)
    }
    pub fn symlink(name: &'a [u8], target: &'a [u8]) -> Self {
        Self {
            link: target,
            ..Self::new(name, SYM)
        }
    }
    pub fn hardlink(name: &'a [u8], target: &'a [u8]) -> Self {
        Self {
            link: target,
            ..Self::new(name, HARD)
        }
    }
}

/// A tar archive assembled block by block.
#[derive(Default)]
pub struct Tar(pub Vec<u8>);

impl Tar {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(mut self, m: Member<'_>) -> Self {
        self.push(&m);
        self
    }

    pub fn push(&mut self, m: &Member<'_>) {
        let mut h = tar::Header::new_ustar();
        {
            let raw = h.as_mut_bytes();
            assert!(m.name.len() <= 100, "use pax() for long names");
            raw[..m.name.len()].copy_from_slice(m.name);
            assert!(m.link.len() <= 100);
            raw[157..157 + m.link.len()].copy_from_slice(m.link);
        }
        h.set_mode(m.mode);
        h.set_uid(m.uid);
        h.set_gid(m.gid);
        h.set_mtime(m.mtime);
        h.set_size(m.size_override.unwrap_or(m.data.len() as u64));
        h.set_entry_type(tar::EntryType::new(m.typ));
        if m.typ == CHR || m.typ == BLK {
            h.set_device_major(m.dev.0).unwrap();
            h.set_device_minor(m.dev.1).unwrap();
        }
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
        self.0.extend_from_slice(m.data);
        pad(&mut self.0);
    }

    /// A PAX extended header for the next member.
    pub fn pax(mut self, records: &[(&str, &[u8])]) -> Self {
        let mut body = Vec::new();
        for (k, v) in records {
            let tail = k.len() + v.len() + 3;
            let mut len = tail + 1;
            while format!("{len}").len() + tail != len {
                len += 1;
            }
            body.extend_from_slice(format!("{len} {k}=").as_bytes());
            body.extend_from_slice(v);
            body.push(b'\n');
        }
        let data = body;
        let m = Member {
            data: &data,
            ..Member::new(b"././@PaxHeader", b'x')
        };
        self.push(&m);
        self
    }

    /// A GNU long-name record for the next member.
    pub fn gnu_long(mut self, typ: u8, value: &[u8]) -> Self {
        let mut data = value.to_vec();
        data.push(0);
        let m = Member {
            data: &data,
            ..Member::new(b"././@LongLink", typ)
        };
        self.push(&m);
        self
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0; 1024]);
        self.0
    }
}

fn pad(buf: &mut Vec<u8>) {
    let rem = buf.len() % 512;
    if rem != 0 {
        buf.resize(buf.len() + 512 - rem, 0);
    }
}

/// A directory with `outside/victim` (and nothing else) beside the unpack destination `dest`.
pub struct Sandbox {
    pub tmp: tempfile::TempDir,
    pub dest: PathBuf,
    pub outside: PathBuf,
}

pub const VICTIM: &[u8] = b"original victim content\n";

impl Sandbox {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("victim"), VICTIM).unwrap();
        let dest = tmp.path().join("dest");
        Self { tmp, dest, outside }
    }

    /// Everything in the sandbox outside `dest` is exactly as made.
    pub fn assert_outside_untouched(&self) {
        let mut names: Vec<_> = walk(self.tmp.path())
            .into_keys()
            .filter(|p| !(p == Path::new("dest") || p.starts_with("dest/")))
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec![PathBuf::from("outside"), PathBuf::from("outside/victim")],
            "something was written outside dest"
        );
        assert_eq!(std::fs::read(self.outside.join("victim")).unwrap(), VICTIM);
        let md = std::fs::symlink_metadata(self.outside.join("victim")).unwrap();
        assert_eq!(md.nlink(), 1, "victim got a hard link");
        assert_eq!(md.mode() & 0o7777, 0o644);
    }
}

/// What one path is, for comparing trees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: i64,
    pub content: Vec<u8>,
    pub rdev: u64,
    pub xattrs: Vec<(String, Vec<u8>)>,
    pub ino: u64,
}

/// Every path below `root` (relative), not following symbolic links.
pub fn walk(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    walk_into(root, root, &mut out);
    out
}

fn walk_into(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Node>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let md = std::fs::symlink_metadata(&path).unwrap();
        let ft = md.file_type();
        use std::os::unix::fs::FileTypeExt;
        let (kind, content) = if ft.is_dir() {
            ("dir", Vec::new())
        } else if ft.is_symlink() {
            (
                "symlink",
                std::os::unix::ffi::OsStrExt::as_bytes(
                    std::fs::read_link(&path).unwrap().as_os_str(),
                )
                .to_vec(),
            )
        } else if ft.is_file() {
            ("file", std::fs::read(&path).unwrap())
        } else if ft.is_char_device() {
            ("char", Vec::new())
        } else if ft.is_block_device() {
            ("block", Vec::new())
        } else {
            ("fifo", Vec::new())
        };
        let node = Node {
            kind,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            mtime: md.mtime(),
            mtime_nsec: md.mtime_nsec(),
            content,
            rdev: md.rdev(),
            xattrs: xattrs(&path),
            ino: md.ino(),
        };
        out.insert(path.strip_prefix(root).unwrap().to_path_buf(), node);
        if ft.is_dir() {
            walk_into(root, &path, out);
        }
    }
}

/// The extended attributes of `path` (not followed), sorted.
pub fn xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut names = vec![0u8; 65536];
    let n = match rustix::fs::llistxattr(path, &mut names[..]) {
        Ok(n) => n,
        Err(_) => return Vec::new(),
    };
    let mut out = Vec::new();
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8(name.to_vec()).unwrap();
        let mut value = vec![0u8; 65536];
        let len = rustix::fs::lgetxattr(path, name.as_str(), &mut value[..]).unwrap();
        value.truncate(len);
        out.push((name, value));
    }
    out.sort();
    out
}

/// Whether we can do what the tests need (root: chown, mknod, trusted.* xattrs, mounts).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Skips (loudly) when not root, except under CI where it fails.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    let msg = format!("{test} needs root (chown, mknod, trusted.* xattrs, overlay mounts)");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg} (CI=true: not skipped)");
    }
    use std::io::Write as _;
    let _ = std::io::stderr().write_all(format!("\n*** SKIPPED: {msg} ***\n").as_bytes());
    false
}

/// The path of `tool`, or `None` after a loud note (a failure under `CI=true`).
pub fn require_tool(test: &str, tool: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let msg = format!("{test} needs `{tool}` (scripts/install-test-deps.sh installs it)");
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg} (CI=true: not skipped)");
        }
        use std::io::Write as _;
        let _ = std::io::stderr().write_all(format!("\n*** SKIPPED: {msg} ***\n").as_bytes());
    }
    found
}

/// Runs a command, panicking with its stderr when it fails.
pub fn run(cmd: &mut std::process::Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Two trees are the same: every path, kind, mode, owner, mtime, content, device, xattr, and
/// the same hard-link groups (inode numbers themselves differ).
pub fn assert_same_tree(expected: &Path, actual: &Path, skip_root: bool) {
    assert_same_tree_but(expected, actual, skip_root, false);
}

/// [`assert_same_tree`], optionally ignoring directory mtimes.
pub fn assert_same_tree_but(
    expected: &Path,
    actual: &Path,
    skip_root: bool,
    ignore_dir_mtimes: bool,
) {
    let a = walk(expected);
    let b = walk(actual);
    let keys_a: Vec<_> = a.keys().collect();
    let keys_b: Vec<_> = b.keys().collect();
    assert_eq!(keys_a, keys_b, "different paths");
    let strip = |n: &Node| {
        let mut n = Node {
            ino: 0,
            ..n.clone()
        };
        if ignore_dir_mtimes && n.kind == "dir" {
            (n.mtime, n.mtime_nsec) = (0, 0);
        }
        n
    };
    for (path, na) in &a {
        assert_eq!(strip(na), strip(&b[path]), "{} differs", path.display());
    }
    let groups = |t: &BTreeMap<PathBuf, Node>| {
        let mut by_ino: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
        for (p, n) in t {
            if n.kind != "dir" {
                by_ino.entry(n.ino).or_default().push(p.clone());
            }
        }
        let mut g: Vec<Vec<PathBuf>> = by_ino.into_values().filter(|v| v.len() > 1).collect();
        g.sort();
        g
    };
    assert_eq!(groups(&a), groups(&b), "different hard-link groups");
    if !skip_root {
        let ra = std::fs::symlink_metadata(expected).unwrap();
        let rb = std::fs::symlink_metadata(actual).unwrap();
        assert_eq!(
            (ra.mode(), ra.uid(), ra.gid(), ra.mtime()),
            (rb.mode(), rb.uid(), rb.gid(), rb.mtime()),
            "roots differ"
        );
    }
}
