//! Real containers: the `kata-agent` binary runs a busybox root filesystem (Debian's
//! busybox-static) through libcontainer, driven over ttrpc as the kata shim drives it. These
//! tests need root (CI runs as root) for namespaces, mounts and cgroups. One test binary, one
//! module per topic; `support` holds the shared request builders and the pod helper.

#[path = "../common/mod.rs"]
mod common;
mod support;

mod bundles;
mod cancelled;
mod deadlines;
mod exec;
mod guest_pull;
mod leaks;
mod lifecycle;
mod netns;
mod pause_bundle;
mod privileges;
mod removal;
mod resources;
mod sealed;
mod security;
