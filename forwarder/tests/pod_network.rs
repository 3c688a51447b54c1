//! The pod network between network namespaces: a "worker" namespace with its own VXLAN end, a
//! "pod VM" namespace (where the forwarder's host side runs) joined to it by a veth pair, and
//! the pod namespace inside the pod VM. Traffic must cross the tunnel, with MTU 1450; teardown
//! must leave nothing.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::Command;

use peerpod_forwarder::config::{NeighborConfig, PodNetworkConfig, RouteConfig};
use peerpod_forwarder::podnet::{PodNetwork, netns};

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2) runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn in_ns(ns: &str, args: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .unwrap()
}

/// Three named namespaces, deleted on drop.
struct World {
    worker: String,
    vm: String,
    pod: String,
}

impl World {
    fn new(tag: &str) -> Self {
        let id = std::process::id() % 100_000;
        let w = Self {
            worker: format!("fw-w{tag}{id}"),
            vm: format!("fw-v{tag}{id}"),
            pod: format!("fw-p{tag}{id}"),
        };
        for ns in [&w.worker, &w.vm, &w.pod] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(std::process::Stdio::null())
                .status();
            ip(&["netns", "add", ns]);
        }
        let (a, b) = (format!("fva{tag}{id}"), format!("fvb{tag}{id}"));
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
        ip(&["link", "set", &a, "netns", &w.worker]);
        ip(&["link", "set", &b, "netns", &w.vm]);
        ip(&["-n", &w.worker, "addr", "add", "192.168.77.1/24", "dev", &a]);
        ip(&["-n", &w.vm, "addr", "add", "192.168.77.2/24", "dev", &b]);
        for (ns, dev) in [(&w.worker, &a), (&w.vm, &b)] {
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        // The worker's end of the tunnel, as the cloud-api-adaptor sets it up on the node.
        ip(&[
            "-n",
            &w.worker,
            "link",
            "add",
            "vx0",
            "address",
            "0a:58:0a:f4:01:01",
            "type",
            "vxlan",
            "id",
            "555001",
            "remote",
            "192.168.77.2",
            "dstport",
            "9000",
        ]);
        ip(&[
            "-n",
            &w.worker,
            "addr",
            "add",
            "10.244.1.1/24",
            "dev",
            "vx0",
        ]);
        ip(&["-n", &w.worker, "link", "set", "vx0", "mtu", "1450", "up"]);
        w
    }

    fn path(ns: &str) -> PathBuf {
        PathBuf::from("/run/netns").join(ns)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for ns in [&self.worker, &self.vm, &self.pod] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

fn config() -> PodNetworkConfig {
    PodNetworkConfig {
        pod_ip: (IpAddr::V4(Ipv4Addr::new(10, 244, 1, 5)), 24),
        pod_hw_addr: Some([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05]),
        interface: "eth0".into(),
        worker_node_ip: Ipv4Addr::new(192, 168, 77, 1),
        // Listed gateway first: the set-up must add the gateway-less route before it.
        routes: vec![
            RouteConfig {
                dst: Some((IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)),
                gw: Some(IpAddr::V4(Ipv4Addr::new(10, 244, 1, 1))),
                dev: "eth0".into(),
                protocol: 0,
                scope: 0,
            },
            RouteConfig {
                dst: Some((IpAddr::V4(Ipv4Addr::new(10, 244, 1, 0)), 24)),
                gw: None,
                dev: "eth0".into(),
                protocol: 0,
                scope: 253,
            },
        ],
        neighbors: vec![NeighborConfig {
            ip: IpAddr::V4(Ipv4Addr::new(10, 244, 1, 1)),
            hw_addr: [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x01],
            dev: "eth0".into(),
            state: 0,
        }],
        mtu: 1500,
        vxlan_port: 9000,
        vxlan_id: 555001,
        external_net_via_pod_vm: false,
    }
}

#[tokio::test]
async fn vxlan_carries_pod_traffic_with_mtu_1450_and_teardown_leaves_nothing() {
    let w = World::new("a");
    let net = PodNetwork::new(config(), World::path(&w.pod), Some(World::path(&w.vm)));
    net.setup().await.unwrap();

    // The device: in the pod namespace, renamed, the pod's MAC, MTU clamped, a VXLAN to the
    // worker on port 9000.
    let link = ip(&["-n", &w.pod, "-d", "link", "show", "eth0"]);
    assert!(link.contains("mtu 1450"), "{link}");
    assert!(link.contains("0a:58:0a:f4:01:05"), "{link}");
    assert!(
        link.contains("vxlan id 555001 remote 192.168.77.1"),
        "{link}"
    );
    assert!(link.contains("dstport 9000"), "{link}");
    assert!(
        ip(&["-n", &w.pod, "link", "show", "lo"]).contains("UP"),
        "lo is up in the pod namespace"
    );
    assert!(
        !ip(&["-n", &w.vm, "link"]).contains("ppvx"),
        "nothing left in the pod VM's namespace"
    );
    let routes = ip(&["-n", &w.pod, "route"]);
    assert!(
        routes.contains("default via 10.244.1.1 dev eth0"),
        "{routes}"
    );
    assert!(routes.contains("10.244.1.0/24 dev eth0"), "{routes}");
    let neigh = ip(&["-n", &w.pod, "neigh"]);
    assert!(
        neigh.contains("10.244.1.1 dev eth0 lladdr 0a:58:0a:f4:01:01 PERMANENT"),
        "{neigh}"
    );
    let rules = String::from_utf8_lossy(&in_ns(&w.vm, &["iptables", "-t", "raw", "-S"]).stdout)
        .into_owned();
    assert!(rules.contains("-A peerpod-OUTPUT -d 192.168.77.1/32 -p udp -m comment --comment \"peerpod [vni:555001]\" -m udp --dport 9000 -j NOTRACK"), "{rules}");
    assert!(rules.contains("-A peerpod-PREROUTING -s 192.168.77.1/32 -p udp -m comment --comment \"peerpod [vni:555001]\" -m udp --dport 9000 -j NOTRACK"), "{rules}");
    assert!(rules.contains("-A OUTPUT -j peerpod-OUTPUT"), "{rules}");

    // Pings across the tunnel, both ways.
    let ping = in_ns(
        &w.worker,
        &["busybox", "ping", "-c", "2", "-W", "3", "10.244.1.5"],
    );
    assert!(
        ping.status.success(),
        "worker → pod: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    let ping = in_ns(
        &w.pod,
        &["busybox", "ping", "-c", "1", "-W", "3", "10.244.1.1"],
    );
    assert!(
        ping.status.success(),
        "pod → worker: {}",
        String::from_utf8_lossy(&ping.stdout)
    );

    // TCP: 1 MiB from the worker to a listener in the pod namespace, in full-size segments.
    let server = tokio::spawn(netns::run_in(Some(&World::path(&w.pod)), || async {
        use tokio::io::AsyncReadExt as _;
        let l = tokio::net::TcpListener::bind("10.244.1.5:8080")
            .await
            .unwrap();
        let (mut s, _) = l.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        got
    }));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let payload: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    let sent = payload.clone();
    netns::run_in(Some(&World::path(&w.worker)), move || async move {
        use tokio::io::AsyncWriteExt as _;
        let mut s = tokio::net::TcpStream::connect("10.244.1.5:8080")
            .await
            .unwrap();
        s.write_all(&sent).await.unwrap();
        s.shutdown().await.unwrap();
    })
    .await
    .unwrap();
    let got = server.await.unwrap().unwrap();
    assert_eq!(got, payload, "the pod received the bytes intact");

    net.teardown().await.unwrap();
    let links = ip(&["-n", &w.pod, "link"]);
    assert!(!links.contains("eth0"), "{links}");
    let rules = String::from_utf8_lossy(&in_ns(&w.vm, &["iptables", "-t", "raw", "-S"]).stdout)
        .into_owned();
    assert!(!rules.contains("peerpod"), "rules left behind: {rules}");
    assert!(!ip(&["-n", &w.vm, "link"]).contains("ppvx"));
    // Teardown twice is harmless.
    net.teardown().await.unwrap();
}

/// An attacker on the pod VM's network (a fourth namespace) who knows the VNI sends VXLAN
/// frames from its own MAC: the device does no learning, so no FDB entry points at it.
#[tokio::test]
async fn a_spoofed_vxlan_sender_installs_no_fdb_entry_and_the_device_says_nolearning() {
    let w = World::new("l");
    let attacker = format!("fw-x{}", std::process::id() % 100_000);
    let _ = Command::new("ip")
        .args(["netns", "del", &attacker])
        .stderr(std::process::Stdio::null())
        .status();
    ip(&["netns", "add", &attacker]);
    struct Del(String);
    impl Drop for Del {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _del = Del(attacker.clone());
    let net = PodNetwork::new(config(), World::path(&w.pod), Some(World::path(&w.vm)));
    net.setup().await.unwrap();

    let link = ip(&["-n", &w.pod, "-d", "link", "show", "eth0"]);
    assert!(link.contains("nolearning"), "{link}");

    let id = std::process::id() % 100_000;
    let (a, b) = (format!("fxa{id}"), format!("fxb{id}"));
    ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
    ip(&["link", "set", &a, "netns", &attacker]);
    ip(&["link", "set", &b, "netns", &w.vm]);
    ip(&["-n", &attacker, "addr", "add", "192.168.78.1/24", "dev", &a]);
    ip(&["-n", &w.vm, "addr", "add", "192.168.78.2/24", "dev", &b]);
    ip(&["-n", &attacker, "link", "set", &a, "up"]);
    ip(&["-n", &w.vm, "link", "set", &b, "up"]);
    ip(&[
        "-n",
        &attacker,
        "link",
        "add",
        "evil0",
        "address",
        "02:de:ad:be:ef:01",
        "type",
        "vxlan",
        "id",
        "555001",
        "remote",
        "192.168.78.2",
        "dstport",
        "9000",
    ]);
    ip(&["-n", &attacker, "link", "set", "evil0", "up"]);
    // Unsolicited ARP claiming the worker's gateway address, from the attacker's MAC.
    for _ in 0..3 {
        let _ = in_ns(
            &attacker,
            &[
                "busybox",
                "arping",
                "-U",
                "-c",
                "1",
                "-w",
                "1",
                "-I",
                "evil0",
                "-s",
                "10.244.1.1",
                "10.244.1.5",
            ],
        );
    }
    let fdb = ip(&["-n", &w.pod, "-br", "link"]);
    assert!(fdb.contains("eth0"), "{fdb}");
    let out = Command::new("bridge")
        .args(["-n", &w.pod, "fdb", "show", "dev", "eth0"])
        .output()
        .expect("bridge (iproute2) runs");
    let fdb = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !fdb.contains("02:de:ad:be:ef:01"),
        "the attacker's MAC was learned: {fdb}"
    );
    net.teardown().await.unwrap();
}

#[tokio::test]
async fn a_failed_set_up_removes_what_it_made() {
    let w = World::new("b");
    let mut cfg = config();
    // A route on a device the pod namespace does not have: set-up fails part-way.
    cfg.routes.push(RouteConfig {
        dst: Some((IpAddr::V4(Ipv4Addr::new(10, 9, 0, 0)), 16)),
        gw: None,
        dev: "nosuch0".into(),
        protocol: 0,
        scope: 0,
    });
    let net = PodNetwork::new(cfg, World::path(&w.pod), Some(World::path(&w.vm)));
    let err = net
        .setup()
        .await
        .expect_err("a missing route device fails the set-up");
    assert!(err.to_string().contains("nosuch0"), "{err}");
    assert!(
        !ip(&["-n", &w.pod, "link"]).contains("eth0"),
        "the device was removed"
    );
    let rules = String::from_utf8_lossy(&in_ns(&w.vm, &["iptables", "-t", "raw", "-S"]).stdout)
        .into_owned();
    assert!(!rules.contains("peerpod"), "rules left behind: {rules}");
}

#[tokio::test]
async fn teardown_leaves_a_non_vxlan_interface_alone() {
    let w = World::new("c");
    ip(&[
        "-n", &w.pod, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
    ]);
    let net = PodNetwork::new(config(), World::path(&w.pod), Some(World::path(&w.vm)));
    let err = net.teardown().await.expect_err("not ours");
    assert!(err.to_string().contains("not a VXLAN device"), "{err}");
    assert!(ip(&["-n", &w.pod, "link"]).contains("eth0"));
}

/// The binary as in a pod VM: run in the "pod VM" namespace with a pod network in apf.json, the
/// shim connecting from the worker namespace over the underlay. The port opens only with the
/// tunnel up, the shim's requests reach the agent, and SIGTERM tears the tunnel down.
#[tokio::test]
async fn the_binary_sets_up_the_tunnel_before_serving_and_removes_it_on_exit() {
    use common::*;
    let w = World::new("d");
    let dir = scratch("e2e-net");
    let socket = dir.join("agent.sock");
    let (_server, stand_in) = stand_in(&socket).await;
    let pki = Pki::new();
    let net = r#""pod-network": {"tunnel-type": "vxlan", "podip": "10.244.1.5/24", "pod-hw-addr": "0a:58:0a:f4:01:05", "interface": "eth0", "worker-node-ip": "192.168.77.1/24", "vxlan-port": 9000, "vxlan-id": 555001, "mtu": 1500, "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1", "dev": "eth0"}, {"dst": "10.244.1.0/24", "dev": "eth0", "scope": 253}]}, "#;
    std::fs::write(dir.join("apf.json"), pki.apf_json(net)).unwrap();
    let notify = std::os::unix::net::UnixDatagram::bind(dir.join("notify.sock")).unwrap();
    notify.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &w.vm,
            env!("CARGO_BIN_EXE_agent-protocol-forwarder"),
        ])
        .args(["-config", &dir.join("apf.json").display().to_string()])
        .args(["-listen", "192.168.77.2:15150"])
        .args(["-kata-agent-socket", &socket.display().to_string()])
        .args(["-pod-namespace", &World::path(&w.pod).display().to_string()])
        .arg("-imds-nat")
        .env("NOTIFY_SOCKET", dir.join("notify.sock"))
        .stderr(std::fs::File::create(dir.join("forwarder.log")).unwrap())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 32];
    let n = notify.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    // Ready means the tunnel (and with -imds-nat, the IMDS path) is up already.
    assert!(ip(&["-n", &w.pod, "link", "show", "eth0"]).contains("mtu 1450"));
    assert!(ip(&["-n", &w.pod, "route"]).contains("169.254.169.254 dev veth2"));

    let (ca, cert, key) = (
        pki.server.ca_pem.clone(),
        pki.client.cert_pem.clone(),
        pki.client.key_pem.clone(),
    );
    let sandboxes = netns::run_in(Some(&World::path(&w.worker)), move || async move {
        let cfg = client_config(&ca, Some((&cert, &key)));
        let tls = tls_connect("192.168.77.2:15150".parse().unwrap(), cfg)
            .await
            .unwrap();
        let (agent_client, _) = ttrpc_clients(tls);
        let mut req = peerpod_protocols::kata::agent::CreateSandboxRequest::new();
        req.dns = vec!["nameserver 10.96.0.10".into()];
        agent_client.create_sandbox(ctx(), &req).await.unwrap();
    })
    .await;
    sandboxes.unwrap();
    assert_eq!(stand_in.recorded.lock().unwrap().sandboxes.len(), 1);

    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let status = child.wait().unwrap();
    let log = std::fs::read_to_string(dir.join("forwarder.log")).unwrap_or_default();
    assert!(status.success(), "{status}: {log}");
    assert!(log.contains("pod network torn down"), "{log}");
    assert!(!ip(&["-n", &w.pod, "link"]).contains("eth0"));
    assert!(!ip(&["-n", &w.vm, "link"]).contains("veth1"));
    let rules = String::from_utf8_lossy(&in_ns(&w.vm, &["iptables", "-t", "raw", "-S"]).stdout)
        .into_owned();
    assert!(!rules.contains("peerpod"), "rules left behind: {rules}");
    let nat = String::from_utf8_lossy(&in_ns(&w.vm, &["iptables", "-t", "nat", "-S"]).stdout)
        .into_owned();
    assert!(!nat.contains("169.254.169.254"), "NAT rule left: {nat}");
}

/// An IMDS stand-in namespace joined to the "pod VM" one: 169.254.169.254 lives there and the
/// pod VM routes to it over a veth, as a cloud VM routes to its IMDS. Deleted on drop.
struct Imds {
    ns: String,
}

impl Imds {
    fn new(w: &World, tag: &str) -> Self {
        let id = std::process::id() % 100_000;
        let ns = format!("fw-i{tag}{id}");
        let _ = Command::new("ip")
            .args(["netns", "del", &ns])
            .stderr(std::process::Stdio::null())
            .status();
        ip(&["netns", "add", &ns]);
        let (a, b) = (format!("fia{tag}{id}"), format!("fib{tag}{id}"));
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
        ip(&["link", "set", &a, "netns", &w.vm]);
        ip(&["link", "set", &b, "netns", &ns]);
        ip(&["-n", &w.vm, "addr", "add", "10.99.0.1/24", "dev", &a]);
        ip(&["-n", &ns, "addr", "add", "10.99.0.2/24", "dev", &b]);
        ip(&["-n", &ns, "addr", "add", "169.254.169.254/32", "dev", &b]);
        ip(&["-n", &w.vm, "link", "set", &a, "up"]);
        ip(&["-n", &ns, "link", "set", &b, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &w.vm,
            "route",
            "add",
            "169.254.169.254/32",
            "via",
            "10.99.0.2",
        ]);
        Self { ns }
    }

    /// Serves on 169.254.169.254:80: every connection is answered with the address it came
    /// from, then closed.
    fn serve(&self) -> tokio::task::JoinHandle<()> {
        let ns = World::path(&self.ns);
        tokio::spawn(async move {
            let _ = netns::run_in(Some(&ns), || async {
                use tokio::io::AsyncWriteExt as _;
                let l = tokio::net::TcpListener::bind("169.254.169.254:80")
                    .await
                    .unwrap();
                loop {
                    let (mut s, peer) = l.accept().await.unwrap();
                    let _ = s.write_all(peer.ip().to_string().as_bytes()).await;
                }
            })
            .await;
        })
    }
}

impl Drop for Imds {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.ns])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// From the pod namespace: what the IMDS stand-in answers, or the connection error.
async fn ask_imds(pod: &str) -> Result<String, String> {
    netns::run_in(Some(&World::path(pod)), || async {
        use tokio::io::AsyncReadExt as _;
        let connect = tokio::net::TcpStream::connect("169.254.169.254:80");
        let mut s = match tokio::time::timeout(std::time::Duration::from_secs(3), connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("timed out".to_owned()),
        };
        let mut got = String::new();
        s.read_to_string(&mut got)
            .await
            .map_err(|e| e.to_string())?;
        Ok(got)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn the_pod_reaches_the_imds_through_the_pod_vm_with_nat_and_teardown_removes_it() {
    let w = World::new("e");
    let imds = Imds::new(&w, "e");
    let _server = imds.serve();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    // Without the NAT set-up, the pod's only way out is the tunnel: no IMDS.
    let plain = PodNetwork::new(config(), World::path(&w.pod), Some(World::path(&w.vm)));
    plain.setup().await.unwrap();
    let before = ask_imds(&w.pod).await;
    assert!(before.is_err(), "the IMDS answered without NAT: {before:?}");
    plain.teardown().await.unwrap();

    let net = PodNetwork::new(config(), World::path(&w.pod), Some(World::path(&w.vm)))
        .with_imds_nat(true);
    net.setup().await.unwrap();
    let pod_routes = ip(&["-n", &w.pod, "route"]);
    assert!(
        pod_routes.contains("169.254.169.254 dev veth2"),
        "{pod_routes}"
    );
    let nat = String::from_utf8_lossy(&in_ns(&w.vm, &["iptables", "-t", "nat", "-S"]).stdout)
        .into_owned();
    assert!(
        nat.contains("-A POSTROUTING -s 10.244.1.5/32 -d 169.254.169.254/32 -j MASQUERADE"),
        "{nat}"
    );
    // The IMDS sees the pod VM's address, not the pod's.
    assert_eq!(ask_imds(&w.pod).await.as_deref(), Ok("10.99.0.1"));
    // The tunnel still carries the rest of the pod's traffic.
    let ping = in_ns(
        &w.pod,
        &["busybox", "ping", "-c", "1", "-W", "3", "10.244.1.1"],
    );
    assert!(ping.status.success(), "pod → worker with the IMDS path up");

    net.teardown().await.unwrap();
    assert!(!ip(&["-n", &w.vm, "link"]).contains("veth1"));
    let nat = String::from_utf8_lossy(&in_ns(&w.vm, &["iptables", "-t", "nat", "-S"]).stdout)
        .into_owned();
    assert!(!nat.contains("169.254.169.254"), "NAT rule left: {nat}");
    assert!(
        ask_imds(&w.pod).await.is_err(),
        "the IMDS path outlived teardown"
    );
    // Twice is harmless.
    net.teardown().await.unwrap();
}

/// The agent serving the front door itself, as in a pod VM: run in the "pod VM" namespace with
/// a pod network in apf.json and the IMDS NAT. 15150 opens only with the tunnel and the IMDS
/// path up, the shim in the worker namespace reaches the agent over the underlay with mTLS, and
/// SIGTERM tears the tunnel, the IMDS path and the rules down.
/// The kata-agent `bin` in the pod VM's namespace of `w`, serving on `dir/<socket>`, with its
/// front door configured from `dir/apf.json` on 192.168.77.2:15150, the pod namespace of `w`
/// and the IMDS NAT.
fn agent_with_front_door(
    bin: &std::path::Path,
    w: &World,
    dir: &std::path::Path,
    socket: &str,
) -> Command {
    let server_addr = format!("unix://{}", dir.join(socket).display());
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &w.vm]).arg(bin);
    common::agent_args(&mut cmd, dir, &server_addr, "")
        .arg("--front-door-config")
        .arg(dir.join("apf.json"))
        .args(["--front-door-listen", "192.168.77.2:15150"])
        .arg("--pod-namespace")
        .arg(World::path(&w.pod))
        .arg("--imds-nat");
    cmd
}

#[tokio::test]
async fn the_agents_front_door_sets_up_the_pod_network_before_serving_and_removes_it_on_exit() {
    use common::*;
    let Some(bin) = kata_agent_binary() else {
        return;
    };
    let w = World::new("f");
    let dir = scratch("in-agent-net");
    let pki = Pki::new();
    let net = r#""pod-network": {"tunnel-type": "vxlan", "podip": "10.244.1.5/24", "pod-hw-addr": "0a:58:0a:f4:01:05", "interface": "eth0", "worker-node-ip": "192.168.77.1/24", "vxlan-port": 9000, "vxlan-id": 555001, "mtu": 1500, "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1", "dev": "eth0"}, {"dst": "10.244.1.0/24", "dev": "eth0", "scope": 253}]}, "#;
    std::fs::write(dir.join("apf.json"), pki.apf_json(net)).unwrap();
    let notify = std::os::unix::net::UnixDatagram::bind(dir.join("notify.sock")).unwrap();
    notify.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut child = agent_with_front_door(&bin, &w, &dir, "agent.sock")
        .env("NOTIFY_SOCKET", dir.join("notify.sock"))
        .stderr(std::fs::File::create(dir.join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 32];
    let got = notify.recv(&mut buf);
    let log = || std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
    let n = got.unwrap_or_else(|e| panic!("no READY=1 ({e}): {}", log()));
    assert_eq!(&buf[..n], b"READY=1");
    // Ready means the tunnel and the IMDS path are up already.
    assert!(ip(&["-n", &w.pod, "link", "show", "eth0"]).contains("mtu 1450"));
    assert!(ip(&["-n", &w.vm, "link"]).contains("veth1"));
    assert!(ip(&["-n", &w.pod, "route"]).contains("169.254.169.254 dev veth2"));

    let (ca, cert, key) = (
        pki.server.ca_pem.clone(),
        pki.client.cert_pem.clone(),
        pki.client.key_pem.clone(),
    );
    netns::run_in(Some(&World::path(&w.worker)), move || async move {
        let cfg = client_config(&ca, Some((&cert, &key)));
        let tls = tls_connect("192.168.77.2:15150".parse().unwrap(), cfg)
            .await
            .unwrap();
        let (_, health) = ttrpc_clients(tls);
        health
            .check(ctx(), &peerpod_protocols::kata::health::CheckRequest::new())
            .await
            .unwrap();
    })
    .await
    .unwrap();

    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}: {}", log());
    assert!(log().contains("pod network torn down"), "{}", log());
    assert!(!ip(&["-n", &w.pod, "link"]).contains("eth0"));
    assert!(!ip(&["-n", &w.vm, "link"]).contains("veth1"));
    let raw = String::from_utf8_lossy(&in_ns(&w.vm, &["iptables", "-t", "raw", "-S"]).stdout)
        .into_owned();
    assert!(!raw.contains("peerpod"), "rules left behind: {raw}");
    let nat = String::from_utf8_lossy(&in_ns(&w.vm, &["iptables", "-t", "nat", "-S"]).stdout)
        .into_owned();
    assert!(!nat.contains("169.254.169.254"), "NAT rule left: {nat}");
}

/// The agent with its front door prepared (tunnel, IMDS path and rules up) but failing right
/// after (its own socket cannot be made: the parent is a file): it exits with the cause and
/// leaves none of the pod network behind.
#[tokio::test]
async fn an_agent_failing_after_the_front_door_is_prepared_tears_the_pod_network_down() {
    use common::*;
    let Some(bin) = kata_agent_binary() else {
        return;
    };
    let w = World::new("e");
    let dir = scratch("in-agent-fail");
    let pki = Pki::new();
    let net = r#""pod-network": {"tunnel-type": "vxlan", "podip": "10.244.1.5/24", "pod-hw-addr": "0a:58:0a:f4:01:05", "interface": "eth0", "worker-node-ip": "192.168.77.1/24", "vxlan-port": 9000, "vxlan-id": 555001, "mtu": 1500, "routes": [{"dst": "10.244.1.0/24", "dev": "eth0", "scope": 253}]}, "#;
    std::fs::write(dir.join("apf.json"), pki.apf_json(net)).unwrap();
    std::fs::write(dir.join("file"), b"not a directory").unwrap();
    let mut child = agent_with_front_door(&bin, &w, &dir, "file/agent.sock")
        .stderr(std::fs::File::create(dir.join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
    let deadline = std::time::Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the agent did not stop: {}", log());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(!status.success(), "{}", log());
    assert!(log().contains("pod network up"), "{}", log());
    assert!(log().contains("pod network torn down"), "{}", log());
    assert!(!ip(&["-n", &w.pod, "link"]).contains("eth0"));
    assert!(!ip(&["-n", &w.vm, "link"]).contains("veth1"));
    assert!(!ip(&["-n", &w.vm, "link"]).contains("ppvx"));
    let raw = String::from_utf8_lossy(&in_ns(&w.vm, &["iptables", "-t", "raw", "-S"]).stdout)
        .into_owned();
    assert!(!raw.contains("peerpod"), "rules left behind: {raw}");
    let nat = String::from_utf8_lossy(&in_ns(&w.vm, &["iptables", "-t", "nat", "-S"]).stdout)
        .into_owned();
    assert!(!nat.contains("169.254.169.254"), "NAT rule left: {nat}");
}
