//! The reaper with real processes and a recycled pid. The test re-runs itself as pid 1 of a new
//! PID namespace (`unshare --pid --fork`), where writing `ns_last_pid` makes the kernel hand a
//! dead child's pid to the next child. Needs root (CI runs as root).

use std::process::Command;
use std::time::Duration;

use kata_agent::runtime::reaper::{Exit, Reaper};

/// Set in the re-run that is inside the new PID namespace.
const INSIDE: &str = "KATA_AGENT_REAPER_TEST_INSIDE_PIDNS";
const TEST: &str = "a_recycled_pid_is_a_new_process_to_the_reaper";

#[test]
fn a_recycled_pid_is_a_new_process_to_the_reaper() {
    if std::env::var_os(INSIDE).is_some() {
        inside_own_pid_namespace();
        return;
    }
    let output = Command::new("unshare")
        .args(["--pid", "--fork", "--"])
        .arg(std::env::current_exe().expect("test binary"))
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env(INSIDE, "1")
        .output()
        .expect("unshare runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{text}");
    assert!(text.contains("1 passed"), "the test ran inside: {text}");
}

fn inside_own_pid_namespace() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let reaper = Reaper::start().expect("reaper");
        let wait = |slot: std::sync::Arc<kata_agent::runtime::reaper::ExitSlot>| async move {
            tokio::time::timeout(Duration::from_secs(10), slot.wait())
                .await
                .expect("an exit within 10 s")
        };

        // A child that exits; its slot is never forgotten (as a helper's never was).
        let first = Command::new("/bin/true").spawn().expect("true");
        let pid = i32::try_from(first.id()).expect("pid");
        drop(first);
        let old = reaper.register(pid);
        assert_eq!(wait(old.clone()).await, Exit::Code(0));

        // The kernel hands the same pid to the next child.
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).expect("ns_last_pid");
        let second = Command::new("/bin/sleep")
            .arg("1000")
            .spawn()
            .expect("sleep");
        assert_eq!(
            i32::try_from(second.id()).expect("pid"),
            pid,
            "the pid was recycled"
        );
        drop(second);
        let new = reaper.register(pid);
        assert_eq!(
            new.exit(),
            None,
            "the new process is alive, not the old one's exit"
        );
        // A signal meant for the old process does not reach the new one.
        let sent = reaper
            .signal(pid, &old, nix::sys::signal::Signal::SIGKILL)
            .expect("signal");
        assert!(!sent, "the old process is gone: nothing is sent");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(new.exit(), None, "the new process was not hit");
        let sent = reaper
            .signal(pid, &new, nix::sys::signal::Signal::SIGKILL)
            .expect("signal");
        assert!(sent);
        let exit = wait(new.clone()).await;
        assert_eq!(exit, Exit::Signal(9));
        assert_eq!(exit.status(), 137);
        assert_eq!(old.exit(), Some(Exit::Code(0)), "the old exit is untouched");
        reaper.forget(pid, &old);
        reaper.forget(pid, &new);
        assert_eq!(reaper.registered(), 0);
    });
}
