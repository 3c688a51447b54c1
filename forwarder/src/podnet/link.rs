//! The netlink steps the pod network ([`super::PodNetwork`]) and the IMDS path
//! ([`super::imds`]) both take, each failing with the step it was.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd as _;
use std::path::Path;

use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use super::netns::NetnsError;
use super::{PodNetworkError, link_index, nl};

/// The index of the device `name`, which must exist: else `missing` says why it should.
pub(super) async fn require(
    handle: &Handle,
    name: &str,
    missing: impl FnOnce() -> String,
) -> Result<u32, PodNetworkError> {
    match link_index(handle, name).await? {
        Some((index, _)) => Ok(index),
        None => Err(PodNetworkError::Device(missing())),
    }
}

/// Deletes the device `index`; `what` names it in the error.
pub(super) async fn delete(handle: &Handle, index: u32, what: &str) -> Result<(), PodNetworkError> {
    handle
        .link()
        .del(index)
        .execute()
        .await
        .map_err(nl(format!("deleting {what}")))
}

/// Brings the device `index` up; `step` names it in the error.
pub(super) async fn up(handle: &Handle, index: u32, step: String) -> Result<(), PodNetworkError> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(nl(step))
}

/// Moves the device `index` (named `name`) into the namespace at `ns`.
pub(super) async fn move_into(
    handle: &Handle,
    index: u32,
    name: &str,
    ns: &Path,
) -> Result<(), PodNetworkError> {
    let file = std::fs::File::open(ns).map_err(|source| NetnsError::Open {
        path: ns.display().to_string(),
        source,
    })?;
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(index)
                .setns_by_fd(file.as_raw_fd())
                .build(),
        )
        .execute()
        .await
        .map_err(nl(format!("moving {name} into {}", ns.display())))
}

/// Adds (or replaces) the route `dst/32 dev <index>` (`dev` names the device in the error).
pub(super) async fn host_route(
    handle: &Handle,
    dst: Ipv4Addr,
    index: u32,
    dev: &str,
) -> Result<(), PodNetworkError> {
    handle
        .route()
        .add(
            RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(dst, 32)
                .output_interface(index)
                .build(),
        )
        .replace()
        .execute()
        .await
        .map_err(nl(format!("adding the route {dst}/32 dev {dev}")))
}

/// Adds (or replaces) the neighbour entry `ip lladdr <mac> dev <index>` in `state` (`dev`
/// names the device in the error).
pub(super) async fn neighbour(
    handle: &Handle,
    index: u32,
    ip: IpAddr,
    mac: &[u8],
    state: NeighbourState,
    dev: &str,
) -> Result<(), PodNetworkError> {
    handle
        .neighbours()
        .add(index, ip)
        .link_layer_address(mac)
        .state(state)
        .replace()
        .execute()
        .await
        .map_err(nl(format!("adding the neighbour {ip} dev {dev}")))
}
