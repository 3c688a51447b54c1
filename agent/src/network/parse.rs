//! Checking requests: the protobuf shapes (strings and loose integers) become typed values, and
//! every problem is reported with the field it is in, before the guest is touched.

use std::net::IpAddr;

use peerpod_protocols::kata::types;
use protobuf::EnumOrUnknown;

use super::NetworkError;

/// The longest interface name the kernel takes (`IFNAMSIZ` - 1).
const MAX_IFNAME_LEN: usize = 15;

/// An IP address with a prefix length that fits its family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct IpPrefix {
    pub(super) addr: IpAddr,
    pub(super) len: u8,
}

impl IpPrefix {
    /// `0.0.0.0/0` or `::/0`.
    fn default_route(v6: bool) -> Self {
        let addr = if v6 {
            IpAddr::from([0u16; 8])
        } else {
            IpAddr::from([0u8; 4])
        };
        Self { addr, len: 0 }
    }
}

impl std::fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// The longest prefix of an address's family.
pub(super) fn max_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

fn invalid_address(field: &str, value: &str, reason: impl Into<String>) -> NetworkError {
    NetworkError::InvalidAddress {
        field: field.to_owned(),
        value: value.to_owned(),
        reason: reason.into(),
    }
}

fn invalid_value(field: &str, value: impl ToString, reason: impl Into<String>) -> NetworkError {
    NetworkError::InvalidValue {
        field: field.to_owned(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// A hardware address written as colon-separated pairs of hex digits, e.g. `3e:7a:9b:41:2d:10`.
pub(super) fn parse_mac(field: &str, value: &str) -> Result<[u8; 6], NetworkError> {
    let mut mac = [0u8; 6];
    let mut parts = value.split(':');
    for byte in &mut mac {
        let part = parts.next().unwrap_or_default();
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid_address(
                field,
                value,
                "expected six colon-separated pairs of hex digits",
            ));
        }
        *byte = u8::from_str_radix(part, 16)
            .map_err(|e| invalid_address(field, value, e.to_string()))?;
    }
    if parts.next().is_some() {
        return Err(invalid_address(
            field,
            value,
            "expected six colon-separated pairs of hex digits",
        ));
    }
    Ok(mac)
}

/// A hardware address as `ip` prints it: lowercase, colon-separated.
pub(super) fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn parse_ip(field: &str, value: &str) -> Result<IpAddr, NetworkError> {
    value
        .parse()
        .map_err(|_| invalid_address(field, value, "not an IPv4 or IPv6 address"))
}

/// A prefix length in decimal, no longer than the family allows.
fn parse_prefix_len(field: &str, value: &str, addr: IpAddr) -> Result<u8, NetworkError> {
    let max = max_prefix(addr);
    let family = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
    let reason = || format!("an {family} prefix length is a number from 0 to {max}");
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid_address(field, value, reason()));
    }
    match value.parse::<u8>() {
        Ok(len) if len <= max => Ok(len),
        _ => Err(invalid_address(field, value, reason())),
    }
}

/// `a.b.c.d/len`, `x::y/len`, or a bare address (a host prefix).
fn parse_cidr(field: &str, value: &str) -> Result<IpPrefix, NetworkError> {
    let (addr, len) = match value.split_once('/') {
        Some((addr, len)) => {
            let addr = parse_ip(field, addr).map_err(|_| {
                invalid_address(field, value, "expected an IP address with a prefix length")
            })?;
            (addr, parse_prefix_len(field, len, addr)?)
        }
        None => {
            let addr = parse_ip(field, value)?;
            (addr, max_prefix(addr))
        }
    };
    Ok(IpPrefix { addr, len })
}

/// The family a request names; `v4` is also protobuf's default, so it cannot be told from unset.
fn parse_family(field: &str, family: EnumOrUnknown<types::IPFamily>) -> Result<bool, NetworkError> {
    match family.enum_value() {
        Ok(types::IPFamily::v4) => Ok(false),
        Ok(types::IPFamily::v6) => Ok(true),
        Err(other) => Err(invalid_value(field, other, "expected 0 (v4) or 1 (v6)")),
    }
}

/// Checks that an address is of the family the request names. Only an explicit `v6` is held
/// against an IPv4 address: `v4` is also what an unset family reads as.
fn check_family(
    field: &str,
    value: &str,
    addr: IpAddr,
    declared_v6: bool,
) -> Result<(), NetworkError> {
    if declared_v6 && addr.is_ipv4() {
        return Err(invalid_address(
            field,
            value,
            "an IPv4 address where the family is v6",
        ));
    }
    Ok(())
}

/// An interface name the kernel accepts.
pub(super) fn check_ifname(field: &str, name: &str) -> Result<(), NetworkError> {
    let reason = if name.len() > MAX_IFNAME_LEN {
        "interface names are at most 15 bytes"
    } else if name == "." || name == ".." {
        "not a valid interface name"
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
    {
        "interface names cannot hold '/', ':', NUL or whitespace"
    } else {
        return Ok(());
    };
    Err(invalid_value(field, name, reason))
}

/// One `IPAddress` of an interface.
pub(super) fn parse_ip_address(
    field: &str,
    address: &types::IPAddress,
) -> Result<IpPrefix, NetworkError> {
    let declared_v6 = parse_family(&format!("{field}.family"), address.family)?;
    let addr_field = format!("{field}.address");
    let addr = parse_ip(&addr_field, &address.address)?;
    check_family(&addr_field, &address.address, addr, declared_v6)?;
    let len = parse_prefix_len(&format!("{field}.mask"), &address.mask, addr)?;
    Ok(IpPrefix { addr, len })
}

/// How `UpdateInterface` finds the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum LinkSelector {
    /// By hardware address (the request's `hwAddr`).
    Mac([u8; 6]),
    /// By current name (the request's `device`, else `name`), when no `hwAddr` is given.
    Name(String),
}

/// An `UpdateInterface` request, checked.
#[derive(Debug, Clone)]
pub(super) struct InterfaceSpec {
    pub(super) selector: LinkSelector,
    /// The name to give the link; `None` keeps its name.
    pub(super) name: Option<String>,
    /// The MTU to set; `None` keeps it.
    pub(super) mtu: Option<u32>,
    /// Whether `IFF_NOARP` is asked for.
    pub(super) noarp: bool,
    /// The addresses the link is to have, without duplicates, in request order.
    pub(super) addresses: Vec<IpPrefix>,
}

/// `IFF_NOARP`, the one `raw_flags` bit the agent applies (as upstream does).
pub(super) const IFF_NOARP: u32 = 0x80;

pub(super) fn parse_interface(iface: &types::Interface) -> Result<InterfaceSpec, NetworkError> {
    let selector = if !iface.hwAddr.is_empty() {
        LinkSelector::Mac(parse_mac("hwAddr", &iface.hwAddr)?)
    } else if !iface.device.is_empty() {
        check_ifname("device", &iface.device)?;
        LinkSelector::Name(iface.device.clone())
    } else if !iface.name.is_empty() {
        check_ifname("name", &iface.name)?;
        LinkSelector::Name(iface.name.clone())
    } else {
        return Err(invalid_value(
            "hwAddr",
            "",
            "the interface needs a hardware address, a device or a name",
        ));
    };
    let name = if iface.name.is_empty() {
        None
    } else {
        check_ifname("name", &iface.name)?;
        Some(iface.name.clone())
    };
    let mtu = match iface.mtu {
        0 => None,
        mtu => Some(
            u32::try_from(mtu)
                .map_err(|_| invalid_value("mtu", mtu, "larger than the kernel takes"))?,
        ),
    };
    let mut addresses: Vec<IpPrefix> = Vec::with_capacity(iface.IPAddresses.len());
    for (i, address) in iface.IPAddresses.iter().enumerate() {
        let prefix = parse_ip_address(&format!("IPAddresses[{i}]"), address)?;
        if !addresses.contains(&prefix) {
            addresses.push(prefix);
        }
    }
    Ok(InterfaceSpec {
        selector,
        name,
        mtu,
        noarp: iface.raw_flags & IFF_NOARP != 0,
        addresses,
    })
}

/// `RTNH_F_PERVASIVE` and `RTNH_F_ONLINK`: the route flags a request can set. The others the
/// kernel reports (dead, linkdown, offload, ...) describe state and are not sent back to it.
pub(super) const SETTABLE_ROUTE_FLAGS: u32 = 0x2 | 0x4;

/// An `UpdateRoutes` route, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RouteSpec {
    pub(super) v6: bool,
    pub(super) dest: IpPrefix,
    pub(super) gateway: Option<IpAddr>,
    pub(super) device: String,
    /// The preferred source address (`RTA_PREFSRC`).
    pub(super) source: Option<IpAddr>,
    pub(super) scope: u8,
    /// Only [`SETTABLE_ROUTE_FLAGS`] bits.
    pub(super) flags: u32,
    /// `RTAX_MTU`; 0 for none.
    pub(super) mtu: u32,
}

impl std::fmt::Display for RouteSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.dest.len == 0 {
            f.write_str("default")?;
        } else {
            write!(f, "{}", self.dest)?;
        }
        if let Some(gateway) = self.gateway {
            write!(f, " via {gateway}")?;
        }
        write!(f, " dev {}", self.device)
    }
}

pub(super) fn parse_route(index: usize, route: &types::Route) -> Result<RouteSpec, NetworkError> {
    let field = |name: &str| format!("Routes[{index}].{name}");
    let declared_v6 = parse_family(&field("family"), route.family)?;

    let dest = match route.dest.as_str() {
        "" => None,
        value => Some(parse_cidr(&field("dest"), value)?),
    };
    let gateway = match route.gateway.as_str() {
        "" => None,
        value => Some(parse_ip(&field("gateway"), value)?),
    };
    let source = match route.source.as_str() {
        "" => None,
        // A preferred source is an address; a prefix length written after it is ignored.
        value => Some(parse_cidr(&field("source"), value)?.addr),
    };

    // The addresses decide the family; an explicit v6 must agree with them.
    let v6 = [dest.map(|d| d.addr), gateway, source]
        .into_iter()
        .flatten()
        .next()
        .map_or(declared_v6, |addr| addr.is_ipv6());
    let check = |name: &str, value: &str, addr: Option<IpAddr>| match addr {
        Some(addr) if addr.is_ipv6() != v6 => Err(invalid_address(
            &field(name),
            value,
            "mixes IPv4 and IPv6 with the route's other addresses",
        )),
        Some(addr) => check_family(&field(name), value, addr, declared_v6),
        None => Ok(()),
    };
    check("dest", &route.dest, dest.map(|d| d.addr))?;
    check("gateway", &route.gateway, gateway)?;
    check("source", &route.source, source)?;

    let dest = dest.unwrap_or_else(|| IpPrefix::default_route(v6));
    if !host_bits_clear(dest) {
        return Err(invalid_address(
            &field("dest"),
            &route.dest,
            "the address has bits set beyond the prefix length",
        ));
    }
    if route.device.is_empty() {
        return Err(invalid_value(
            &field("device"),
            "",
            "a route needs a device",
        ));
    }
    check_ifname(&field("device"), &route.device)?;
    let scope = u8::try_from(route.scope)
        .map_err(|_| invalid_value(&field("scope"), route.scope, "a scope is 0 to 255"))?;

    Ok(RouteSpec {
        v6,
        dest,
        gateway,
        device: route.device.clone(),
        source,
        scope,
        flags: route.flags & SETTABLE_ROUTE_FLAGS,
        mtu: route.mtu,
    })
}

fn host_bits_clear(prefix: IpPrefix) -> bool {
    match prefix.addr {
        IpAddr::V4(addr) => {
            let bits = u32::from(addr);
            prefix.len >= 32 || bits & (u32::MAX >> prefix.len) == 0
        }
        IpAddr::V6(addr) => {
            let bits = u128::from(addr);
            prefix.len >= 128 || bits & (u128::MAX >> prefix.len) == 0
        }
    }
}

/// `NUD_PERMANENT`, the state given to neighbours whose request leaves it 0 (as upstream does).
pub(super) const NUD_PERMANENT: u16 = 0x80;

/// An `AddARPNeighbors` neighbour, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NeighborSpec {
    pub(super) ip: IpAddr,
    pub(super) device: String,
    pub(super) lladdr: Option<[u8; 6]>,
    pub(super) state: u16,
    pub(super) flags: u8,
}

pub(super) fn parse_neighbor(
    index: usize,
    neighbor: &types::ARPNeighbor,
) -> Result<NeighborSpec, NetworkError> {
    let field = |name: &str| format!("ARPNeighbors[{index}].{name}");
    let to = neighbor.toIPAddress.as_ref().ok_or_else(|| {
        invalid_address(&field("toIPAddress"), "", "a neighbour needs an IP address")
    })?;
    let declared_v6 = parse_family(&field("toIPAddress.family"), to.family)?;
    let ip = parse_ip(&field("toIPAddress.address"), &to.address)?;
    check_family(&field("toIPAddress.address"), &to.address, ip, declared_v6)?;
    if neighbor.device.is_empty() {
        return Err(invalid_value(
            &field("device"),
            "",
            "a neighbour needs a device",
        ));
    }
    check_ifname(&field("device"), &neighbor.device)?;
    let lladdr = match neighbor.lladdr.as_str() {
        "" => None,
        value => Some(parse_mac(&field("lladdr"), value)?),
    };
    let state = match neighbor.state {
        0 => NUD_PERMANENT,
        state => u16::try_from(state).map_err(|_| {
            invalid_value(&field("state"), state, "a neighbour state is 0 to 65535")
        })?,
    };
    let flags = u8::try_from(neighbor.flags).map_err(|_| {
        invalid_value(
            &field("flags"),
            neighbor.flags,
            "neighbour flags are 0 to 255",
        )
    })?;
    Ok(NeighborSpec {
        ip,
        device: neighbor.device.clone(),
        lladdr,
        state,
        flags,
    })
}
