//! The layer store: atomic, deduplicated installs, overlay root filesystems over several layers
//! (whiteouts and opaque directories seen through a real overlay mount), references and GC.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::*;
use peerpod_image_layer::{LayerError, LayerStore, UnpackOptions};
use sha2::{Digest, Sha256};

fn diff_id(tar: &[u8]) -> String {
    let d = Sha256::digest(tar);
    format!(
        "sha256:{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn install_is_atomic_and_checks_the_diff_id() {
    let tmp = tempfile::tempdir().unwrap();
    let store = LayerStore::open(tmp.path()).unwrap();
    let tar = Tar::new()
        .add(Member::file(b"etc/os-release", b"ID=test\n"))
        .finish();
    let id = diff_id(&tar);
    assert!(!store.contains(&id));
    let stats = store
        .install(&id, &tar[..], &UnpackOptions::default())
        .unwrap();
    assert_eq!(stats.files, 1);
    assert!(store.contains(&id));
    let dir = store.layer_dir(&id).unwrap();
    assert_eq!(
        std::fs::read(dir.join("etc/os-release")).unwrap(),
        b"ID=test\n"
    );
    // Installed already: the stream is not read again.
    let again = store
        .install(&id, std::io::empty(), &UnpackOptions::default())
        .unwrap();
    assert_eq!(again.entries, 0);

    for bad in ["sha256:../../etc", "sha256:ABC", "", "md5:00"] {
        assert!(!store.contains(bad));
        let err = store
            .install(bad, &tar[..], &UnpackOptions::default())
            .unwrap_err();
        assert!(matches!(err, LayerError::InvalidDiffId(_)), "{err:?}");
    }
    assert!(names(&tmp.path().join("layers/.tmp")).is_empty());
    assert!(LayerStore::open(Path::new("relative/dir")).is_err());
    assert!(LayerStore::open(Path::new("/tmp/a,b")).is_err());
}

#[test]
fn a_failed_install_leaves_nothing_behind() {
    struct FailsAtEof(std::io::Cursor<Vec<u8>>);
    impl std::io::Read for FailsAtEof {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match self.0.read(buf)? {
                0 => Err(std::io::Error::other("digest mismatch")),
                n => Ok(n),
            }
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = LayerStore::open(tmp.path()).unwrap();
    let tar = Tar::new()
        .add(Member::file(b"a", b"x"))
        .add(Member::file(b"b/c", b"y"))
        .finish();
    let id = diff_id(&tar);
    // The whole archive unpacks, then the reader fails at EOF: the layer must not appear.
    let err = store
        .install(
            &id,
            FailsAtEof(std::io::Cursor::new(tar.clone())),
            &UnpackOptions::default(),
        )
        .unwrap_err();
    assert!(matches!(err, LayerError::Archive { .. }), "{err:?}");
    assert!(!store.contains(&id));
    // A hostile layer half-way.
    let hostile = Tar::new()
        .add(Member::file(b"ok", b"x"))
        .add(Member::file(b"../escape", b"x"))
        .finish();
    assert!(
        store
            .install(&diff_id(&hostile), &hostile[..], &UnpackOptions::default())
            .is_err()
    );
    assert!(names(&tmp.path().join("layers/.tmp")).is_empty());
    assert!(names(&tmp.path().join("layers/sha256")).is_empty());
    assert!(!tmp.path().join("escape").exists() && !tmp.path().join("layers/escape").exists());
}

#[test]
fn concurrent_installs_of_one_layer_keep_one_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let store = LayerStore::open(tmp.path()).unwrap();
    let mut tar = Tar::new();
    for i in 0..300 {
        let name = format!("dir{}/file{i}", i % 7);
        tar.push(&Member::file(name.as_bytes(), &[i as u8; 3000]));
    }
    let tar = tar.finish();
    let id = diff_id(&tar);
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| store.install(&id, &tar[..], &UnpackOptions::default())))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &results {
        r.as_ref().unwrap();
    }
    assert_eq!(names(&tmp.path().join("layers/sha256")).len(), 1);
    assert!(names(&tmp.path().join("layers/.tmp")).is_empty());
    let dir = store.layer_dir(&id).unwrap();
    assert_eq!(
        std::fs::read(dir.join("dir3/file10")).unwrap(),
        vec![10u8; 3000]
    );
}

#[test]
fn open_removes_staging_left_by_a_dead_process() {
    let tmp = tempfile::tempdir().unwrap();
    drop(LayerStore::open(tmp.path()).unwrap());
    // pid 0 is never a live process.
    let stale = tmp.path().join("layers/.tmp/sha256-abc.0.0");
    std::fs::create_dir_all(stale.join("sub")).unwrap();
    drop(LayerStore::open(tmp.path()).unwrap());
    assert!(!stale.exists());
}

/// Three layers: whiteouts, an opaque directory and a re-added file, seen through overlayfs.
#[test]
fn overlay_rootfs_applies_whiteouts_and_opaque_dirs_then_gc_after_unmount() {
    if !require_root("overlay_rootfs_applies_whiteouts_and_opaque_dirs_then_gc_after_unmount") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = LayerStore::open(&tmp.path().join("work")).unwrap();
    let base = Tar::new()
        .add(Member::dir(b"a/"))
        .add(Member::file(b"a/keep", b"keep"))
        .add(Member::file(b"a/gone", b"gone"))
        .add(Member::dir(b"b/"))
        .add(Member::file(b"b/old1", b"old"))
        .add(Member::dir(b"b/olddir/"))
        .add(Member::file(b"b/olddir/x", b"x"))
        .add(Member::file(b"top", b"v1"))
        .add(Member::file(b"dirgone/x", b"x"))
        .finish();
    let delete = Tar::new()
        .add(Member::file(b"a/.wh.gone", b""))
        .add(Member::file(b"b/.wh..wh..opq", b""))
        .add(Member::file(b"b/new", b"new"))
        .add(Member::file(b".wh.top", b""))
        .add(Member::file(b".wh.dirgone", b""))
        .finish();
    let readd = Tar::new().add(Member::file(b"top", b"v3")).finish();
    let ids: Vec<String> = [&base, &delete, &readd]
        .iter()
        .map(|t| diff_id(t))
        .collect();
    for (id, tar) in ids.iter().zip([&base, &delete, &readd]) {
        store
            .install(id, &tar[..], &UnpackOptions::default())
            .unwrap();
    }
    let bundle = tmp.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    let rootfs = store.mount_rootfs(&ids, &bundle).unwrap();
    assert_eq!(rootfs, bundle.join("rootfs"));

    assert_eq!(names(&rootfs), vec!["a", "b", "top"]);
    assert_eq!(names(&rootfs.join("a")), vec!["keep"]);
    assert_eq!(
        names(&rootfs.join("b")),
        vec!["new"],
        "opaque directory hides the lower b/"
    );
    assert_eq!(std::fs::read(rootfs.join("top")).unwrap(), b"v3");

    // Writes go to this bundle's upper directory, never into a shared layer.
    std::fs::write(rootfs.join("a/keep"), b"changed").unwrap();
    std::fs::write(rootfs.join("created"), b"c").unwrap();
    assert_eq!(
        std::fs::read(store.layer_dir(&ids[0]).unwrap().join("a/keep")).unwrap(),
        b"keep"
    );
    assert!(!store.layer_dir(&ids[2]).unwrap().join("created").exists());

    // Mounted twice, or with a layer not installed: refused.
    assert!(matches!(
        store.mount_rootfs(&ids, &bundle),
        Err(LayerError::AlreadyMounted(_))
    ));
    let missing = format!("sha256:{}", "0".repeat(64));
    let other = tmp.path().join("other");
    assert!(matches!(
        store.mount_rootfs(std::slice::from_ref(&missing), &other),
        Err(LayerError::NotInstalled(_))
    ));
    assert!(matches!(
        store.mount_rootfs(&[], &other),
        Err(LayerError::InvalidArgument(_))
    ));

    // A second bundle shares the base layer only.
    let bundle2 = tmp.path().join("bundle2");
    std::fs::create_dir(&bundle2).unwrap();
    let rootfs2 = store.mount_rootfs(&ids[..1], &bundle2).unwrap();
    assert_eq!(std::fs::read(rootfs2.join("top")).unwrap(), b"v1");
    assert_eq!(std::fs::read(rootfs2.join("a/keep")).unwrap(), b"keep");

    // In use: nothing collected.
    assert_eq!(store.gc().unwrap().removed, 0);
    store.unmount_rootfs(&bundle).unwrap();
    assert!(!rootfs.exists(), "mount point removed");
    let gc = store.gc().unwrap();
    assert_eq!((gc.removed, gc.kept), (2, 1));
    assert!(store.contains(&ids[0]) && !store.contains(&ids[1]) && !store.contains(&ids[2]));
    // Unmounting again is fine.
    store.unmount_rootfs(&bundle).unwrap();
    store.unmount_rootfs(&bundle2).unwrap();
    assert_eq!(store.gc().unwrap().removed, 1);
    assert!(names(&tmp.path().join("work/layers/sha256")).is_empty());
    assert!(names(&tmp.path().join("work/overlay")).is_empty());
    assert!(names(&tmp.path().join("work/layers/.tmp")).is_empty());
}

#[test]
fn gc_keeps_freshly_installed_layers_until_mounted_and_fails_closed_on_garbled_refs() {
    let tmp = tempfile::tempdir().unwrap();
    let store = LayerStore::open(tmp.path()).unwrap();
    let tar = Tar::new().add(Member::file(b"f", b"x")).finish();
    let id = diff_id(&tar);
    store
        .install(&id, &tar[..], &UnpackOptions::default())
        .unwrap();
    // An image pull installs, then mounts: GC in between must not take the layer.
    let gc = store.gc().unwrap();
    assert_eq!((gc.removed, gc.kept), (0, 1));
    // Another store (another process, after a restart) does not know it is fresh: collected.
    let later = LayerStore::open(tmp.path()).unwrap();
    let restarted = LayerStore::open(tmp.path()).unwrap();
    // Installing a layer already there (another image's pull) protects it the same way.
    assert_eq!(
        restarted
            .install(&id, std::io::empty(), &UnpackOptions::default())
            .unwrap()
            .entries,
        0
    );
    assert_eq!(restarted.gc().unwrap().removed, 0);
    assert_eq!(later.gc().unwrap().removed, 1);
    assert!(!store.contains(&id));

    // A references file that is not diff IDs: GC refuses rather than guess.
    std::fs::create_dir_all(tmp.path().join("overlay/x")).unwrap();
    std::fs::write(tmp.path().join("overlay/x/layers"), b"garbage\n").unwrap();
    assert!(matches!(store.gc(), Err(LayerError::InvalidDiffId(_))));
}

/// More layers than one page of `lowerdir=` holds: mounted layer by layer (`lowerdir+`).
#[test]
fn an_image_with_many_layers_mounts_in_order() {
    if !require_root("an_image_with_many_layers_mounts_in_order") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = LayerStore::open(&tmp.path().join("work")).unwrap();
    let mut ids = Vec::new();
    for i in 0..80u32 {
        let own = format!("layer{i}");
        let top = i.to_string();
        let tar = Tar::new()
            .add(Member::file(own.as_bytes(), b"x"))
            .add(Member::file(b"top", top.as_bytes()))
            .finish();
        let id = diff_id(&tar);
        store
            .install(&id, &tar[..], &UnpackOptions::default())
            .unwrap();
        ids.push(id);
    }
    let bundle = tmp.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    let rootfs = store.mount_rootfs(&ids, &bundle).unwrap();
    let seen = names(&rootfs);
    store.unmount_rootfs(&bundle).unwrap();
    let contents_after = names(&tmp.path().join("work/overlay"));
    assert_eq!(seen.len(), 81, "{seen:?}");
    assert!(contents_after.is_empty());
    // Mount again to read the topmost `top` (the last layer given wins).
    let rootfs = store.mount_rootfs(&ids, &bundle).unwrap();
    let top = std::fs::read(rootfs.join("top")).unwrap();
    store.unmount_rootfs(&bundle).unwrap();
    assert_eq!(top, b"79");
}

/// Makes every bundle state look older than `REAP_GRACE` (as if mounted a minute ago).
fn backdate_states(work: &Path) {
    let then = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    for entry in std::fs::read_dir(work.join("overlay")).unwrap() {
        let dir = std::fs::File::open(entry.unwrap().path()).unwrap();
        dir.set_modified(then).unwrap();
    }
}

/// `umount <path>` as the kata-agent does on container removal (not through the store).
fn plain_umount(test: &str, path: &Path) -> bool {
    let Some(umount) = require_tool(test, "umount") else {
        return false;
    };
    let status = std::process::Command::new(umount)
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "umount {}", path.display());
    true
}

fn one_layer(store: &LayerStore, name: &[u8]) -> String {
    let tar = Tar::new().add(Member::file(name, b"x")).finish();
    let id = diff_id(&tar);
    store
        .install(&id, &tar[..], &UnpackOptions::default())
        .unwrap();
    id
}

/// The agent unmounts the rootfs itself: reaping sees the mount gone, drops the references,
/// and GC then deletes the layers only that bundle used. A still-mounted bundle and its layers
/// stay, and so does a bundle mounted moments ago (REAP_GRACE).
#[test]
fn reap_drops_bundles_unmounted_elsewhere_then_gc_removes_their_layers() {
    let test = "reap_drops_bundles_unmounted_elsewhere_then_gc_removes_their_layers";
    if !require_root(test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    let store = LayerStore::open(&work).unwrap();
    let shared = one_layer(&store, b"shared");
    let only_a = one_layer(&store, b"only-a");
    let only_b = one_layer(&store, b"only-b");
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(&b).unwrap();
    store
        .mount_rootfs(&[shared.clone(), only_a.clone()], &a)
        .unwrap();
    store
        .mount_rootfs(&[shared.clone(), only_b.clone()], &b)
        .unwrap();
    std::fs::write(a.join("rootfs/written"), b"by the container").unwrap();
    if !plain_umount(test, &a.join("rootfs")) {
        store.unmount_rootfs(&a).unwrap();
        store.unmount_rootfs(&b).unwrap();
        return;
    }
    // Unmounted, but mounted moments ago: left alone.
    assert_eq!(store.reap_unmounted().unwrap(), 0);
    assert_eq!(names(&work.join("overlay")).len(), 2);

    backdate_states(&work);
    assert_eq!(store.reap_unmounted().unwrap(), 1);
    assert_eq!(names(&work.join("overlay")).len(), 1, "b's state stays");
    let gc = store.gc().unwrap();
    assert_eq!((gc.removed, gc.kept), (1, 2));
    assert!(!store.contains(&only_a));
    assert!(store.contains(&shared) && store.contains(&only_b));
    // b is still mounted and still works; reaping again changes nothing.
    assert_eq!(std::fs::read(b.join("rootfs/only-b")).unwrap(), b"x");
    assert_eq!(store.reap_unmounted().unwrap(), 0);
    // a can be mounted again once its layer is back (a re-pull).
    let only_a = one_layer(&store, b"only-a");
    let rootfs = store
        .mount_rootfs(&[shared.clone(), only_a.clone()], &a)
        .unwrap();
    assert!(
        !rootfs.join("written").exists(),
        "a fresh upper directory, not the old one"
    );
    store.unmount_rootfs(&a).unwrap();
    store.unmount_rootfs(&b).unwrap();
    assert_eq!(store.gc().unwrap().removed, 3);
}

/// Bundle paths with the characters mountinfo escapes (space, tab, newline, backslash) are
/// matched after decoding: mounted ones kept, unmounted ones dropped.
#[test]
fn reap_decodes_mountinfo_escapes_in_bundle_paths() {
    let test = "reap_decodes_mountinfo_escapes_in_bundle_paths";
    if !require_root(test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    let store = LayerStore::open(&work).unwrap();
    let id = one_layer(&store, b"f");
    let odd = [
        tmp.path().join("with space"),
        tmp.path().join("new\nline"),
        tmp.path().join("tab\tand\\back"),
    ];
    for bundle in &odd {
        std::fs::create_dir(bundle).unwrap();
        store
            .mount_rootfs(std::slice::from_ref(&id), bundle)
            .unwrap();
    }
    backdate_states(&work);
    assert_eq!(store.reap_unmounted().unwrap(), 0, "all still mounted");
    if !plain_umount(test, &odd[1].join("rootfs")) {
        for bundle in &odd {
            store.unmount_rootfs(bundle).unwrap();
        }
        return;
    }
    assert_eq!(store.reap_unmounted().unwrap(), 1);
    assert_eq!(names(&work.join("overlay")).len(), 2);
    for bundle in [&odd[0], &odd[2]] {
        assert_eq!(std::fs::read(bundle.join("rootfs/f")).unwrap(), b"x");
        assert!(plain_umount(test, &bundle.join("rootfs")));
    }
    assert_eq!(store.reap_unmounted().unwrap(), 2);
    assert!(names(&work.join("overlay")).is_empty());
    assert_eq!(store.gc().unwrap().removed, 1);
}

/// A bundle whose mount point went away with its directory (the agent removed the bundle) is
/// dropped; a state left by a mount that crashed before recording its bundle is dropped too; a
/// state that names another bundle is left alone.
#[test]
fn reap_drops_removed_bundles_and_crashed_mounts_but_not_foreign_states() {
    let test = "reap_drops_removed_bundles_and_crashed_mounts_but_not_foreign_states";
    if !require_root(test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    let store = LayerStore::open(&work).unwrap();
    let id = one_layer(&store, b"f");
    let bundle = tmp.path().join("gone");
    std::fs::create_dir(&bundle).unwrap();
    store
        .mount_rootfs(std::slice::from_ref(&id), &bundle)
        .unwrap();
    if !plain_umount(test, &bundle.join("rootfs")) {
        store.unmount_rootfs(&bundle).unwrap();
        return;
    }
    std::fs::remove_dir_all(&bundle).unwrap();
    // A crashed mount: references written, bundle never recorded.
    let crashed = work.join("overlay").join("c".repeat(64));
    std::fs::create_dir(&crashed).unwrap();
    std::fs::write(crashed.join("layers"), format!("{id}\n")).unwrap();
    // A state whose record names a bundle that does not hash to it.
    let foreign = work.join("overlay").join("f".repeat(64));
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("layers"), format!("{id}\n")).unwrap();
    std::fs::write(foreign.join("bundle"), b"/nowhere").unwrap();
    backdate_states(&work);
    assert_eq!(store.reap_unmounted().unwrap(), 2);
    assert_eq!(names(&work.join("overlay")), vec!["f".repeat(64)]);
    assert_eq!(
        store.gc().unwrap().removed,
        0,
        "still referenced by the foreign state"
    );
}

/// One bundle state that cannot be removed (a filesystem is mounted inside its upper
/// directory) does not stop the reap: the other bundles are dropped, the stuck one loses its
/// layer references (so GC collects its layers), nothing is deleted inside the foreign mount,
/// and the next reap finishes the job once the mount is gone.
#[test]
fn reap_goes_on_past_a_state_it_cannot_remove() {
    let test = "reap_goes_on_past_a_state_it_cannot_remove";
    if !require_root(test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    let store = LayerStore::open(&work).unwrap();
    let ids: Vec<String> = (0..3)
        .map(|i| one_layer(&store, format!("layer-{i}").as_bytes()))
        .collect();
    let bundles: Vec<PathBuf> = (0..3).map(|i| tmp.path().join(format!("b{i}"))).collect();
    for (id, bundle) in ids.iter().zip(&bundles) {
        std::fs::create_dir(bundle).unwrap();
        let rootfs = store
            .mount_rootfs(std::slice::from_ref(id), bundle)
            .unwrap();
        std::fs::create_dir(rootfs.join("mnt")).unwrap();
    }
    // The middle bundle's upper directory gets a filesystem mounted in it.
    let stuck_state = std::fs::read_dir(work.join("overlay"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|state| {
            std::fs::read(state.join("bundle")).unwrap()
                == bundles[1].as_os_str().as_encoded_bytes()
        })
        .unwrap();
    for bundle in &bundles {
        assert!(plain_umount(test, &bundle.join("rootfs")));
    }
    let inner = stuck_state.join("upper/mnt");
    rustix::mount::mount(
        "tmpfs",
        &inner,
        "tmpfs",
        rustix::mount::MountFlags::empty(),
        None,
    )
    .unwrap();
    std::fs::write(inner.join("precious"), b"not ours").unwrap();
    backdate_states(&work);

    assert_eq!(store.reap_unmounted().unwrap(), 2, "the two others");
    assert_eq!(names(&work.join("overlay")).len(), 1);
    assert!(
        !stuck_state.join("layers").exists(),
        "references dropped first"
    );
    assert_eq!(std::fs::read(inner.join("precious")).unwrap(), b"not ours");
    let gc = store.gc().unwrap();
    assert_eq!(
        (gc.removed, gc.kept),
        (3, 0),
        "the stuck bundle's layer too"
    );

    rustix::mount::unmount(&inner, rustix::mount::UnmountFlags::empty()).unwrap();
    // The partial removal touched the state: it is retried once it has settled again.
    backdate_states(&work);
    assert_eq!(store.reap_unmounted().unwrap(), 1);
    assert!(names(&work.join("overlay")).is_empty());
}

/// The bundle is the caller's (the CDH's PullImage contract: made by the client, initially
/// empty): a bundle that is gone (the agent removed it after its pull timed out) is refused and
/// not made again, nor is a symbolic link followed, nor a non-empty or non-directory `rootfs`
/// mounted over; nothing of the refused mounts is left in the store. An empty `rootfs` the
/// caller made is used.
#[test]
fn a_removed_or_symlinked_bundle_is_refused_and_not_recreated() {
    if !require_root("a_removed_or_symlinked_bundle_is_refused_and_not_recreated") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    let store = LayerStore::open(&work).unwrap();
    let id = one_layer(&store, b"f");
    let ids = std::slice::from_ref(&id);
    let refused = |bundle: &Path, what: &str| {
        let err = store.mount_rootfs(ids, bundle).unwrap_err();
        assert!(
            matches!(err, LayerError::InvalidArgument(_)),
            "{what}: {err}"
        );
        err.to_string()
    };

    // Gone: neither the bundle nor its rootfs is made.
    let gone = tmp.path().join("removed-by-the-agent");
    let text = refused(&gone, "gone");
    assert!(text.contains("does not exist"), "{text}");
    assert!(!gone.exists(), "the removed bundle was made again");

    // A symbolic link to a directory elsewhere: nothing is made through it.
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    let text = refused(&link, "symlink");
    assert!(text.contains("symbolic link"), "{text}");
    assert!(names(&elsewhere).is_empty(), "written through the link");

    // A regular file as the bundle.
    let file = tmp.path().join("file");
    std::fs::write(&file, b"").unwrap();
    refused(&file, "file");

    // rootfs a symbolic link, a file, a non-empty directory: refused, left as found.
    let bundle = tmp.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    std::os::unix::fs::symlink(&elsewhere, bundle.join("rootfs")).unwrap();
    refused(&bundle, "rootfs symlink");
    assert!(names(&elsewhere).is_empty());
    assert!(
        std::fs::symlink_metadata(bundle.join("rootfs"))
            .unwrap()
            .is_symlink()
    );
    std::fs::remove_file(bundle.join("rootfs")).unwrap();
    std::fs::create_dir(bundle.join("rootfs")).unwrap();
    std::fs::write(bundle.join("rootfs/stale"), b"x").unwrap();
    refused(&bundle, "non-empty rootfs");
    assert_eq!(names(&bundle.join("rootfs")), vec!["stale"]);
    assert!(names(&work.join("overlay")).is_empty(), "state left behind");

    // An empty rootfs the caller made is the mount point.
    std::fs::remove_file(bundle.join("rootfs/stale")).unwrap();
    let rootfs = store.mount_rootfs(ids, &bundle).unwrap();
    assert_eq!(std::fs::read(rootfs.join("f")).unwrap(), b"x");
    store.unmount_rootfs(&bundle).unwrap();
    assert_eq!(store.gc().unwrap().removed, 1);
}
