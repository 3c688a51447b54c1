//! CopyFile against a shared directory the host prepared: planted symlinks, hard links and
//! mounts, as unit tests on real files (the mount test needs root, as the agent does).

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use super::*;

/// A fresh `shared` root and an `outside` directory next to it, holding `outside/secret`
/// (mode 0640, "original"); both removed when the returned scratch directory is dropped.
fn dirs(test: &str) -> (PathBuf, PathBuf, crate::scratch::Scratch) {
    let scratch = crate::scratch::Scratch::new("copy-file", test);
    let dir = scratch.path();
    let (root, outside) = (dir.join("shared"), dir.join("outside"));
    std::fs::create_dir_all(&root).expect("root");
    std::fs::create_dir_all(&outside).expect("outside");
    std::fs::write(outside.join("secret"), "original").expect("secret");
    std::fs::set_permissions(outside.join("secret"), PermissionsExt::from_mode(0o640))
        .expect("mode");
    std::fs::set_permissions(&outside, PermissionsExt::from_mode(0o750)).expect("mode");
    (root, outside, scratch)
}

fn request(path: &Path, data: &[u8], offset: i64, size: i64, mode: u32) -> CopyFileRequest {
    let mut r = CopyFileRequest::new();
    r.path = path.display().to_string();
    r.data = data.to_vec();
    r.offset = offset;
    r.file_size = size;
    r.file_mode = mode;
    r.dir_mode = 0o40_750;
    r.uid = -1;
    r.gid = -1;
    r
}

fn file(path: &Path, data: &[u8]) -> CopyFileRequest {
    let size = i64::try_from(data.len()).expect("size");
    request(path, data, 0, size, 0o100_644)
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .expect("meta")
        .permissions()
        .mode()
        & 0o7777
}

/// The outside directory and its file are as `dirs` made them.
fn assert_untouched(outside: &Path) {
    assert_eq!(
        std::fs::read_to_string(outside.join("secret")).expect("secret"),
        "original"
    );
    assert_eq!(mode(&outside.join("secret")), 0o640);
    assert_eq!(mode(outside), 0o750);
    let owner = std::fs::metadata(outside.join("secret")).expect("meta");
    assert_eq!(
        (owner.uid(), owner.gid()),
        (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw()
        )
    );
    let names: Vec<_> = std::fs::read_dir(outside)
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, vec![OsString::from("secret")], "nothing new outside");
}

#[test]
fn chunks_land_in_place_only_when_complete() {
    let (root, _, _scratch) = dirs("chunks");
    let files = CopyFiles::new(&root);
    let target = root.join("containers/c1-resolv.conf");
    files
        .copy(&request(&target, b"nameserver ", 0, 22, 0o100_644))
        .expect("first chunk");
    assert!(!target.exists(), "incomplete files are not visible");
    files
        .copy(&request(&target, b"10.96.0.10\n", 11, 22, 0o100_644))
        .expect("last chunk");
    assert_eq!(
        std::fs::read_to_string(&target).expect("file"),
        "nameserver 10.96.0.10\n"
    );
    assert_eq!(mode(&target), 0o644);
    assert_eq!(mode(&root.join("containers")), 0o750);
    let left: Vec<_> = std::fs::read_dir(root.join("containers"))
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        left,
        vec![OsString::from("c1-resolv.conf")],
        "no temporary file left"
    );
    // A chunk without its start is refused.
    let err = files
        .copy(&request(&target, b"x", 5, 6, 0o100_644))
        .expect_err("no upload");
    assert!(matches!(err, AgentError::FailedPrecondition(_)), "{err}");
}

#[test]
fn directories_and_symlinks() {
    let (root, _, _scratch) = dirs("dirs");
    let files = CopyFiles::new(&root);
    files
        .copy(&request(&root.join("d"), b"", 0, 0, 0o40_700))
        .expect("dir");
    files
        .copy(&request(&root.join("d/sub"), b"", 0, 0, 0o40_710))
        .expect("dir");
    assert!(root.join("d/sub").is_dir());
    assert_eq!(mode(&root.join("d/sub")), 0o710);
    files
        .copy(&request(
            &root.join("d/link"),
            b"..data/token",
            0,
            12,
            0o120_777,
        ))
        .expect("symlink");
    assert_eq!(
        std::fs::read_link(root.join("d/link")).expect("link"),
        Path::new("..data/token")
    );
    // Replacing a symlink replaces it.
    files
        .copy(&request(
            &root.join("d/link"),
            b"..2024/token",
            0,
            12,
            0o120_777,
        ))
        .expect("symlink again");
    assert_eq!(
        std::fs::read_link(root.join("d/link")).expect("link"),
        Path::new("..2024/token")
    );
}

#[test]
fn paths_outside_the_root_are_refused() {
    let (root, _, _scratch) = dirs("outside");
    let files = CopyFiles::new(&root);
    for bad in [
        "/etc/passwd",
        "relative/x",
        &format!("{}/../x", root.display()),
        &root.display().to_string(),
    ] {
        let r = request(Path::new(bad), b"x", 0, 1, 0o100_644);
        assert!(
            matches!(files.copy(&r), Err(AgentError::InvalidArgument(_))),
            "{bad}"
        );
    }
    let r = request(&root.join("fifo"), b"", 0, 0, 0o010_644);
    assert!(matches!(
        files.copy(&r),
        Err(AgentError::InvalidArgument(_))
    ));
}

#[test]
fn chunks_past_the_size_are_refused() {
    let (root, _, _scratch) = dirs("past");
    let files = CopyFiles::new(&root);
    let r = request(&root.join("f"), b"toolong", 0, 3, 0o100_644);
    assert!(matches!(
        files.copy(&r),
        Err(AgentError::InvalidArgument(_))
    ));
    let r = request(&root.join("f"), b"x", -1, 3, 0o100_644);
    assert!(matches!(
        files.copy(&r),
        Err(AgentError::InvalidArgument(_))
    ));
}

#[test]
fn a_directory_request_on_a_symlink_does_not_touch_its_target() {
    let (root, outside, _scratch) = dirs("dir-on-symlink");
    std::os::unix::fs::symlink(&outside, root.join("d")).expect("plant");
    let mut r = request(&root.join("d"), b"", 0, 0, 0o40_777);
    r.uid = 4242;
    r.gid = 4242;
    CopyFiles::new(&root)
        .copy(&r)
        .expect("a directory replaces the symlink");
    assert_untouched(&outside);
    let made = std::fs::symlink_metadata(root.join("d")).expect("meta");
    assert!(made.is_dir());
    assert_eq!(
        (made.uid(), made.gid(), mode(&root.join("d"))),
        (4242, 4242, 0o777)
    );
}

#[test]
fn a_file_over_a_symlink_replaces_the_link_not_its_target() {
    let (root, outside, _scratch) = dirs("file-on-symlink");
    std::os::unix::fs::symlink(outside.join("secret"), root.join("f")).expect("plant");
    let mut r = file(&root.join("f"), b"planted?");
    r.file_mode = 0o100_666;
    r.uid = 4242;
    CopyFiles::new(&root).copy(&r).expect("copied");
    assert_untouched(&outside);
    assert!(
        std::fs::symlink_metadata(root.join("f"))
            .expect("meta")
            .is_file()
    );
    assert_eq!(
        std::fs::read_to_string(root.join("f")).expect("f"),
        "planted?"
    );
}

#[test]
fn a_planted_part_symlink_is_not_written_through() {
    let (root, outside, _scratch) = dirs("part-symlink");
    let files = CopyFiles::new(&root);
    std::os::unix::fs::symlink(outside.join("secret"), root.join("f.part")).expect("plant");
    std::os::unix::fs::symlink(outside.join("secret"), root.join(".f.part")).expect("plant");
    files
        .copy(&request(&root.join("f"), b"over", 0, 8, 0o100_644))
        .expect("first chunk");
    files
        .copy(&request(&root.join("f"), b"ride", 4, 8, 0o100_644))
        .expect("last chunk");
    assert_untouched(&outside);
    assert_eq!(
        std::fs::read_to_string(root.join("f")).expect("f"),
        "override"
    );
}

#[test]
fn a_symlinked_directory_on_the_way_is_refused() {
    let (root, outside, _scratch) = dirs("symlinked-dir");
    let files = CopyFiles::new(&root);
    std::os::unix::fs::symlink(&outside, root.join("sub")).expect("plant");
    for r in [
        file(&root.join("sub/x"), b"x"),
        file(&root.join("sub/secret"), b"x"),
        request(&root.join("sub/d"), b"", 0, 0, 0o40_777),
        request(&root.join("sub/l"), b"target", 0, 6, 0o120_777),
    ] {
        let err = files.copy(&r).expect_err("through a symlink");
        assert!(
            err.to_string().contains("does not follow symlinks"),
            "{err}"
        );
    }
    // Absolute symlinks deeper down too.
    std::fs::create_dir_all(root.join("a")).expect("a");
    std::os::unix::fs::symlink("/", root.join("a/b")).expect("plant");
    assert!(files.copy(&file(&root.join("a/b/tmp/x"), b"x")).is_err());
    assert_untouched(&outside);
}

#[test]
fn mounts_below_the_root_are_not_entered() {
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    let (root, _, _scratch) = dirs("mounts");
    let mounted = root.join("c1/rootfs");
    std::fs::create_dir_all(&mounted).expect("mount point");
    mount(
        Some("tmpfs"),
        &mounted,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("size=64k"),
    )
    .expect("tmpfs (the tests run as root)");
    let files = CopyFiles::new(&root);
    let results = [
        files.copy(&file(
            &root.join("c1/rootfs/passwd"),
            b"root::0:0::/:/bin/sh",
        )),
        files.copy(&request(&root.join("c1/rootfs/etc"), b"", 0, 0, 0o40_777)),
        files.copy(&request(&root.join("c1/rootfs"), b"", 0, 0, 0o40_777)),
    ];
    let left = std::fs::read_dir(&mounted).expect("list").count();
    umount2(&mounted, MntFlags::MNT_DETACH).expect("umount");
    for result in results {
        let err = result.expect_err("into a mount");
        assert!(err.to_string().contains("enter mounts"), "{err}");
    }
    assert_eq!(left, 0, "nothing written in the mounted file system");
}

#[test]
fn a_hard_link_is_replaced_not_written_through() {
    let (root, outside, _scratch) = dirs("hardlink");
    let files = CopyFiles::new(&root);
    std::fs::hard_link(outside.join("secret"), root.join("h")).expect("plant");
    std::fs::hard_link(outside.join("secret"), root.join("d")).expect("plant");
    std::fs::hard_link(outside.join("secret"), root.join("l")).expect("plant");
    let mut r = file(&root.join("h"), b"changed!");
    r.file_mode = 0o100_666;
    r.uid = 4242;
    files.copy(&r).expect("file");
    let mut r = request(&root.join("d"), b"", 0, 0, 0o40_777);
    r.uid = 4242;
    files.copy(&r).expect("dir");
    files
        .copy(&request(&root.join("l"), b"elsewhere", 0, 9, 0o120_777))
        .expect("symlink");
    assert_untouched(&outside);
    assert_eq!(
        std::fs::metadata(outside.join("secret"))
            .expect("meta")
            .nlink(),
        1
    );
    assert_eq!(
        std::fs::read_to_string(root.join("h")).expect("h"),
        "changed!"
    );
}

#[test]
fn uploads_in_progress_are_bounded() {
    let (root, _, _scratch) = dirs("bounded");
    let files = CopyFiles::new(&root);
    for i in 0..MAX_UPLOADS + 3 {
        files
            .copy(&request(&root.join(format!("f{i}")), b"x", 0, 2, 0o100_644))
            .expect("chunk");
    }
    let temps = std::fs::read_dir(&root).expect("list").count();
    assert_eq!(
        temps, MAX_UPLOADS,
        "the oldest uploads' temporary files are removed"
    );
    let err = files
        .copy(&request(&root.join("f0"), b"y", 1, 2, 0o100_644))
        .expect_err("dropped");
    assert!(matches!(err, AgentError::FailedPrecondition(_)), "{err}");
    files
        .copy(&request(
            &root.join(format!("f{}", MAX_UPLOADS + 2)),
            b"y",
            1,
            2,
            0o100_644,
        ))
        .expect("the newest is kept");
}

#[test]
fn contained_symlink_targets() {
    for good in ["..data/token", "..data", "a/b", "./x", "x..y"] {
        assert!(is_contained_symlink_target(good), "{good}");
    }
    for bad in ["/etc/shadow", "../x", "a/../../x", "..", "a/..", ""] {
        assert!(!is_contained_symlink_target(bad), "{bad}");
    }
}

/// Two first chunks for one path that race (the host sends them at once; each handler finds no
/// upload in progress and starts one): the upload that is replaced leaves no temporary file.
#[test]
fn a_replaced_upload_leaves_no_temporary_file() {
    let (root, _, _scratch) = dirs("replaced");
    let files = CopyFiles::new(&root);
    let path = root.join("f");
    let dir = files
        .open_parent(Path::new(""), &request(&path, b"", 0, 2, 0o100_644))
        .expect("root");
    for _ in 0..2 {
        let dir = dir.try_clone().expect("dir");
        let (temp, file) = create_temp(&dir, OsStr::new("f"), &path).expect("temp");
        let upload = Upload {
            dir,
            temp,
            file,
            size: 2,
            started: 0,
        };
        files.keep_upload(&path, upload);
    }
    let temps = std::fs::read_dir(&root).expect("list").count();
    assert_eq!(temps, 1, "only the upload kept has a temporary file");
}
