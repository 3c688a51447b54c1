//! The charge hook: what each member costs the filesystem (blocks, inodes, xattr bytes) is
//! reported before the member is written, and a refusal stops the unpack there.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use peerpod_image_layer::{Charge, ChargeHook, LayerError, UnpackOptions, unpack};

fn block(path: &std::path::Path) -> u64 {
    rustix::fs::statvfs(path).unwrap().f_bsize
}

#[test]
fn members_are_charged_blocks_inodes_and_xattr_bytes() {
    let sb = Sandbox::new();
    std::fs::create_dir(&sb.dest).unwrap();
    let b = block(&sb.dest);
    let seen: Arc<Mutex<Vec<Charge>>> = Arc::default();
    let log = seen.clone();
    let opts = UnpackOptions {
        charge: Some(ChargeHook::new(move |c| {
            log.lock().unwrap().push(c);
            Ok(())
        })),
        ..Default::default()
    };
    let big = vec![7u8; 4097];
    let tar = Tar::new()
        .add(Member::dir(b"d/"))
        .add(Member::file(b"d/one", b"x"))
        .add(Member::file(b"d/big", &big))
        .add(Member::symlink(b"d/link", b"one"))
        .add(Member::hardlink(b"d/hard", b"d/one"))
        .pax(&[("SCHILY.xattr.user.note", &[b'v'; 100])])
        .add(Member::file(b"d/empty", b""))
        .add(Member::file(b"d/.wh.gone", b""))
        .finish();
    unpack(&tar[..], &sb.dest, &opts).unwrap();
    let seen = seen.lock().unwrap().clone();
    let c = |bytes, inodes| Charge { bytes, inodes };
    assert_eq!(
        seen,
        vec![
            c(b, 1),
            c(2 * b, 1),
            c(4097u64.div_ceil(b) * b + b, 1),
            c(b, 1),
            c(b, 0),
            c(b + "user.note".len() as u64 + 100, 1),
            c(b, 1),
        ]
    );
}

/// An attacker's layer of many empty files: the hook refuses at its inode budget, before the
/// refused member is made, and the error carries the hook's reason.
#[test]
fn a_refusal_stops_the_unpack_before_the_member_is_written() {
    let sb = Sandbox::new();
    let names: Vec<Vec<u8>> = (0..1000).map(|i| format!("f{i}").into_bytes()).collect();
    let mut tar = Tar::new();
    for n in &names {
        tar.push(&Member::file(n, b""));
    }
    let tar = tar.finish();
    let used = Arc::new(Mutex::new(0u64));
    let counter = used.clone();
    let opts = UnpackOptions {
        charge: Some(ChargeHook::new(move |c| {
            let mut used = counter.lock().unwrap();
            if *used + c.inodes > 100 {
                return Err("over the test's 100 inodes".into());
            }
            *used += c.inodes;
            Ok(())
        })),
        ..Default::default()
    };
    let e = unpack(&tar[..], &sb.dest, &opts).unwrap_err();
    assert!(matches!(e, LayerError::Charge { .. }), "{e}");
    assert!(e.to_string().contains("over the test's 100 inodes"), "{e}");
    assert!(e.to_string().contains("f100"), "{e}");
    assert_eq!(std::fs::read_dir(&sb.dest).unwrap().count(), 100);
    assert!(!sb.dest.join("f100").exists());
    sb.assert_outside_untouched();
}
