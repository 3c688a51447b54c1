//! The boot timeline from the console: QEMU start → firmware → kernel → initramfs → systemd →
//! the services → 15150 answering Check. Times are when the host read each console line.

use std::fmt::Write as _;
use std::time::Duration;

use crate::Console;

/// Console markers, in boot order: (label, text the line contains). systemd's own status lines
/// stop once the boot transaction is done, and the services start later (path-activated), so
/// the services are marked by their own "serving" log lines (their stderr goes to the console).
pub const MARKERS: &[(&str, &str)] = &[
    ("initramfs", "podvm-initramfs: started"),
    (
        "verity root opened, systemd starts",
        "podvm-initramfs: root",
    ),
    ("systemd", "Welcome to"),
    // The waits in userspace before provisioning: udev (which the cidata disk's by-label link
    // needs) and systemd-networkd (network.target, which provisioning is ordered after).
    ("udevd started", "Started systemd-udevd.service"),
    (
        "network.target (networkd started)",
        "Reached target network.target",
    ),
    (
        "guest resolv.conf written",
        "Finished podvm-resolv-conf.service",
    ),
    ("cidata mounted", "Mounted media-cidata.mount"),
    ("provisioning done", "Finished process-user-data.service"),
    ("attestation agent serving", "attestation agent serving"),
    ("CDH serving", "confidential data hub serving"),
    ("front door serving on 15150", "front door serving"),
    ("kata agent serving", "\"message\":\"agent serving\""),
    // Present when the user data asks for scratch space, or a container is run.
    ("encrypted scratch space mounted", "scratch space ready"),
    ("CDH attested to the KBS", "attested to the KBS"),
    ("image pulled in the guest", "image pulled in the guest"),
];

/// The timeline of one boot.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    /// (label, time since QEMU start) for each marker seen and each host event, in time order.
    pub events: Vec<(String, Duration)>,
    /// When the host got SERVING from Check, since QEMU start.
    pub check_answered: Option<Duration>,
    /// When the kernel started, since QEMU start: the initramfs prints the guest's uptime
    /// (time since the kernel started), subtracted from when the host read that line. The
    /// production command line has `loglevel=4`, so the kernel's own banner is not printed.
    pub kernel_started: Option<Duration>,
}

impl Timeline {
    /// Reads the markers from `console`; `check_answered` is the host's measurement.
    pub fn from_console(console: &Console, check_answered: Option<Duration>) -> Self {
        let mut events: Vec<(String, Duration)> = MARKERS
            .iter()
            .filter_map(|(label, needle)| console.find(needle).map(|l| (label.to_string(), l.at)))
            .collect();
        events.sort_by_key(|(_, t)| *t);
        let kernel_started = console.find("podvm-initramfs: started").and_then(|l| {
            let uptime: f64 = l
                .text
                .split("started ")
                .nth(1)?
                .split('s')
                .next()?
                .parse()
                .ok()?;
            l.at.checked_sub(Duration::try_from_secs_f64(uptime).ok()?)
        });
        Self {
            events,
            check_answered,
            kernel_started,
        }
    }

    /// Adds an event the host saw (an RPC answered, a container's output read), at `at` since
    /// QEMU start; events stay in time order.
    pub fn mark(&mut self, label: impl Into<String>, at: Duration) {
        self.events.push((label.into(), at));
        self.events.sort_by_key(|(_, t)| *t);
    }

    /// The time of the marker with `label`.
    pub fn at(&self, label: &str) -> Option<Duration> {
        self.events
            .iter()
            .find(|(l, _)| l == label)
            .map(|(_, t)| *t)
    }

    /// (firmware, kernel + initramfs, userspace to Check answered): QEMU start → kernel start,
    /// → the initramfs hands over to systemd, → Check answered.
    pub fn split(&self) -> Option<(Duration, Duration, Duration)> {
        let kernel = self.kernel_started?;
        let systemd = self.at(MARKERS[1].0)?;
        let check = self.check_answered?;
        Some((
            kernel,
            systemd.checked_sub(kernel)?,
            check.checked_sub(systemd)?,
        ))
    }

    /// A readable table, in time order.
    pub fn render(&self) -> String {
        let mut rows: Vec<(Duration, &str)> = vec![(Duration::ZERO, "QEMU started (VM start)")];
        rows.extend(self.events.iter().map(|(l, t)| (*t, l.as_str())));
        if let Some(k) = self.kernel_started {
            rows.push((k, "kernel started (firmware done)"));
        }
        if let Some(c) = self.check_answered {
            rows.push((c, "Check answered SERVING over mTLS (first RPC)"));
        }
        rows.sort_by_key(|(t, _)| *t);
        let mut out = String::new();
        for (at, label) in rows {
            let _ = writeln!(out, "  {:>8.3} s  {label}", at.as_secs_f64());
        }
        if let Some((fw, k, u)) = self.split() {
            let _ = writeln!(
                out,
                "  firmware {:.3} s, kernel+initramfs {:.3} s, userspace to Check {:.3} s",
                fw.as_secs_f64(),
                k.as_secs_f64(),
                u.as_secs_f64()
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn the_split_comes_from_the_initramfs_uptime_and_the_markers() {
        let log = b"SeaBIOS\npodvm-initramfs: started 1.50s after kernel start\n\
                    podvm-initramfs: root /dev/vda2 verified by /dev/vda3, switching\n";
        let dir = std::env::temp_dir().join(format!("podvm-tl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let console =
            Console::capture(&log[..], Instant::now(), &dir.join("c.log")).expect("capture");
        let deadline = Instant::now() + Duration::from_secs(5);
        while console.lines().len() < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        // The lines were read within milliseconds of "QEMU start", so the uptime (1.5 s)
        // cannot be subtracted: no kernel start, and no split rather than a negative one.
        let t = Timeline::from_console(&console, Some(Duration::from_secs(9)));
        assert!(t.kernel_started.is_none());
        assert!(t.split().is_none());
        assert!(t.at("initramfs").is_some());
        let mut t = t;
        t.mark("image pulled", Duration::ZERO);
        assert_eq!(
            t.events[0].0, "image pulled",
            "marks are kept in time order"
        );
        assert!(t.render().contains("image pulled"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
