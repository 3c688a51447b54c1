//! The guest's network, set up as the runtime asks: interfaces, routes and ARP neighbours, over
//! rtnetlink.
//!
//! [`Network`] carries out the agent's UpdateInterface, UpdateRoutes, ListInterfaces, ListRoutes
//! and AddARPNeighbors requests on the netlink route socket of the network namespace it was
//! created in, taking and returning the protobuf messages of `types.proto`. What each does:
//!
//! - [`Network::update_interface`] finds the link by hardware address (by `device`, else `name`,
//!   when no hardware address is given), sets its MTU, `IFF_NOARP` from `raw_flags` and its name
//!   (swapping names with a link that already holds the requested one), brings it up, and makes
//!   its addresses those of the request. The link is brought down first only when it has to be
//!   renamed. Kernel-made IPv6 link-local addresses the request does not name are kept.
//! - [`Network::update_routes`] makes the main-table routes of the devices the request names
//!   exactly the requested ones: existing routes on those devices are deleted (except IPv6
//!   link-local and multicast ones, which the kernel keeps for itself), then device routes are
//!   added before gateway routes so gateways are reachable. An empty list changes nothing. The
//!   request is checked whole first, but if the kernel then refuses a route, the routes deleted
//!   or added before it stay so.
//! - [`Network::list_interfaces`] and [`Network::list_routes`] report every link with its
//!   addresses, and the main table's routes (without IPv6 link-local and multicast ones), in the
//!   shapes the requests use: a route's `dest` is `a.b.c.d/len` (empty for a default route), its
//!   `source` the preferred source address, its `device` the link's name, its `flags` only the
//!   settable on-link and pervasive bits (state bits such as linkdown would be refused if sent
//!   back, and are dropped from requests too); an interface's `raw_flags` are its `IFF_*` flags
//!   and its `type` its link kind.
//! - [`Network::add_arp_neighbors`] adds or replaces neighbour entries, permanent unless the
//!   request gives a state.
//!
//! Every request is checked whole before the guest is changed, and a bad field is reported as
//! [`NetworkError::InvalidAddress`] or [`NetworkError::InvalidValue`] naming it. One request
//! runs at a time.

mod error;
mod interface;
mod neighbor;
mod parse;
mod route;

use futures::TryStreamExt;
use peerpod_protocols::kata::types;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use tokio::sync::Mutex;

pub use error::NetworkError;

/// The guest's network, driven over one rtnetlink connection.
#[derive(Debug)]
pub struct Network {
    handle: rtnetlink::Handle,
    /// Held for each request: an update is a sequence of netlink calls that must not interleave
    /// with another request's, and the kernel runs one dump at a time per socket.
    busy: Mutex<()>,
}

impl Network {
    /// Opens a netlink route socket in the calling thread's network namespace and spawns its
    /// connection task on the current tokio runtime.
    pub async fn new() -> Result<Self, NetworkError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NetworkError::Socket)?;
        tokio::spawn(connection);
        Ok(Self {
            handle,
            busy: Mutex::new(()),
        })
    }

    /// Every link, with its addresses.
    pub async fn list_interfaces(&self) -> Result<Vec<types::Interface>, NetworkError> {
        let _busy = self.busy.lock().await;
        interface::list(&self.handle).await
    }

    /// The main routing table, without IPv6 link-local and multicast routes.
    pub async fn list_routes(&self) -> Result<Vec<types::Route>, NetworkError> {
        let _busy = self.busy.lock().await;
        route::list(&self.handle).await
    }

    /// Configures one link as `iface` describes, and returns it as it then is.
    pub async fn update_interface(
        &self,
        iface: &types::Interface,
    ) -> Result<types::Interface, NetworkError> {
        let spec = parse::parse_interface(iface)?;
        let _busy = self.busy.lock().await;
        let mut updated = interface::update(&self.handle, &spec).await?;
        // The PCI path is the runtime's to know; the guest's netlink does not report it.
        updated.devicePath.clone_from(&iface.devicePath);
        Ok(updated)
    }

    /// Replaces the routes of the devices `routes` name with `routes`, and returns the main
    /// table as it then is.
    pub async fn update_routes(
        &self,
        routes: &[types::Route],
    ) -> Result<Vec<types::Route>, NetworkError> {
        let specs = routes
            .iter()
            .enumerate()
            .map(|(i, route)| parse::parse_route(i, route))
            .collect::<Result<Vec<_>, _>>()?;
        let _busy = self.busy.lock().await;
        route::update(&self.handle, &specs).await?;
        route::list(&self.handle).await
    }

    /// Adds (or replaces) neighbour entries.
    pub async fn add_arp_neighbors(
        &self,
        neighbors: &[types::ARPNeighbor],
    ) -> Result<(), NetworkError> {
        let specs = neighbors
            .iter()
            .enumerate()
            .map(|(i, neighbor)| parse::parse_neighbor(i, neighbor))
            .collect::<Result<Vec<_>, _>>()?;
        let _busy = self.busy.lock().await;
        neighbor::add(&self.handle, &specs).await
    }
}

/// What the agent needs to know of a link.
#[derive(Debug, Clone)]
struct Link {
    index: u32,
    name: String,
    /// The hardware address; empty for links without one.
    mac: Vec<u8>,
    mtu: u32,
    flags: LinkFlags,
    /// The link kind (`veth`, `bridge`, ...); empty for physical devices.
    kind: String,
}

impl Link {
    fn is_up(&self) -> bool {
        self.flags.contains(LinkFlags::Up)
    }
}

impl From<LinkMessage> for Link {
    fn from(message: LinkMessage) -> Self {
        let mut link = Link {
            index: message.header.index,
            name: String::new(),
            mac: Vec::new(),
            mtu: 0,
            flags: message.header.flags,
            kind: String::new(),
        };
        for attribute in message.attributes {
            match attribute {
                LinkAttribute::IfName(name) => link.name = name,
                LinkAttribute::Address(mac) => link.mac = mac,
                LinkAttribute::Mtu(mtu) => link.mtu = mtu,
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(kind) = info {
                            link.kind = kind.to_string();
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

/// The index of the link named `device` among `links`; NoSuchInterface when there is none.
fn index_of(links: &[Link], device: &str) -> Result<u32, NetworkError> {
    links
        .iter()
        .find(|link| link.name == device)
        .map(|link| link.index)
        .ok_or_else(|| NetworkError::NoSuchInterface {
            hw_addr: String::new(),
            name: device.to_owned(),
        })
}

/// Every link in the namespace, by index.
async fn dump_links(handle: &rtnetlink::Handle) -> Result<Vec<Link>, NetworkError> {
    let mut links: Vec<Link> = handle
        .link()
        .get()
        .execute()
        .map_ok(Link::from)
        .try_collect()
        .await
        .map_err(NetworkError::netlink("list", "links"))?;
    links.sort_by_key(|link| link.index);
    Ok(links)
}
