//! The NOTRACK rules for the VXLAN port, with upstream's chains and comments: in the `raw`
//! table, `peerpod-OUTPUT` (jumped to from `OUTPUT`) skips connection tracking for UDP to the
//! worker on the VXLAN port, `peerpod-PREROUTING` (from `PREROUTING`) for UDP from it. The
//! tunnel's packets then never fill the conntrack table nor get NATed.
//!
//! Run with Debian's `iptables` (the nft backend by default); each call waits for the xtables
//! lock (`-w`). Must be called from a thread in the host network namespace.

use std::net::Ipv4Addr;
use std::process::Command;

use super::command::CommandRunner;

/// Why the rules could not be set or removed.
#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    /// iptables could not be run or waited for.
    #[error("cannot run iptables (is Debian's iptables package installed?)")]
    Spawn(#[source] std::io::Error),
    /// iptables refused a command.
    #[error("iptables {args} failed: {stderr}")]
    Failed {
        /// The arguments.
        args: String,
        /// What iptables said.
        stderr: String,
    },
}

const OUTPUT_CHAIN: &str = "peerpod-OUTPUT";
const PREROUTING_CHAIN: &str = "peerpod-PREROUTING";

struct Rule {
    base: &'static str,
    chain: &'static str,
    spec: Vec<String>,
}

fn rules(worker: Ipv4Addr, port: u16, vni: u32) -> [Rule; 2] {
    let comment = format!("peerpod [vni:{vni}]");
    let spec = |dir: &str| {
        vec![
            "-m".into(),
            "comment".into(),
            "--comment".into(),
            comment.clone(),
            dir.into(),
            worker.to_string(),
            "-p".into(),
            "udp".into(),
            "-m".into(),
            "udp".into(),
            "--dport".into(),
            port.to_string(),
            "-j".into(),
            "NOTRACK".into(),
        ]
    };
    [
        Rule {
            base: "OUTPUT",
            chain: OUTPUT_CHAIN,
            spec: spec("-d"),
        },
        Rule {
            base: "PREROUTING",
            chain: PREROUTING_CHAIN,
            spec: spec("-s"),
        },
    ]
}

/// Runs `iptables -w -t raw <args>`; `Ok(false)` when it exits 1 (a check that did not match,
/// a missing chain).
fn raw(runner: &dyn CommandRunner, args: &[&str]) -> Result<bool, IptablesError> {
    let out = runner
        .output(
            Command::new("iptables")
                .arg("-w")
                .arg("-t")
                .arg("raw")
                .args(args),
        )
        .map_err(IptablesError::Spawn)?;
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(IptablesError::Failed {
            args: format!("-t raw {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        }),
    }
}

fn must(runner: &dyn CommandRunner, args: &[&str]) -> Result<(), IptablesError> {
    if raw(runner, args)? {
        Ok(())
    } else {
        Err(IptablesError::Failed {
            args: format!("-t raw {}", args.join(" ")),
            stderr: "exit status 1".into(),
        })
    }
}

/// Adds the rules (idempotent).
pub fn setup(
    runner: &dyn CommandRunner,
    worker: Ipv4Addr,
    port: u16,
    vni: u32,
) -> Result<(), IptablesError> {
    for rule in rules(worker, port, vni) {
        if !raw(runner, &["-S", rule.chain])? {
            must(runner, &["-N", rule.chain])?;
        }
        if !raw(runner, &["-C", rule.base, "-j", rule.chain])? {
            must(runner, &["-A", rule.base, "-j", rule.chain])?;
        }
        let spec: Vec<&str> = rule.spec.iter().map(String::as_str).collect();
        if !raw(runner, &[&["-C", rule.chain][..], &spec].concat())? {
            must(runner, &[&["-A", rule.chain][..], &spec].concat())?;
        }
    }
    Ok(())
}

/// Removes the rules, and the chains and jumps once they hold no other rule.
pub fn teardown(
    runner: &dyn CommandRunner,
    worker: Ipv4Addr,
    port: u16,
    vni: u32,
) -> Result<(), IptablesError> {
    for rule in rules(worker, port, vni) {
        let spec: Vec<&str> = rule.spec.iter().map(String::as_str).collect();
        while raw(runner, &[&["-C", rule.chain][..], &spec].concat())? {
            must(runner, &[&["-D", rule.chain][..], &spec].concat())?;
        }
        let out = runner
            .output(Command::new("iptables").args(["-w", "-t", "raw", "-S", rule.chain]))
            .map_err(IptablesError::Spawn)?;
        if !out.status.success() {
            continue;
        }
        // `-S chain` prints "-N chain" and then the chain's rules.
        if String::from_utf8_lossy(&out.stdout).lines().count() > 1 {
            continue;
        }
        while raw(runner, &["-C", rule.base, "-j", rule.chain])? {
            must(runner, &["-D", rule.base, "-j", rule.chain])?;
        }
        must(runner, &["-X", rule.chain])?;
    }
    Ok(())
}
