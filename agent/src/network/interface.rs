//! UpdateInterface and ListInterfaces: links and their addresses.

use futures::TryStreamExt;
use nix::errno::Errno;
use peerpod_protocols::kata::types;
use rtnetlink::LinkUnspec;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::LinkMessage;
use tracing::{debug, info, warn};

use super::error::errno_of;
use super::parse::{InterfaceSpec, IpPrefix, LinkSelector, format_mac};
use super::{Link, NetworkError, dump_links};

/// An address on a link, with the message that deletes it.
struct Address {
    index: u32,
    prefix: IpPrefix,
    message: AddressMessage,
}

impl Address {
    fn from_message(message: AddressMessage) -> Option<Self> {
        // IFA_LOCAL is the interface's own address; it differs from IFA_ADDRESS only on
        // point-to-point links, where IFA_ADDRESS is the peer. IPv6 sends only IFA_ADDRESS.
        let mut local = None;
        let mut address = None;
        for attribute in &message.attributes {
            match attribute {
                AddressAttribute::Local(ip) => local = Some(*ip),
                AddressAttribute::Address(ip) => address = Some(*ip),
                _ => {}
            }
        }
        let addr = local.or(address)?;
        Some(Self {
            index: message.header.index,
            prefix: IpPrefix {
                addr,
                len: message.header.prefix_len,
            },
            message,
        })
    }

    /// An IPv6 link-local address (fe80::/10), which the kernel makes itself.
    fn is_ipv6_link_local(&self) -> bool {
        match self.prefix.addr {
            std::net::IpAddr::V6(addr) => addr.segments()[0] & 0xffc0 == 0xfe80,
            std::net::IpAddr::V4(_) => false,
        }
    }
}

async fn dump_addresses(handle: &rtnetlink::Handle) -> Result<Vec<Address>, NetworkError> {
    let messages: Vec<AddressMessage> = handle
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(NetworkError::netlink("list", "addresses"))?;
    Ok(messages
        .into_iter()
        .filter_map(Address::from_message)
        .collect())
}

fn ip_address(prefix: IpPrefix) -> types::IPAddress {
    let family = if prefix.addr.is_ipv6() {
        types::IPFamily::v6
    } else {
        types::IPFamily::v4
    };
    types::IPAddress {
        family: family.into(),
        address: prefix.addr.to_string(),
        mask: prefix.len.to_string(),
        ..Default::default()
    }
}

/// A link as the protocol shows it. `raw_flags` are the link's `IFF_*` flags; `device` repeats
/// the name.
fn to_proto(link: &Link, addresses: &[Address]) -> types::Interface {
    types::Interface {
        device: link.name.clone(),
        name: link.name.clone(),
        IPAddresses: addresses
            .iter()
            .filter(|address| address.index == link.index)
            .map(|address| ip_address(address.prefix))
            .collect(),
        mtu: u64::from(link.mtu),
        hwAddr: format_mac(&link.mac),
        type_: link.kind.clone(),
        raw_flags: link.flags.bits(),
        ..Default::default()
    }
}

pub(super) async fn list(
    handle: &rtnetlink::Handle,
) -> Result<Vec<types::Interface>, NetworkError> {
    let links = dump_links(handle).await?;
    let addresses = dump_addresses(handle).await?;
    Ok(links
        .iter()
        .map(|link| to_proto(link, &addresses))
        .collect())
}

fn find<'a>(links: &'a [Link], selector: &LinkSelector) -> Option<&'a Link> {
    links.iter().find(|link| match selector {
        LinkSelector::Mac(mac) => link.mac == mac,
        LinkSelector::Name(name) => link.name == *name,
    })
}

fn no_such_interface(selector: &LinkSelector) -> NetworkError {
    match selector {
        LinkSelector::Mac(mac) => NetworkError::NoSuchInterface {
            hw_addr: format_mac(mac),
            name: String::new(),
        },
        LinkSelector::Name(name) => NetworkError::NoSuchInterface {
            hw_addr: String::new(),
            name: name.clone(),
        },
    }
}

async fn set_link(
    handle: &rtnetlink::Handle,
    message: LinkMessage,
    op: &'static str,
    target: &str,
) -> Result<(), NetworkError> {
    handle
        .link()
        .set(message)
        .execute()
        .await
        .map_err(NetworkError::netlink(op, target))
}

/// Whether the kernel takes IPv6 addresses, read as upstream does: IPv6 is compiled in and not
/// disabled both for all interfaces and by default.
fn ipv6_enabled() -> bool {
    let enabled = |which: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{which}/disable_ipv6"))
            .is_ok_and(|value| value.trim() == "0")
    };
    enabled("all") || enabled("default")
}

pub(super) async fn update(
    handle: &rtnetlink::Handle,
    spec: &InterfaceSpec,
) -> Result<types::Interface, NetworkError> {
    let links = dump_links(handle).await?;
    let link = find(&links, &spec.selector)
        .ok_or_else(|| no_such_interface(&spec.selector))?
        .clone();
    let rename = spec.name.as_deref().filter(|name| *name != link.name);

    // A link is renamed while down; another link that holds the name gets this one's old name.
    let mut holder = None;
    if let Some(new_name) = rename {
        if link.is_up() {
            debug!(interface = %link.name, "bringing the interface down to rename it");
            let down = LinkUnspec::new_with_index(link.index).down().build();
            set_link(handle, down, "bring down", &link.name).await?;
        }
        if let Some(other) = links.iter().find(|other| other.name == new_name) {
            // Of len + 1 candidates, one is free.
            let temporary = (0..=links.len())
                .map(|n| format!("tmp{n}"))
                .find(|candidate| links.iter().all(|l| l.name != *candidate))
                .unwrap_or_default();
            debug!(interface = %other.name, temporary = %temporary, "moving the holder of the requested name aside");
            if other.is_up() {
                let down = LinkUnspec::new_with_index(other.index).down().build();
                set_link(handle, down, "bring down", &other.name).await?;
            }
            let aside = LinkUnspec::new_with_index(other.index)
                .name(temporary)
                .build();
            set_link(handle, aside, "rename", &other.name).await?;
            holder = Some(other.clone());
        }
    }

    let mut change = LinkUnspec::new_with_index(link.index);
    if let Some(mtu) = spec.mtu {
        change = change.mtu(mtu);
    }
    if let Some(new_name) = rename {
        change = change.name(new_name);
    }
    let change = change.arp(!spec.noarp).up().build();
    set_link(handle, change, "configure interface", &link.name).await?;
    let name = rename.unwrap_or(&link.name).to_owned();

    if let Some(other) = holder {
        let mut back = LinkUnspec::new_with_index(other.index).name(link.name.clone());
        if other.is_up() {
            back = back.up();
        }
        set_link(handle, back.build(), "rename", &other.name).await?;
        info!(from = %other.name, to = %link.name, "the link that held the requested name took the renamed link's old name");
    }

    replace_addresses(handle, link.index, &name, &spec.addresses).await?;

    let links = dump_links(handle).await?;
    let link = links
        .iter()
        .find(|l| l.index == link.index)
        .ok_or_else(|| NetworkError::NoSuchInterface {
            hw_addr: format_mac(&link.mac),
            name: name.clone(),
        })?;
    let addresses = dump_addresses(handle).await?;
    info!(interface = %name, mtu = link.mtu, addresses = spec.addresses.len(), "interface updated");
    Ok(to_proto(link, &addresses))
}

/// Makes the link's addresses `wanted`, keeping IPv6 link-local addresses the kernel made.
async fn replace_addresses(
    handle: &rtnetlink::Handle,
    index: u32,
    name: &str,
    wanted: &[IpPrefix],
) -> Result<(), NetworkError> {
    let ipv6 = ipv6_enabled();
    let wanted: Vec<IpPrefix> = wanted
        .iter()
        .filter(|prefix| {
            let skip = prefix.addr.is_ipv6() && !ipv6;
            if skip {
                warn!(interface = %name, address = %prefix, "IPv6 is disabled in the guest: address not added");
            }
            !skip
        })
        .copied()
        .collect();

    let current = dump_addresses(handle).await?;
    for address in current.into_iter().filter(|a| a.index == index) {
        if wanted.contains(&address.prefix) || address.is_ipv6_link_local() {
            continue;
        }
        debug!(interface = %name, address = %address.prefix, "deleting address");
        let target = format!("{} from {name}", address.prefix);
        match handle.address().del(address.message).execute().await {
            Ok(()) => {}
            // Gone already: deleting a primary IPv4 address takes its secondaries with it.
            Err(e) if errno_of(&e) == Some(Errno::EADDRNOTAVAIL) => {}
            Err(e) => return Err(NetworkError::netlink("delete address", target)(e)),
        }
    }
    for prefix in wanted {
        debug!(interface = %name, address = %prefix, "adding address");
        handle
            .address()
            .add(index, prefix.addr, prefix.len)
            .replace()
            .execute()
            .await
            .map_err(NetworkError::netlink(
                "add address",
                format!("{prefix} to {name}"),
            ))?;
    }
    Ok(())
}
