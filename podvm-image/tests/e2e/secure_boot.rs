//! Secure Boot (issue 15): the UKI `build.sh` signs boots on firmware that trusts the signer,
//! with the kernel locked down, and serves 15150; the firmware refuses the same UKI once the
//! host has changed one byte of it on the disk, and refuses it where the signer is not trusted.
//! The tests' image is signed with Debian's snakeoil test key (`secure_boot` in the harness);
//! OVMF's snakeoil variable store trusts that key, its Microsoft store does not.

use std::time::Duration;

use peerpod_podvm::client::ctx;
use peerpod_podvm::memory::{SHM, guest_probe_with, read_only_bind};
use peerpod_podvm::secure_boot::{SNAKEOIL_SUBJECT, TrustedKeys};
use peerpod_podvm::{PodPki, PodVm, PodVmOptions, PodvmImage, UserData};

use super::{
    BOOT_TIMEOUT, ONE_VM, image, initdata, kbs_cert, loud, run_dir, runtime, wait_serving,
};

/// What the firmware prints when it will not start a boot option.
const REFUSED: &str = "BdsDxe: failed to load Boot";

#[test]
fn a_signed_uki_serves_under_secure_boot_and_an_altered_or_untrusted_one_never_boots() {
    let Some(image) = image() else { return };
    if image.uki_signer() != Some(SNAKEOIL_SUBJECT) {
        let message = format!(
            "the Secure Boot test did NOT run: the image's UKI is {}, and the test's firmware \
             trusts only Debian's snakeoil key (PEERPOD_PODVM_E2E=test signs the tests' image \
             with it; or build with PODVM_SB_KEY/PODVM_SB_CERT set to that key, see \
             docs/podvm-image.md)",
            image
                .uki_signer()
                .map_or("unsigned".to_string(), |s| format!("signed by {s}"))
        );
        // The tests' own image is always signed; under CI a skip fails, as for the other tests.
        if std::env::var("PEERPOD_PODVM_E2E").is_ok_and(|v| v == "test")
            || std::env::var("CI").is_ok_and(|v| v == "true")
        {
            panic!("{message}");
        }
        loud(&format!("SKIPPED: {message}"));
        return;
    }
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    trusted_signer_boots_locked_down_and_serves(&image);
    altered_uki_is_refused(&image);
    untrusted_signer_is_refused(&image);
}

/// Snakeoil store: Secure Boot on, the kernel locked down, 15150 serving, a container running.
fn trusted_signer_boots_locked_down_and_serves(image: &PodvmImage) {
    let pki = PodPki::generate().expect("certificates");
    let user_data = UserData::new()
        .file("/run/peerpod/apf.json", pki.apf_json())
        .initdata(&initdata("https://10.0.2.2:8443", &kbs_cert()))
        .to_cloud_config();
    let dir = run_dir("secure-boot");
    let mut options = PodVmOptions::new(image.clone(), user_data, &dir);
    options.secure_boot = Some(TrustedKeys::Snakeoil);
    let mut vm = PodVm::boot(&options).expect("boot");
    let rt = runtime();
    let (shim, answered) = wait_serving(&mut vm, &pki, &rt);
    let firmware = vm
        .console()
        .find("podvm-initramfs: firmware:")
        .unwrap_or_else(|| panic!("no firmware line:\n{}", vm.console().tail(60)));
    eprintln!(
        "Secure Boot (snakeoil db): Check answered {:.1} s after QEMU start; {}",
        (answered - vm.started()).as_secs_f64(),
        firmware.text
    );
    assert!(
        firmware.text.contains("UEFI Secure Boot enabled"),
        "the kernel does not report Secure Boot on: {}",
        firmware.text
    );
    assert!(
        firmware.text.contains("kernel lockdown: integrity")
            || firmware.text.contains("kernel lockdown: confidentiality"),
        "Secure Boot on but the kernel is not locked down: {}",
        firmware.text
    );

    // The running system agrees, and the agent runs a container under the lockdown.
    let sandbox = peerpod_tests::requests::sandbox("podvm-sb", "podvm-sb", SHM)
        .expect("CreateSandbox request");
    rt.block_on(
        shim.agent
            .create_sandbox(ctx(Duration::from_secs(120)), &sandbox),
    )
    .unwrap_or_else(|e| panic!("CreateSandbox: {e}\n{}", vm.console().tail(60)));
    let (out, err, status) = rt
        .block_on(guest_probe_with(
            &shim,
            "podvm-lockdown-probe",
            "cat /security/lockdown",
            &[read_only_bind("/sys/kernel/security", "/security")],
            &[],
        ))
        .unwrap_or_else(|e| panic!("lockdown probe: {e}\n{}", vm.console().tail(60)));
    assert!(
        matches!(status, Ok(0))
            && (out.contains("[integrity]") || out.contains("[confidentiality]")),
        "the guest's lockdown: {out:?} {err:?} {status:?}"
    );
    vm.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The host changes the root hash in the UKI's command line on the disk's ESP (to boot a root
/// of its own): the signature no longer matches and the firmware starts nothing.
fn altered_uki_is_refused(image: &PodvmImage) {
    let dir = run_dir("secure-boot-altered");
    std::fs::create_dir_all(&dir).expect("run dir");
    let roothash = image.roothash().expect("root hash").to_string();
    let offset = uki_root_hash_offset(image, &dir, &roothash);
    let mut options = PodVmOptions::new(image.clone(), UserData::new().to_cloud_config(), &dir);
    options.secure_boot = Some(TrustedKeys::Snakeoil);
    let other = if roothash.starts_with('0') {
        b"1"
    } else {
        b"0"
    };
    options.tamper = vec![(offset, other.to_vec())];
    refused(&options, "an altered UKI");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Firmware whose db holds only Microsoft's certificates (what Azure's default templates
/// trust) refuses a UKI signed with another key.
fn untrusted_signer_is_refused(image: &PodvmImage) {
    let dir = run_dir("secure-boot-untrusted");
    let mut options = PodVmOptions::new(image.clone(), UserData::new().to_cloud_config(), &dir);
    options.secure_boot = Some(TrustedKeys::Microsoft);
    refused(&options, "a UKI signed by a key the db does not hold");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Boots `options` and expects the firmware to refuse the disk's boot option, and nothing of
/// the guest's OS on the console afterwards.
fn refused(options: &PodVmOptions, what: &str) {
    let mut vm = PodVm::boot(options).expect("boot");
    let at = vm
        .wait_console(REFUSED, BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("the firmware did not refuse {what}: {e}"));
    // Past the refusal the firmware tries its other boot options (the network); give a started
    // kernel time to show itself.
    std::thread::sleep(Duration::from_secs(10));
    let line = vm
        .console()
        .find(REFUSED)
        .map(|l| l.text)
        .unwrap_or_default();
    eprintln!(
        "Secure Boot refused {what} {:.1} s after QEMU start: {line}",
        at.as_secs_f64()
    );
    assert!(
        vm.console().find("podvm-initramfs").is_none(),
        "{what} booted:\n{}",
        vm.console().tail(40)
    );
    vm.stop();
}

/// Where, on the disk, the first digit of the root hash in the UKI's command line is: the ESP
/// (1 MiB into the disk) read out of the qcow2 and searched for `roothash=<hash>`.
fn uki_root_hash_offset(image: &PodvmImage, dir: &std::path::Path, roothash: &str) -> u64 {
    let esp_mib = image.number("ESP_MIB").expect("ESP_MIB in image.env");
    let esp = dir.join("esp.raw");
    let out = std::process::Command::new("qemu-img")
        .args(["dd", "-f", "qcow2", "-O", "raw", "bs=1M", "skip=1"])
        .arg(format!("count={esp_mib}"))
        .arg(format!("if={}", image.qcow2().display()))
        .arg(format!("of={}", esp.display()))
        .output()
        .expect("qemu-img dd");
    assert!(out.status.success(), "qemu-img dd: {out:?}");
    let bytes = std::fs::read(&esp).expect("read the ESP");
    let _ = std::fs::remove_file(&esp);
    let needle = format!("roothash={roothash}");
    let found: Vec<usize> = bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle.as_bytes())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "the UKI's command line should be on the ESP exactly once"
    );
    1024 * 1024 + found[0] as u64 + "roothash=".len() as u64
}
