//! Removing the cgroup directories the agent made above containers' own (libcontainer removes
//! each container's cgroup when it deletes the container; the sandbox's and the agent's parents
//! are the agent's to remove).

use std::path::{Path, PathBuf};

/// The mount points of every cgroup (v1 controllers and the v2 unified hierarchy).
fn hierarchies() -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fstype = after.split_whitespace().next()?;
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            before.split_whitespace().nth(4).map(PathBuf::from)
        })
        .collect()
}

/// Removes the (empty) cgroup `path` in every hierarchy, children first. What cannot be removed
/// (still in use) is logged and left.
pub(crate) fn remove(path: &str) {
    let relative = path.trim_start_matches('/');
    if relative.is_empty() {
        return;
    }
    for hierarchy in hierarchies() {
        remove_tree(&hierarchy.join(relative));
    }
}

fn remove_tree(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path());
        }
    }
    if let Err(e) = std::fs::remove_dir(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(cgroup = %dir.display(), error = %e, "cannot remove cgroup");
    }
}
