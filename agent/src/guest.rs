//! Requests about the guest itself: its clock, its entropy pool, and its metrics.

use std::fmt::Write as _;

use nix::time::{ClockId, clock_settime};

use crate::error::AgentError;

/// SetGuestDateTime: sets the realtime clock.
pub fn set_date_time(seconds: i64, microseconds: i64) -> Result<(), AgentError> {
    if !(0..1_000_000).contains(&microseconds) || seconds < 0 {
        return Err(AgentError::InvalidArgument(format!(
            "{seconds} s and {microseconds} µs is not a valid time"
        )));
    }
    let time = nix::sys::time::TimeSpec::new(seconds, microseconds * 1000);
    clock_settime(ClockId::CLOCK_REALTIME, time)
        .map_err(|e| AgentError::internal("cannot set the guest's clock", e))
}

/// ReseedRandomDev: mixes the given bytes into the kernel's entropy pool.
pub fn reseed(data: &[u8]) -> Result<(), AgentError> {
    if data.is_empty() {
        return Err(AgentError::InvalidArgument(
            "ReseedRandomDev needs data".to_owned(),
        ));
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/random")
        .and_then(|mut random| std::io::Write::write_all(&mut random, data))
        .map_err(|e| AgentError::internal("cannot write to /dev/random", e))
}

/// The resolver configuration for CreateSandbox's `dns` lines, or `None` when there are none.
/// Each line must be a resolv.conf directive (`nameserver`, `search`, `domain`, `options`).
pub fn resolv_conf(lines: &[String]) -> Result<Option<String>, AgentError> {
    if lines.is_empty() {
        return Ok(None);
    }
    let mut text = String::new();
    for line in lines {
        let directive = line.split_whitespace().next().unwrap_or_default();
        if !["nameserver", "search", "domain", "options"].contains(&directive)
            || line.contains('\n')
        {
            return Err(AgentError::InvalidArgument(format!(
                "DNS line {line:?} is not a nameserver, search, domain or options directive"
            )));
        }
        text.push_str(line.trim());
        text.push('\n');
    }
    Ok(Some(text))
}

/// GetMetrics: the agent's and the guest's metrics in Prometheus text format.
pub fn metrics() -> String {
    let mut out = String::new();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    metric(
        &mut out,
        "kata_agent_process_resident_memory_bytes",
        "gauge",
        "Resident memory of the agent.",
        field("VmRSS:").map(|kb| kb * 1024),
    );
    metric(
        &mut out,
        "kata_agent_process_threads",
        "gauge",
        "Threads of the agent.",
        field("Threads:"),
    );
    let fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .ok();
    metric(
        &mut out,
        "kata_agent_process_open_fds",
        "gauge",
        "Open file descriptors of the agent.",
        fds,
    );

    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let loads: Vec<&str> = loadavg.split_whitespace().collect();
    for (i, minutes) in ["1", "5", "15"].iter().enumerate() {
        if let Some(value) = loads.get(i) {
            let name = format!("kata_guest_load{minutes}");
            let _ = writeln!(
                out,
                "# HELP {name} Guest load average over {minutes} minute(s)."
            );
            let _ = writeln!(out, "# TYPE {name} gauge\n{name} {value}");
        }
    }
    let uptime = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
    if let Some(seconds) = uptime.split_whitespace().next() {
        let _ = writeln!(out, "# HELP kata_guest_uptime_seconds Guest uptime.");
        let _ = writeln!(
            out,
            "# TYPE kata_guest_uptime_seconds gauge\nkata_guest_uptime_seconds {seconds}"
        );
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let _ = writeln!(
        out,
        "# HELP kata_guest_meminfo_bytes Guest memory statistics from /proc/meminfo."
    );
    let _ = writeln!(out, "# TYPE kata_guest_meminfo_bytes gauge");
    for line in meminfo.lines() {
        let Some((item, rest)) = line.split_once(':') else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(value), unit) = (
            parts.next().and_then(|v| v.parse::<u64>().ok()),
            parts.next(),
        ) else {
            continue;
        };
        let bytes = if unit == Some("kB") {
            value * 1024
        } else {
            value
        };
        let _ = writeln!(out, "kata_guest_meminfo_bytes{{item=\"{item}\"}} {bytes}");
    }
    out
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: Option<u64>) {
    if let Some(value) = value {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_prometheus_text() {
        let text = metrics();
        assert!(text.contains("# TYPE kata_agent_process_resident_memory_bytes gauge"));
        assert!(text.contains("kata_guest_meminfo_bytes{item=\"MemTotal\"}"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap_or_default();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }

    #[test]
    fn dns_lines_become_a_resolv_conf() {
        assert_eq!(resolv_conf(&[]).expect("none"), None);
        let lines = vec![
            "nameserver 10.96.0.10".to_owned(),
            "search default.svc.cluster.local".to_owned(),
        ];
        assert_eq!(
            resolv_conf(&lines).expect("valid").as_deref(),
            Some("nameserver 10.96.0.10\nsearch default.svc.cluster.local\n")
        );
        assert!(resolv_conf(&["rm -rf /".to_owned()]).is_err());
        assert!(resolv_conf(&["nameserver 1.1.1.1\nnameserver 6.6.6.6".to_owned()]).is_err());
    }

    #[test]
    fn invalid_times_and_empty_seeds_are_refused() {
        assert!(matches!(
            set_date_time(0, 1_000_000),
            Err(AgentError::InvalidArgument(_))
        ));
        assert!(matches!(
            set_date_time(-5, 0),
            Err(AgentError::InvalidArgument(_))
        ));
        assert!(matches!(reseed(&[]), Err(AgentError::InvalidArgument(_))));
    }
}
