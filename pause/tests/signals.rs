//! The real `pause` binary: SIGTERM and SIGINT end it with status 0, exited children are reaped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const PAUSE: &str = env!("CARGO_BIN_EXE_pause");

/// Waits up to `limit` for `child` to exit; kills it and fails if it does not.
fn exit_within(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait on pause") {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pause did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn pid_of(child: &Child) -> Pid {
    Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"))
}

/// The state letter of /proc/<pid>/stat (`Z` for a zombie), or None once the pid is gone.
fn state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

fn started_and_blocking(child: &mut Child) {
    // Give it time to block its signals; a signal sent before that would kill it by default
    // action (status is then "signal", which the caller's assert catches).
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "pause exited by itself"
    );
}

#[test]
fn sigterm_ends_it_with_status_zero() {
    let mut child = Command::new(PAUSE)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn pause");
    started_and_blocking(&mut child);
    kill(pid_of(&child), Signal::SIGTERM).expect("SIGTERM");
    let status = exit_within(&mut child, Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "{status}");
}

#[test]
fn sigint_ends_it_with_status_zero() {
    let mut child = Command::new(PAUSE)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn pause");
    started_and_blocking(&mut child);
    kill(pid_of(&child), Signal::SIGINT).expect("SIGINT");
    let status = exit_within(&mut child, Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "{status}");
}

#[test]
fn other_signals_do_not_end_it_but_sigchld_reaps_an_exited_child() {
    let dir = std::env::temp_dir().join(format!("peerpod-pause-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let pidfile = dir.join("child.pid");
    // The shell forks a short-lived child, then becomes pause: pause is that child's parent and
    // must reap it when it exits, or it stays a zombie.
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(r#"sleep 0.5 & echo $! > "$1"; exec "$2""#)
        .arg("sh")
        .arg(&pidfile)
        .arg(PAUSE)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sh + pause");
    started_and_blocking(&mut child);
    let grandchild: i32 = read_pid(&pidfile);
    // A SIGCHLD with nothing to reap yet does not end it.
    kill(pid_of(&child), Signal::SIGCHLD).expect("SIGCHLD");
    std::thread::sleep(Duration::from_millis(100));
    assert!(child.try_wait().expect("try_wait").is_none());

    let started = Instant::now();
    while state(grandchild).is_some() && started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left = state(grandchild);
    kill(pid_of(&child), Signal::SIGTERM).expect("SIGTERM");
    let status = exit_within(&mut child, Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        left, None,
        "the exited child {grandchild} was not reaped (state {left:?})"
    );
    assert_eq!(status.code(), Some(0), "{status}");
}

fn read_pid(path: &Path) -> i32 {
    let started = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(pid) = text.trim().parse()
        {
            return pid;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no pid in {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn it_has_handlers_for_sigint_sigterm_and_sigchld() {
    // The agent turns SIGTERM into SIGKILL for a container init without a SIGTERM handler, and
    // the kernel drops unhandled signals sent to a PID namespace's init: SigCgt must list them.
    let mut child = Command::new(PAUSE)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn pause");
    started_and_blocking(&mut child);
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()));
    let _ = child.kill();
    let _ = child.wait();
    let status = status.expect("/proc/<pause>/status");
    let caught = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .map(|m| u64::from_str_radix(m.trim(), 16))
        .expect("SigCgt line")
        .expect("SigCgt is hex");
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGCHLD] {
        assert_ne!(
            caught & (1 << (signal as u32 - 1)),
            0,
            "{signal:?} has no handler (SigCgt {caught:x})"
        );
    }
}
