//! In a QEMU guest (the host kernel of CI machines has neither iso9660 nor device-mapper): a
//! cidata ISO built with genisoimage (or xorriso) is attached as a disk and mounted at
//! `/media/cidata`, `process-user-data provision-files` provisions from it with its defaults
//! (sha384 initdata: the digest printed in the guest is the policy crate's), then
//! `setup-scratch-storage` turns a second disk into LUKS2 with a random key mounted at
//! `/run/kata-containers/image`; data written through the mount is absent from the disk's
//! backing file, which holds no LUKS header either (it is detached into the guest's memory).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use peerpod_tests::scratch::ScratchDir;
use peerpod_tests::{TestVm, VmOptions};

const MARKER: &str = "SCRATCH-PLAINTEXT-6c1f0e";

fn host_tool(name: &str) -> PathBuf {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} is missing on the host: make deps installs it"))
}

/// An ISO 9660 image labelled `cidata` holding `user-data` and an empty `meta-data`.
fn cidata_iso(dir: &Path, user_data: &str) -> Option<PathBuf> {
    let content = dir.join("cidata");
    std::fs::create_dir_all(&content).expect("cidata dir");
    std::fs::write(content.join("user-data"), user_data).expect("user-data");
    std::fs::write(content.join("meta-data"), "").expect("meta-data");
    let iso = dir.join("cidata.iso");
    let args = ["-output", "", "-volid", "cidata", "-joliet", "-rock"];
    for (tool, prefix) in [("genisoimage", vec![]), ("xorriso", vec!["-as", "mkisofs"])] {
        let mut cmd = Command::new(tool);
        cmd.args(&prefix);
        for a in args {
            if a.is_empty() {
                cmd.arg(&iso);
            } else {
                cmd.arg(a);
            }
        }
        if cmd.arg(&content).output().is_ok_and(|o| o.status.success()) {
            return Some(iso);
        }
    }
    require(false, "genisoimage or xorriso").then_some(iso)
}

fn occurrences(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

fn after<'a>(log: &'a str, tag: &str) -> &'a str {
    log.lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix(tag))
        .unwrap_or("")
        .trim()
}

#[test]
fn cidata_iso_provisions_and_scratch_space_is_encrypted_in_a_guest() {
    let dir = ScratchDir::new("provision-vm").expect("scratch");
    let doc = initdata_doc("sha384");
    let ud = cloud_config(&[
        ("/run/peerpod/apf.json", "{}"),
        ("/run/peerpod/initdata", &encoded(&doc)),
        ("/run/peerpod/scratch-space.marker", ""),
        ("/etc/shadow", "evil"),
    ]);
    let Some(iso) = cidata_iso(dir.path(), &ud) else {
        return;
    };
    let disk = dir.path().join("trusted-store.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(64 << 20))
        .expect("disk");

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
            "isofs",
        ]
        .map(String::from),
    );
    for (guest, host) in [
        ("/usr/local/bin/process-user-data", PathBuf::from(BIN)),
        ("/usr/sbin/cryptsetup", host_tool("cryptsetup")),
        ("/usr/sbin/mkfs.ext4", host_tool("mkfs.ext4")),
    ] {
        options.extra_files.push((guest.into(), host));
    }
    for (file, ro) in [(&iso, ",readonly=on"), (&disk, "")] {
        options.extra_args.extend([
            "-drive".to_string(),
            format!(
                "file={},if=virtio,format=raw,cache=none{ro}",
                file.display()
            ),
        ]);
    }
    let pud = "RUST_LOG=info /usr/local/bin/process-user-data";
    options.boot_commands = vec![
        "mkdir -p /media/cidata && mount -t iso9660 -o ro /dev/vda /media/cidata && \
         echo PP-CIDATA-MOUNTED"
            .into(),
        format!(
            "if {pud} provision-files -t 10 2>/tmp/p.log; then echo PP-PROVISIONED; \
             else echo PP-PROVISION-FAILED; cat /tmp/p.log; fi"
        ),
        "echo \"PP-DIGEST $(cat /run/peerpod/initdata.digest)\"; \
         echo \"PP-FILES $(ls /run/peerpod | tr '\\n' ' ')\"; \
         echo \"PP-MODE $(stat -c %a /run/peerpod/apf.json)\"; \
         echo \"PP-REFUSED $(grep -c 'is not allowed' /tmp/p.log)\""
            .into(),
        format!(
            "if {pud} setup-scratch-storage --device /dev/vdb 2>/tmp/s.log; \
             then echo PP-SCRATCH-MOUNTED; else echo PP-SCRATCH-FAILED; cat /tmp/s.log; fi"
        ),
        "grep -q ' /run/kata-containers/image ext4 ' /proc/mounts && echo PP-SCRATCH-IN-MOUNTS; \
         echo \"PP-HEADERS $(ls /run/scratch-storage | wc -l)\""
            .into(),
        format!(
            "for i in $(seq 300); do echo {MARKER}; done > /run/kata-containers/image/data.txt; \
             sync; echo \"PP-READBACK $(grep -c {MARKER} /run/kata-containers/image/data.txt)\"; \
             umount /run/kata-containers/image && cryptsetup close encrypted_scratch && \
             echo PP-SCRATCH-CLOSED"
        ),
    ];
    let vm = TestVm::boot(&options).expect("VM with the cidata ISO and the trusted-store disk");
    let log = vm.serial_log();
    let tail = || vm.serial_tail(80);
    for tag in [
        "PP-CIDATA-MOUNTED",
        "PP-PROVISIONED",
        "PP-SCRATCH-MOUNTED",
        "PP-SCRATCH-IN-MOUNTS",
        "PP-SCRATCH-CLOSED",
    ] {
        assert!(log.contains(tag), "{tag}: {}", tail());
    }
    assert_eq!(after(&log, "PP-DIGEST"), digest_hex(&doc), "{}", tail());
    assert_eq!(
        after(&log, "PP-FILES"),
        "aa.toml apf.json cdh.toml initdata initdata.digest initdata.toml policy.rego \
         scratch-space.marker",
        "{}",
        tail()
    );
    assert_eq!(after(&log, "PP-MODE"), "600", "{}", tail());
    assert_eq!(after(&log, "PP-REFUSED"), "1", "{}", tail());
    assert_eq!(after(&log, "PP-HEADERS"), "1", "{}", tail());
    assert_eq!(after(&log, "PP-READBACK"), "300", "{}", tail());
    drop(vm);

    let bytes = std::fs::read(&disk).expect("backing file");
    assert_eq!(
        occurrences(&bytes, MARKER.as_bytes()),
        0,
        "plaintext on disk"
    );
    assert_ne!(&bytes[..6], b"LUKS\xba\xbe", "the header is detached");
}
