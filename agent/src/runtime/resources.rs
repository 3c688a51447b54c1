//! A running container's cgroup, read and changed by the agent itself (these need no fork):
//! statistics for StatsContainer and new limits for UpdateContainer.

use std::path::Path;

use libcgroups::common::{CgroupConfig, CgroupManager, ControllerOpt, create_cgroup_manager};
use libcgroups::stats::{BlkioDeviceStat, MemoryData, Stats};
use oci_spec::runtime::LinuxResources;
use peerpod_protocols::kata::agent;
use protobuf::MessageField;

use crate::error::AgentError;

fn manager(
    cgroup: &Path,
    container: &str,
) -> Result<libcgroups::common::AnyCgroupManager, AgentError> {
    create_cgroup_manager(CgroupConfig {
        cgroup_path: cgroup.to_owned(),
        systemd_cgroup: false,
        container_name: container.to_owned(),
    })
    .map_err(|e| AgentError::internal(format!("cannot open the cgroup {}", cgroup.display()), e))
}

/// The container's cgroup statistics.
pub(crate) fn stats(cgroup: &Path, container: &str) -> Result<agent::CgroupStats, AgentError> {
    let stats = manager(cgroup, container)?.stats().map_err(|e| {
        AgentError::internal(format!("cannot read the statistics of {container:?}"), e)
    })?;
    Ok(to_proto(&stats))
}

/// Applies new resource limits to the container's cgroup.
pub(crate) fn update(
    cgroup: &Path,
    container: &str,
    resources: &LinuxResources,
) -> Result<(), AgentError> {
    let options = ControllerOpt {
        resources,
        disable_oom_killer: resources
            .memory()
            .as_ref()
            .and_then(|m| m.disable_oom_killer())
            .unwrap_or(false),
        oom_score_adj: None,
        freezer_state: None,
    };
    manager(cgroup, container)?.apply(&options).map_err(|e| {
        AgentError::internal(format!("cannot update the resources of {container:?}"), e)
    })
}

fn memory(data: &MemoryData) -> MessageField<agent::MemoryData> {
    let mut out = agent::MemoryData::new();
    out.usage = data.usage;
    out.max_usage = data.max_usage;
    out.failcnt = data.fail_count;
    out.limit = data.limit;
    MessageField::some(out)
}

fn blkio(entries: &[BlkioDeviceStat]) -> Vec<agent::BlkioStatsEntry> {
    entries
        .iter()
        .map(|e| {
            let mut out = agent::BlkioStatsEntry::new();
            out.major = e.major;
            out.minor = e.minor;
            out.op = e.op_type.clone().unwrap_or_default();
            out.value = e.value;
            out
        })
        .collect()
}

fn to_proto(stats: &Stats) -> agent::CgroupStats {
    let mut cpu_usage = agent::CpuUsage::new();
    cpu_usage.total_usage = stats.cpu.usage.usage_total;
    cpu_usage.percpu_usage = stats.cpu.usage.per_core_usage_total.clone();
    cpu_usage.usage_in_kernelmode = stats.cpu.usage.usage_kernel;
    cpu_usage.usage_in_usermode = stats.cpu.usage.usage_user;
    let mut throttling = agent::ThrottlingData::new();
    throttling.periods = stats.cpu.throttling.periods;
    throttling.throttled_periods = stats.cpu.throttling.throttled_periods;
    throttling.throttled_time = stats.cpu.throttling.throttled_time;
    let mut cpu = agent::CpuStats::new();
    cpu.cpu_usage = MessageField::some(cpu_usage);
    cpu.throttling_data = MessageField::some(throttling);

    let mut mem = agent::MemoryStats::new();
    mem.cache = stats.memory.cache;
    mem.usage = memory(&stats.memory.memory);
    mem.swap_usage = memory(&stats.memory.memswap);
    mem.kernel_usage = memory(&stats.memory.kernel);
    mem.use_hierarchy = stats.memory.hierarchy;
    mem.stats = stats.memory.stats.clone().into_iter().collect();

    let mut pids = agent::PidsStats::new();
    pids.current = stats.pids.current;
    pids.limit = stats.pids.limit;

    let mut io = agent::BlkioStats::new();
    io.io_service_bytes_recursive = blkio(&stats.blkio.service_bytes);
    io.io_serviced_recursive = blkio(&stats.blkio.serviced);
    io.io_queued_recursive = blkio(&stats.blkio.queued);
    io.io_service_time_recursive = blkio(&stats.blkio.service_time);
    io.io_wait_time_recursive = blkio(&stats.blkio.wait_time);
    io.io_merged_recursive = blkio(&stats.blkio.merged);
    io.io_time_recursive = blkio(&stats.blkio.time);
    io.sectors_recursive = blkio(&stats.blkio.sectors);

    let mut out = agent::CgroupStats::new();
    out.cpu_stats = MessageField::some(cpu);
    out.memory_stats = MessageField::some(mem);
    out.pids_stats = MessageField::some(pids);
    out.blkio_stats = MessageField::some(io);
    out.hugetlb_stats = stats
        .hugetlb
        .iter()
        .map(|(size, h)| {
            let mut entry = agent::HugetlbStats::new();
            entry.usage = h.usage;
            entry.max_usage = h.max_usage;
            entry.failcnt = h.fail_count;
            (size.clone(), entry)
        })
        .collect();
    out
}
