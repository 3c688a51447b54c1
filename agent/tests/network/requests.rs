//! Requests as the runtime sends them, and the shared genpolicy fixture's cases.

use std::collections::BTreeSet;

use kata_agent::error::AgentError;
use kata_agent::network::{Network, NetworkError};
use peerpod_protocols::json::from_json;
use peerpod_protocols::kata::{agent, types};
use peerpod_tests::shared_fixture::shared_fixture;
use serde_json::Value;
use ttrpc::Code;

use crate::harness::*;

/// The shared genpolicy fixture's requests.
pub(crate) const FIXTURE: &str = "conformance/genpolicy/cases.json";

/// Whether the shared fixture is there; outside CI a test without it returns early (skipped,
/// with a loud note), under CI it fails.
pub(crate) fn shared_fixture_present() -> bool {
    shared_fixture(FIXTURE).is_some()
}

/// The request of the shared genpolicy fixture's case described as `description`.
pub(crate) fn fixture_request(description: &str, message: &mut dyn protobuf::MessageDyn) {
    let path = shared_fixture(FIXTURE).expect("tests check shared_fixture_present() first");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "the shared genpolicy fixture is missing at {} ({e}): put the shared directory next \
             to the project or set PEERPOD_SHARED",
            path.display()
        )
    });
    let cases: Vec<Value> = serde_json::from_str(&text).expect("cases.json");
    let case = cases
        .iter()
        .find(|case| case["description"] == description)
        .unwrap_or_else(|| panic!("no case {description:?} in {}", path.display()));
    from_json(&case["request"], message).expect("the fixture's request reads");
}

/// Case "eth0 with IFF_NOARP": eth0, 3e:7a:9b:41:2d:10, MTU 1450, 10.244.1.17/24 and
/// fe80::3c7a:9bff:fe41:2d10/64, raw_flags IFF_NOARP.
pub(crate) fn fixture_interface() -> types::Interface {
    let mut request = agent::UpdateInterfaceRequest::new();
    fixture_request("eth0 with IFF_NOARP", &mut request);
    request
        .interface
        .into_option()
        .expect("the case has an interface")
}

/// Case "default + link routes": default via 10.244.1.1 dev eth0, and 10.244.1.0/24 dev eth0
/// scope link src 10.244.1.17, in that order.
pub(crate) fn fixture_routes() -> Vec<types::Route> {
    let mut request = agent::UpdateRoutesRequest::new();
    fixture_request("default + link routes", &mut request);
    request
        .routes
        .into_option()
        .expect("the case has routes")
        .Routes
}

pub(crate) fn address(address: &str, mask: &str) -> types::IPAddress {
    let family = if address.contains(':') {
        types::IPFamily::v6
    } else {
        types::IPFamily::v4
    };
    types::IPAddress {
        family: family.into(),
        address: address.into(),
        mask: mask.into(),
        ..Default::default()
    }
}

pub(crate) fn interface(
    name: &str,
    hw_addr: &str,
    mtu: u64,
    addresses: &[(&str, &str)],
) -> types::Interface {
    types::Interface {
        name: name.into(),
        device: name.into(),
        hwAddr: hw_addr.into(),
        mtu,
        IPAddresses: addresses.iter().map(|(a, m)| address(a, m)).collect(),
        ..Default::default()
    }
}

pub(crate) fn route(dest: &str, gateway: &str, device: &str) -> types::Route {
    let v6 = dest.contains(':') || gateway.contains(':');
    types::Route {
        dest: dest.into(),
        gateway: gateway.into(),
        device: device.into(),
        family: if v6 {
            types::IPFamily::v6
        } else {
            types::IPFamily::v4
        }
        .into(),
        ..Default::default()
    }
}

pub(crate) fn link_route(dest: &str, device: &str, source: &str) -> types::Route {
    types::Route {
        scope: SCOPE_LINK,
        source: source.into(),
        ..route(dest, "", device)
    }
}

pub(crate) fn addresses_of(iface: &types::Interface) -> BTreeSet<String> {
    iface
        .IPAddresses
        .iter()
        .map(|a| format!("{}/{}", a.address, a.mask))
        .collect()
}

/// What a test compares of an interface: everything but the link flags that follow carrier and
/// operational state (which the kernel updates asynchronously), as a string.
pub(crate) fn shape(iface: &types::Interface) -> String {
    format!(
        "{} {} {} mtu {} flags {:#x} {:?}",
        iface.name,
        iface.hwAddr,
        iface.type_,
        iface.mtu,
        iface.raw_flags & (IFF_UP | IFF_NOARP),
        addresses_of(iface)
    )
}

pub(crate) fn code_of(error: NetworkError) -> Code {
    AgentError::from(error).code()
}

/// eth0 (the fixture's hardware address) configured as in the fixture but with ARP, up.
pub(crate) async fn configured_eth0(network: &Network) -> types::Interface {
    veth("eth0", "3e:7a:9b:41:2d:10");
    let mut iface = fixture_interface();
    iface.raw_flags = 0;
    network
        .update_interface(&iface)
        .await
        .expect("eth0 configures")
}
