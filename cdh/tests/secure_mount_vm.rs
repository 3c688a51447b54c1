//! Secure mounts in a QEMU guest (the host kernel of CI machines may have no device-mapper):
//! the `confidential-data-hub` binary formats two virtio disks with LUKS2 through `cryptsetup`
//! — one with a key from the key broker (header on the disk, so it opens again, named by its
//! `MAJ:MIN` device ID this time), one with a
//! random key (detached header, exposed as a device) — writes through the mount, reopens the
//! first, and refuses a wrong key; a third disk adds dm-integrity. On the host, the disks'
//! backing files hold no plaintext.
//!
//! `integrity_without_the_wipe_...` formats dm-integrity volumes without the initial wipe and
//! checks that nothing ever reads a sector without a valid tag (file system checks, a remount,
//! a clean kernel log), that integrity is still enforced (a byte flipped under the ciphertext
//! makes reads fail), and times the set-up against `cryptsetup`'s wiping format in the same VM.

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

fn modules() -> Vec<String> {
    [
        "virtio_blk",
        "dm_mod",
        "dm_crypt",
        "dm_integrity",
        "xts",
        "ecb",
        "authenc",
    ]
    .map(String::from)
    .to_vec()
}

/// Bytes the file system holds for a (sparse) disk file.
fn allocated(path: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(path).expect("disk")) * 512
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
    options.modules.extend(modules());
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
             echo \"PEERPOD-HEADER-KIB $(du -k /run/confidential-containers/cdh/luks-headers/* | cut -f1)\"; \
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
    // The detached header lives in memory: its keyslot area is 1 MiB, not cryptsetup's 16 MiB.
    let header_kib: u64 = line_after(&log, "PEERPOD-HEADER-KIB ")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no header size\n{}", tail()));
    assert!(
        (1024..=1100).contains(&header_kib),
        "the detached header takes {header_kib} KiB of memory"
    );
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

/// The guest's part of the no-wipe test. `@CDH@` and `@MARKER@` are replaced.
const NO_WIPE_SCRIPT: &str = r#"
up() { cut -d' ' -f1 /proc/uptime; }
errors() { dmesg | grep -iE 'AEAD|integrity.*(fail|error|mismatch)|checksum fail|I/O error|EXT4-fs error|EXT4-fs warning'; }
step() { echo "PEERPOD-STEP $1 $(errors | wc -l)"; }
# e2fsck reads the device through the page cache, whose readahead would run past the last
# sector written (the file system never reads there; the checker's readahead would).
no_readahead() { for d in /sys/block/dm-*; do [ "$(cat $d/dm/name)" = "$1" ] && echo 0 > $d/queue/read_ahead_kb; done; }
t0=$(up)
if @CDH@ secure-mount -o devicePath=/dev/vda -o sourceType=empty -o dataIntegrity=true \
    -o mapperName=nowipe -o 'mkfsOpts=-E lazy_journal_init=1' /mnt/nowipe 2>/tmp/nowipe.log; then
    echo "PEERPOD-TIME nowipe $t0 $(up)"
else
    echo PEERPOD-NOWIPE-FAILED; cat /tmp/nowipe.log
fi
head -c 64 /dev/urandom > /tmp/wipe.key
t0=$(up)
if cryptsetup luksFormat --type luks2 --batch-mode --cipher aes-xts-plain64 --key-size 512 \
    --sector-size 4096 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --integrity hmac-sha256 \
    --key-file /tmp/wipe.key /dev/vdb \
   && cryptsetup open --type luks2 --key-file /tmp/wipe.key /dev/vdb wiped \
   && mkfs.ext4 -F -q -E lazy_itable_init=1,lazy_journal_init=1 /dev/mapper/wiped \
   && mkdir -p /mnt/wiped && mount -t ext4 -o noatime /dev/mapper/wiped /mnt/wiped; then
    echo "PEERPOD-TIME wipe $t0 $(up)"
    umount /mnt/wiped; cryptsetup close wiped
else
    echo PEERPOD-WIPE-FAILED
fi
for i in $(seq 2000); do echo @MARKER@; done > /mnt/nowipe/data.txt; sync
echo "PEERPOD-NOWIPE-READ $(grep -c @MARKER@ /mnt/nowipe/data.txt)"
umount /mnt/nowipe; step umounted
no_readahead nowipe
e2fsck -fn /dev/mapper/nowipe >/tmp/fsck1.log 2>&1; echo "PEERPOD-FSCK nowipe $?"
cryptsetup close nowipe; step fsck
if @CDH@ secure-mount -o devicePath=/dev/vdc -o sourceType=empty -o dataIntegrity=true \
    -o key=kbs:///default/key/disk -o mapperName=held /mnt/held 2>/tmp/held.log; then
    yes @MARKER@ | head -n 960000 > /mnt/held/fill; sync
    echo "PEERPOD-HELD-FILLED $(wc -c < /mnt/held/fill)"
    umount /mnt/held; cryptsetup close held; step filled
else
    echo PEERPOD-HELD-FAILED; cat /tmp/held.log
fi
if @CDH@ secure-mount -o devicePath=/dev/vdc -o sourceType=encrypted \
    -o key=kbs:///default/key/disk -o mapperName=held /mnt/held 2>/tmp/held2.log; then
    if cat /mnt/held/fill > /dev/null; then
        echo "PEERPOD-HELD-REREAD $(grep -vc @MARKER@ /mnt/held/fill) $(wc -c < /mnt/held/fill)"
    else
        echo PEERPOD-HELD-REREAD-FAILED
    fi
    umount /mnt/held; step reread
    no_readahead held
    e2fsck -fn /dev/mapper/held >/tmp/fsck2.log 2>&1; echo "PEERPOD-FSCK held $?"
    cryptsetup close held
else
    echo PEERPOD-HELD-REOPEN-FAILED; cat /tmp/held2.log
fi
echo "PEERPOD-DMESG-ERRORS $(errors | wc -l)"
errors | head -20
# The attacker: one byte flipped every 256 KiB of the disk's second half (file data).
size=$(cat /sys/block/vdc/size); o=$((size * 512 / 2)); flips=0
while [ $o -lt $((size * 512)) ]; do
    b=$(dd if=/dev/vdc bs=1 skip=$o count=1 2>/dev/null | od -An -tu1 | tr -d ' ')
    printf "$(printf '\\%03o' $((b ^ 1)))" | dd of=/dev/vdc bs=1 seek=$o count=1 conv=notrunc,fsync 2>/dev/null
    flips=$((flips + 1)); o=$((o + 262144))
done
echo 3 > /proc/sys/vm/drop_caches
echo "PEERPOD-FLIPPED $flips"
before=$(errors | wc -l)
if @CDH@ secure-mount -o devicePath=/dev/vdc -o sourceType=encrypted \
    -o key=kbs:///default/key/disk -o mapperName=held /mnt/held 2>/tmp/held3.log; then
    if cat /mnt/held/fill > /dev/null 2>/tmp/cat.log; then
        echo PEERPOD-ATTACK-READ-OK
    else
        echo "PEERPOD-ATTACK-READ-FAILED $(cat /tmp/cat.log)"
    fi
    umount /mnt/held; cryptsetup close held
else
    echo PEERPOD-ATTACK-MOUNT-FAILED; cat /tmp/held3.log
fi
echo "PEERPOD-ATTACK-DMESG $(( $(errors | wc -l) - before ))"
errors | tail -3
echo PEERPOD-NO-WIPE-DONE
"#;

fn line_after<'a>(log: &'a str, prefix: &str) -> Option<&'a str> {
    log.lines()
        .find_map(|l| l.split_once(prefix).map(|(_, rest)| rest.trim()))
}

fn seconds(log: &str, what: &str) -> f64 {
    let rest = line_after(log, &format!("PEERPOD-TIME {what} "))
        .unwrap_or_else(|| panic!("no {what} timing in the log"));
    let t: Vec<f64> = rest
        .split_whitespace()
        .map(|v| v.parse().expect("uptime"))
        .collect();
    t[1] - t[0]
}

#[test]
fn integrity_without_the_wipe_reads_clean_enforces_tags_and_is_faster_than_wiping() {
    let dir = ScratchDir::new("cdh-nowipe-vm").expect("scratch");
    let (nowipe, wiped, held) = (
        dir.path().join("nowipe.img"),
        dir.path().join("wiped.img"),
        dir.path().join("held.img"),
    );
    sparse_disk(&nowipe, 256);
    sparse_disk(&wiped, 256);
    sparse_disk(&held, 64);
    let key = base64::engine::general_purpose::STANDARD.encode([0x5cu8; 64]);
    let resources = dir.path().join("resources.json");
    std::fs::write(&resources, format!("{{\"default/key/disk\": \"{key}\"}}")).expect("res");
    let cdh_toml = dir.path().join("cdh.toml");
    std::fs::write(
        &cdh_toml,
        "[kbc]\nname = \"offline_fs_kbc\"\n\n[peerpod]\n\
         offline_fs_kbc_files = [\"/etc/cdh-resources.json\"]\n",
    )
    .expect("cdh.toml");
    let mut options = VmOptions::new(VmOptions::built_agent_binary());
    options.modules.extend(modules());
    options.boot_timeout = std::time::Duration::from_secs(420);
    for (guest, host) in [
        (
            "/usr/bin/confidential-data-hub",
            PathBuf::from(env!("CARGO_BIN_EXE_confidential-data-hub")),
        ),
        ("/usr/sbin/cryptsetup", host_tool("cryptsetup")),
        ("/usr/sbin/mkfs.ext4", host_tool("mkfs.ext4")),
        ("/usr/sbin/e2fsck", host_tool("e2fsck")),
        ("/etc/cdh.toml", cdh_toml),
        ("/etc/cdh-resources.json", resources),
    ] {
        options.extra_files.push((guest.into(), host));
    }
    for disk in [&nowipe, &wiped, &held] {
        options.extra_args.extend([
            "-drive".to_string(),
            format!("file={},if=virtio,format=raw,cache=none", disk.display()),
        ]);
    }
    options.boot_commands = vec![
        NO_WIPE_SCRIPT
            .replace(
                "@CDH@",
                "RUST_BACKTRACE=0 /usr/bin/confidential-data-hub -c /etc/cdh.toml",
            )
            .replace("@MARKER@", MARKER),
    ];
    let vm = TestVm::boot(&options).expect("VM with three disks");
    let log = vm.serial_log();
    let tail = || vm.serial_tail(80);
    assert!(log.contains("PEERPOD-NO-WIPE-DONE"), "{}", tail());
    // No read met a sector without a tag: the data reads back, both file systems check
    // clean, the kernel logged no integrity or I/O error.
    assert_eq!(
        line_after(&log, "PEERPOD-NOWIPE-READ "),
        Some("2000"),
        "{}",
        tail()
    );
    assert_eq!(
        line_after(&log, "PEERPOD-FSCK nowipe "),
        Some("0"),
        "{}",
        tail()
    );
    let filled: u64 = line_after(&log, "PEERPOD-HELD-FILLED ")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("the volume was not filled\n{}", tail()));
    assert!(filled > 16 << 20, "only {filled} bytes written\n{}", tail());
    assert_eq!(
        line_after(&log, "PEERPOD-HELD-REREAD "),
        Some(format!("0 {filled}").as_str()),
        "the reopened volume (header on the disk) reads back what was written\n{}",
        tail()
    );
    assert_eq!(
        line_after(&log, "PEERPOD-FSCK held "),
        Some("0"),
        "{}",
        tail()
    );
    assert_eq!(
        line_after(&log, "PEERPOD-DMESG-ERRORS "),
        Some("0"),
        "the kernel logged integrity or I/O errors\n{}",
        tail()
    );
    // The attacker's byte flips: reads of the file fail, and the kernel says why.
    let flips: u32 = line_after(&log, "PEERPOD-FLIPPED ")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(flips >= 40, "{}", tail());
    let failed = line_after(&log, "PEERPOD-ATTACK-READ-FAILED")
        .unwrap_or_else(|| panic!("a read over flipped ciphertext succeeded\n{}", tail()));
    assert!(failed.contains("Input/output error"), "{failed}");
    let logged: i64 = line_after(&log, "PEERPOD-ATTACK-DMESG ")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(logged > 0, "no integrity error logged\n{}", tail());

    let (t_nowipe, t_wipe) = (seconds(&log, "nowipe"), seconds(&log, "wipe"));
    eprintln!(
        "format + mkfs + mount of 256 MiB with dm-integrity (TCG): secure mount (no wipe, \
         random key: no integrity journal) {t_nowipe:.2} s, the previous path (cryptsetup's \
         wiping format, journal) {t_wipe:.2} s: {:.2}x",
        t_nowipe / t_wipe
    );
    drop(vm);

    // Never-written sectors stay unallocated in the sparse disk file; the wiping format
    // wrote every one.
    let (a_nowipe, a_wipe) = (allocated(&nowipe), allocated(&wiped));
    eprintln!(
        "disk file space written: no wipe {} MiB, wipe {} MiB",
        a_nowipe >> 20,
        a_wipe >> 20
    );
    assert!(
        a_wipe > 200 << 20 && a_nowipe * 2 < a_wipe,
        "no wipe {a_nowipe} vs wipe {a_wipe} bytes"
    );
    for disk in [&nowipe, &held] {
        let bytes = std::fs::read(disk).expect("backing file");
        assert_eq!(
            occurrences(&bytes, MARKER.as_bytes()),
            0,
            "{} holds plaintext",
            disk.display()
        );
    }
}
