//! The scratch-space check on real device-mapper devices, in a QEMU guest (the host kernel of
//! CI machines may have no device-mapper): a plain dm-crypt device mounted at
//! `/run/kata-containers/image` is adopted as the layer store by the first pull, and so is the
//! provisioning's own stack (the `confidential-data-hub` binary's secure mount: LUKS2 with
//! dm-integrity under it, random key, named `encrypted_scratch`); a
//! device-mapper `linear` device (no encryption) mounted there is not, and the store goes to
//! `/run/image-rs`. The guest runs this test binary itself, which probes and pulls as the CDH
//! does and prints what it found on the serial console.

use std::path::{Path, PathBuf};

use confidential_data_hub::scratch::{ScratchProbe, Verdict};
use confidential_data_hub::{CdhConfig, Hub};
use peerpod_tests::scratch::ScratchDir;
use peerpod_tests::{TestVm, VmOptions};

const IN_GUEST: &str = "CDH_SCRATCH_IN_GUEST";
const TEST: &str = "dm_crypt_is_adopted_and_dm_linear_refused_in_a_guest";
const GUEST_TEST: &str = "/usr/bin/cdh-scratch-test";

fn host_tool(name: &str) -> PathBuf {
    let path = ["/usr/sbin", "/sbin", "/usr/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists());
    path.unwrap_or_else(|| {
        panic!("{name} is missing on the host: install cryptsetup-bin, dmsetup and e2fsprogs")
    })
}

fn sparse_disk(path: &Path, mib: u64) {
    let f = std::fs::File::create(path).expect("disk");
    f.set_len(mib << 20).expect("size");
}

/// In the guest: what the probe says and where the first pull put the layer store.
fn in_guest(label: &str) {
    let verdict = match ScratchProbe::default().judge() {
        Verdict::Encrypted { .. } => "adopted".to_string(),
        Verdict::NotMounted { why } => format!("not-mounted ({why})"),
        Verdict::Refused { found, why } => format!("refused ({found}: {why})"),
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let hub = Hub::new(CdhConfig::parse("").expect("empty cdh.toml")).expect("a hub");
    runtime.block_on(async {
        let pull = hub.pull_image("127.0.0.1:1/x/y:v1", "/run/kata-containers/scratch-vm/b");
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), pull).await;
    });
    let store = if Path::new("/run/kata-containers/image/overlay").is_dir() {
        "scratch"
    } else if Path::new("/run/image-rs/overlay").is_dir() {
        "default"
    } else {
        "none"
    };
    println!("PEERPOD-SCRATCH {label} store={store} verdict={verdict}");
}

#[test]
fn dm_crypt_is_adopted_and_dm_linear_refused_in_a_guest() {
    if let Ok(label) = std::env::var(IN_GUEST) {
        in_guest(&label);
        return;
    }
    let dir = ScratchDir::new("cdh-scratch-vm").expect("scratch");
    let (crypt_disk, linear_disk) = (dir.path().join("crypt.img"), dir.path().join("linear.img"));
    let luks_disk = dir.path().join("luks.img");
    sparse_disk(&crypt_disk, 32);
    sparse_disk(&linear_disk, 32);
    sparse_disk(&luks_disk, 32);
    let cdh_toml = dir.path().join("cdh.toml");
    let resources = dir.path().join("resources.json");
    std::fs::write(
        &cdh_toml,
        "[kbc]\nname = \"offline_fs_kbc\"\n\n[peerpod]\n\
         offline_fs_kbc_files = [\"/etc/cdh-resources.json\"]\n",
    )
    .expect("cdh.toml");
    std::fs::write(&resources, "{}").expect("resources");
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
    let exe = std::env::current_exe().expect("the test binary");
    for (guest, host) in [
        (GUEST_TEST, exe),
        ("/usr/sbin/cryptsetup", host_tool("cryptsetup")),
        ("/usr/sbin/dmsetup", host_tool("dmsetup")),
        ("/usr/sbin/mkfs.ext4", host_tool("mkfs.ext4")),
        (
            "/usr/bin/confidential-data-hub",
            PathBuf::from(env!("CARGO_BIN_EXE_confidential-data-hub")),
        ),
        ("/etc/cdh.toml", cdh_toml),
        ("/etc/cdh-resources.json", resources),
    ] {
        options.extra_files.push((guest.into(), host));
    }
    for disk in [&crypt_disk, &linear_disk, &luks_disk] {
        options.extra_args.extend([
            "-drive".to_string(),
            format!("file={},if=virtio,format=raw,cache=none", disk.display()),
        ]);
    }
    let run = |label: &str| {
        format!(
            "{IN_GUEST}={label} RUST_BACKTRACE=0 {GUEST_TEST} {TEST} --exact --nocapture \
             --test-threads=1 2>&1 | grep PEERPOD-SCRATCH || echo PEERPOD-SCRATCH {label} no-answer"
        )
    };
    let mount = |device: &str| {
        format!(
            "mkfs.ext4 -q -F {device} && mkdir -p /run/kata-containers/image && \
             mount -t ext4 {device} /run/kata-containers/image"
        )
    };
    options.boot_commands = vec![
        format!(
            "head -c 64 /dev/urandom > /tmp/k && cryptsetup open --type plain --cipher \
             aes-xts-plain64 --key-size 512 --key-file /tmp/k /dev/vda scratch && {} && {} ; \
             umount /run/kata-containers/image; cryptsetup close scratch; rm -rf /run/image-rs \
             /run/kata-containers/scratch-vm",
            mount("/dev/mapper/scratch"),
            run("crypt")
        ),
        format!(
            "dmsetup create --noudevsync plainlinear --table \"0 $(cat /sys/block/vdb/size) linear \
             /dev/vdb 0\" && dmsetup mknodes plainlinear && {} && {} ; umount /run/kata-containers/image; dmsetup remove plainlinear",
            mount("/dev/mapper/plainlinear"),
            run("linear")
        ),
        format!(
            "mkdir -p /run/kata-containers/image && RUST_BACKTRACE=0 /usr/bin/confidential-data-hub \
             -c /etc/cdh.toml secure-mount -o devicePath=/dev/vdc -o sourceType=empty \
             -o dataIntegrity=true -o mapperName=encrypted_scratch /run/kata-containers/image \
             2>/tmp/luks.log && {} ; cat /tmp/luks.log; umount /run/kata-containers/image; \
             cryptsetup close encrypted_scratch; rm -rf /run/image-rs /run/kata-containers/scratch-vm",
            run("luks2-integrity")
        ),
    ];
    let vm = TestVm::boot(&options).expect("VM with two disks");
    let log = vm.serial_log();
    let tail = || vm.serial_tail(60);
    assert!(
        log.contains("PEERPOD-SCRATCH crypt store=scratch verdict=adopted"),
        "{}",
        tail()
    );
    assert!(
        log.contains("PEERPOD-SCRATCH luks2-integrity store=scratch verdict=adopted"),
        "{}",
        tail()
    );
    let linear = log
        .lines()
        .find(|l| l.contains("PEERPOD-SCRATCH linear"))
        .unwrap_or_default()
        .to_string();
    assert!(
        linear.contains("store=default verdict=refused (ext4 from \"/dev/mapper/plainlinear\"")
            && linear.contains("is not a dm-crypt mapping"),
        "{linear}\n{}",
        tail()
    );
}
