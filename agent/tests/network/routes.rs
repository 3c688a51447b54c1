//! UpdateRoutes.

use std::collections::BTreeSet;

use kata_agent::network::{Network, NetworkError};
use nix::errno::Errno;
use peerpod_protocols::kata::types;
use ttrpc::Code;

use crate::harness::*;
use crate::requests::*;

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
