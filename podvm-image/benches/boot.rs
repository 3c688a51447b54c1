//! Boot benchmark: QEMU start → 15150 answering Check over mTLS, split into firmware, kernel +
//! initramfs and userspace, against a baseline measured in the same run: the same kernel and
//! initramfs booted to the point where systemd takes over (the firmware + kernel floor every
//! image pays). Gated like the e2e test (`PEERPOD_PODVM_E2E=1`); prints its figures.

use std::time::Duration;

use peerpod_podvm::{PodPki, PodVm, PodVmOptions, PodvmImage, Timeline, UserData, client};

fn main() {
    if std::env::var("PEERPOD_PODVM_E2E").as_deref() != Ok("1") {
        eprintln!(
            "\n*** SKIPPED: the pod VM boot bench needs PEERPOD_PODVM_E2E=1 and `make podvm` ***"
        );
        return;
    }
    let image = match PodvmImage::open(&PodvmImage::default_dir()) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    println!(
        "image: qcow2 {:.1} MiB, VHD {} MiB, UKI {:.1} MiB, root {} MiB + verity {} MiB",
        image.number("QCOW2_BYTES").unwrap_or(0) as f64 / 1048576.0,
        image.number("VHD_BYTES").unwrap_or(0) / 1048576,
        image.number("UKI_BYTES").unwrap_or(0) as f64 / 1048576.0,
        image.number("ROOT_MIB").unwrap_or(0),
        image.number("VERITY_MIB").unwrap_or(0),
    );
    let pki = match PodPki::generate() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let initdata = format!(
        "version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n\"aa.toml\" = '''\n[token_configs.kbs]\nurl = \"https://10.0.2.2:8443\"\n'''\n\"policy.rego\" = '''\n{}'''\n",
        include_str!("../../policy/examples/allow-all.rego")
    );
    let user_data = UserData::new()
        .file("/run/peerpod/apf.json", pki.apf_json())
        .initdata(&initdata)
        .to_cloud_config();
    // PODVM_BENCH_BOOTS boots one after another (default 1), each printed; then the fastest.
    let boots: usize = std::env::var("PODVM_BENCH_BOOTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .clamp(1, 10);
    let mut splits = Vec::new();
    for n in 0..boots {
        println!("boot {} of {boots}", n + 1);
        match boot_once(&image, &pki, &user_data, n) {
            Some(split) => splits.push(split),
            None => std::process::exit(1),
        }
    }
    if boots > 1 {
        let best =
            |f: fn(&(f64, f64, f64)) -> f64| splits.iter().map(f).fold(f64::INFINITY, f64::min);
        let worst = |f: fn(&(f64, f64, f64)) -> f64| splits.iter().map(f).fold(0.0, f64::max);
        println!(
            "{boots} boots: firmware {:.3}-{:.3} s, kernel+initramfs {:.3}-{:.3} s, userspace to \
             Check {:.3}-{:.3} s (fastest userspace {:.2}x the fastest firmware + kernel)",
            best(|s| s.0),
            worst(|s| s.0),
            best(|s| s.1),
            worst(|s| s.1),
            best(|s| s.2),
            worst(|s| s.2),
            best(|s| s.2) / best(|s| s.0 + s.1).max(0.001)
        );
    }
}

/// One boot to Check; prints its timeline and returns (firmware, kernel + initramfs,
/// userspace) in seconds.
fn boot_once(
    image: &PodvmImage,
    pki: &PodPki,
    user_data: &str,
    n: usize,
) -> Option<(f64, f64, f64)> {
    let dir = PodvmImage::default_dir().join(format!("../runs/bench-{}-{n}", std::process::id()));
    let mut vm = match PodVm::boot(&PodVmOptions::new(
        image.clone(),
        user_data.to_string(),
        &dir,
    )) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("boot: {e}");
            return None;
        }
    };
    let started = vm.started();
    let addr = vm.forwarder_addr();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{e}");
            return None;
        }
    };
    let served = rt.block_on(client::wait_serving(
        addr,
        pki,
        Duration::from_secs(480),
        || vm.check_running("15150"),
    ));
    let split = match served {
        Ok((_, at)) => {
            let t = Timeline::from_console(vm.console(), Some(at - started));
            println!("boot timeline (TCG, no KVM):\n{}", t.render());
            let split = t.split();
            if let Some((fw, k, u)) = split {
                let floor = fw + k;
                println!(
                    "baseline (firmware + kernel + initramfs, same run): {:.3} s; userspace to Check adds {:.3} s ({:.2}x the baseline)",
                    floor.as_secs_f64(),
                    u.as_secs_f64(),
                    u.as_secs_f64() / floor.as_secs_f64().max(0.001)
                );
            }
            split.map(|(fw, k, u)| (fw.as_secs_f64(), k.as_secs_f64(), u.as_secs_f64()))
        }
        Err(e) => {
            eprintln!("{e}\n{}", vm.console().tail(60));
            None
        }
    };
    vm.stop();
    let _ = std::fs::remove_dir_all(&dir);
    split
}
