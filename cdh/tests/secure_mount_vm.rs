//! Secure mounts in a QEMU guest (the host kernel of CI machines may have no device-mapper):
//! the `confidential-data-hub` binary formats two virtio disks with LUKS2 through `cryptsetup`
//! — one with a key from the key broker (header on the disk, so it opens again, named by its
//! `MAJ:MIN` device ID this time), one with a
//! random key (detached header, exposed as a device) — writes through the mount, reopens the
//! first, and refuses a wrong key; a third disk adds dm-integrity. On the host, the disks'
//! backing files hold no plaintext.

use std::path::{Path, PathBuf};

use base64::Engine;
use peerpod_tests::scratch::ScratchDir;
use peerpod_tests::{TestVm, VmOptions};

const MARKER: &str = "PLAINTEXT-MARKER-a81f5d2e";

fn host_tool(name: &str) -> PathBuf {
    let path = ["/usr/sbin", "/sbin", "/usr/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists());
    path.unwrap_or_else(|| {
        panic!("{name} is missing on the host: install cryptsetup-bin and e2fsprogs (make deps)")
    })
}

fn sparse_disk(path: &Path, mib: u64) {
    let f = std::fs::File::create(path).expect("disk");
    f.set_len(mib << 20).expect("size");
}

fn occurrences(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

#[test]
fn luks2_volumes_in_a_guest_leave_no_plaintext_on_disk() {
    let dir = ScratchDir::new("cdh-luks-vm").expect("scratch");
    let (disk1, disk2) = (dir.path().join("disk1.img"), dir.path().join("disk2.img"));
    let disk3 = dir.path().join("disk3.img");
    sparse_disk(&disk1, 64);
    sparse_disk(&disk2, 64);
    sparse_disk(&disk3, 32);
    let key = base64::engine::general_purpose::STANDARD.encode([0x5cu8; 64]);
    let wrong = base64::engine::general_purpose::STANDARD.encode([0x11u8; 64]);
    let resources = dir.path().join("resources.json");
    std::fs::write(
        &resources,
        format!("{{\"default/key/disk\": \"{key}\", \"default/key/wrong\": \"{wrong}\"}}"),
    )
    .expect("resources");
    let cdh_toml = dir.path().join("cdh.toml");
    std::fs::write(
        &cdh_toml,
        "[kbc]\nname = \"offline_fs_kbc\"\n\n[peerpod]\n\
         offline_fs_kbc_files = [\"/etc/cdh-resources.json\"]\n",
    )
    .expect("cdh.toml");

    let mut options = VmOptions::new(VmOptions::built_agent_binary());
    options.modules.extend(
        [
            "virtio_blk",
            "dm_mod",
            "dm_crypt",
            "dm_integrity",
            "xts",
            "ecb",
            "authenc",
        ]
        .map(String::from),
    );
    for (guest, host) in [
        (
            "/usr/bin/confidential-data-hub",
            PathBuf::from(env!("CARGO_BIN_EXE_confidential-data-hub")),
        ),
        ("/usr/sbin/cryptsetup", host_tool("cryptsetup")),
        ("/usr/sbin/mkfs.ext4", host_tool("mkfs.ext4")),
        ("/etc/cdh.toml", cdh_toml),
        ("/etc/cdh-resources.json", resources),
    ] {
        options.extra_files.push((guest.into(), host));
    }
    for disk in [&disk1, &disk2, &disk3] {
        options.extra_args.extend([
            "-drive".to_string(),
            format!("file={},if=virtio,format=raw,cache=none", disk.display()),
        ]);
    }
    let cdh = "RUST_BACKTRACE=0 /usr/bin/confidential-data-hub -c /etc/cdh.toml";
    options.boot_commands = vec![
        format!(
            "if {cdh} secure-mount -o devicePath=/dev/vda -o sourceType=empty -o key=kbs:///default/key/disk \
             -o mapperName=secure1 -o 'mkfsOpts=-E lazy_itable_init=0' /mnt/secure 2>/tmp/cdh1.log; \
             then echo PEERPOD-LUKS-MOUNTED; else echo PEERPOD-LUKS-FAILED; cat /tmp/cdh1.log; fi"
        ),
        format!(
            "for i in $(seq 300); do echo {MARKER}; done > /mnt/secure/data.txt; sync; \
             umount /mnt/secure && cryptsetup close secure1 && echo PEERPOD-LUKS-CLOSED"
        ),
        format!(
            "if {cdh} secure-mount -o devicePath=/dev/vda -o sourceType=encrypted -o key=kbs:///default/key/wrong \
             /mnt/wrong 2>/tmp/cdh2.log; then echo PEERPOD-LUKS-WRONG-KEY-OPENED; \
             else echo PEERPOD-LUKS-WRONG-KEY-REFUSED; fi"
        ),
        format!(
            "if {cdh} secure-mount -o deviceId=$(cat /sys/block/vda/dev) -o sourceType=encrypted \
             -o key=kbs:///default/key/disk -o mapperName=secure2 /mnt/again 2>/tmp/cdh3.log; \
             then echo \"PEERPOD-LUKS-REOPENED $(grep -c {MARKER} /mnt/again/data.txt)\"; \
             umount /mnt/again; cryptsetup close secure2; else cat /tmp/cdh3.log; fi"
        ),
        format!(
            "if {cdh} secure-mount -o devicePath=/dev/vdb -o sourceType=empty -o targetType=device \
             -o mapperName=scratch /run/scratch-dev 2>/tmp/cdh4.log && [ -b /run/scratch-dev ]; then \
             for i in $(seq 300); do echo {MARKER}; done | dd of=/run/scratch-dev bs=4096 conv=fsync 2>/dev/null; \
             cryptsetup close scratch; echo PEERPOD-LUKS-DEVICE; else cat /tmp/cdh4.log; fi"
        ),
        format!(
            "if {cdh} secure-mount -o devicePath=/dev/vdc -o sourceType=empty -o dataIntegrity=true \
             -o key=kbs:///default/key/disk -o mapperName=integral /mnt/integral 2>/tmp/cdh5.log; then \
             for i in $(seq 300); do echo {MARKER}; done > /mnt/integral/data.txt; sync; \
             umount /mnt/integral; cryptsetup close integral; echo PEERPOD-LUKS-INTEGRITY; \
             else cat /tmp/cdh5.log; fi"
        ),
    ];
    let vm = TestVm::boot(&options).expect("VM with two disks");
    let log = vm.serial_log();
    let tail = || vm.serial_tail(60);
    assert!(log.contains("PEERPOD-LUKS-MOUNTED"), "{}", tail());
    assert!(log.contains("PEERPOD-LUKS-CLOSED"), "{}", tail());
    assert!(log.contains("PEERPOD-LUKS-WRONG-KEY-REFUSED"), "{}", tail());
    assert!(log.contains("PEERPOD-LUKS-REOPENED 300"), "{}", tail());
    assert!(log.contains("PEERPOD-LUKS-DEVICE"), "{}", tail());
    assert!(log.contains("PEERPOD-LUKS-INTEGRITY"), "{}", tail());
    drop(vm);

    for disk in [&disk1, &disk2, &disk3] {
        let bytes = std::fs::read(disk).expect("backing file");
        assert_eq!(
            occurrences(&bytes, MARKER.as_bytes()),
            0,
            "{} holds plaintext",
            disk.display()
        );
    }
    let d1 = std::fs::read(&disk1).expect("disk1");
    let d2 = std::fs::read(&disk2).expect("disk2");
    assert_eq!(
        &d1[..6],
        b"LUKS\xba\xbe",
        "a named key keeps its LUKS2 header on the disk"
    );
    assert_ne!(
        &d2[..6],
        b"LUKS\xba\xbe",
        "a random key's header is detached: the disk holds only ciphertext"
    );
}
