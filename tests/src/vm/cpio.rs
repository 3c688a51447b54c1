//! A writer of "newc" cpio archives, the format the Linux kernel unpacks as an initramfs.
//!
//! Entries are kept in a sorted map so that every directory comes before what it holds (a path
//! sorts after each of its prefixes) and the archive is the same bytes for the same contents:
//! modification times are 0 and inode numbers are assigned in order.

use std::collections::BTreeMap;
use std::io::{self, Write};

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// One entry's kind and contents.
#[derive(Debug, Clone)]
enum Entry {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    Symlink { target: String },
    CharDevice { mode: u32, major: u32, minor: u32 },
}

/// An archive being assembled in memory. Paths are absolute in the image ("/bin/sh"); parent
/// directories are added as needed (mode 0755). A later entry at the same path replaces the
/// earlier one.
#[derive(Debug, Default, Clone)]
pub(crate) struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    /// Adds a directory.
    pub(crate) fn dir(&mut self, path: &str, mode: u32) {
        self.insert(path, Entry::Dir { mode });
    }

    /// Adds a regular file.
    pub(crate) fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) {
        self.insert(path, Entry::File { mode, data });
    }

    /// Adds a symbolic link to `target`.
    pub(crate) fn symlink(&mut self, path: &str, target: &str) {
        self.insert(
            path,
            Entry::Symlink {
                target: target.to_owned(),
            },
        );
    }

    /// Adds a character device node.
    pub(crate) fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        self.insert(path, Entry::CharDevice { mode, major, minor });
    }

    fn insert(&mut self, path: &str, entry: Entry) {
        let name = normalize(path);
        if name.is_empty() {
            return;
        }
        let mut parent = name;
        while let Some((up, _)) = parent.rsplit_once('/') {
            parent = up;
            self.entries
                .entry(parent.to_owned())
                .or_insert(Entry::Dir { mode: 0o755 });
        }
        self.entries.insert(name.to_owned(), entry);
    }

    /// Writes the archive, with its trailer.
    pub(crate) fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        for (ino, (name, entry)) in (1u32..).zip(&self.entries) {
            let (mode, nlink, data, rdev): (u32, u32, &[u8], (u32, u32)) = match entry {
                Entry::Dir { mode } => (S_IFDIR | mode, 2, &[], (0, 0)),
                Entry::File { mode, data } => (S_IFREG | mode, 1, data, (0, 0)),
                Entry::Symlink { target } => (S_IFLNK | 0o777, 1, target.as_bytes(), (0, 0)),
                Entry::CharDevice { mode, major, minor } => {
                    (S_IFCHR | mode, 1, &[], (*major, *minor))
                }
            };
            write_entry(out, ino, mode, nlink, rdev, name, data)?;
        }
        write_entry(out, 0, 0, 1, (0, 0), "TRAILER!!!", &[])
    }
}

fn normalize(path: &str) -> &str {
    path.trim_matches('/')
}

fn write_entry(
    out: &mut impl Write,
    ino: u32,
    mode: u32,
    nlink: u32,
    (rdev_major, rdev_minor): (u32, u32),
    name: &str,
    data: &[u8],
) -> io::Result<()> {
    let size = u32::try_from(data.len()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name} is too large for a cpio archive"),
        )
    })?;
    let name_size = u32::try_from(name.len() + 1)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path too long"))?;
    // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
    // rdevminor, namesize, check
    let header = format!(
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size:08x}{:08x}{:08x}{rdev_major:08x}{rdev_minor:08x}{name_size:08x}{:08x}",
        0, 0, 0, 0, 0, 0
    );
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    pad(out, header.len() + name.len() + 1)?;
    out.write_all(data)?;
    pad(out, data.len())
}

/// Pads to the next multiple of four bytes.
fn pad(out: &mut impl Write, written: usize) -> io::Result<()> {
    let zeros = (4 - written % 4) % 4;
    out.write_all(&[0; 3][..zeros])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_come_first_and_entries_are_aligned() {
        let mut archive = Archive::default();
        archive.file("/usr/bin/tool", 0o755, b"abcde".to_vec());
        archive.symlink("/bin/sh", "busybox");
        archive.char_device("/dev/console", 0o600, 5, 1);
        let mut out = Vec::new();
        archive.write_to(&mut out).expect("write to memory");

        // Walk the archive back: names in order, each header at a 4-byte boundary.
        let mut names = Vec::new();
        let mut at = 0;
        loop {
            assert_eq!(at % 4, 0);
            assert_eq!(&out[at..at + 6], b"070701");
            let field = |i: usize| {
                let text = std::str::from_utf8(&out[at + 6 + i * 8..at + 14 + i * 8]).expect("hex");
                usize::from_str_radix(text, 16).expect("hex")
            };
            let (size, name_size) = (field(6), field(11));
            let name = std::str::from_utf8(&out[at + 110..at + 110 + name_size - 1])
                .expect("name")
                .to_owned();
            at += (110 + name_size).next_multiple_of(4);
            at += size.next_multiple_of(4);
            let done = name == "TRAILER!!!";
            names.push(name);
            if done {
                break;
            }
        }
        assert_eq!(at, out.len());
        assert_eq!(
            names,
            [
                "bin",
                "bin/sh",
                "dev",
                "dev/console",
                "usr",
                "usr/bin",
                "usr/bin/tool",
                "TRAILER!!!"
            ]
        );
    }
}
