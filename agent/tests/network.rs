//! The network requests' netlink side, each test in a fresh network namespace of its own: links
//! are made with `ip`, configured through `Network`, and checked twice — with `Network`'s own
//! listings and, independently, with `ip -j` output.
//!
//! Each test body runs on a thread of its own that first unshares its network namespace (a
//! namespace belongs to the thread), then builds a single-threaded tokio runtime there, so the
//! netlink socket, the connection task and the `ip` child processes all live in that namespace
//! and the host's network is never touched. The tests need root and `ip` (Debian package
//! iproute2); without either they fail, saying so. The UpdateInterface and UpdateRoutes requests
//! of the shared genpolicy fixture are replayed as they are.

use std::collections::BTreeSet;
use std::future::Future;
use std::process::Command;

use kata_agent::error::AgentError;
use kata_agent::network::{Network, NetworkError};
use nix::errno::Errno;
use nix::sched::{CloneFlags, unshare};
use peerpod_protocols::json::from_json;
use peerpod_protocols::kata::{agent, types};
use peerpod_tests::shared_fixture::shared_fixture;
use serde_json::Value;
use ttrpc::Code;

const IFF_UP: u32 = 0x1;
const IFF_NOARP: u32 = 0x80;
const RTNH_F_ONLINK: u32 = 0x4;
const NTF_ROUTER: i32 = 0x80;
const SCOPE_LINK: u32 = 253;

// ---------------------------------------------------------------------------------------------
// Harness

/// Runs `body` in a new network namespace, on a thread of its own with its own runtime.
fn in_fresh_netns<F, Fut>(body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    require_ip();
    let thread = std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| {
            panic!("unshare(CLONE_NEWNET) failed ({e}): the network tests must run as root")
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        runtime.block_on(body());
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

fn require_ip() {
    match Command::new("ip").arg("-V").output() {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "`ip -V` failed ({}): the network tests need a working `ip` from the Debian package \
             iproute2",
            output.status
        ),
        Err(e) => panic!(
            "cannot run `ip` ({e}): the network tests need it; install the Debian package \
             iproute2 (apt-get install iproute2)"
        ),
    }
}

/// Runs `ip ARGS` in the calling thread's namespace; fails the test if it fails.
fn ip(args: &[&str]) -> String {
    let output = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip {}: {e}", args.join(" ")));
    assert!(
        output.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("ip prints UTF-8")
}

/// `ip -j ARGS`, parsed.
fn ip_json(args: &[&str]) -> Vec<Value> {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    let text = ip(&full);
    if text.trim().is_empty() {
        return Vec::new();
    }
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("ip -j {}: {e}: {text}", args.join(" ")))
}

/// A veth link `name` with hardware address `mac`, whose peer (`p-<name>`) is up so that the
/// link has a carrier once it is up itself. The link itself is left down.
fn veth(name: &str, mac: &str) {
    let peer = format!("p-{name}");
    ip(&[
        "link", "add", name, "address", mac, "type", "veth", "peer", "name", &peer,
    ]);
    ip(&["link", "set", &peer, "up"]);
}

/// `ip -j link show DEV`.
fn ip_link(dev: &str) -> Value {
    ip_json(&["link", "show", "dev", dev])
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("ip shows no link {dev}"))
}

fn ip_link_flags(dev: &str) -> Vec<String> {
    ip_link(dev)["flags"]
        .as_array()
        .expect("flags")
        .iter()
        .map(|f| f.as_str().expect("flag").to_owned())
        .collect()
}

/// The addresses `ip` shows on `dev`, as `address/len`.
fn ip_addresses(dev: &str) -> BTreeSet<String> {
    ip_json(&["addr", "show", "dev", dev])
        .iter()
        .flat_map(|link| link["addr_info"].as_array().cloned().unwrap_or_default())
        .map(|info| format!("{}/{}", str_of(&info["local"]), info["prefixlen"]))
        .collect()
}

/// The main table as `ip` shows it, IPv4 then IPv6.
fn ip_routes() -> Vec<Value> {
    let mut routes = ip_json(&["-4", "route", "show", "table", "main"]);
    routes.extend(ip_json(&["-6", "route", "show", "table", "main"]));
    routes
}

fn str_of(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

/// One `ip -j route` entry, in short: `dst [via gw] dev D [scope S] [src P] [mtu M] [onlink]`.
fn ip_route_summary(route: &Value) -> String {
    let mut text = str_of(&route["dst"]).to_owned();
    if let Some(gateway) = route["gateway"].as_str() {
        text.push_str(&format!(" via {gateway}"));
    }
    text.push_str(&format!(" dev {}", str_of(&route["dev"])));
    if let Some(scope) = route["scope"].as_str() {
        text.push_str(&format!(" scope {scope}"));
    }
    if let Some(src) = route["prefsrc"].as_str() {
        text.push_str(&format!(" src {src}"));
    }
    for metric in route["metrics"].as_array().cloned().unwrap_or_default() {
        if let Some(mtu) = metric["mtu"].as_u64() {
            text.push_str(&format!(" mtu {mtu}"));
        }
    }
    if route["flags"]
        .as_array()
        .is_some_and(|flags| flags.iter().any(|f| f == "onlink"))
    {
        text.push_str(" onlink");
    }
    text
}

/// The same short form for a route `Network` returns.
fn route_summary(route: &types::Route) -> String {
    let mut text = if route.dest.is_empty() {
        "default".to_owned()
    } else {
        // `ip` writes host routes without a length.
        route
            .dest
            .strip_suffix("/32")
            .or_else(|| route.dest.strip_suffix("/128"))
            .unwrap_or(&route.dest)
            .to_owned()
    };
    if !route.gateway.is_empty() {
        text.push_str(&format!(" via {}", route.gateway));
    }
    text.push_str(&format!(" dev {}", route.device));
    match route.scope {
        0 => {}
        SCOPE_LINK => text.push_str(" scope link"),
        254 => text.push_str(" scope host"),
        other => text.push_str(&format!(" scope {other}")),
    }
    if !route.source.is_empty() {
        text.push_str(&format!(" src {}", route.source));
    }
    if route.mtu != 0 {
        text.push_str(&format!(" mtu {}", route.mtu));
    }
    if route.flags & RTNH_F_ONLINK != 0 {
        text.push_str(" onlink");
    }
    text
}

fn summaries(routes: &[types::Route]) -> BTreeSet<String> {
    routes.iter().map(route_summary).collect()
}

fn ip_summaries() -> BTreeSet<String> {
    ip_routes().iter().map(ip_route_summary).collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

// ---------------------------------------------------------------------------------------------
// Requests

/// The shared genpolicy fixture's requests.
const FIXTURE: &str = "conformance/genpolicy/cases.json";

/// Whether the shared fixture is there; outside CI a test without it returns early (skipped,
/// with a loud note), under CI it fails.
fn shared_fixture_present() -> bool {
    shared_fixture(FIXTURE).is_some()
}

/// The request of the shared genpolicy fixture's case described as `description`.
fn fixture_request(description: &str, message: &mut dyn protobuf::MessageDyn) {
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
fn fixture_interface() -> types::Interface {
    let mut request = agent::UpdateInterfaceRequest::new();
    fixture_request("eth0 with IFF_NOARP", &mut request);
    request
        .interface
        .into_option()
        .expect("the case has an interface")
}

/// Case "default + link routes": default via 10.244.1.1 dev eth0, and 10.244.1.0/24 dev eth0
/// scope link src 10.244.1.17, in that order.
fn fixture_routes() -> Vec<types::Route> {
    let mut request = agent::UpdateRoutesRequest::new();
    fixture_request("default + link routes", &mut request);
    request
        .routes
        .into_option()
        .expect("the case has routes")
        .Routes
}

fn address(address: &str, mask: &str) -> types::IPAddress {
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

fn interface(name: &str, hw_addr: &str, mtu: u64, addresses: &[(&str, &str)]) -> types::Interface {
    types::Interface {
        name: name.into(),
        device: name.into(),
        hwAddr: hw_addr.into(),
        mtu,
        IPAddresses: addresses.iter().map(|(a, m)| address(a, m)).collect(),
        ..Default::default()
    }
}

fn route(dest: &str, gateway: &str, device: &str) -> types::Route {
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

fn link_route(dest: &str, device: &str, source: &str) -> types::Route {
    types::Route {
        scope: SCOPE_LINK,
        source: source.into(),
        ..route(dest, "", device)
    }
}

fn addresses_of(iface: &types::Interface) -> BTreeSet<String> {
    iface
        .IPAddresses
        .iter()
        .map(|a| format!("{}/{}", a.address, a.mask))
        .collect()
}

/// What a test compares of an interface: everything but the link flags that follow carrier and
/// operational state (which the kernel updates asynchronously), as a string.
fn shape(iface: &types::Interface) -> String {
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

fn code_of(error: NetworkError) -> Code {
    AgentError::from(error).code()
}

/// eth0 (the fixture's hardware address) configured as in the fixture but with ARP, up.
async fn configured_eth0(network: &Network) -> types::Interface {
    veth("eth0", "3e:7a:9b:41:2d:10");
    let mut iface = fixture_interface();
    iface.raw_flags = 0;
    network
        .update_interface(&iface)
        .await
        .expect("eth0 configures")
}

// ---------------------------------------------------------------------------------------------
// Tests

/// The harness itself: the netlink socket lives in the test's namespace, which starts with only
/// `lo`, and both views of the interfaces agree.
#[test]
fn each_test_has_a_fresh_private_namespace() {
    in_fresh_netns(|| async {
        let network = Network::new().await.expect("netlink socket");
        let names: Vec<String> = network
            .list_interfaces()
            .await
            .expect("list")
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(names, ["lo"], "a fresh namespace has only lo");
        assert_eq!(ip_json(&["link", "show"]).len(), 1);
        assert!(network.list_routes().await.expect("routes").is_empty());

        veth("eth0", "3e:7a:9b:41:2d:10");
        ip(&["addr", "add", "192.168.7.7/24", "dev", "eth0"]);
        ip(&["link", "set", "lo", "up"]);
        let listed = network.list_interfaces().await.expect("list");
        let by_ip = ip_json(&["addr", "show"]);
        assert_eq!(listed.len(), by_ip.len());
        for link in &by_ip {
            let name = str_of(&link["ifname"]);
            let iface = listed
                .iter()
                .find(|i| i.name == name)
                .unwrap_or_else(|| panic!("{name} not listed"));
            assert_eq!(iface.hwAddr, str_of(&link["address"]), "{name}");
            assert_eq!(Some(iface.mtu), link["mtu"].as_u64(), "{name}");
            assert_eq!(addresses_of(iface), ip_addresses(name), "{name}");
        }
        let eth0 = listed.iter().find(|i| i.name == "eth0").expect("eth0");
        assert_eq!(eth0.type_, "veth");
        assert_eq!(
            eth0.IPAddresses[0].family.enum_value(),
            Ok(types::IPFamily::v4)
        );
    });
}

/// UpdateInterface sets MTU, state and addresses (dropping others), and a second identical
/// request changes nothing.
#[test]
fn update_interface_configures_the_link_and_is_idempotent() {
    if !shared_fixture_present() {
        return;
    }
    in_fresh_netns(|| async {
        let network = Network::new().await.expect("netlink socket");
        veth("eth0", "3e:7a:9b:41:2d:10");
        ip(&["addr", "add", "192.168.7.7/24", "dev", "eth0"]);
        let index = ip_link("eth0")["ifindex"].clone();
        let mut request = fixture_interface();
        request.raw_flags = 0;
        let wanted = set(&["10.244.1.17/24", "fe80::3c7a:9bff:fe41:2d10/64"]);

        let first = network.update_interface(&request).await.expect("update");
        assert_eq!(first.name, "eth0");
        assert_eq!(first.hwAddr, "3e:7a:9b:41:2d:10");
        assert_eq!(first.mtu, 1450);
        assert_ne!(first.raw_flags & IFF_UP, 0, "up");
        assert_eq!(first.raw_flags & IFF_NOARP, 0, "ARP on");
        assert_eq!(addresses_of(&first), wanted);

        let link = ip_link("eth0");
        assert_eq!(link["mtu"], 1450);
        assert_eq!(link["ifindex"], index);
        assert!(ip_link_flags("eth0").contains(&"UP".to_owned()));
        assert_eq!(
            ip_addresses("eth0"),
            wanted,
            "the old 192.168.7.7/24 is gone"
        );

        // A route through eth0 survives the second request: the link is not taken down again
        // (that would flush it), only renaming needs that.
        ip(&[
            "route",
            "add",
            "10.96.0.0/12",
            "via",
            "10.244.1.1",
            "dev",
            "eth0",
        ]);
        let second = network
            .update_interface(&request)
            .await
            .expect("update again");
        assert!(
            ip_summaries().contains("10.96.0.0/12 via 10.244.1.1 dev eth0"),
            "{:?}",
            ip_summaries()
        );
        assert_eq!(shape(&second), shape(&first));
        assert_eq!(ip_addresses("eth0"), wanted);
        assert_eq!(ip_link("eth0")["mtu"], 1450);
        let listed = network.list_interfaces().await.expect("list");
        let eth0 = listed
            .iter()
            .find(|i| i.name == "eth0")
            .expect("eth0 listed");
        assert_eq!(shape(eth0), shape(&second));
    });
}

/// The fixture's IFF_NOARP is applied, and taken away again by a request without it.
#[test]
fn update_interface_applies_raw_flags_noarp() {
    if !shared_fixture_present() {
        return;
    }
    in_fresh_netns(|| async {
        let network = Network::new().await.expect("netlink socket");
        veth("eth0", "3e:7a:9b:41:2d:10");
        let mut request = fixture_interface();
        assert_eq!(request.raw_flags, IFF_NOARP);

        let updated = network.update_interface(&request).await.expect("update");
        assert_ne!(updated.raw_flags & IFF_NOARP, 0);
        assert!(ip_link_flags("eth0").contains(&"NOARP".to_owned()));

        request.raw_flags = 0;
        let updated = network.update_interface(&request).await.expect("update");
        assert_eq!(updated.raw_flags & IFF_NOARP, 0);
        assert!(!ip_link_flags("eth0").contains(&"NOARP".to_owned()));
    });
}

/// A link found by hardware address is renamed; a link that held the name takes the old one.
#[test]
fn update_interface_renames_and_swaps_names() {
    in_fresh_netns(|| async {
        let network = Network::new().await.expect("netlink socket");
        veth("ens3", "02:00:00:00:00:0a");
        veth("eth0", "02:00:00:00:00:0b");
        ip(&["link", "set", "ens3", "up"]);
        veth("ens4", "02:00:00:00:00:0c");

        let updated = network
            .update_interface(&interface(
                "eth0",
                "02:00:00:00:00:0a",
                0,
                &[("10.0.0.2", "24")],
            ))
            .await
            .expect("rename over a taken name");
        assert_eq!(updated.name, "eth0");
        assert_eq!(ip_link("eth0")["address"], "02:00:00:00:00:0a");
        assert_eq!(
            ip_link("ens3")["address"],
            "02:00:00:00:00:0b",
            "names swapped"
        );
        assert!(ip_link_flags("eth0").contains(&"UP".to_owned()));
        assert!(
            !ip_link_flags("ens3").contains(&"UP".to_owned()),
            "the other stays down"
        );
        // The kernel's own IPv6 link-local address (made when the link came up) is kept.
        let addresses = ip_addresses("eth0");
        assert!(addresses.contains("10.0.0.2/24"), "{addresses:?}");
        assert!(
            addresses
                .iter()
                .all(|a| a == "10.0.0.2/24" || a.starts_with("fe80:")),
            "{addresses:?}"
        );

        // By hardware address, whatever the device field says.
        let mut request = interface("net1", "02:00:00:00:00:0c", 9000, &[]);
        request.device = "whatever".into();
        let updated = network
            .update_interface(&request)
            .await
            .expect("plain rename");
        assert_eq!((updated.name.as_str(), updated.mtu), ("net1", 9000));
        assert_eq!(ip_link("net1")["address"], "02:00:00:00:00:0c");
        assert_eq!(ip_link("net1")["mtu"], 9000);
        assert!(
            ip_json(&["link", "show"])
                .iter()
                .all(|l| l["ifname"] != "ens4")
        );
    });
}

/// No link has the hardware address (or name): NoSuchInterface, NOT_FOUND. Without a hardware
/// address, the device name finds the link.
#[test]
fn update_interface_on_a_missing_link_is_not_found() {
    in_fresh_netns(|| async {
        let network = Network::new().await.expect("netlink socket");
        veth("eth0", "3e:7a:9b:41:2d:10");

        let error = network
            .update_interface(&interface("eth0", "02:00:00:00:00:99", 1450, &[]))
            .await
            .expect_err("unknown hardware address");
        match &error {
            NetworkError::NoSuchInterface { hw_addr, .. } => {
                assert_eq!(hw_addr, "02:00:00:00:00:99")
            }
            other => panic!("expected NoSuchInterface, got {other}"),
        }
        assert_eq!(code_of(error), Code::NOT_FOUND);

        let error = network
            .update_interface(&interface("eth9", "", 1450, &[]))
            .await
            .expect_err("unknown name");
        assert!(
            matches!(&error, NetworkError::NoSuchInterface { name, .. } if name == "eth9"),
            "{error}"
        );
        assert_eq!(ip_link("eth0")["mtu"], 1500, "nothing changed");

        let updated = network
            .update_interface(&interface("eth0", "", 1400, &[]))
            .await
            .expect("found by name");
        assert_eq!(updated.hwAddr, "3e:7a:9b:41:2d:10");
        assert_eq!(ip_link("eth0")["mtu"], 1400);
    });
}

/// Malformed addresses, masks and hardware addresses are InvalidAddress (INVALID_ARGUMENT),
/// naming the field, and the link is left as it was.
#[test]
fn update_interface_rejects_malformed_input_before_changing_anything() {
    in_fresh_netns(|| async {
        let network = Network::new().await.expect("netlink socket");
        veth("eth0", "3e:7a:9b:41:2d:10");
        let mac = "3e:7a:9b:41:2d:10";
        let cases = [
            (
                interface(
                    "eth0",
                    mac,
                    1450,
                    &[("10.244.1.17", "24"), ("10.244.1.300", "24")],
                ),
                "IPAddresses[1].address",
            ),
            (
                interface("eth0", mac, 1450, &[("10.244.1.17", "33")]),
                "IPAddresses[0].mask",
            ),
            (
                interface("eth0", mac, 1450, &[("10.244.1.17", "")]),
                "IPAddresses[0].mask",
            ),
            (
                interface("eth0", mac, 1450, &[("fe80::1", "255")]),
                "IPAddresses[0].mask",
            ),
            (interface("eth0", "3e:7a:9b:41:2d", 1450, &[]), "hwAddr"),
        ];
        for (request, field) in cases {
            let error = network
                .update_interface(&request)
                .await
                .expect_err("malformed request accepted");
            match &error {
                NetworkError::InvalidAddress { field: f, .. } => assert_eq!(f, field, "{error}"),
                other => panic!("expected InvalidAddress for {field}, got {other}"),
            }
            assert_eq!(code_of(error), Code::INVALID_ARGUMENT);
        }
        assert_eq!(ip_link("eth0")["mtu"], 1500);
        assert!(ip_addresses("eth0").is_empty());
        assert!(!ip_link_flags("eth0").contains(&"UP".to_owned()));
    });
}

/// The fixture's routes — given default route first — are installed with the link route first
/// (its gateway would be unreachable otherwise), replacing the kernel's subnet route; the
/// kernel's IPv6 link-local route stays.
#[test]
fn update_routes_installs_default_and_link_routes() {
    if !shared_fixture_present() {
        return;
    }
    in_fresh_netns(|| async {
        let network = Network::new().await.expect("netlink socket");
        configured_eth0(&network).await;
        let routes = fixture_routes();
        assert_eq!(
            routes[0].gateway, "10.244.1.1",
            "the fixture lists the default route first"
        );

        let result = network.update_routes(&routes).await.expect("update routes");
        let wanted = set(&[
            "default via 10.244.1.1 dev eth0",
            "10.244.1.0/24 dev eth0 scope link src 10.244.1.17",
        ]);
        assert_eq!(summaries(&result), wanted);
        assert_eq!(
            summaries(&network.list_routes().await.expect("list")),
            wanted
        );
        let by_ip = ip_routes();
        let ipv4: BTreeSet<String> = by_ip
            .iter()
            .filter(|r| !str_of(&r["dst"]).contains(':'))
            .map(ip_route_summary)
            .collect();
        assert_eq!(ipv4, wanted);
        for r in by_ip.iter().filter(|r| !str_of(&r["dst"]).contains(':')) {
            // `ip` leaves out `proto boot`, the agent's; the kernel's subnet route is gone.
            assert!(r.get("protocol").is_none(), "{r}");
        }
        assert!(
            by_ip
                .iter()
                .any(|r| r["dst"] == "fe80::/64" && r["dev"] == "eth0"),
            "the kernel's link-local route is kept: {by_ip:?}"
        );
        let default = result
            .iter()
            .find(|r| r.dest.is_empty())
            .expect("default route");
        assert_eq!(default.family.enum_value(), Ok(types::IPFamily::v4));

        // Again: the same table.
        let again = network
            .update_routes(&routes)
            .await
            .expect("update routes again");
        assert_eq!(summaries(&again), wanted);
        assert_eq!(
            ip_summaries()
                .into_iter()
                .filter(|s| !s.contains(':'))
                .collect::<BTreeSet<_>>(),
            wanted
        );
    });
}

/// A second UpdateRoutes replaces the first's routes on the devices it names — with an MTU and
/// an on-link gateway — and leaves the routes of other devices alone.
#[test]
fn update_routes_replaces_previous_routes() {
    if !shared_fixture_present() {
        return;
    }
    in_fresh_netns(|| async {
        let network = Network::new().await.expect("netlink socket");
        configured_eth0(&network).await;
        veth("eth1", "02:00:00:00:01:01");
        network
            .update_interface(&interface(
                "eth1",
                "02:00:00:00:01:01",
                0,
                &[("192.168.50.2", "24")],
            ))
            .await
            .expect("eth1");
        ip(&[
            "route",
            "add",
            "172.20.0.0/16",
            "via",
            "192.168.50.1",
            "dev",
            "eth1",
        ]);
        network
            .update_routes(&fixture_routes())
            .await
            .expect("first routes");

        let mut default = route("", "10.244.1.254", "eth0");
        default.mtu = 1400;
        let mut onlink = route("172.16.0.0/16", "192.168.9.1", "eth0");
        // RTNH_F_LINKDOWN (0x10) is state the kernel reports, not a request: it is dropped.
        onlink.flags = RTNH_F_ONLINK | 0x10;
        let routes = [
            default,
            onlink,
            link_route("10.244.1.0/24", "eth0", "10.244.1.17"),
        ];
        let result = network.update_routes(&routes).await.expect("second routes");

        let eth0 = set(&[
            "default via 10.244.1.254 dev eth0 mtu 1400",
            "172.16.0.0/16 via 192.168.9.1 dev eth0 onlink",
            "10.244.1.0/24 dev eth0 scope link src 10.244.1.17",
        ]);
        let eth1 = set(&[
            "172.20.0.0/16 via 192.168.50.1 dev eth1",
            "192.168.50.0/24 dev eth1 scope link src 192.168.50.2",
        ]);
        let all: BTreeSet<String> = eth0.union(&eth1).cloned().collect();
        let ipv4 = |routes: BTreeSet<String>| -> BTreeSet<String> {
            routes.into_iter().filter(|s| !s.contains(':')).collect()
        };
        assert_eq!(ipv4(summaries(&result)), all);
        assert_eq!(
            ipv4(ip_summaries()),
            all,
            "the old default via 10.244.1.1 is gone"
        );
        let default = result.iter().find(|r| r.dest.is_empty()).expect("default");
        assert_eq!(default.mtu, 1400);
        let onlink = result
            .iter()
            .find(|r| r.dest == "172.16.0.0/16")
            .expect("on-link route");
        assert_eq!(onlink.flags, RTNH_F_ONLINK);
    });
}

/// IPv6 routes, with the family given: the prefix route, then a default route through a
/// gateway in it.
#[test]
fn update_routes_handles_ipv6() {
    in_fresh_netns(|| async {
        let network = Network::new().await.expect("netlink socket");
        veth("eth0", "3e:7a:9b:41:2d:10");
        network
            .update_interface(&interface(
                "eth0",
                "3e:7a:9b:41:2d:10",
                0,
                &[("2001:db8::17", "64")],
            ))
            .await
            .expect("eth0");
        // The family is v4 (protobuf's default, as if unset): the addresses make the routes IPv6.
        let unset = |r: types::Route| types::Route {
            family: types::IPFamily::v4.into(),
            ..r
        };
        let routes = [
            route("", "2001:db8::1", "eth0"),
            unset(route("2001:db8::/64", "", "eth0")),
        ];
        let result = network.update_routes(&routes).await.expect("IPv6 routes");
        let wanted = set(&["default via 2001:db8::1 dev eth0", "2001:db8::/64 dev eth0"]);
        assert_eq!(summaries(&result), wanted);
        let by_ip: BTreeSet<String> = ip_json(&["-6", "route", "show", "table", "main"])
            .iter()
            .filter(|r| !str_of(&r["dst"]).starts_with("fe80"))
            .map(ip_route_summary)
            .collect();
        assert_eq!(by_ip, wanted);
        assert!(
            result
                .iter()
                .all(|r| r.family.enum_value() == Ok(types::IPFamily::v6))
        );
    });
}

/// Unknown devices and malformed routes are refused before any route changes; a gateway the
/// kernel cannot reach is its refusal, reported as INVALID_ARGUMENT.
#[test]
fn update_routes_rejects_bad_requests() {
    if !shared_fixture_present() {
        return;
    }
    in_fresh_netns(|| async {
        let network = Network::new().await.expect("netlink socket");
        configured_eth0(&network).await;
        network
            .update_routes(&fixture_routes())
            .await
            .expect("routes");
        let before = ip_summaries();

        let error = network
            .update_routes(&[
                link_route("10.244.1.0/24", "eth0", ""),
                route("", "10.244.1.1", "eth9"),
            ])
            .await
            .expect_err("unknown device");
        assert!(
            matches!(&error, NetworkError::NoSuchInterface { name, .. } if name == "eth9"),
            "{error}"
        );
        assert_eq!(code_of(error), Code::NOT_FOUND);
        assert_eq!(ip_summaries(), before);

        for (bad, field) in [
            (route("10.244.1.0/40", "", "eth0"), "Routes[1].dest"),
            (route("10.244.1.17/24", "", "eth0"), "Routes[1].dest"),
            (route("", "10.244.1", "eth0"), "Routes[1].gateway"),
            (
                types::Route {
                    family: types::IPFamily::v4.into(),
                    ..route("10.0.0.0/8", "fe80::1", "eth0")
                },
                "Routes[1].gateway",
            ),
        ] {
            let error = network
                .update_routes(&[link_route("10.244.1.0/24", "eth0", ""), bad])
                .await
                .expect_err("malformed route accepted");
            match &error {
                NetworkError::InvalidAddress { field: f, .. } => assert_eq!(f, field, "{error}"),
                other => panic!("expected InvalidAddress for {field}, got {other}"),
            }
            assert_eq!(code_of(error), Code::INVALID_ARGUMENT);
            assert_eq!(ip_summaries(), before);
        }

        veth("eth1", "02:00:00:00:01:01");
        let error = network
            .update_routes(&[link_route("10.60.0.0/16", "eth1", "")])
            .await
            .expect_err("a route on a link that is down");
        assert_eq!(error.errno(), Some(Errno::ENETDOWN), "{error}");
        assert_eq!(code_of(error), Code::FAILED_PRECONDITION);

        let error = network
            .update_routes(&[route("10.50.0.0/16", "10.9.9.9", "eth0")])
            .await
            .expect_err("unreachable gateway");
        match &error {
            NetworkError::Netlink { op, .. } => assert_eq!(*op, "add route"),
            other => panic!("expected a kernel refusal, got {other}"),
        }
        assert_eq!(code_of(error), Code::INVALID_ARGUMENT);
    });
}

/// Neighbours are added permanent (state 0), with their flags, visible to `ip neigh`; adding
/// them again replaces them; bad input and unknown devices are refused.
#[test]
fn add_arp_neighbors_adds_permanent_entries() {
    if !shared_fixture_present() {
        return;
    }
    in_fresh_netns(|| async {
        let network = Network::new().await.expect("netlink socket");
        configured_eth0(&network).await;
        let neighbor = |ip: &str, lladdr: &str, flags: i32| types::ARPNeighbor {
            toIPAddress: protobuf::MessageField::some(address(ip, "")),
            device: "eth0".into(),
            lladdr: lladdr.into(),
            flags,
            ..Default::default()
        };
        let neighbors = [
            neighbor("10.244.1.1", "02:42:ac:11:00:02", 0),
            neighbor("2001:db8::1", "02:42:AC:11:00:03", NTF_ROUTER),
        ];
        network.add_arp_neighbors(&neighbors).await.expect("add");
        network
            .add_arp_neighbors(&neighbors)
            .await
            .expect("add again");

        let entries = ip_json(&["neigh", "show", "dev", "eth0"]);
        let entry = |dst: &str| {
            entries
                .iter()
                .find(|e| e["dst"] == dst)
                .unwrap_or_else(|| panic!("no neighbour {dst}: {entries:?}"))
                .clone()
        };
        let v4 = entry("10.244.1.1");
        assert_eq!(v4["lladdr"], "02:42:ac:11:00:02");
        assert_eq!(v4["state"], serde_json::json!(["PERMANENT"]));
        assert!(v4.get("router").is_none());
        let v6 = entry("2001:db8::1");
        assert_eq!(v6["lladdr"], "02:42:ac:11:00:03");
        assert_eq!(v6["state"], serde_json::json!(["PERMANENT"]));
        assert!(v6.get("router").is_some(), "NTF_ROUTER: {v6}");

        let error = network
            .add_arp_neighbors(&[neighbor("10.244.1.2", "02:42:ac:11:00", 0)])
            .await
            .expect_err("short lladdr");
        assert!(
            matches!(&error, NetworkError::InvalidAddress { field, .. } if field == "ARPNeighbors[0].lladdr"),
            "{error}"
        );
        assert_eq!(code_of(error), Code::INVALID_ARGUMENT);
        let mut elsewhere = neighbor("10.244.1.3", "02:42:ac:11:00:04", 0);
        elsewhere.device = "eth9".into();
        let error = network
            .add_arp_neighbors(&[neighbor("10.244.1.4", "02:42:ac:11:00:05", 0), elsewhere])
            .await
            .expect_err("unknown device");
        assert_eq!(code_of(error), Code::NOT_FOUND);
        let after = ip_json(&["neigh", "show", "dev", "eth0"]);
        assert!(
            after.iter().all(|e| e["dst"] != "10.244.1.4"),
            "nothing is added when a device is missing: {after:?}"
        );
    });
}

/// How each error reaches the runtime: the codes AgentError gives the variants, and the kernel's
/// errnos that mean bad input.
#[test]
fn errors_map_to_agent_codes() {
    let missing = NetworkError::NoSuchInterface {
        hw_addr: "02:00:00:00:00:01".into(),
        name: String::new(),
    };
    let agent = AgentError::from(missing);
    assert_eq!(agent.code(), Code::NOT_FOUND);
    assert_eq!(
        agent.to_string(),
        "network interface with hardware address \"02:00:00:00:00:01\" not found"
    );

    let bad = NetworkError::InvalidValue {
        field: "Routes[0].scope".into(),
        value: "256".into(),
        reason: "a scope is 0 to 255".into(),
    };
    assert_eq!(
        bad.to_string(),
        "invalid Routes[0].scope \"256\": a scope is 0 to 255"
    );
    assert_eq!(code_of(bad), Code::INVALID_ARGUMENT);

    let refusal = |errno: Errno| {
        let mut message = rtnetlink::packet_core::ErrorMessage::default();
        message.code = std::num::NonZeroI32::new(-(errno as i32));
        NetworkError::Netlink {
            op: "add route",
            target: "10.0.0.0/8 dev eth0".into(),
            source: rtnetlink::Error::NetlinkError(message),
        }
    };
    let invalid = AgentError::from(refusal(Errno::EINVAL));
    assert_eq!(invalid.code(), Code::INVALID_ARGUMENT);
    assert!(
        invalid
            .to_string()
            .contains("cannot add route 10.0.0.0/8 dev eth0"),
        "{invalid}"
    );
    assert_eq!(code_of(refusal(Errno::ERANGE)), Code::INVALID_ARGUMENT);
    assert_eq!(code_of(refusal(Errno::ENODEV)), Code::NOT_FOUND);
    assert_eq!(code_of(refusal(Errno::ENETDOWN)), Code::FAILED_PRECONDITION);
    assert_eq!(code_of(refusal(Errno::EPERM)), Code::INTERNAL);
    assert_eq!(refusal(Errno::EEXIST).errno(), Some(Errno::EEXIST));
    assert_eq!(
        NetworkError::Netlink {
            op: "list",
            target: "links".into(),
            source: rtnetlink::Error::RequestFailed,
        }
        .errno(),
        None
    );
}

#[derive(Debug)]
enum Invalid {
    Address,
    Value,
}

/// Asserts that `error` is the input error `kind` naming `field`, given INVALID_ARGUMENT.
fn assert_invalid(error: NetworkError, kind: Invalid, field: &str) {
    match (&error, &kind) {
        (NetworkError::InvalidAddress { field: f, .. }, Invalid::Address)
        | (NetworkError::InvalidValue { field: f, .. }, Invalid::Value) => {
            assert_eq!(f, field, "{error}");
            assert_eq!(code_of(error), Code::INVALID_ARGUMENT);
        }
        _ => panic!("expected Invalid{kind:?} for {field}, got {error}"),
    }
}

/// Each malformed field of each request is reported as InvalidAddress or InvalidValue naming
/// it, and nothing changes; lenient spellings (uppercase hardware addresses, an IPv6 address
/// under the default v4 family, a repeated address) are taken.
#[test]
fn input_errors_name_the_field() {
    in_fresh_netns(|| async {
        let network = Network::new().await.expect("netlink socket");
        veth("eth0", "3e:7a:9b:41:2d:10");
        let mac = "3e:7a:9b:41:2d:10";
        let with_family = |family: i32, addr: &str, mask: &str| types::IPAddress {
            family: protobuf::EnumOrUnknown::from_i32(family),
            address: addr.into(),
            mask: mask.into(),
            ..Default::default()
        };
        let with_addresses = |addresses: Vec<types::IPAddress>| types::Interface {
            IPAddresses: addresses,
            ..interface("eth0", mac, 0, &[])
        };

        let interfaces = [
            (
                with_addresses(vec![with_family(7, "10.0.0.1", "8")]),
                Invalid::Value,
                "IPAddresses[0].family",
            ),
            (
                with_addresses(vec![with_family(1, "10.0.0.1", "8")]),
                Invalid::Address,
                "IPAddresses[0].address",
            ),
            (
                with_addresses(vec![with_family(0, "10.0.0.1", "255.0.0.0")]),
                Invalid::Address,
                "IPAddresses[0].mask",
            ),
            (
                with_addresses(vec![with_family(0, "10.0.0.1", "+8")]),
                Invalid::Address,
                "IPAddresses[0].mask",
            ),
            (
                with_addresses(vec![with_family(0, "10.0.0.1/8", "8")]),
                Invalid::Address,
                "IPAddresses[0].address",
            ),
            (
                interface("a-name-that-is-too-long", mac, 0, &[]),
                Invalid::Value,
                "name",
            ),
            (interface("eth/0", mac, 0, &[]), Invalid::Value, "name"),
            (
                interface("eth0", mac, u64::from(u32::MAX) + 1, &[]),
                Invalid::Value,
                "mtu",
            ),
            (interface("", "", 0, &[]), Invalid::Value, "hwAddr"),
            (
                interface("eth0", "3e-7a-9b-41-2d-10", 0, &[]),
                Invalid::Address,
                "hwAddr",
            ),
            (
                interface("eth0", "3e:7a:9b:41:2d:10:00", 0, &[]),
                Invalid::Address,
                "hwAddr",
            ),
            (
                interface("eth0", "g0:7a:9b:41:2d:10", 0, &[]),
                Invalid::Address,
                "hwAddr",
            ),
            (
                interface("eth0", "3e:7a:9b:41:2d:1", 0, &[]),
                Invalid::Address,
                "hwAddr",
            ),
        ];
        for (request, kind, field) in interfaces {
            let error = network.update_interface(&request).await.expect_err(field);
            assert_invalid(error, kind, field);
        }

        let scoped = types::Route {
            scope: 256,
            ..route("10.0.0.0/8", "", "eth0")
        };
        let v6_family = types::Route {
            family: types::IPFamily::v6.into(),
            ..route("", "10.0.0.1", "eth0")
        };
        let mixed_source = types::Route {
            source: "fe80::1".into(),
            ..route("10.0.0.0/8", "", "eth0")
        };
        let routes = [
            (scoped, Invalid::Value, "Routes[0].scope"),
            (
                route("10.0.0.0/8", "", ""),
                Invalid::Value,
                "Routes[0].device",
            ),
            (
                route("nonsense", "", "eth0"),
                Invalid::Address,
                "Routes[0].dest",
            ),
            (
                route("10.0.0.0/x", "", "eth0"),
                Invalid::Address,
                "Routes[0].dest",
            ),
            (v6_family, Invalid::Address, "Routes[0].gateway"),
            (mixed_source, Invalid::Address, "Routes[0].source"),
        ];
        for (bad, kind, field) in routes {
            let error = network.update_routes(&[bad]).await.expect_err(field);
            assert_invalid(error, kind, field);
        }

        let neighbor = types::ARPNeighbor {
            toIPAddress: protobuf::MessageField::some(address("10.0.0.1", "")),
            device: "eth0".into(),
            ..Default::default()
        };
        let neighbors = [
            (
                types::ARPNeighbor {
                    state: 0x1_0000,
                    ..neighbor.clone()
                },
                Invalid::Value,
                "ARPNeighbors[0].state",
            ),
            (
                types::ARPNeighbor {
                    flags: 256,
                    ..neighbor.clone()
                },
                Invalid::Value,
                "ARPNeighbors[0].flags",
            ),
            (
                types::ARPNeighbor {
                    device: String::new(),
                    ..neighbor.clone()
                },
                Invalid::Value,
                "ARPNeighbors[0].device",
            ),
            (
                types::ARPNeighbor {
                    toIPAddress: protobuf::MessageField::none(),
                    ..neighbor.clone()
                },
                Invalid::Address,
                "ARPNeighbors[0].toIPAddress",
            ),
            (
                types::ARPNeighbor {
                    toIPAddress: protobuf::MessageField::some(address("10.0.0", "")),
                    ..neighbor.clone()
                },
                Invalid::Address,
                "ARPNeighbors[0].toIPAddress.address",
            ),
        ];
        for (bad, kind, field) in neighbors {
            let error = network.add_arp_neighbors(&[bad]).await.expect_err(field);
            assert_invalid(error, kind, field);
        }

        assert!(ip_addresses("eth0").is_empty());
        assert_eq!(ip_link("eth0")["mtu"], 1500);
        assert!(ip_routes().is_empty());
        assert!(ip_json(&["neigh", "show"]).is_empty());

        let lenient = types::Interface {
            hwAddr: "3E:7A:9B:41:2D:10".into(),
            IPAddresses: vec![
                with_family(0, "10.0.0.1", "8"),
                with_family(0, "10.0.0.1", "8"),
                with_family(0, "2001:db8::5", "64"),
            ],
            ..interface("eth0", "", 0, &[])
        };
        let updated = network
            .update_interface(&lenient)
            .await
            .expect("lenient request");
        let addresses = addresses_of(&updated);
        assert!(
            addresses.contains("10.0.0.1/8") && addresses.contains("2001:db8::5/64"),
            "{addresses:?}"
        );
        let v6 = updated
            .IPAddresses
            .iter()
            .find(|a| a.address == "2001:db8::5")
            .expect("listed");
        assert_eq!(v6.family.enum_value(), Ok(types::IPFamily::v6));
    });
}
