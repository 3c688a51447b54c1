//! How errors reach the runtime, and which field each input error names.

use kata_agent::error::AgentError;
use kata_agent::network::{Network, NetworkError};
use nix::errno::Errno;
use peerpod_protocols::kata::types;
use ttrpc::Code;

use crate::harness::*;
use crate::requests::*;

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
