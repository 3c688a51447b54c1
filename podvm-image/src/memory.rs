//! The guest's userspace memory, read from inside the pod VM through the agent: a container
//! on an empty tmpfs root (the sandbox's shm storage, [`SHM`]) with the guest's read-only
//! `/usr` bound in, with the guest's `/proc` bound at `/guestproc`, reads every process's `Rss`
//! `Pss` and `Anonymous` from one read of `/proc/PID/smaps_rollup` (one snapshot, so PSS never
//! exceeds RSS) and its thread count from `status`, then the guest's `MemTotal`,
//! `MemAvailable` and `Shmem` from `meminfo`. RSS less the anonymous part is file pages: the
//! program's text and libraries, and files a process maps. `Shmem` is what tmpfs files hold,
//! which no RSS shows. The image has no shell to log in to; this is how the test sees inside.
//! The probe's own `sh`/`sed`/`cat` are left out of the sums.

use std::time::Duration;

use peerpod_protocols::kata::agent;
use peerpod_tests::requests::{self, Stream};
use serde_json::json;

use crate::PodvmError;
use crate::client::{ShimClient, ctx};

/// One guest process.
#[derive(Debug, Clone)]
pub struct GuestProcess {
    /// `Name:` from its status.
    pub name: String,
    /// Resident set, KiB.
    pub rss_kib: u64,
    /// Proportional set, KiB.
    pub pss_kib: u64,
    /// The anonymous part of the resident set (heap, stacks), KiB.
    pub anon_kib: u64,
    /// Threads.
    pub threads: u64,
}

/// Every userspace process of the guest (kernel threads have no RSS and are left out), and the
/// guest's own accounting of its memory.
#[derive(Debug, Clone, Default)]
pub struct GuestMemory {
    /// The processes, largest RSS first.
    pub processes: Vec<GuestProcess>,
    /// `/proc/meminfo`'s `MemTotal`, KiB.
    pub total_kib: u64,
    /// `/proc/meminfo`'s `MemAvailable`, KiB: what the guest could still give without swapping
    /// (free memory and the page cache it can drop).
    pub available_kib: u64,
    /// `/proc/meminfo`'s `Shmem`, KiB: tmpfs files (`/run`: provisioned files, the scratch
    /// space's LUKS header) and shared memory. Memory no process's RSS shows.
    pub shmem_kib: u64,
}

impl GuestMemory {
    /// Sum of RSS (shared pages counted once per process), KiB.
    pub fn rss_kib(&self) -> u64 {
        self.processes.iter().map(|p| p.rss_kib).sum()
    }

    /// Sum of PSS (shared pages divided among their users), KiB.
    pub fn pss_kib(&self) -> u64 {
        self.processes.iter().map(|p| p.pss_kib).sum()
    }

    /// Sum of anonymous RSS, KiB.
    pub fn anon_kib(&self) -> u64 {
        self.processes.iter().map(|p| p.anon_kib).sum()
    }

    /// Memory in use in the whole guest, kernel included: `MemTotal - MemAvailable`, KiB.
    pub fn in_use_kib(&self) -> u64 {
        self.total_kib.saturating_sub(self.available_kib)
    }

    /// The sums over processes and the guest's own figures, one line each.
    pub fn summary(&self) -> String {
        format!(
            "userspace: RSS {} KiB, PSS {} KiB, anonymous {} KiB, {} processes\n\
             whole guest, kernel included: {} KiB in use of {} KiB (MemTotal - MemAvailable), \
             {} KiB of it tmpfs/shared memory (Shmem)\n",
            self.rss_kib(),
            self.pss_kib(),
            self.anon_kib(),
            self.processes.len(),
            self.in_use_kib(),
            self.total_kib,
            self.shmem_kib
        )
    }

    /// One line per process: RSS, PSS, anonymous RSS, threads, name.
    pub fn table(&self) -> String {
        self.processes
            .iter()
            .map(|p| {
                format!(
                    "  {:>8} KiB RSS {:>8} KiB PSS {:>8} KiB anon {:>3} threads  {}\n",
                    p.rss_kib, p.pss_kib, p.anon_kib, p.threads, p.name
                )
            })
            .collect()
    }
}

/// Where the sandbox's shm storage is mounted (the tests' CreateSandbox puts it there).
pub const SHM: &str = "/run/kata-containers/sandbox/shm";

const SCRIPT: &str = "for d in /guestproc/[0-9]*; do \
    n=$(sed -n 's/^Name:[[:space:]]*//p' $d/status 2>/dev/null); \
    t=$(sed -n 's/^Threads:[[:space:]]*//p' $d/status 2>/dev/null); \
    m=$(sed -n 's/^\\(Rss\\|Pss\\|Anonymous\\):[[:space:]]*\\([0-9]*\\).*/\\2/p' $d/smaps_rollup 2>/dev/null); \
    [ -n \"$m\" ] && echo \"PROC $n\" $t $m; done; \
    sed -n 's/^\\(MemTotal\\|MemAvailable\\|Shmem\\):[[:space:]]*\\([0-9]*\\).*/MEM \\1 \\2/p' \
    /guestproc/meminfo; echo END";

fn parse(out: &str) -> Result<GuestMemory, String> {
    if !out.lines().any(|l| l.trim() == "END") {
        return Err(format!("the probe did not finish: {out:?}"));
    }
    let mut memory = GuestMemory::default();
    let (mut total, mut available, mut shmem) = (None, None, None);
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("MEM ") {
            let (key, value) = rest
                .split_once(' ')
                .ok_or_else(|| format!("bad probe line {line:?}"))?;
            let value = value
                .trim()
                .parse::<u64>()
                .map_err(|_| format!("bad number in {line:?}"))?;
            let field = match key {
                "MemTotal" => &mut total,
                "MemAvailable" => &mut available,
                "Shmem" => &mut shmem,
                _ => return Err(format!("unexpected probe line {line:?}")),
            };
            if field.replace(value).is_some() {
                return Err(format!("{key} twice in the probe's output"));
            }
            continue;
        }
        let Some(rest) = line.strip_prefix("PROC ") else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let [name, threads, rss, pss, anon] = f[..] else {
            return Err(format!("bad probe line {line:?}"));
        };
        // The probe itself.
        if matches!(name, "sh" | "sed" | "cat") {
            continue;
        }
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("bad number in {line:?}"))
        };
        memory.processes.push(GuestProcess {
            name: name.to_string(),
            rss_kib: num(rss)?,
            pss_kib: num(pss)?,
            anon_kib: num(anon)?,
            threads: num(threads)?,
        });
    }
    let (Some(total), Some(available), Some(shmem)) = (total, available, shmem) else {
        return Err(format!(
            "the probe did not give all of MemTotal, MemAvailable, Shmem: {out:?}"
        ));
    };
    (memory.total_kib, memory.available_kib, memory.shmem_kib) = (total, available, shmem);
    memory
        .processes
        .sort_by_key(|p| std::cmp::Reverse(p.rss_kib));
    Ok(memory)
}

fn request(
    id: &str,
    script: &str,
    extra_mounts: &[serde_json::Value],
    extra_capabilities: &[&str],
) -> Result<agent::CreateContainerRequest, PodvmError> {
    let mut value = json!({
        "container_id": id,
        "exec_id": id,
        "OCI": {
            "Version": "1.1.0",
            "Hostname": "memory-probe",
            // An empty tmpfs (the sandbox's shm storage) with the guest's /usr bound in.
            "Root": {"Path": SHM, "Readonly": false},
            "Process": {
                "Args": ["/usr/bin/sh", "-c", script],
                "Env": ["PATH=/usr/bin"],
                "Cwd": "/",
                "User": {"UID": 0, "GID": 0},
                "NoNewPrivileges": true,
                "Capabilities": {
                    "Bounding": ["CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"],
                    "Effective": ["CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"],
                    "Permitted": ["CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"]
                }
            },
            "Mounts": [
                {"destination": "/proc", "type_": "proc", "source": "proc",
                 "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/dev", "type_": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "mode=755", "size=65536k"]},
                {"destination": "/usr", "type_": "bind", "source": "/usr",
                 "options": ["rbind", "ro"]},
                // The guest's own /proc (the agent's, in the guest's PID namespace): the agent
                // gives every container a PID namespace of its own.
                {"destination": "/guestproc", "type_": "bind", "source": "/proc",
                 "options": ["rbind", "ro"]},
                {"destination": "/lib", "type_": "bind", "source": "/usr/lib",
                 "options": ["rbind", "ro"]},
                {"destination": "/lib64", "type_": "bind", "source": "/usr/lib64",
                 "options": ["rbind", "ro"]}
            ],
            "Linux": {
                // No PID namespace: the probe sees the guest's processes.
                "Namespaces": [{"Type": "mount"}, {"Type": "ipc"}, {"Type": "uts"}, {"Type": "network"}],
                "Resources": {"Pids": {"Limit": 64}}
            }
        }
    });
    if let Some(mounts) = value["OCI"]["Mounts"].as_array_mut() {
        mounts.extend(extra_mounts.iter().cloned());
    }
    for set in ["Bounding", "Effective", "Permitted"] {
        if let Some(caps) = value["OCI"]["Process"]["Capabilities"][set].as_array_mut() {
            caps.extend(extra_capabilities.iter().map(|c| json!(c)));
        }
    }
    let mut message = agent::CreateContainerRequest::new();
    peerpod_protocols::json::from_json(&value, &mut message)
        .map_err(|e| PodvmError::Tls(format!("memory probe request: {e}")))?;
    Ok(message)
}

/// Runs `script` (`/usr/bin/sh -c`) in a probe container on the sandbox's shm tmpfs with the
/// guest's `/usr` and, at `/guestproc`, the guest's `/proc` bound in read-only (the guest's PID
/// namespace); returns its stdout, its stderr and its exit status. The container is removed
/// afterwards. The sandbox the shim created must exist and the pod's policy must allow it.
pub async fn guest_probe(
    shim: &ShimClient,
    id: &str,
    script: &str,
) -> Result<(String, String, Result<i32, ttrpc::Error>), PodvmError> {
    guest_probe_with(shim, id, script, &[], &[]).await
}

/// A read-only bind of the guest's `source` at `destination` in a probe container.
pub fn read_only_bind(source: &str, destination: &str) -> serde_json::Value {
    json!({"destination": destination, "type_": "bind", "source": source,
           "options": ["rbind", "ro"]})
}

/// [`guest_probe`] with more OCI mounts (e.g. [`read_only_bind`]) after the probe's own and
/// more capabilities (e.g. `CAP_SYS_ADMIN`, for `nsenter --net=/guestproc/1/ns/net`: the probe
/// is in the agent's container network namespace, the pod's, not the guest's own).
pub async fn guest_probe_with(
    shim: &ShimClient,
    id: &str,
    script: &str,
    extra_mounts: &[serde_json::Value],
    extra_capabilities: &[&str],
) -> Result<(String, String, Result<i32, ttrpc::Error>), PodvmError> {
    let long = ctx(Duration::from_secs(120));
    shim.agent
        .create_container(
            long.clone(),
            &request(id, script, extra_mounts, extra_capabilities)?,
        )
        .await?;
    shim.agent
        .start_container(long.clone(), &requests::start(id))
        .await?;
    let out = requests::read_all(&shim.agent, id, id, Stream::Stdout).await;
    let err = requests::read_all(&shim.agent, id, id, Stream::Stderr).await;
    let status = requests::wait(&shim.agent, id, id).await;
    let _ = shim
        .agent
        .remove_container(long, &requests::remove(id))
        .await;
    Ok((out, err, status))
}

/// Runs the memory probe in the sandbox the shim created; removes it afterwards.
pub async fn guest_memory(shim: &ShimClient) -> Result<GuestMemory, PodvmError> {
    let (out, err, status) = guest_probe(shim, "podvm-memory-probe", SCRIPT).await?;
    parse(&out).map_err(|reason| PodvmError::Command {
        command: "the guest memory probe".into(),
        output: format!("{reason}; exit {status:?}; stderr {err:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_output_is_summed_without_the_probe_itself() {
        let m =
            parse("PROC systemd 1 9000 4000 2000\nPROC kata-agent 4 12000 10000 6000\nPROC sh 1 900 300 100\n\
                   MEM MemTotal 2000000\nMEM MemAvailable 1900000\nMEM Shmem 3000\nEND\n")
                .expect("parses");
        assert_eq!(m.in_use_kib(), 100_000);
        assert!(
            m.summary().contains("RSS 21000 KiB")
                && m.summary().contains("100000 KiB in use of 2000000 KiB"),
            "{}",
            m.summary()
        );
        assert_eq!(m.shmem_kib, 3000);
        assert_eq!(m.rss_kib(), 21000);
        assert_eq!(m.pss_kib(), 14000);
        assert_eq!(m.anon_kib(), 8000);
        assert_eq!(m.processes[0].name, "kata-agent");
        assert_eq!(m.processes[0].threads, 4);
        assert!(
            m.table().contains("6000 KiB anon   4 threads  kata-agent"),
            "{}",
            m.table()
        );
        assert!(
            parse("PROC systemd 1 9000 4000 2000\n").is_err(),
            "an unfinished probe is refused"
        );
        assert!(
            parse("PROC systemd 1 9000 4000 2000\nMEM MemTotal 2000000\nEND\n").is_err(),
            "meminfo's figures missing"
        );
        assert!(parse("MEM MemTotal 2000000\nMEM MemAvailable x\nMEM Shmem 1\nEND\n").is_err());
        assert!(
            parse("MEM MemTotal 2\nMEM MemTotal 2\nMEM Shmem 1\nEND\n").is_err(),
            "one figure twice and one missing"
        );
        let mem = "MEM MemTotal 2\nMEM MemAvailable 1\nMEM Shmem 1\n";
        assert!(parse(&format!("PROC systemd 1 x 1 1\n{mem}END\n")).is_err());
        assert!(
            parse(&format!("PROC systemd 9000 4000\n{mem}END\n")).is_err(),
            "a field missing"
        );
    }
}
