use std::os::unix::ffi::OsStrExt as _;

use peerpod_tests::mutate::{Rng, mutate};
use peerpod_tests::scratch::ScratchDir;

use super::*;

const UUID: &str = "CRYPT-LUKS2-6b2f0c6a3f7e4f7e9f1c2d3e4f5a6b7c-encrypted_scratch";

/// A sysfs as a pod VM with the scratch space has it: dm-3 the crypt device over dm-2 (its
/// dm-integrity sub-device), dm-4 an LVM volume, loop0.
fn sysfs(root: &Path) -> PathBuf {
    let sys = root.join("sys");
    let device = |name: &str, number: &str, dm: Option<(&str, &str)>| {
        let block = sys.join("block").join(name);
        std::fs::create_dir_all(block.join("dm")).expect("sysfs block dir");
        std::fs::write(block.join("dev"), format!("{number}\n")).expect("dev");
        if let Some((dm_name, uuid)) = dm {
            std::fs::write(block.join("dm/name"), format!("{dm_name}\n")).expect("dm/name");
            std::fs::write(block.join("dm/uuid"), format!("{uuid}\n")).expect("dm/uuid");
        }
        std::fs::create_dir_all(sys.join("dev/block")).expect("dev/block");
        std::os::unix::fs::symlink(
            format!("../../devices/virtual/block/{name}"),
            sys.join("dev/block").join(number),
        )
        .expect("dev/block link");
    };
    device("dm-3", "253:3", Some(("encrypted_scratch", UUID)));
    device(
        "dm-2",
        "253:2",
        Some((
            "encrypted_scratch_dif",
            "CRYPT-SUBDEV-6b2f0c6a3f7e4f7e9f1c2d3e4f5a6b7c-encrypted_scratch_dif",
        )),
    );
    device("dm-4", "253:4", Some(("vg-data", "LVM-abcdefXYZ")));
    device("loop0", "7:0", None);
    sys
}

const MP: &[u8] = b"/run/kata-containers/image";

fn line(device: &str, root: &str, fstype: &str, source: &str) -> String {
    format!(
        "120 25 {device} {root} /run/kata-containers/image rw,relatime shared:60 - {fstype} {source} rw\n"
    )
}

fn mountinfo(extra: &str) -> Vec<MountEntry> {
    let text = format!(
        "22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n\
         25 22 0:23 / /run rw,nosuid,nodev shared:5 - tmpfs tmpfs rw,mode=755\n{extra}"
    );
    parse_mountinfo(text.as_bytes()).expect("recorded mountinfo parses")
}

#[test]
fn the_dm_crypt_scratch_space_is_adopted_by_mapper_name_or_dm_number() {
    let dir = ScratchDir::new("cdh-scratch-yes").expect("temp dir");
    let sys = sysfs(dir.path());
    for source in ["/dev/mapper/encrypted_scratch", "/dev/dm-3"] {
        let mounts = mountinfo(&line("253:3", "/", "ext4", source));
        assert_eq!(
            judge(&mounts, MP, &sys),
            Verdict::Encrypted {
                source: source.into(),
                uuid: UUID.into()
            },
            "{source}"
        );
    }
    // LUKS1 and plain dm-crypt are encryption too.
    for uuid in ["CRYPT-LUKS1-00-x", "CRYPT-PLAIN-x"] {
        std::fs::write(sys.join("block/dm-3/dm/uuid"), uuid).expect("uuid");
        let mounts = mountinfo(&line("253:3", "/", "xfs", "/dev/dm-3"));
        assert!(matches!(
            judge(&mounts, MP, &sys),
            Verdict::Encrypted { .. }
        ));
    }
}

/// Everything that is not the whole file system of a dm-crypt device is refused, with what
/// was found and why in the verdict.
#[test]
fn anything_else_mounted_there_is_refused_naming_what_and_why() {
    let dir = ScratchDir::new("cdh-scratch-no").expect("temp dir");
    let sys = sysfs(dir.path());
    let crypt = line("253:3", "/", "ext4", "/dev/mapper/encrypted_scratch");
    for (extra, found, why) in [
        (
            line("0:45", "/", "tmpfs", "tmpfs"),
            "tmpfs from \"tmpfs\" (device 0:45)",
            "not /dev/mapper",
        ),
        // A tmpfs whose source names the scratch device: its device number gives it away.
        (
            line("0:45", "/", "tmpfs", "/dev/mapper/encrypted_scratch"),
            "tmpfs",
            "0:45 is no block device",
        ),
        (
            line("0:61", "/", "overlay", "overlay"),
            "overlay",
            "not /dev/mapper",
        ),
        // A bind mount of a directory of the encrypted file system.
        (
            line("253:3", "/layers", "ext4", "/dev/mapper/encrypted_scratch"),
            "ext4",
            "bind mount of /layers",
        ),
        // A bind mount of a directory of the root disk.
        (
            line("254:1", "/var/tmp", "ext4", "/dev/vda1"),
            "/dev/vda1",
            "bind mount",
        ),
        (
            line("254:1", "/", "ext4", "/dev/vda1"),
            "ext4",
            "not /dev/mapper",
        ),
        (
            line("7:0", "/", "ext4", "/dev/dm-7"),
            "7:0",
            "\"loop0\", not a device-mapper device",
        ),
        // The integrity sub-device under the crypt device holds no file system of ours.
        (
            line("253:2", "/", "ext4", "/dev/mapper/encrypted_scratch_dif"),
            "253:2",
            "CRYPT-SUBDEV",
        ),
        (
            line("253:4", "/", "ext4", "/dev/mapper/vg-data"),
            "vg-data",
            "not a dm-crypt mapping",
        ),
        // The source's name and the device behind the mount disagree.
        (
            line("253:4", "/", "ext4", "/dev/mapper/encrypted_scratch"),
            "253:4",
            "device dm-4 is \"vg-data\"",
        ),
        (
            line("253:3", "/", "ext4", "/dev/dm-4"),
            "253:3",
            "names dm-4 but the device is dm-3",
        ),
        (
            line("253:9", "/", "ext4", "/dev/mapper/gone"),
            "253:9",
            "no block device",
        ),
        // Mounted over the encrypted scratch space: the one on top counts.
        (
            format!("{crypt}{}", line("0:45", "/", "tmpfs", "tmpfs")),
            "tmpfs",
            "not /dev/mapper",
        ),
    ] {
        match judge(&mountinfo(&extra), MP, &sys) {
            Verdict::Refused { found: f, why: w } => {
                assert!(f.contains(found), "{extra}: found {f:?}");
                assert!(w.contains(why), "{extra}: why {w:?}");
            }
            other => panic!("{extra}: {other:?}"),
        }
    }
    // With the encrypted file system mounted over a tmpfs, the top one is used.
    let over = format!("{}{crypt}", line("0:45", "/", "tmpfs", "tmpfs"));
    assert!(matches!(
        judge(&mountinfo(&over), MP, &sys),
        Verdict::Encrypted { .. }
    ));
    assert!(matches!(
        judge(&mountinfo(""), MP, &sys),
        Verdict::NotMounted { .. }
    ));
    // Not a crypt device when sysfs cannot tell.
    let empty = dir.path().join("no-sys");
    assert!(matches!(
        judge(&mountinfo(&crypt), MP, &empty),
        Verdict::Refused { .. }
    ));
}

/// The probe end to end on files: a recorded mountinfo naming a temp directory (with a space
/// and a backslash in its name, escaped as the kernel does) and the sysfs fixture.
#[test]
fn the_probe_reads_recorded_mountinfo_and_sysfs_and_refuses_an_oversized_mountinfo() {
    let dir = ScratchDir::new("cdh-scratch-probe").expect("temp dir");
    let sys = sysfs(dir.path());
    let mount_point = dir.path().join("scratch \\ image");
    std::fs::create_dir_all(&mount_point).expect("mount point");
    let real = std::fs::canonicalize(&mount_point).expect("resolved");
    let escaped = String::from_utf8(escape(real.as_os_str().as_bytes())).expect("ASCII path");
    let text = format!(
        "22 1 254:1 / / rw - ext4 /dev/vda1 rw\n\
         120 22 253:3 / {escaped} rw,relatime shared:60 - ext4 /dev/mapper/encrypted_scratch rw\n"
    );
    let mountinfo = dir.path().join("mountinfo");
    std::fs::write(&mountinfo, &text).expect("mountinfo");
    let probe = ScratchProbe {
        mount_point: mount_point.clone(),
        mountinfo: mountinfo.clone(),
        sys: sys.clone(),
    };
    assert!(matches!(probe.judge(), Verdict::Encrypted { .. }));

    let huge = text.repeat(MAX_MOUNTINFO_BYTES as usize / text.len() + 1);
    std::fs::write(&mountinfo, huge).expect("mountinfo");
    match probe.judge() {
        Verdict::Refused { why, .. } => assert!(why.contains("longer than"), "{why}"),
        other => panic!("{other:?}"),
    }
    let missing = ScratchProbe {
        mount_point: dir.path().join("absent"),
        ..probe
    };
    assert!(matches!(missing.judge(), Verdict::NotMounted { .. }));
}

/// The live mountinfo of this process parses.
#[test]
fn the_mountinfo_of_this_process_parses() {
    let text = read_bounded(Path::new(MOUNTINFO), MAX_MOUNTINFO_BYTES).expect("read");
    let mounts = parse_mountinfo(&text).expect("parses");
    assert!(mounts.iter().any(|m| m.mount_point == b"/"));
}

/// The kernel's escaping of a path (space, tab, newline, backslash as `\ooo`).
fn escape(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in path {
        match b {
            b' ' | b'\t' | b'\n' | b'\\' => out.extend(format!("\\{b:03o}").bytes()),
            _ => out.push(b),
        }
    }
    out
}

#[test]
fn escapes_are_decoded_and_hostile_lines_refused() {
    let text = b"90 30 0:50 / /run/b\\040-\\040x\\012y rw,relatime shared:40 master:1 - overlay over\\040lay rw\n\
                 91 30 253:3 / /run/c\\134d rw - ext4 /dev/mapper/a\\040b rw,x\n";
    let mounts = parse_mountinfo(text).expect("well-formed");
    assert_eq!(mounts[0].mount_point, b"/run/b - x\ny");
    assert_eq!(mounts[0].source, b"over lay");
    assert_eq!(mounts[1].mount_point, b"/run/c\\d");
    assert_eq!(mounts[1].device, (253, 3));
    assert_eq!(mounts[1].source, b"/dev/mapper/a b");
    for bad in [
        &b"22 1 0:21 / /proc rw shared:5 proc proc rw\n"[..],
        b"short line\n",
        b"90 30 0:50 / /run/x\\04 rw - overlay overlay rw\n",
        b"90 30 0:50 / /run/x\\999 rw - overlay overlay rw\n",
        b"90 30 0:50 / /run/x\\000 rw - overlay overlay rw\n",
        b"90 30 0:50 / /run/x rw -\n",
        b"90 30 0:50 / /run/x rw - a b\n",
        b"90 30 0:50 / /run/x rw - a b c d\n",
        b"90 30 50 / /run/x rw - ext4 /dev/dm-1 rw\n",
        b"90 30 -1:50 / /run/x rw - ext4 /dev/dm-1 rw\n",
        b"90 30 0:99999999999 / /run/x rw - ext4 /dev/dm-1 rw\n",
        b"x 30 0:5 / /run/x rw - ext4 /dev/dm-1 rw\n",
        b"90 30 0:5 relative /run/x rw - ext4 /dev/dm-1 rw\n",
        b"90 30 0:5 / run/x rw - ext4 /dev/dm-1 rw\n",
        b"90 30 0:5 / /run/x rw - ext4 /dev/dm\\1 rw\n",
        // A line break inside a field splits the line: both halves are garbled.
        b"90 30 0:5 / /run/x\nrw - ext4 /dev/dm-1 rw\n",
    ] {
        assert!(parse_mountinfo(bad).is_err(), "{:?}", bad.escape_ascii());
    }
    assert!(parse_mountinfo(b"").expect("empty").is_empty());
    let long = vec![b'/'; MAX_MOUNTINFO_BYTES as usize + 1];
    assert!(matches!(
        parse_mountinfo(&long),
        Err(MountinfoError::TooLarge)
    ));
}

/// Property: any path (bytes without NUL), escaped as the kernel does, comes back whole; and
/// thousands of mutated lines never panic, never yield a relative path, and are never adopted
/// without a sysfs to confirm them.
#[test]
fn mountinfo_round_trips_any_path_and_survives_mutations() {
    let mut rng = Rng(0x05c7_a7c4);
    for _ in 0..2000 {
        let len = 1 + rng.below(40);
        let mut path = vec![b'/'];
        path.extend((0..len).map(|_| 1 + rng.below(255) as u8));
        let text = [
            &b"1 2 253:3 / "[..],
            &escape(&path),
            b" rw - ext4 ",
            &escape(&path),
            b" rw\n",
        ]
        .concat();
        let mounts = parse_mountinfo(&text).expect("escaped path parses");
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].mount_point, path);
        assert_eq!(mounts[0].source, path);
    }
    let seeds: Vec<Vec<u8>> = [
        line("253:3", "/", "ext4", "/dev/mapper/encrypted_scratch"),
        line("0:45", "/", "tmpfs", "/dev/dm-3"),
        "90 30 0:50 / /run/b\\040x rw shared:40 master:1 - overlay o rw\n".to_string(),
    ]
    .map(String::into_bytes)
    .to_vec();
    let nowhere = Path::new("/nonexistent-sysfs");
    for _ in 0..6000 {
        let seed = &seeds[rng.below(seeds.len())];
        let input = mutate(&mut rng, seed, &seeds);
        if let Ok(mounts) = parse_mountinfo(&input) {
            for m in &mounts {
                assert!(m.mount_point.starts_with(b"/") && m.root.starts_with(b"/"));
            }
            assert!(!matches!(
                judge(&mounts, MP, nowhere),
                Verdict::Encrypted { .. }
            ));
        }
    }
}

/// Every event as `LEVEL message field=value ...`.
#[derive(Default)]
struct Capture(std::sync::Mutex<Vec<String>>);

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={value:?}", field.name()));
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = Fields(event.metadata().level().to_string());
        event.record(&mut fields);
        self.0.lock().expect("not poisoned").push(fields.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// A refused mount is a warning that names what is mounted and why it is not used; an
/// adopted one and an empty place are information; an explicit work_dir says nothing.
#[test]
fn a_refused_mount_is_a_warning_naming_what_and_why() {
    let capture = std::sync::Arc::new(Capture::default());
    let dispatch = tracing::Dispatch::from(std::sync::Arc::clone(&capture));
    let work_dir = Path::new("/run/image-rs");
    let scratch = Path::new("/run/kata-containers/image");
    let refused = Verdict::Refused {
        found: "tmpfs from \"/dev/mapper/x\" (device 0:45)".into(),
        why: "device 0:45 is no block device".into(),
    };
    let adopted = Verdict::Encrypted {
        source: "/dev/mapper/encrypted_scratch".into(),
        uuid: UUID.into(),
    };
    let empty = Verdict::NotMounted {
        why: "nothing is mounted".into(),
    };
    tracing::dispatcher::with_default(&dispatch, || {
        log_choice(Some(&refused), work_dir, scratch);
        log_choice(Some(&adopted), scratch, scratch);
        log_choice(Some(&empty), work_dir, scratch);
        log_choice(None, Path::new("/run/measured"), scratch);
    });
    let events = capture.0.lock().expect("not poisoned").clone();
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(
        events[0].starts_with("WARN")
            && events[0].contains("found=tmpfs from \"/dev/mapper/x\" (device 0:45)")
            && events[0].contains("why=device 0:45 is no block device")
            && events[0].contains("work_dir=/run/image-rs"),
        "{}",
        events[0]
    );
    assert!(
        events[1].starts_with("INFO") && events[1].contains(UUID),
        "{}",
        events[1]
    );
    assert!(events[2].starts_with("INFO"), "{}", events[2]);
}
