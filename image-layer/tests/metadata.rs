//! What an unpack keeps (owners, modes with setuid, mtimes, xattrs) and its limits.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};

use common::*;
use peerpod_image_layer::{LayerError, UnpackOptions, unpack};

#[test]
fn owners_modes_mtimes_and_xattrs_round_trip() {
    if !require_root("owners_modes_mtimes_and_xattrs_round_trip") {
        return;
    }
    let sb = Sandbox::new();
    let tar = Tar::new()
        .pax(&[("mtime", b"1500000000.25"), ("SCHILY.xattr.user.dir", b"d")])
        .add(Member {
            mode: 0o1750,
            uid: 7,
            gid: 8,
            ..Member::dir(b"d/")
        })
        .pax(&[
            ("uid", b"3000000"),
            ("gid", b"4000000"),
            ("SCHILY.xattr.user.note", b"hello\0binary\xff"),
            ("SCHILY.xattr.trusted.info", b"t"),
        ])
        .add(Member {
            mode: 0o4755,
            mtime: 1_234_567_890,
            ..Member::file(b"d/suid", b"#!/bin/true\n")
        })
        .add(Member {
            mode: 0o2711,
            uid: 1,
            gid: 2,
            ..Member::file(b"d/sgid", b"")
        })
        .add(Member {
            uid: 11,
            gid: 12,
            mtime: 1_111_111_111,
            ..Member::symlink(b"d/link", b"suid")
        })
        .add(Member {
            mode: 0o640,
            uid: 5,
            gid: 6,
            mtime: 999,
            ..Member::new(b"d/fifo", FIFO)
        })
        .add(Member {
            mode: 0o700,
            mtime: 42,
            ..Member::dir(b"./")
        })
        .finish();
    let stats = unpack(&tar[..], &sb.dest, &UnpackOptions::default()).unwrap();
    assert_eq!(
        (stats.files, stats.dirs, stats.symlinks, stats.special),
        (2, 2, 1, 1)
    );

    let md = |p: &str| std::fs::symlink_metadata(sb.dest.join(p)).unwrap();
    let d = md("d");
    assert_eq!((d.mode() & 0o7777, d.uid(), d.gid()), (0o1750, 7, 8));
    // The directory's mtime survives the members written into it afterwards.
    assert_eq!((d.mtime(), d.mtime_nsec()), (1_500_000_000, 250_000_000));
    assert_eq!(
        xattrs(&sb.dest.join("d")),
        vec![("user.dir".into(), b"d".to_vec())]
    );

    let suid = md("d/suid");
    assert_eq!(suid.mode() & 0o7777, 0o4755, "setuid kept after chown");
    assert_eq!((suid.uid(), suid.gid()), (3_000_000, 4_000_000));
    assert_eq!(suid.mtime(), 1_234_567_890);
    assert_eq!(
        xattrs(&sb.dest.join("d/suid")),
        vec![
            ("trusted.info".into(), b"t".to_vec()),
            ("user.note".into(), b"hello\0binary\xff".to_vec())
        ]
    );
    let sgid = md("d/sgid");
    assert_eq!(
        (sgid.mode() & 0o7777, sgid.uid(), sgid.gid()),
        (0o2711, 1, 2)
    );

    let link = md("d/link");
    assert!(link.file_type().is_symlink());
    assert_eq!(
        (link.uid(), link.gid(), link.mtime()),
        (11, 12, 1_111_111_111)
    );

    let fifo = md("d/fifo");
    assert!(fifo.file_type().is_fifo());
    assert_eq!(
        (fifo.mode() & 0o7777, fifo.uid(), fifo.gid(), fifo.mtime()),
        (0o640, 5, 6, 999)
    );

    let root = std::fs::symlink_metadata(&sb.dest).unwrap();
    assert_eq!((root.mode() & 0o7777, root.mtime()), (0o700, 42));
    sb.assert_outside_untouched();
}

/// With ownership not kept, a setuid or setgid bit for an owner or group the entry did not get
/// is dropped (a setuid program of user 4242 would otherwise be a setuid-root one), as
/// libarchive does; where the archive's owner or group is the unpacking user's, it stays.
#[test]
fn keep_ownership_off_leaves_the_unpacking_user_and_drops_foreign_setuid() {
    let sb = Sandbox::new();
    let euid = rustix::process::geteuid().as_raw();
    let egid = rustix::process::getegid().as_raw();
    let tar = Tar::new()
        .add(Member {
            uid: 4242,
            gid: 4343,
            mode: 0o6755,
            ..Member::file(b"foreign", b"x")
        })
        .add(Member {
            uid: u64::from(euid),
            gid: 4343,
            mode: 0o6755,
            ..Member::file(b"own-user", b"x")
        })
        .add(Member {
            uid: 4242,
            gid: u64::from(egid),
            mode: 0o6755,
            ..Member::file(b"own-group", b"x")
        })
        .add(Member {
            uid: 4242,
            gid: 4343,
            mode: 0o2755,
            ..Member::dir(b"foreign-dir/")
        })
        .add(Member {
            uid: 4242,
            gid: 4343,
            mode: 0o6640,
            ..Member::new(b"fifo", FIFO)
        })
        .finish();
    let opts = UnpackOptions {
        keep_ownership: false,
        ..Default::default()
    };
    unpack(&tar[..], &sb.dest, &opts).unwrap();
    for (name, mode) in [
        ("foreign", 0o755),
        ("own-user", 0o4755),
        ("own-group", 0o2755),
        ("foreign-dir", 0o755),
        ("fifo", 0o640),
    ] {
        let md = std::fs::symlink_metadata(sb.dest.join(name)).unwrap();
        assert_eq!((md.uid(), md.gid()), (euid, egid), "{name}");
        assert_eq!(md.mode() & 0o7777, mode, "{name}: {:o}", md.mode());
    }
    sb.assert_outside_untouched();
}

#[test]
fn whiteouts_and_opaque_markers_take_overlay_form() {
    if !require_root("whiteouts_and_opaque_markers_take_overlay_form") {
        return;
    }
    let sb = Sandbox::new();
    let tar = Tar::new()
        .add(Member::file(b"a/.wh.gone", b""))
        .add(Member::file(b"b/.wh..wh..opq", b""))
        .add(Member::file(b"b/new", b"n"))
        .add(Member::file(b".wh..wh.plnk", b""))
        // A member and a whiteout of the same name in one layer: the member stays.
        .add(Member::file(b"both", b"kept"))
        .add(Member::file(b".wh.both", b""))
        .finish();
    let stats = unpack(&tar[..], &sb.dest, &UnpackOptions::default()).unwrap();
    assert_eq!((stats.whiteouts, stats.opaque_dirs), (2, 1));
    let gone = std::fs::symlink_metadata(sb.dest.join("a/gone")).unwrap();
    assert!(gone.file_type().is_char_device());
    assert_eq!(gone.rdev(), 0);
    assert!(!sb.dest.join("a/.wh.gone").exists());
    assert_eq!(
        xattrs(&sb.dest.join("b")),
        vec![("trusted.overlay.opaque".into(), b"y".to_vec())]
    );
    assert!(!sb.dest.join("b/.wh..wh..opq").exists());
    assert!(!sb.dest.join(".wh..wh.plnk").exists());
    assert_eq!(std::fs::read(sb.dest.join("both")).unwrap(), b"kept");
}

fn limit_field(err: LayerError) -> &'static str {
    match err {
        LayerError::Limit { field, .. } => field,
        other => panic!("expected a limit error, got {other}"),
    }
}

#[test]
fn limits_are_enforced() {
    let many = {
        let mut t = Tar::new();
        for i in 0..11 {
            let name = format!("f{i}");
            t.push(&Member::file(name.as_bytes(), b""));
        }
        t.finish()
    };
    let sb = Sandbox::new();
    let opts = UnpackOptions {
        max_entries: 10,
        ..Default::default()
    };
    assert_eq!(
        limit_field(unpack(&many[..], &sb.dest, &opts).unwrap_err()),
        "max_entries"
    );
    let sb = Sandbox::new();
    let opts = UnpackOptions {
        max_entries: 11,
        ..Default::default()
    };
    assert_eq!(unpack(&many[..], &sb.dest, &opts).unwrap().entries, 11);

    let big = Tar::new()
        .add(Member::file(b"a", &[1; 600]))
        .add(Member::file(b"b", &[2; 600]))
        .finish();
    let sb = Sandbox::new();
    let opts = UnpackOptions {
        max_total_bytes: 1000,
        ..Default::default()
    };
    assert_eq!(
        limit_field(unpack(&big[..], &sb.dest, &opts).unwrap_err()),
        "max_total_bytes"
    );
    // Refused before the member over the limit is written.
    assert!(!sb.dest.join("b").exists());

    // Trailing bytes after the end-of-archive marker count too.
    let mut padded = Tar::new().add(Member::file(b"a", &[1; 100])).finish();
    padded.extend_from_slice(&[0; 4096]);
    let sb = Sandbox::new();
    let opts = UnpackOptions {
        max_total_bytes: 1000,
        ..Default::default()
    };
    assert_eq!(
        limit_field(unpack(&padded[..], &sb.dest, &opts).unwrap_err()),
        "max_total_bytes"
    );
    let sb = Sandbox::new();
    let stats = unpack(&padded[..], &sb.dest, &UnpackOptions::default()).unwrap();
    assert!(stats.trailing_bytes >= 4096);

    let long = [b'a'; 200];
    let long_name = [&long[..], b"/", &long[..]].concat();
    let tar = Tar::new()
        .pax(&[("path", &long_name)])
        .add(Member::file(b"x", b""))
        .finish();
    let sb = Sandbox::new();
    let opts = UnpackOptions {
        max_path_bytes: 300,
        ..Default::default()
    };
    assert_eq!(
        limit_field(unpack(&tar[..], &sb.dest, &opts).unwrap_err()),
        "max_path_bytes"
    );
    let sb = Sandbox::new();
    unpack(&tar[..], &sb.dest, &UnpackOptions::default()).unwrap();
    assert!(sb.dest.join(String::from_utf8(long_name).unwrap()).exists());

    let tar = Tar::new()
        .pax(&[("SCHILY.xattr.user.big", &[b'v'; 2000])])
        .add(Member::file(b"x", b""))
        .finish();
    let sb = Sandbox::new();
    let opts = UnpackOptions {
        max_xattr_bytes: 1024,
        ..Default::default()
    };
    assert_eq!(
        limit_field(unpack(&tar[..], &sb.dest, &opts).unwrap_err()),
        "max_xattr_bytes"
    );
}

#[test]
fn the_stream_is_read_to_its_end_so_a_verifying_reader_can_fail_it() {
    /// Yields the archive, then the error a digest check returns at EOF.
    struct FailsAtEof(std::io::Cursor<Vec<u8>>);
    impl std::io::Read for FailsAtEof {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match self.0.read(buf)? {
                0 => Err(std::io::Error::other(
                    "digest mismatch: layer is not sha256:0000",
                )),
                n => Ok(n),
            }
        }
    }
    let tar = Tar::new().add(Member::file(b"f", b"x")).finish();
    let sb = Sandbox::new();
    let err = unpack(
        FailsAtEof(std::io::Cursor::new(tar)),
        &sb.dest,
        &UnpackOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, LayerError::Archive { .. }), "{err:?}");
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(source.contains("digest mismatch"), "{source}");
}

/// The chown and chmod a new file seems not to need are skipped only when they would change
/// nothing: a setgid directory's group and a default ACL are taken into account.
#[test]
fn setgid_directories_and_default_acls_do_not_leak_into_files() {
    if !require_root("setgid_directories_and_default_acls_do_not_leak_into_files") {
        return;
    }
    // system.posix_acl_default: user::rwx, group::---, other::--- (version 2 entries).
    let mut acl = 2u32.to_le_bytes().to_vec();
    for (tag, perm) in [(0x01u16, 7u16), (0x04, 0), (0x20, 0)] {
        acl.extend_from_slice(&tag.to_le_bytes());
        acl.extend_from_slice(&perm.to_le_bytes());
        acl.extend_from_slice(&u32::MAX.to_le_bytes());
    }
    let sb = Sandbox::new();
    let tar = Tar::new()
        .add(Member {
            mode: 0o2775,
            gid: 50,
            ..Member::dir(b"sg/")
        })
        .add(Member::file(b"sg/f", b"x"))
        .pax(&[("SCHILY.xattr.system.posix_acl_default", &acl)])
        .add(Member::dir(b"acl/"))
        .add(Member {
            mode: 0o644,
            ..Member::file(b"acl/f", b"x")
        })
        .add(Member {
            mode: 0o755,
            ..Member::file(b"acl/g", b"x")
        })
        .finish();
    let stats = unpack(&tar[..], &sb.dest, &UnpackOptions::default()).unwrap();
    assert_eq!(
        stats.xattrs_dropped, 0,
        "the test filesystem must take ACLs"
    );
    let md = |p: &str| std::fs::metadata(sb.dest.join(p)).unwrap();
    assert_eq!(md("sg").gid(), 50);
    assert_eq!(
        (md("sg/f").uid(), md("sg/f").gid()),
        (0, 0),
        "not the setgid directory's group"
    );
    assert_eq!(
        md("acl/f").mode() & 0o7777,
        0o644,
        "not the default ACL's mode"
    );
    assert_eq!(md("acl/g").mode() & 0o7777, 0o755);
}

/// File capabilities survive: they are set after the owner (a chown clears them) and after the
/// data (a write clears them).
#[test]
fn file_capabilities_are_kept_on_files_owned_by_others() {
    if !require_root("file_capabilities_are_kept_on_files_owned_by_others") {
        return;
    }
    // VFS_CAP_REVISION_2, effective; permitted = CAP_NET_RAW (13).
    let mut cap = (0x0200_0000u32 | 1).to_le_bytes().to_vec();
    for word in [1u32 << 13, 0, 0, 0] {
        cap.extend_from_slice(&word.to_le_bytes());
    }
    let sb = Sandbox::new();
    let tar = Tar::new()
        .pax(&[("SCHILY.xattr.security.capability", &cap)])
        .add(Member {
            uid: 1000,
            gid: 1000,
            mode: 0o755,
            ..Member::file(b"ping", b"\x7fELF...")
        })
        .finish();
    unpack(&tar[..], &sb.dest, &UnpackOptions::default()).unwrap();
    let got = xattrs(&sb.dest.join("ping"));
    assert_eq!(got, vec![("security.capability".to_string(), cap)]);
    assert_eq!(std::fs::metadata(sb.dest.join("ping")).unwrap().uid(), 1000);
}
