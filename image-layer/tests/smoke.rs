//! A first end-to-end unpack.
#![allow(clippy::unwrap_used)]
mod common;
use common::*;

#[test]
fn unpacks_a_simple_layer() {
    let sb = Sandbox::new();
    let tar = Tar::new()
        .add(Member::dir(b"etc/"))
        .add(Member::file(b"etc/hostname", b"pod\n"))
        .add(Member::symlink(b"etc/alias", b"hostname"))
        .add(Member::hardlink(b"etc/hard", b"etc/hostname"))
        .add(Member::file(b"deep/er/file", b"x"))
        .finish();
    let stats = peerpod_image_layer::unpack(&tar[..], &sb.dest, &Default::default()).unwrap();
    assert_eq!(stats.files, 2);
    assert_eq!(stats.hardlinks, 1);
    assert_eq!(stats.implicit_dirs, 2, "deep/ and deep/er/");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(sb.dest.join("deep/er"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o755
    );
    assert_eq!(std::fs::read(sb.dest.join("etc/hard")).unwrap(), b"pod\n");
    assert_eq!(
        std::fs::read_link(sb.dest.join("etc/alias"))
            .unwrap()
            .to_str(),
        Some("hostname")
    );
    assert_eq!(std::fs::read(sb.dest.join("deep/er/file")).unwrap(), b"x");
    sb.assert_outside_untouched();
}
