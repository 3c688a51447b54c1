//! AddARPNeighbors: neighbour entries (ARP for IPv4, NDP for IPv6).

use rtnetlink::packet_route::neighbour::{NeighbourFlags, NeighbourState};
use tracing::{debug, info};

use super::parse::{NeighborSpec, format_mac};
use super::{NetworkError, dump_links, index_of};

/// Adds or replaces each entry, after checking that every device exists.
pub(super) async fn add(
    handle: &rtnetlink::Handle,
    specs: &[NeighborSpec],
) -> Result<(), NetworkError> {
    let links = dump_links(handle).await?;
    let mut indexes = Vec::with_capacity(specs.len());
    for spec in specs {
        indexes.push(index_of(&links, &spec.device)?);
    }
    for (spec, index) in specs.iter().zip(indexes) {
        let target = format!("{} dev {}", spec.ip, spec.device);
        let mut request = handle
            .neighbours()
            .add(index, spec.ip)
            .state(NeighbourState::from(spec.state))
            .flags(NeighbourFlags::from_bits_retain(spec.flags))
            .replace();
        if let Some(lladdr) = spec.lladdr {
            request = request.link_layer_address(&lladdr);
        }
        debug!(
            neighbour = %target,
            lladdr = %spec.lladdr.map(|mac| format_mac(&mac)).unwrap_or_default(),
            state = spec.state,
            "adding neighbour"
        );
        request
            .execute()
            .await
            .map_err(NetworkError::netlink("add neighbour", target))?;
    }
    info!(count = specs.len(), "neighbours added");
    Ok(())
}
