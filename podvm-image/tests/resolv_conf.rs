//! `podvm-resolv-conf.service` (podvm-image/rootfs/etc): its script, taken from the unit file as systemd
//! would run it (`$$` unescaped, continuation lines joined), run by `/bin/sh` against a
//! networkd state file in a temporary directory. The DNS servers come from a DHCP lease, which
//! the host controls: only address characters pass, at most three servers, nothing is run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

const UNIT: &str = include_str!("../rootfs/etc/systemd/system/podvm-resolv-conf.service");

/// The `sh -c` script of the unit's ExecStart, with its two paths moved under `dir`.
fn script(dir: &Path) -> String {
    let start = UNIT
        .find("ExecStart=/bin/sh -eufc '")
        .expect("the unit runs /bin/sh -eufc")
        + "ExecStart=/bin/sh -eufc '".len();
    let end = start
        + UNIT[start..]
            .find("'\n")
            .expect("the script's closing quote");
    UNIT[start..end]
        .replace("\\\n", " ")
        .replace("$$", "$")
        .replace(
            "/run/systemd/netif/state",
            &format!("{}/state", dir.display()),
        )
        .replace(
            "/run/systemd/resolve",
            &format!("{}/resolve", dir.display()),
        )
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "podvm-resolv-conf-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temporary directory");
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the script with `state` as networkd's state file; the written resolv.conf, if any.
fn run(state: Option<&str>) -> (TempDir, Option<String>) {
    let dir = TempDir::new();
    if let Some(state) = state {
        std::fs::write(dir.path().join("state"), state).expect("state file");
    }
    let out = Command::new("/bin/sh")
        .args(["-eufc", &script(dir.path())])
        .current_dir(dir.path())
        .output()
        .expect("/bin/sh runs");
    assert!(out.status.success(), "the script failed: {out:?}");
    let written = std::fs::read_to_string(dir.path().join("resolve/resolv.conf")).ok();
    (dir, written)
}

fn nameservers(conf: &str) -> Vec<&str> {
    conf.lines()
        .filter_map(|l| l.strip_prefix("nameserver "))
        .collect()
}

#[test]
fn the_dhcp_dns_servers_become_nameserver_lines() {
    let (_d, conf) = run(Some(
        "OPER_STATE=routable\nCARRIER_STATE=carrier\nDNS=168.63.129.16\nNTP=\n",
    ));
    let conf = conf.expect("resolv.conf written");
    assert_eq!(nameservers(&conf), ["168.63.129.16"]);
    let (_d, conf) = run(Some("DNS=10.0.2.3 fec0::3\n"));
    assert_eq!(
        nameservers(&conf.expect("resolv.conf written")),
        ["10.0.2.3", "fec0::3"]
    );
}

#[test]
fn hostile_lease_values_are_dropped_and_never_run() {
    let (dir, conf) = run(Some(
        "DNS=1.1.1.1 $(touch${IFS}pwned) `touch${IFS}pwned2` ;touch${IFS}pwned3 * \
         nameserver 9.9.9.9 2001:db8::1 8.8.8.8 8.8.4.4\n",
    ));
    let conf = conf.expect("resolv.conf written");
    // Three at most (glibc reads no more), only addresses, nothing executed or globbed.
    assert_eq!(nameservers(&conf), ["1.1.1.1", "9.9.9.9", "2001:db8::1"]);
    assert_eq!(conf.lines().count(), 4, "{conf}");
    for f in ["pwned", "pwned2", "pwned3"] {
        assert!(!dir.path().join(f).exists(), "{f} was created");
    }
}

#[test]
fn no_dns_server_known_writes_nothing() {
    let (_d, conf) = run(Some("OPER_STATE=routable\nDNS=\n"));
    assert_eq!(conf, None);
    let (_d, conf) = run(None);
    assert_eq!(conf, None, "no state file yet");
    let (_d, conf) = run(Some("DNS=$(reboot) ../../etc\n"));
    assert_eq!(conf, None);
}

/// Both units pass `systemd-analyze verify` (skipped loudly without systemd; a failure under
/// CI=true), and a unit with a typo does not, so the check can fail.
#[test]
fn the_units_pass_systemd_analyze_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .map_or(true, |o| !o.status.success())
    {
        let message = "SKIPPED: systemd-analyze is missing (apt-get install systemd)";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{message} (CI=true: a skip fails)");
        }
        eprintln!("\n*** {message} ***");
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rootfs/etc/systemd/system");
    let verify = |files: &[PathBuf]| {
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .args(files)
            .output()
            .expect("systemd-analyze runs");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let report = verify(&[
        dir.join("podvm-resolv-conf.service"),
        dir.join("podvm-resolv-conf.path"),
    ]);
    assert!(report.trim().is_empty(), "{report}");
    let bad = TempDir::new();
    let unit = bad.path().join("bad-resolv.service");
    std::fs::write(&unit, UNIT.replace("Type=oneshot", "Typo=oneshot")).expect("write");
    assert!(!verify(&[unit]).trim().is_empty(), "a typo passed verify");
}
