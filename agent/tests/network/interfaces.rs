//! UpdateInterface, and the namespace each test runs in.

use kata_agent::network::{Network, NetworkError};
use peerpod_protocols::kata::types;
use ttrpc::Code;

use crate::harness::*;
use crate::requests::*;

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
