//! The path from the pod to the cloud's instance metadata service (IMDS, `169.254.169.254`),
//! as upstream's `setup-nat-for-imds.sh` lays it out on Azure and AWS pod VMs:
//!
//! - a veth pair, `veth1` in the pod VM's namespace and `veth2` moved into the pod's;
//! - `veth1` holds `169.254.99.99/32` (proxy ARP answers only on an interface with an
//!   address), proxy ARP on (`proxy_delay` 0) and IPv4 forwarding on, so `veth1` answers the
//!   pod's ARP for the IMDS address and the pod VM routes the packets on to the real IMDS;
//! - in the pod: `169.254.169.254/32 dev veth2` (everything else keeps going to the tunnel);
//! - in the pod VM: `<pod ip>/32 dev veth1` with a permanent neighbour entry for `veth2`'s
//!   MAC, and `iptables -t nat -A POSTROUTING -s <pod ip>/32 -d 169.254.169.254/32 -j
//!   MASQUERADE`, so the IMDS sees the pod VM's own address.
//!
//! [`teardown`] deletes the pair (the routes and the neighbour entry go with it) and the NAT
//! rule; IPv4 forwarding is left on (it may have been on before, and other services may rely
//! on it). Netlink calls run on threads inside the right namespace ([`super::netns`]).

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use futures::TryStreamExt as _;
use rtnetlink::LinkVeth;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::neighbour::NeighbourState;
use tracing::info;

use super::command::CommandRunner;
use super::iptables::IptablesError;
use super::netns;
use super::{PodNetworkError, connect, link, link_index, nl};

/// The instance metadata service's address.
pub const IMDS_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// The address `veth1` holds so that proxy ARP works on it (upstream's).
pub const PROXY_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 99, 99);
/// The pair's end in the pod VM's namespace (upstream's name).
pub const HOST_VETH: &str = "veth1";
/// The pair's end in the pod's namespace (upstream's name).
pub const POD_VETH: &str = "veth2";

/// The pod's route to the IMDS through the pod VM, with NAT.
#[derive(Debug, Clone)]
pub struct ImdsNat {
    pod_ip: Ipv4Addr,
    pod_ns: PathBuf,
    host_ns: Option<PathBuf>,
    runner: Arc<dyn CommandRunner>,
}

fn nat_rule(pod_ip: Ipv4Addr) -> Vec<String> {
    vec![
        "POSTROUTING".into(),
        "-s".into(),
        format!("{pod_ip}/32"),
        "-d".into(),
        format!("{IMDS_ADDR}/32"),
        "-j".into(),
        "MASQUERADE".into(),
    ]
}

/// `iptables -w -t nat <op> <rule>`: `Ok(false)` when it exits 1 (a check that did not match).
fn nat(runner: &dyn CommandRunner, op: &str, rule: &[String]) -> Result<bool, IptablesError> {
    let out = runner
        .output(
            Command::new("iptables")
                .args(["-w", "-t", "nat", op])
                .args(rule),
        )
        .map_err(IptablesError::Spawn)?;
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1) if op == "-C" => Ok(false),
        _ => Err(IptablesError::Failed {
            args: format!("-t nat {op} {}", rule.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        }),
    }
}

/// Writes `value` to the sysctl at `/proc/sys/<key>` (of the calling thread's namespace).
fn sysctl(key: &str, value: &str) -> Result<(), PodNetworkError> {
    let path = Path::new("/proc/sys").join(key);
    std::fs::write(&path, value)
        .map_err(|e| PodNetworkError::Device(format!("cannot set {}: {e}", path.display())))
}

impl ImdsNat {
    /// The IMDS path for the pod at `pod_ip` in the namespace `pod_ns`; the pod VM's side is
    /// `host_ns` (the caller's namespace when `None`).
    pub fn new(pod_ip: Ipv4Addr, pod_ns: PathBuf, host_ns: Option<PathBuf>) -> Self {
        Self {
            pod_ip,
            pod_ns,
            host_ns,
            runner: super::command::std_runner(),
        }
    }

    /// Runs `iptables` through `runner`.
    pub fn with_runner(mut self, runner: Arc<dyn CommandRunner>) -> Self {
        self.runner = runner;
        self
    }

    /// Sets the path up (after the pod network: the pod's address must be known). A `veth1`
    /// left behind by an earlier run is replaced.
    pub async fn setup(&self) -> Result<(), PodNetworkError> {
        let pod_ns = self.pod_ns.clone();
        netns::run_in(self.host_ns.as_deref(), move || async move {
            let handle = connect()?;
            if let Some((index, _)) = link_index(&handle, HOST_VETH).await? {
                link::delete(&handle, index, &format!("the old {HOST_VETH}")).await?;
            }
            handle
                .link()
                .add(LinkVeth::new(HOST_VETH, POD_VETH).build())
                .execute()
                .await
                .map_err(nl(format!("creating the veth pair {HOST_VETH}/{POD_VETH}")))?;
            let host = link::require(&handle, HOST_VETH, || {
                format!("{HOST_VETH} vanished after creation")
            })
            .await?;
            let peer = link::require(&handle, POD_VETH, || {
                format!("{POD_VETH} vanished after creation")
            })
            .await?;
            handle
                .address()
                .add(host, IpAddr::V4(PROXY_ADDR), 32)
                .execute()
                .await
                .map_err(nl(format!("adding {PROXY_ADDR}/32 to {HOST_VETH}")))?;
            link::up(&handle, host, format!("bringing {HOST_VETH} up")).await?;
            sysctl("net/ipv4/ip_forward", "1")?;
            sysctl(&format!("net/ipv4/conf/{HOST_VETH}/proxy_arp"), "1")?;
            sysctl(&format!("net/ipv4/neigh/{HOST_VETH}/proxy_delay"), "0")?;
            link::move_into(&handle, peer, POD_VETH, &pod_ns).await?;
            Ok::<(), PodNetworkError>(())
        })
        .await??;

        let mac = netns::run_in(Some(&self.pod_ns), move || async move {
            let handle = connect()?;
            let index = link::require(&handle, POD_VETH, || {
                format!("{POD_VETH} is not in the pod namespace")
            })
            .await?;
            link::up(&handle, index, format!("bringing {POD_VETH} up")).await?;
            link::host_route(&handle, IMDS_ADDR, index, POD_VETH).await?;
            let mut links = handle.link().get().match_index(index).execute();
            let msg = links
                .try_next()
                .await
                .map_err(nl(format!("reading {POD_VETH}")))?
                .ok_or_else(|| PodNetworkError::Device(format!("{POD_VETH} vanished")))?;
            msg.attributes
                .iter()
                .find_map(|a| match a {
                    LinkAttribute::Address(mac) => Some(mac.clone()),
                    _ => None,
                })
                .ok_or_else(|| PodNetworkError::Device(format!("{POD_VETH} has no MAC address")))
        })
        .await??;

        let pod_ip = self.pod_ip;
        let runner = Arc::clone(&self.runner);
        netns::run_in(self.host_ns.as_deref(), move || async move {
            let handle = connect()?;
            let host = link::require(&handle, HOST_VETH, || {
                format!("{HOST_VETH} is not in the pod VM's namespace")
            })
            .await?;
            link::host_route(&handle, pod_ip, host, HOST_VETH).await?;
            link::neighbour(
                &handle,
                host,
                IpAddr::V4(pod_ip),
                &mac,
                NeighbourState::Permanent,
                HOST_VETH,
            )
            .await?;
            let rule = nat_rule(pod_ip);
            if !nat(&*runner, "-C", &rule).map_err(PodNetworkError::Nat)? {
                nat(&*runner, "-A", &rule).map_err(PodNetworkError::Nat)?;
            }
            Ok::<(), PodNetworkError>(())
        })
        .await??;
        info!(pod_ip = %self.pod_ip, imds = %IMDS_ADDR, "the pod reaches the IMDS through the pod VM (NAT)");
        Ok(())
    }

    /// Removes the pair and the NAT rule; missing pieces are not an error.
    pub async fn teardown(&self) -> Result<(), PodNetworkError> {
        let pod_ip = self.pod_ip;
        let runner = Arc::clone(&self.runner);
        netns::run_in(self.host_ns.as_deref(), move || async move {
            let handle = connect()?;
            if let Some((index, _)) = link_index(&handle, HOST_VETH).await? {
                link::delete(&handle, index, HOST_VETH).await?;
            }
            let rule = nat_rule(pod_ip);
            while nat(&*runner, "-C", &rule).map_err(PodNetworkError::Nat)? {
                nat(&*runner, "-D", &rule).map_err(PodNetworkError::Nat)?;
            }
            Ok::<(), PodNetworkError>(())
        })
        .await??;
        Ok(())
    }
}
