//! A corpus of malicious layers, built here byte by byte: each is refused (or, where tar
//! semantics make it legal, made harmless) and nothing outside the destination changes.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use peerpod_image_layer::{LayerError, UnpackOptions, unpack};

/// Unpacks `tar` into a fresh sandbox, expects a refusal whose text contains `why`, and checks
/// nothing outside `dest` changed.
fn refused(tar: Vec<u8>, why: &str) {
    refused_with(tar, why, &UnpackOptions::default(), |_| {});
}

fn refused_with(tar: Vec<u8>, why: &str, opts: &UnpackOptions, prepare: impl FnOnce(&Sandbox)) {
    let sb = Sandbox::new();
    prepare(&sb);
    let err = unpack(&tar[..], &sb.dest, opts).expect_err("a hostile layer was accepted");
    let text = error_text(&err);
    assert!(text.contains(why), "expected {why:?} in {text:?}");
    sb.assert_outside_untouched();
}

fn error_text(err: &LayerError) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[test]
fn dotdot_names_are_refused() {
    refused(
        Tar::new()
            .add(Member::file(b"../victim", b"pwned"))
            .finish(),
        "`..` path component",
    );
    refused(
        Tar::new()
            .add(Member::file(b"a/../../outside/victim", b"pwned"))
            .finish(),
        "`..` path component",
    );
    refused(
        Tar::new().add(Member::dir(b"../escape/")).finish(),
        "`..` path component",
    );
}

#[test]
fn absolute_names_are_anchored_in_the_layer() {
    // As GNU tar, containerd and image-rs do: `/x` is `x` of the layer.
    let sb = Sandbox::new();
    let abs = sb.outside.join("victim");
    let name = abs.to_str().unwrap().as_bytes();
    let tar = Tar::new()
        .add(Member::file(name, b"anchored"))
        .add(Member::file(b"/etc/hostname", b"pod"))
        .add(Member::hardlink(b"hl", b"/etc/hostname"))
        .finish();
    unpack(&tar[..], &sb.dest, &UnpackOptions::default()).unwrap();
    let inside = sb.dest.join(abs.strip_prefix("/").unwrap());
    assert_eq!(std::fs::read(inside).unwrap(), b"anchored");
    assert_eq!(std::fs::read(sb.dest.join("hl")).unwrap(), b"pod");
    sb.assert_outside_untouched();
    // An absolute hard link target to the outside victim resolves inside the layer, where it
    // does not exist.
    refused(
        Tar::new()
            .add(Member::hardlink(b"hl", abs.to_str().unwrap().as_bytes()))
            .finish(),
        "is not in this layer",
    );
}

#[test]
fn data_after_the_end_of_archive_marker_is_refused() {
    let mut tar = Tar::new().add(Member::file(b"a", b"x")).finish();
    tar.extend_from_slice(&Tar::new().add(Member::file(b"hidden", b"y")).finish());
    refused(tar, "data after the end-of-archive marker");
}

#[test]
fn writing_through_a_symlink_is_refused() {
    let sb = Sandbox::new();
    let outside = sb.outside.to_str().unwrap().as_bytes().to_vec();
    // Absolute target.
    refused(
        Tar::new()
            .add(Member::symlink(b"link", &outside))
            .add(Member::file(b"link/victim", b"pwned"))
            .finish(),
        "a path component is a symbolic link",
    );
    // Relative target climbing out.
    refused(
        Tar::new()
            .add(Member::symlink(b"link", b"../outside"))
            .add(Member::file(b"link/victim", b"pwned"))
            .finish(),
        "a path component is a symbolic link",
    );
    // A symlink to a directory inside the layer is not followed either.
    refused(
        Tar::new()
            .add(Member::dir(b"real/"))
            .add(Member::symlink(b"link", b"real"))
            .add(Member::file(b"link/x", b"x"))
            .finish(),
        "a path component is a symbolic link",
    );
    // A directory member below a symlink.
    refused(
        Tar::new()
            .add(Member::symlink(b"link", b"../outside"))
            .add(Member::dir(b"link/sub/"))
            .finish(),
        "a path component is a symbolic link",
    );
    // Whiteouts and opaque markers below a symlink.
    refused(
        Tar::new()
            .add(Member::symlink(b"link", b"../outside"))
            .add(Member::file(b"link/.wh.victim", b""))
            .finish(),
        "a path component is a symbolic link",
    );
    refused(
        Tar::new()
            .add(Member::symlink(b"link", b"../outside"))
            .add(Member::file(b"link/.wh..wh..opq", b""))
            .finish(),
        "a path component is a symbolic link",
    );
}

#[test]
fn a_symlink_planted_before_this_layer_is_not_followed() {
    // The destination already holds `etc -> ../outside` (an earlier layer unpacked into the
    // same directory, or a tampered store): the layer's `etc/victim` must not go through it.
    let tar = Tar::new()
        .add(Member::file(b"etc/victim", b"pwned"))
        .finish();
    refused_with(
        tar,
        "a path component is a symbolic link",
        &UnpackOptions::default(),
        |sb| {
            std::fs::create_dir(&sb.dest).unwrap();
            std::os::unix::fs::symlink("../outside", sb.dest.join("etc")).unwrap();
        },
    );
}

#[test]
fn a_directory_replaced_by_a_symlink_is_not_followed() {
    let tar = Tar::new()
        .add(Member::dir(b"d/"))
        .add(Member::symlink(b"d", b"../outside"))
        .add(Member::file(b"d/victim", b"pwned"))
        .finish();
    refused(tar, "a path component is a symbolic link");
}

#[test]
fn a_path_through_a_file_is_refused() {
    refused(
        Tar::new()
            .add(Member::file(b"f", b"x"))
            .add(Member::file(b"f/g", b"x"))
            .finish(),
        "a path component is not a directory",
    );
}

#[test]
fn hardlink_escapes_are_refused() {
    let sb = Sandbox::new();
    let abs = sb.outside.join("victim");
    refused(
        Tar::new()
            .add(Member::hardlink(b"hl", b"../outside/victim"))
            .finish(),
        "hard link target: `..` path component",
    );
    refused(
        Tar::new()
            .add(Member::hardlink(b"hl", abs.to_str().unwrap().as_bytes()))
            .finish(),
        "is not in this layer",
    );
    // Through a symlink in the layer.
    refused(
        Tar::new()
            .add(Member::symlink(b"out", b"../outside"))
            .add(Member::hardlink(b"hl", b"out/victim"))
            .finish(),
        "is not reachable inside this layer without a symbolic link",
    );
    // Through a symlink planted before this layer.
    refused_with(
        Tar::new()
            .add(Member::hardlink(b"hl", b"etc/victim"))
            .finish(),
        "is not reachable inside this layer without a symbolic link",
        &UnpackOptions::default(),
        |sb| {
            std::fs::create_dir(&sb.dest).unwrap();
            std::os::unix::fs::symlink(&sb.outside, sb.dest.join("etc")).unwrap();
        },
    );
    refused(
        Tar::new().add(Member::hardlink(b"hl", b"missing")).finish(),
        "is not in this layer",
    );
    refused(
        Tar::new()
            .add(Member::dir(b"d/"))
            .add(Member::hardlink(b"hl", b"d"))
            .finish(),
        "is a directory",
    );
    refused(
        Tar::new().add(Member::hardlink(b"hl", b"./")).finish(),
        "hard link to the layer root",
    );
}

#[test]
fn a_hardlink_to_a_symlink_links_the_symlink_not_its_target() {
    let sb = Sandbox::new();
    let victim = sb.outside.join("victim");
    let tar = Tar::new()
        .add(Member::symlink(b"s", victim.to_str().unwrap().as_bytes()))
        .add(Member::hardlink(b"h", b"s"))
        // Then overwrite both names with regular files: the old names are replaced, the
        // victim is not written through them.
        .add(Member::file(b"h", b"pwned"))
        .add(Member::file(b"s", b"pwned"))
        .finish();
    unpack(&tar[..], &sb.dest, &UnpackOptions::default()).unwrap();
    assert_eq!(std::fs::read(sb.dest.join("h")).unwrap(), b"pwned");
    sb.assert_outside_untouched();
}

#[test]
fn overwriting_a_hardlinked_file_does_not_change_the_other_name() {
    let sb = Sandbox::new();
    let tar = Tar::new()
        .add(Member::file(b"a", b"first"))
        .add(Member::hardlink(b"b", b"a"))
        .add(Member::file(b"b", b"second"))
        .finish();
    unpack(&tar[..], &sb.dest, &UnpackOptions::default()).unwrap();
    assert_eq!(std::fs::read(sb.dest.join("a")).unwrap(), b"first");
    assert_eq!(std::fs::read(sb.dest.join("b")).unwrap(), b"second");
}

#[test]
fn device_nodes_are_refused_unless_allowed() {
    if !require_root("device_nodes_are_refused_unless_allowed") {
        return;
    }
    let chr = || Member {
        dev: (1, 3),
        ..Member::new(b"null", CHR)
    };
    let blk = || Member {
        dev: (8, 0),
        ..Member::new(b"sda", BLK)
    };
    refused(Tar::new().add(chr()).finish(), "device node");
    refused(Tar::new().add(blk()).finish(), "device node");
    // A character device 0:0 is an overlay whiteout in disguise: refused the same.
    refused(
        Tar::new().add(Member::new(b"hide", CHR)).finish(),
        "device node",
    );

    let sb = Sandbox::new();
    let opts = UnpackOptions {
        allow_devices: true,
        ..Default::default()
    };
    let stats = unpack(
        &Tar::new().add(chr()).add(blk()).finish()[..],
        &sb.dest,
        &opts,
    )
    .unwrap();
    assert_eq!(stats.special, 2);
    use std::os::unix::fs::FileTypeExt;
    let md = std::fs::symlink_metadata(sb.dest.join("null")).unwrap();
    assert!(md.file_type().is_char_device());
    assert_eq!(
        std::os::unix::fs::MetadataExt::rdev(&md),
        rustix::fs::makedev(1, 3)
    );
    assert!(
        std::fs::symlink_metadata(sb.dest.join("sda"))
            .unwrap()
            .file_type()
            .is_block_device()
    );
    sb.assert_outside_untouched();
}

#[test]
fn invalid_whiteouts_are_refused() {
    refused(
        Tar::new().add(Member::file(b".wh.", b"")).finish(),
        "whiteout of an invalid name",
    );
    refused(
        Tar::new().add(Member::file(b"a/.wh..", b"")).finish(),
        "whiteout of an invalid name",
    );
    refused(
        Tar::new().add(Member::file(b".wh...", b"")).finish(),
        "whiteout of an invalid name",
    );
}

#[test]
fn pax_and_gnu_names_are_checked_like_plain_ones() {
    refused(
        Tar::new()
            .pax(&[("path", b"../outside/victim")])
            .add(Member::file(b"innocent", b"pwned"))
            .finish(),
        "`..` path component",
    );
    refused(
        Tar::new()
            .pax(&[("path", b"/../outside/victim")])
            .add(Member::file(b"innocent", b"pwned"))
            .finish(),
        "`..` path component",
    );
    refused(
        Tar::new()
            .pax(&[("path", b"a\0b")])
            .add(Member::file(b"innocent", b"x"))
            .finish(),
        "NUL byte in name",
    );
    refused(
        Tar::new()
            .pax(&[("linkpath", b"../outside/victim")])
            .add(Member::hardlink(b"hl", b"ok"))
            .finish(),
        "hard link target: `..` path component",
    );
    refused(
        Tar::new()
            .gnu_long(b'L', b"../../outside/victim")
            .add(Member::file(b"innocent", b"pwned"))
            .finish(),
        "`..` path component",
    );
    refused(
        Tar::new()
            .gnu_long(b'K', b"../outside/victim")
            .add(Member::hardlink(b"hl", b"ok"))
            .finish(),
        "hard link target: `..` path component",
    );
}

#[test]
fn extension_records_are_bounded_before_they_are_read() {
    // A GNU long name claiming 100 MiB: refused from its header, nothing allocated or read.
    let mut tar = Tar::new();
    let m = Member {
        size_override: Some(100 << 20),
        ..Member::new(b"././@LongLink", b'L')
    };
    tar.push(&m);
    refused(
        tar.finish(),
        "limit on bytes of one PAX or GNU long-name record",
    );
    let mut tar = Tar::new();
    let m = Member {
        size_override: Some(100 << 20),
        ..Member::new(b"././@PaxHeader", b'x')
    };
    tar.push(&m);
    refused(
        tar.finish(),
        "limit on bytes of one PAX or GNU long-name record",
    );
    // Two long names for one member, and a record describing nothing.
    refused(
        Tar::new()
            .gnu_long(b'L', b"a")
            .gnu_long(b'L', b"b")
            .add(Member::file(b"x", b""))
            .finish(),
        "two extension records of one kind",
    );
    refused(
        Tar::new()
            .add(Member::file(b"x", b""))
            .gnu_long(b'L', b"a")
            .finish(),
        "describe no member",
    );
}

#[test]
fn forged_overlay_xattrs_are_dropped() {
    if !require_root("forged_overlay_xattrs_are_dropped") {
        return;
    }
    let sb = Sandbox::new();
    let tar = Tar::new()
        .pax(&[
            ("SCHILY.xattr.trusted.overlay.redirect", b"/outside"),
            ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
            ("SCHILY.xattr.user.overlay.origin", b"x"),
            ("SCHILY.xattr.user.kept", b"yes"),
        ])
        .add(Member::dir(b"d/"))
        .finish();
    let stats = unpack(&tar[..], &sb.dest, &UnpackOptions::default()).unwrap();
    assert_eq!(stats.xattrs_dropped, 3);
    assert_eq!(
        xattrs(&sb.dest.join("d")),
        vec![("user.kept".to_string(), b"yes".to_vec())]
    );
}

#[test]
fn sparse_and_unknown_members_are_refused() {
    refused(
        Tar::new().add(Member::new(b"sparse", b'S')).finish(),
        "sparse files are not supported",
    );
    refused(
        Tar::new()
            .pax(&[("GNU.sparse.major", b"1")])
            .add(Member::file(b"sparse", b""))
            .finish(),
        "sparse files are not supported",
    );
    refused(
        Tar::new().add(Member::new(b"multi", b'M')).finish(),
        "unsupported tar entry type",
    );
}

#[test]
fn a_pax_size_that_disagrees_with_the_header_is_refused() {
    refused(
        Tar::new()
            .pax(&[("size", b"5")])
            .add(Member::file(b"f", b"12345678"))
            .finish(),
        "PAX size 5 differs from the header's size 8",
    );
}

#[test]
fn truncated_archives_are_refused() {
    let full = Tar::new().add(Member::file(b"f", &[7u8; 5000])).finish();
    refused(full[..2048].to_vec(), "archive ends inside the data");
    refused(full[..100].to_vec(), "failed to read the layer archive");
}

#[test]
fn a_corrupted_header_checksum_is_refused() {
    let mut tar = Tar::new().add(Member::file(b"f", b"x")).finish();
    tar[0] = b'g';
    refused(tar, "checksum");
}

#[test]
fn error_messages_quote_hostile_names() {
    let sb = Sandbox::new();
    let tar = Tar::new()
        .add(Member::file(b"\x1b[2J\nERROR forged/../x", b""))
        .finish();
    let err = unpack(&tar[..], &sb.dest, &UnpackOptions::default()).unwrap_err();
    let text = err.to_string();
    assert!(!text.contains('\n') && !text.contains('\x1b'), "{text:?}");
    assert!(text.contains("\\x1b[2J\\nERROR forged/../x"), "{text}");
}

#[test]
fn later_members_replace_earlier_ones_of_the_same_name() {
    let sb = Sandbox::new();
    let tar = Tar::new()
        .add(Member::dir(b"was-dir/"))
        .add(Member::file(b"was-dir", b"now a file"))
        .add(Member::file(b"was-file", b"x"))
        .add(Member::dir(b"was-file/"))
        .add(Member::file(b"was-file/inside", b"y"))
        .add(Member::file(b"was-link", b"z"))
        .add(Member::symlink(b"was-link", b"target"))
        .finish();
    unpack(&tar[..], &sb.dest, &UnpackOptions::default()).unwrap();
    assert_eq!(
        std::fs::read(sb.dest.join("was-dir")).unwrap(),
        b"now a file"
    );
    assert_eq!(
        std::fs::read(sb.dest.join("was-file/inside")).unwrap(),
        b"y"
    );
    assert_eq!(
        std::fs::read_link(sb.dest.join("was-link"))
            .unwrap()
            .to_str(),
        Some("target")
    );
    // A directory with contents is not replaced.
    refused(
        Tar::new()
            .add(Member::file(b"d/keep", b"k"))
            .add(Member::file(b"d", b"file"))
            .finish(),
        "replaces a non-empty directory",
    );
}
