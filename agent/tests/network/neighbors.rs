//! AddARPNeighbors.

use kata_agent::network::{Network, NetworkError};
use peerpod_protocols::kata::types;
use ttrpc::Code;

use crate::harness::*;
use crate::requests::*;

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
