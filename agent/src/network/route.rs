//! UpdateRoutes and ListRoutes: the main routing table.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use futures::TryStreamExt;
use nix::errno::Errno;
use peerpod_protocols::kata::types;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteMetric,
    RouteProtocol, RouteScope, RouteType, RouteVia,
};
use tracing::{debug, info};

use super::error::errno_of;
use super::parse::{RouteSpec, SETTABLE_ROUTE_FLAGS};
use super::{NetworkError, dump_links, index_of};

/// Every IPv4 route, then every IPv6 route, of every table.
async fn dump_routes(handle: &rtnetlink::Handle) -> Result<Vec<RouteMessage>, NetworkError> {
    let mut all = Vec::new();
    // One dump at a time: the kernel runs a single dump per socket.
    for (family, what) in [
        (AddressFamily::Inet, "IPv4 routes"),
        (AddressFamily::Inet6, "IPv6 routes"),
    ] {
        let mut request = RouteMessage::default();
        request.header.address_family = family;
        let mut routes: Vec<RouteMessage> = handle
            .route()
            .get(request)
            .execute()
            .try_collect()
            .await
            .map_err(NetworkError::netlink("list", what))?;
        // A kernel without the family answers with every family's routes: keep the asked one.
        routes.retain(|route| route.header.address_family == family);
        all.extend(routes);
    }
    Ok(all)
}

fn ip_of(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(addr) => Some(IpAddr::V4(*addr)),
        RouteAddress::Inet6(addr) => Some(IpAddr::V6(*addr)),
        _ => None,
    }
}

/// The parts of a route message the agent reads.
#[derive(Debug, Default)]
struct RouteFacts {
    table: u32,
    oif: Option<u32>,
    dest: Option<IpAddr>,
    gateway: Option<IpAddr>,
    prefsrc: Option<IpAddr>,
    mtu: u32,
}

impl RouteFacts {
    fn of(message: &RouteMessage) -> Self {
        let mut facts = RouteFacts {
            table: u32::from(message.header.table),
            ..Default::default()
        };
        for attribute in &message.attributes {
            match attribute {
                // Tables above 255 are only in the attribute.
                RouteAttribute::Table(table) => facts.table = *table,
                RouteAttribute::Oif(index) => facts.oif = Some(*index),
                RouteAttribute::Destination(address) => facts.dest = ip_of(address),
                RouteAttribute::Gateway(address) => facts.gateway = ip_of(address),
                RouteAttribute::Via(RouteVia::Inet(addr)) => {
                    facts.gateway = Some(IpAddr::V4(*addr))
                }
                RouteAttribute::Via(RouteVia::Inet6(addr)) => {
                    facts.gateway = Some(IpAddr::V6(*addr));
                }
                RouteAttribute::PrefSource(address) => facts.prefsrc = ip_of(address),
                RouteAttribute::Metrics(metrics) => {
                    for metric in metrics {
                        if let RouteMetric::Mtu(mtu) = metric {
                            facts.mtu = *mtu;
                        }
                    }
                }
                _ => {}
            }
        }
        facts
    }

    fn in_main_table(&self) -> bool {
        self.table == u32::from(RouteHeader::RT_TABLE_MAIN)
    }

    /// IPv6 link-local (fe80::/10) and multicast (ff00::/8) routes: the kernel makes them for
    /// every IPv6 link, and the agent leaves them alone.
    fn kernel_reserved(&self) -> bool {
        match self.dest {
            Some(IpAddr::V6(addr)) => {
                let first = addr.segments()[0];
                first & 0xffc0 == 0xfe80 || first & 0xff00 == 0xff00
            }
            _ => false,
        }
    }
}

fn describe(message: &RouteMessage, facts: &RouteFacts, device: &str) -> String {
    let mut text = match facts.dest {
        Some(dest) if message.header.destination_prefix_length > 0 => {
            format!("{dest}/{}", message.header.destination_prefix_length)
        }
        _ => "default".to_owned(),
    };
    if let Some(gateway) = facts.gateway {
        text.push_str(&format!(" via {gateway}"));
    }
    text.push_str(&format!(" dev {device}"));
    text
}

fn to_proto(message: &RouteMessage, facts: &RouteFacts, device: &str) -> types::Route {
    let family = if message.header.address_family == AddressFamily::Inet6 {
        types::IPFamily::v6
    } else {
        types::IPFamily::v4
    };
    let dest = match facts.dest {
        Some(dest) if message.header.destination_prefix_length > 0 => {
            format!("{dest}/{}", message.header.destination_prefix_length)
        }
        _ => String::new(),
    };
    types::Route {
        dest,
        gateway: facts.gateway.map(|g| g.to_string()).unwrap_or_default(),
        device: device.to_owned(),
        source: facts.prefsrc.map(|s| s.to_string()).unwrap_or_default(),
        scope: u32::from(u8::from(message.header.scope)),
        family: family.into(),
        flags: message.header.flags.bits() & SETTABLE_ROUTE_FLAGS,
        mtu: facts.mtu,
        ..Default::default()
    }
}

/// The main table's routes through a device, IPv6 link-local and multicast ones left out.
pub(super) async fn list(handle: &rtnetlink::Handle) -> Result<Vec<types::Route>, NetworkError> {
    let links = dump_links(handle).await?;
    let names: HashMap<u32, &str> = links
        .iter()
        .map(|link| (link.index, link.name.as_str()))
        .collect();
    let routes = dump_routes(handle).await?;
    let mut listed = Vec::new();
    for message in &routes {
        let facts = RouteFacts::of(message);
        if !facts.in_main_table() || facts.kernel_reserved() {
            continue;
        }
        // Routes through no single device (blackholes, multipath) have no place in the protocol.
        let Some(device) = facts.oif.and_then(|oif| names.get(&oif)) else {
            debug!(route = ?message.header, "route without a device not listed");
            continue;
        };
        listed.push(to_proto(message, &facts, device));
    }
    Ok(listed)
}

fn route_message(spec: &RouteSpec, oif: u32) -> RouteMessage {
    let mut message = RouteMessage::default();
    let header = &mut message.header;
    header.address_family = if spec.v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    header.destination_prefix_length = spec.dest.len;
    header.table = RouteHeader::RT_TABLE_MAIN;
    // As upstream: routes the agent installs are marked as set up at boot.
    header.protocol = RouteProtocol::Boot;
    header.scope = RouteScope::from(spec.scope);
    header.kind = RouteType::Unicast;
    header.flags = RouteFlags::from_bits_retain(spec.flags);

    let attributes = &mut message.attributes;
    if spec.dest.len > 0 {
        attributes.push(RouteAttribute::Destination(spec.dest.addr.into()));
    }
    attributes.push(RouteAttribute::Oif(oif));
    if let Some(gateway) = spec.gateway {
        attributes.push(RouteAttribute::Gateway(gateway.into()));
    }
    if let Some(source) = spec.source {
        attributes.push(RouteAttribute::PrefSource(source.into()));
    }
    if spec.mtu > 0 {
        attributes.push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(spec.mtu)]));
    }
    message
}

/// Replaces the main-table routes of the devices `specs` name with `specs`.
pub(super) async fn update(
    handle: &rtnetlink::Handle,
    specs: &[RouteSpec],
) -> Result<(), NetworkError> {
    let links = dump_links(handle).await?;
    let mut devices: HashMap<&str, u32> = HashMap::new();
    for spec in specs {
        devices.insert(spec.device.as_str(), index_of(&links, &spec.device)?);
    }
    let indexes: HashSet<u32> = devices.values().copied().collect();
    let names: HashMap<u32, &str> = links
        .iter()
        .map(|link| (link.index, link.name.as_str()))
        .collect();

    let mut deleted = 0usize;
    for message in dump_routes(handle).await? {
        let facts = RouteFacts::of(&message);
        let Some(oif) = facts.oif.filter(|oif| indexes.contains(oif)) else {
            continue;
        };
        if !facts.in_main_table() || facts.kernel_reserved() {
            continue;
        }
        let target = describe(
            &message,
            &facts,
            names.get(&oif).copied().unwrap_or_default(),
        );
        debug!(route = %target, "deleting route");
        match handle.route().del(message).execute().await {
            Ok(()) => deleted += 1,
            // Gone already (the kernel drops some routes with others).
            Err(e) if matches!(errno_of(&e), Some(Errno::ESRCH | Errno::ENOENT)) => {}
            Err(e) => return Err(NetworkError::netlink("delete route", target)(e)),
        }
    }

    // Routes without a gateway first: a gateway must be reachable when its route is added.
    let ordered = specs
        .iter()
        .filter(|spec| spec.gateway.is_none())
        .chain(specs.iter().filter(|spec| spec.gateway.is_some()));
    for spec in ordered {
        let oif = devices.get(spec.device.as_str()).copied().ok_or_else(|| {
            NetworkError::NoSuchInterface {
                hw_addr: String::new(),
                name: spec.device.clone(),
            }
        })?;
        debug!(route = %spec, "adding route");
        handle
            .route()
            .add(route_message(spec, oif))
            .replace()
            .execute()
            .await
            .map_err(NetworkError::netlink("add route", spec.to_string()))?;
    }
    info!(deleted, added = specs.len(), "routes replaced");
    Ok(())
}
