//! The pod network, as upstream's VXLAN pod-node tunneler sets it up:
//!
//! 1. NOTRACK rules for the tunnel's UDP port in the host namespace ([`iptables`]);
//! 2. a VXLAN device towards the worker node (`worker-node-ip`, `vxlan-port`, `vxlan-id`),
//!    created in the host namespace under a temporary name (`ppvx<vni>`), so its UDP socket
//!    lives there, and moved into the pod namespace;
//! 3. there: renamed to `interface`, given `pod-hw-addr`, the MTU (at most 1450) and `podip`,
//!    brought up (with `lo`, which the pod's 127.0.0.1 services need); for a pod address that
//!    is not a single host, the kernel's prefix route is removed, as upstream does, since the
//!    configured routes carry the right one;
//! 4. the routes, those without a gateway first (a gateway must be reachable when its route is
//!    added), and the neighbour entries.
//!
//! 5. optionally ([`PodNetwork::with_imds_nat`]), the pod's path to the cloud's instance
//!    metadata service through the pod VM, with NAT ([`imds`]).
//!
//! A failure part-way removes what was made. [`PodNetwork::teardown`] deletes the device and
//! the rules. Every netlink call goes over rtnetlink from a thread inside the right namespace
//! ([`netns`]).

pub mod command;
pub mod imds;
pub mod iptables;
mod link;
pub mod netns;

use std::net::IpAddr;
use std::path::PathBuf;

use futures::TryStreamExt as _;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo};
use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::packet_route::route::{RouteProtocol, RouteScope};
use rtnetlink::{LinkUnspec, LinkVxlan, RouteMessageBuilder};
use tracing::{info, warn};

use crate::config::{PodNetworkConfig, RouteConfig};
pub use iptables::IptablesError;
pub use netns::NetnsError;

/// Why the pod network could not be set up or torn down.
#[derive(Debug, thiserror::Error)]
pub enum PodNetworkError {
    /// A namespace could not be entered.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The NOTRACK rules failed.
    #[error("the NOTRACK rules for the VXLAN port could not be set")]
    Iptables(#[from] IptablesError),
    /// The IMDS NAT rule failed.
    #[error("the NAT rule that lets the pod reach the IMDS could not be set or removed")]
    Nat(#[source] IptablesError),
    /// A netlink request failed.
    #[error("{step} failed: {source}")]
    Netlink {
        /// What was being done.
        step: String,
        /// Why.
        #[source]
        source: rtnetlink::Error,
    },
    /// The netlink socket could not be opened.
    #[error("cannot open a netlink socket")]
    Socket(#[source] std::io::Error),
    /// An expected device is missing or is not what it should be.
    #[error("{0}")]
    Device(String),
}

fn nl(step: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> PodNetworkError {
    let step = step.into();
    move |source| PodNetworkError::Netlink { step, source }
}

/// The pod network for one pod VM.
#[derive(Debug, Clone)]
pub struct PodNetwork {
    config: PodNetworkConfig,
    pod_ns: PathBuf,
    host_ns: Option<PathBuf>,
    imds_nat: bool,
    runner: std::sync::Arc<dyn command::CommandRunner>,
}

fn connect() -> Result<rtnetlink::Handle, PodNetworkError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(PodNetworkError::Socket)?;
    tokio::spawn(connection);
    Ok(handle)
}

async fn link_index(
    handle: &rtnetlink::Handle,
    name: &str,
) -> Result<Option<(u32, bool)>, PodNetworkError> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(Some(msg)) => {
            let vxlan = msg.attributes.iter().any(|a| {
                matches!(a, LinkAttribute::LinkInfo(infos) if infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Vxlan))))
            });
            Ok(Some((msg.header.index, vxlan)))
        }
        Ok(None) => Ok(None),
        Err(rtnetlink::Error::NetlinkError(e))
            if e.code.is_some_and(|c| c.get() == -libc_enodev()) =>
        {
            Ok(None)
        }
        Err(e) => Err(nl(format!("looking up {name}"))(e)),
    }
}

const fn libc_enodev() -> i32 {
    nix::errno::Errno::ENODEV as i32
}

impl PodNetwork {
    /// The pod network `config` in the namespace at `pod_ns`; the VXLAN socket lives in
    /// `host_ns` (the caller's namespace when `None`, as in the pod VM).
    pub fn new(config: PodNetworkConfig, pod_ns: PathBuf, host_ns: Option<PathBuf>) -> Self {
        Self {
            config,
            pod_ns,
            host_ns,
            imds_nat: false,
            runner: command::std_runner(),
        }
    }

    /// Runs `iptables` through `runner` (a process that reaps its own children must).
    pub fn with_runner(mut self, runner: std::sync::Arc<dyn command::CommandRunner>) -> Self {
        self.runner = runner;
        self
    }

    /// Replaces the runner on a network already set up (for its teardown).
    pub fn set_runner(&mut self, runner: std::sync::Arc<dyn command::CommandRunner>) {
        self.runner = runner;
    }

    /// With `on`, the set-up also gives the pod a path to the IMDS through the pod VM
    /// ([`imds::ImdsNat`]; IPv4 pod addresses only) and the teardown removes it.
    pub fn with_imds_nat(mut self, on: bool) -> Self {
        self.imds_nat = on;
        self
    }

    fn imds(&self) -> Option<imds::ImdsNat> {
        match self.config.pod_ip.0 {
            IpAddr::V4(ip) if self.imds_nat => Some(
                imds::ImdsNat::new(ip, self.pod_ns.clone(), self.host_ns.clone())
                    .with_runner(std::sync::Arc::clone(&self.runner)),
            ),
            _ => None,
        }
    }

    fn temp_name(&self) -> String {
        format!("ppvx{}", self.config.vxlan_id)
    }

    /// Sets the pod network up; on failure, what was made is removed again.
    pub async fn setup(&self) -> Result<(), PodNetworkError> {
        // The pod namespace must exist before anything is changed.
        std::fs::File::open(&self.pod_ns).map_err(|source| NetnsError::Open {
            path: self.pod_ns.display().to_string(),
            source,
        })?;
        let mut result = self.setup_inner().await;
        if result.is_ok()
            && let Some(imds) = self.imds()
        {
            result = imds.setup().await;
        } else if self.imds_nat && self.imds().is_none() {
            warn!("no IMDS NAT: the pod address is not IPv4");
        }
        match result {
            Ok(()) => {
                info!(
                    interface = %self.config.interface,
                    pod_ip = %format!("{}/{}", self.config.pod_ip.0, self.config.pod_ip.1),
                    worker = %self.config.worker_node_ip,
                    vni = self.config.vxlan_id,
                    port = self.config.vxlan_port,
                    mtu = self.config.effective_mtu(),
                    "pod network up"
                );
                Ok(())
            }
            Err(e) => {
                if let Err(cleanup) = self.teardown().await {
                    warn!(error = %peerpod_text::error_chain(&cleanup), "cleaning up after a failed pod network set-up failed too");
                }
                Err(e)
            }
        }
    }

    async fn setup_inner(&self) -> Result<(), PodNetworkError> {
        let c = self.config.clone();
        let temp = self.temp_name();
        let pod_ns = self.pod_ns.clone();
        let runner = std::sync::Arc::clone(&self.runner);
        netns::run_in(self.host_ns.as_deref(), move || async move {
            iptables::setup(&*runner, c.worker_node_ip, c.vxlan_port, c.vxlan_id)?;
            let handle = connect()?;
            if let Some((index, _)) = link_index(&handle, &temp).await? {
                warn!(device = %temp, "removing a VXLAN device left behind by an earlier run");
                link::delete(&handle, index, &temp).await?;
            }
            let msg = LinkVxlan::new(&temp, c.vxlan_id)
                .remote(c.worker_node_ip)
                .port(c.vxlan_port)
                // No source-address learning: the only peer is the worker node, and a
                // sender on the VPC with the right VNI must not install FDB entries.
                .learning(false)
                .build();
            handle.link().add(msg).execute().await.map_err(nl(format!(
                "creating the VXLAN device {temp} (vni {}, port {}, remote {})",
                c.vxlan_id, c.vxlan_port, c.worker_node_ip
            )))?;
            let index =
                link::require(&handle, &temp, || format!("{temp} vanished after creation")).await?;
            link::move_into(&handle, index, &temp, &pod_ns).await?;
            Ok::<(), PodNetworkError>(())
        })
        .await??;

        let c = self.config.clone();
        let temp = self.temp_name();
        netns::run_in(Some(&self.pod_ns), move || async move {
            let handle = connect()?;
            let index = link::require(&handle, &temp, || format!("{temp} is not in the pod namespace after the move")).await?;
            let mut change = LinkUnspec::new_with_index(index)
                .name(c.interface.clone())
                .mtu(c.effective_mtu());
            if let Some(mac) = c.pod_hw_addr {
                change = change.address(mac.to_vec());
            }
            handle
                .link()
                .set(change.build())
                .execute()
                .await
                .map_err(nl(format!("configuring {}", c.interface)))?;
            let (ip, len) = c.pod_ip;
            handle
                .address()
                .add(index, ip, len)
                .execute()
                .await
                .map_err(nl(format!("adding {ip}/{len} to {}", c.interface)))?;
            link::up(&handle, index, format!("bringing {} up", c.interface)).await?;
            if let Some((lo, _)) = link_index(&handle, "lo").await? {
                link::up(&handle, lo, "bringing lo up in the pod namespace".into()).await?;
            }
            let host_len = if ip.is_ipv4() { 32 } else { 128 };
            if len != host_len {
                let prefix = masked(ip, len);
                let route = route_message(&RouteConfig { dst: Some((prefix, len)), gw: None, dev: c.interface.clone(), protocol: 0, scope: 0 }, index, ip.is_ipv4(), true);
                match handle.route().del(route).execute().await {
                    Ok(()) => {}
                    Err(e) => warn!(error = %e, "the kernel's prefix route for the pod address was not there to remove"),
                }
            }
            let ordered = c
                .routes
                .iter()
                .filter(|r| r.gw.is_none())
                .chain(c.routes.iter().filter(|r| r.gw.is_some()));
            for r in ordered {
                let dev = link::require(&handle, &r.dev, || format!("route device {} is not in the pod namespace", r.dev)).await?;
                let v4 = r.dst.map(|(a, _)| a.is_ipv4()).or(r.gw.map(|g| g.is_ipv4())).unwrap_or(true);
                handle
                    .route()
                    .add(route_message(r, dev, v4, false))
                    .replace()
                    .execute()
                    .await
                    .map_err(nl(format!("adding the route {r:?}")))?;
            }
            for n in &c.neighbors {
                let dev = link::require(&handle, &n.dev, || format!("neighbour device {} is not in the pod namespace", n.dev)).await?;
                let state = if n.state == 0 { NeighbourState::Permanent } else { NeighbourState::from(n.state) };
                link::neighbour(&handle, dev, n.ip, &n.hw_addr, state, &n.dev).await?;
            }
            Ok::<(), PodNetworkError>(())
        })
        .await??;
        Ok(())
    }

    /// Deletes the VXLAN device (from the pod namespace, or the host one if it never moved)
    /// and the NOTRACK rules. Missing pieces are not an error.
    pub async fn teardown(&self) -> Result<(), PodNetworkError> {
        let imds = match self.imds() {
            Some(imds) => imds.teardown().await,
            None => Ok(()),
        };
        let name = self.config.interface.clone();
        let pod = netns::run_in(Some(&self.pod_ns), move || async move {
            let handle = connect()?;
            match link_index(&handle, &name).await? {
                Some((index, true)) => link::delete(&handle, index, &name).await,
                Some((_, false)) => Err(PodNetworkError::Device(format!(
                    "{name} in the pod namespace is not a VXLAN device: left alone"
                ))),
                None => Ok(()),
            }
        })
        .await;
        let c = self.config.clone();
        let temp = self.temp_name();
        let runner = std::sync::Arc::clone(&self.runner);
        let host = netns::run_in(self.host_ns.as_deref(), move || async move {
            let handle = connect()?;
            if let Some((index, true)) = link_index(&handle, &temp).await? {
                link::delete(&handle, index, &temp).await?;
            }
            iptables::teardown(&*runner, c.worker_node_ip, c.vxlan_port, c.vxlan_id)?;
            Ok::<(), PodNetworkError>(())
        })
        .await;
        // A pod namespace that is gone took the device with it.
        match pod {
            Ok(r) => r?,
            Err(NetnsError::Open { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        host??;
        imds?;
        info!(interface = %self.config.interface, "pod network torn down");
        Ok(())
    }
}

fn masked(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            IpAddr::V4((bits & mask).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            IpAddr::V6((bits & mask).into())
        }
    }
}

fn route_message(
    r: &RouteConfig,
    oif: u32,
    v4: bool,
    kernel: bool,
) -> rtnetlink::packet_route::route::RouteMessage {
    let mut msg = if v4 {
        let mut b = RouteMessageBuilder::<std::net::Ipv4Addr>::new();
        if let Some((IpAddr::V4(a), len)) = r.dst {
            b = b.destination_prefix(a, len);
        }
        if let Some(IpAddr::V4(g)) = r.gw {
            b = b.gateway(g);
        }
        b.output_interface(oif).build()
    } else {
        let mut b = RouteMessageBuilder::<std::net::Ipv6Addr>::new();
        if let Some((IpAddr::V6(a), len)) = r.dst {
            b = b.destination_prefix(a, len);
        }
        if let Some(IpAddr::V6(g)) = r.gw {
            b = b.gateway(g);
        }
        b.output_interface(oif).build()
    };
    if kernel {
        msg.header.protocol = RouteProtocol::Kernel;
        msg.header.scope = RouteScope::Link;
    } else {
        if r.protocol != 0 {
            msg.header.protocol = RouteProtocol::from(r.protocol);
        }
        if r.scope != 0 {
            msg.header.scope = RouteScope::from(r.scope);
        }
    }
    msg
}
