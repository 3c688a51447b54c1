//! `apf.json`: the forwarder's configuration as cloud-api-adaptor writes it into the pod VM
//! (`/run/peerpod/apf.json`), with upstream's key names.
//!
//! The file comes from user data, i.e. from the host: it is read with a size bound, every list
//! is bounded, addresses are parsed strictly, and a bad value is reported by its key. Keys this
//! forwarder does not use are ignored, as upstream's Go decoder ignores them.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use serde::Deserialize;

/// The largest `apf.json` accepted (it holds three PEM documents and the pod network).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// The most routes or neighbours the pod network may list.
pub const MAX_ENTRIES: usize = 256;
/// The VXLAN UDP port when the configuration names none (IANA's, as upstream defaults).
pub const DEFAULT_VXLAN_PORT: u16 = 4789;
/// The largest MTU the pod's VXLAN interface gets (upstream's clamp: 1500 less VXLAN's 50).
pub const MAX_MTU: u32 = 1450;

/// Why `apf.json` was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the forwarder configuration {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_CONFIG_BYTES`].
    #[error("the forwarder configuration {path} is over {MAX_CONFIG_BYTES} bytes")]
    TooLarge {
        /// The file.
        path: String,
    },
    /// The file is not the JSON object expected.
    #[error("the forwarder configuration is not valid apf.json: {0}")]
    Json(#[from] serde_json::Error),
    /// A value is out of range or malformed.
    #[error("apf.json: {key}: {reason}")]
    Invalid {
        /// The key, as a path (`pod-network.routes[2].dst`).
        key: String,
        /// What is wrong and what is expected.
        reason: String,
    },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// `apf.json` as written by cloud-api-adaptor.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawConfig {
    pod_network: Option<RawPodNetwork>,
    pod_namespace: Option<String>,
    pod_name: Option<String>,
    tls_server_key: Option<String>,
    tls_server_cert: Option<String>,
    tls_client_ca: Option<String>,
    tls_min_version: Option<String>,
    tls_cipher_suites: Option<Vec<String>>,
    #[serde(rename = "sc")]
    secure_comms: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawPodNetwork {
    #[serde(rename = "podip")]
    pod_ip: Option<String>,
    pod_hw_addr: Option<String>,
    interface: Option<String>,
    worker_node_ip: Option<String>,
    tunnel_type: Option<String>,
    routes: Option<Vec<RawRoute>>,
    neighbors: Option<Vec<RawNeighbor>>,
    mtu: Option<i64>,
    vxlan_port: Option<i64>,
    vxlan_id: Option<i64>,
    external_net_via_pod_vm: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
struct RawRoute {
    dst: Option<String>,
    gw: Option<String>,
    dev: Option<String>,
    protocol: Option<i64>,
    scope: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawNeighbor {
    ip: Option<String>,
    hw_addr: Option<String>,
    dev: Option<String>,
    state: Option<i64>,
}

/// The forwarder's configuration, checked.
#[derive(Debug, Clone, Default)]
pub struct ApfConfig {
    /// The pod network to set up before serving (`pod-network`); `None` when absent.
    pub pod_network: Option<PodNetworkConfig>,
    /// `pod-namespace` (informational: the `-pod-namespace` flag decides).
    pub pod_namespace: Option<String>,
    /// `pod-name`, for logs.
    pub pod_name: Option<String>,
    /// TLS material and settings from the file.
    pub tls: TlsSettings,
}

/// TLS material and settings (`tls-*` keys, or the flags' files).
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// The server certificate chain (PEM).
    pub server_cert: Option<String>,
    /// The server key (PEM).
    pub server_key: Option<String>,
    /// The CA that client certificates must chain to (PEM); when set, a client certificate is
    /// required.
    pub client_ca: Option<String>,
    /// `tls-min-version` as written (`VersionTLS12`, `VersionTLS13`, `1.2`, `1.3`).
    pub min_version: Option<String>,
    /// `tls-cipher-suites` as written (Go/IANA or OpenSSL names).
    pub cipher_suites: Vec<String>,
}

/// The pod network (`pod-network`): a VXLAN tunnel from the worker node into the pod's
/// network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetworkConfig {
    /// The pod's address and prefix length (`podip`).
    pub pod_ip: (IpAddr, u8),
    /// The pod's MAC address (`pod-hw-addr`), if given.
    pub pod_hw_addr: Option<[u8; 6]>,
    /// The interface name inside the pod namespace (`interface`).
    pub interface: String,
    /// The worker node's address: the VXLAN remote (`worker-node-ip`).
    pub worker_node_ip: Ipv4Addr,
    /// The routes to add in the pod namespace, as listed (`routes`).
    pub routes: Vec<RouteConfig>,
    /// The neighbour entries to add in the pod namespace (`neighbors`).
    pub neighbors: Vec<NeighborConfig>,
    /// The MTU asked for (`mtu`), before the clamp to [`MAX_MTU`]; 0 when not given.
    pub mtu: u32,
    /// The VXLAN UDP port (`vxlan-port`).
    pub vxlan_port: u16,
    /// The VXLAN network identifier (`vxlan-id`).
    pub vxlan_id: u32,
    /// `external-net-via-pod-vm`: refused when true (not supported here).
    pub external_net_via_pod_vm: bool,
}

impl PodNetworkConfig {
    /// The MTU the interface gets: the configured one, at most [`MAX_MTU`] (and [`MAX_MTU`]
    /// when none is configured).
    pub fn effective_mtu(&self) -> u32 {
        if self.mtu == 0 {
            MAX_MTU
        } else {
            self.mtu.min(MAX_MTU)
        }
    }
}

/// A route in the pod namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// Destination and prefix length; `None` for the default route.
    pub dst: Option<(IpAddr, u8)>,
    /// Gateway, if any.
    pub gw: Option<IpAddr>,
    /// Device name (in the pod namespace).
    pub dev: String,
    /// `RTPROT_*` value (0: the kernel's default, boot).
    pub protocol: u8,
    /// `RT_SCOPE_*` value (0: universe).
    pub scope: u8,
}

/// A neighbour entry in the pod namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighborConfig {
    /// The neighbour's address.
    pub ip: IpAddr,
    /// Its MAC address.
    pub hw_addr: [u8; 6],
    /// Device name (in the pod namespace).
    pub dev: String,
    /// `NUD_*` state (0: permanent).
    pub state: u16,
}

impl ApfConfig {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        use std::io::Read as _;
        let shown = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        let mut raw = Vec::new();
        file.take(MAX_CONFIG_BYTES + 1)
            .read_to_end(&mut raw)
            .map_err(|source| ConfigError::Read {
                path: shown.clone(),
                source,
            })?;
        if raw.len() as u64 > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge { path: shown });
        }
        Self::parse(&raw)
    }

    /// Checks an `apf.json` document.
    pub fn parse(raw: &[u8]) -> Result<Self, ConfigError> {
        let raw: RawConfig = serde_json::from_slice(raw)?;
        if raw.secure_comms == Some(true) {
            return Err(invalid(
                "sc",
                "secure comms (the SSH tunnel) is not supported by this forwarder; use TLS \
                 (tls-server-cert, tls-server-key, tls-client-ca)",
            ));
        }
        let pod_network = raw.pod_network.map(check_pod_network).transpose()?;
        let empty_to_none = |v: Option<String>| v.filter(|s| !s.is_empty());
        Ok(Self {
            pod_network,
            pod_namespace: empty_to_none(raw.pod_namespace),
            pod_name: empty_to_none(raw.pod_name),
            tls: TlsSettings {
                server_cert: empty_to_none(raw.tls_server_cert),
                server_key: empty_to_none(raw.tls_server_key),
                client_ca: empty_to_none(raw.tls_client_ca),
                min_version: empty_to_none(raw.tls_min_version),
                cipher_suites: raw.tls_cipher_suites.unwrap_or_default(),
            },
        })
    }
}

fn check_pod_network(raw: RawPodNetwork) -> Result<PodNetworkConfig, ConfigError> {
    const K: &str = "pod-network";
    let tunnel = raw.tunnel_type.unwrap_or_default();
    if tunnel != "vxlan" {
        return Err(invalid(
            format!("{K}.tunnel-type"),
            format!("{tunnel:?} is not supported: only \"vxlan\" is"),
        ));
    }
    let pod_ip = parse_prefix(&raw.pod_ip.unwrap_or_default())
        .map_err(|r| invalid(format!("{K}.podip"), r))?
        .ok_or_else(|| invalid(format!("{K}.podip"), "missing: the pod's address/prefix"))?;
    let pod_hw_addr = match raw.pod_hw_addr.as_deref() {
        None | Some("") => None,
        Some(mac) => Some(parse_mac(mac).map_err(|r| invalid(format!("{K}.pod-hw-addr"), r))?),
    };
    let interface = raw.interface.unwrap_or_default();
    check_ifname(&interface).map_err(|r| invalid(format!("{K}.interface"), r))?;
    let worker = parse_prefix(&raw.worker_node_ip.unwrap_or_default())
        .map_err(|r| invalid(format!("{K}.worker-node-ip"), r))?
        .ok_or_else(|| invalid(format!("{K}.worker-node-ip"), "missing"))?;
    let IpAddr::V4(worker_node_ip) = worker.0 else {
        return Err(invalid(
            format!("{K}.worker-node-ip"),
            "an IPv6 worker address is not supported",
        ));
    };
    let mtu = match raw.mtu.unwrap_or(0) {
        m @ 0..=65535 => m as u32,
        m => return Err(invalid(format!("{K}.mtu"), format!("{m} is out of range"))),
    };
    if (1..68).contains(&mtu) {
        return Err(invalid(
            format!("{K}.mtu"),
            format!("{mtu} is below IPv4's minimum of 68"),
        ));
    }
    let vxlan_port = match raw.vxlan_port.unwrap_or(0) {
        0 => DEFAULT_VXLAN_PORT,
        p @ 1..=65535 => p as u16,
        p => {
            return Err(invalid(
                format!("{K}.vxlan-port"),
                format!("{p} is not a UDP port"),
            ));
        }
    };
    let vxlan_id = match raw.vxlan_id.unwrap_or(0) {
        id @ 1..=0xFF_FFFF => id as u32,
        id => {
            return Err(invalid(
                format!("{K}.vxlan-id"),
                format!("{id} is not a VXLAN network identifier (1 to 16777215)"),
            ));
        }
    };
    let raw_routes = raw.routes.unwrap_or_default();
    if raw_routes.len() > MAX_ENTRIES {
        return Err(invalid(
            format!("{K}.routes"),
            format!("{} routes, at most {MAX_ENTRIES}", raw_routes.len()),
        ));
    }
    let mut routes = Vec::with_capacity(raw_routes.len());
    for (i, r) in raw_routes.into_iter().enumerate() {
        let key = |f: &str| format!("{K}.routes[{i}].{f}");
        let dst = parse_prefix(&r.dst.unwrap_or_default()).map_err(|e| invalid(key("dst"), e))?;
        let gw = match r.gw.as_deref() {
            None | Some("") => None,
            Some(gw) => Some(
                gw.parse::<IpAddr>()
                    .map_err(|_| invalid(key("gw"), format!("{gw:?} is not an IP address")))?,
            ),
        };
        let dev = r.dev.unwrap_or_default();
        check_ifname(&dev).map_err(|e| invalid(key("dev"), e))?;
        let protocol = u8::try_from(r.protocol.unwrap_or(0))
            .map_err(|_| invalid(key("protocol"), "not a route protocol (0 to 255)"))?;
        let scope = u8::try_from(r.scope.unwrap_or(0))
            .map_err(|_| invalid(key("scope"), "not a route scope (0 to 255)"))?;
        routes.push(RouteConfig {
            dst,
            gw,
            dev,
            protocol,
            scope,
        });
    }
    let raw_neighbors = raw.neighbors.unwrap_or_default();
    if raw_neighbors.len() > MAX_ENTRIES {
        return Err(invalid(
            format!("{K}.neighbors"),
            format!("{} neighbours, at most {MAX_ENTRIES}", raw_neighbors.len()),
        ));
    }
    let mut neighbors = Vec::with_capacity(raw_neighbors.len());
    for (i, n) in raw_neighbors.into_iter().enumerate() {
        let key = |f: &str| format!("{K}.neighbors[{i}].{f}");
        let text = n.ip.unwrap_or_default();
        let ip = text
            .parse::<IpAddr>()
            .map_err(|_| invalid(key("ip"), format!("{text:?} is not an IP address")))?;
        let hw_addr =
            parse_mac(&n.hw_addr.unwrap_or_default()).map_err(|e| invalid(key("hw-addr"), e))?;
        let dev = n.dev.unwrap_or_default();
        check_ifname(&dev).map_err(|e| invalid(key("dev"), e))?;
        let state = u16::try_from(n.state.unwrap_or(0))
            .map_err(|_| invalid(key("state"), "not a neighbour state"))?;
        neighbors.push(NeighborConfig {
            ip,
            hw_addr,
            dev,
            state,
        });
    }
    let external = raw.external_net_via_pod_vm.unwrap_or(false);
    if external {
        return Err(invalid(
            format!("{K}.external-net-via-pod-vm"),
            "routing the pod's external traffic through the pod VM is not supported by this \
             forwarder",
        ));
    }
    Ok(PodNetworkConfig {
        pod_ip,
        pod_hw_addr,
        interface,
        worker_node_ip,
        routes,
        neighbors,
        mtu,
        vxlan_port,
        vxlan_id,
        external_net_via_pod_vm: external,
    })
}

/// `a.b.c.d/n` or an IPv6 prefix; the empty string (Go's zero prefix) is `None`.
pub fn parse_prefix(text: &str) -> Result<Option<(IpAddr, u8)>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    let (addr, len) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?} is not an address/prefix-length"))?;
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{text:?}: {addr:?} is not an IP address"))?;
    let len: u8 = len
        .parse()
        .map_err(|_| format!("{text:?}: {len:?} is not a prefix length"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err(format!("{text:?}: prefix length over {max}"));
    }
    Ok(Some((addr, len)))
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts
            .next()
            .ok_or_else(|| format!("{text:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"))?;
        if part.len() != 2 {
            return Err(format!("{text:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"));
        }
        *byte = u8::from_str_radix(part, 16)
            .map_err(|_| format!("{text:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"))?;
    }
    if parts.next().is_some() {
        return Err(format!("{text:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"));
    }
    Ok(mac)
}

/// A Linux interface name: 1 to 15 bytes, no `/`, whitespace or NUL, not `.` or `..`.
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err(format!("{name:?}: an interface name has 1 to 15 bytes"));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not an interface name"));
    }
    if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || !b.is_ascii_graphic())
    {
        return Err(format!(
            "{name:?}: an interface name has no '/', ':', spaces or control characters"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{
        "pod-network": {
            "podip": "10.244.1.5/24", "pod-hw-addr": "0a:58:0a:f4:01:05", "interface": "eth0",
            "worker-node-ip": "10.224.0.4/16", "tunnel-type": "vxlan",
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1", "dev": "eth0"},
                       {"dst": "10.244.0.0/16", "gw": "", "dev": "eth0", "scope": 253}],
            "neighbors": [{"ip": "10.244.1.1", "hw-addr": "0a:58:0a:f4:01:01", "dev": "eth0"}],
            "mtu": 1500, "index": 0, "vxlan-port": 9000, "vxlan-id": 555001, "dedicated": false
        },
        "pod-namespace": "/run/netns/podns", "pod-name": "nginx",
        "tls-server-cert": "C", "tls-server-key": "K", "tls-client-ca": "CA",
        "tls-min-version": "VersionTLS13", "tls-cipher-suites": ["TLS_AES_128_GCM_SHA256"],
        "some-future-key": 1
    }"#;

    #[test]
    fn upstream_sample_is_read_with_its_keys() -> Result<(), ConfigError> {
        let c = ApfConfig::parse(SAMPLE.as_bytes())?;
        let n = c
            .pod_network
            .as_ref()
            .ok_or_else(|| invalid("t", "no net"))?;
        assert_eq!(
            n.pod_ip,
            ("10.244.1.5".parse().map_err(|_| invalid("t", "ip"))?, 24)
        );
        assert_eq!(n.worker_node_ip, Ipv4Addr::new(10, 224, 0, 4));
        assert_eq!((n.vxlan_port, n.vxlan_id), (9000, 555001));
        assert_eq!(n.effective_mtu(), 1450, "1500 is clamped to 1450");
        assert_eq!(n.routes.len(), 2);
        assert_eq!(
            n.routes[0].dst,
            Some(("0.0.0.0".parse().map_err(|_| invalid("t", "ip"))?, 0))
        );
        assert_eq!(n.routes[1].gw, None);
        assert_eq!(n.routes[1].scope, 253);
        assert_eq!(n.neighbors[0].hw_addr, [0x0a, 0x58, 0x0a, 0xf4, 1, 1]);
        assert_eq!(c.tls.min_version.as_deref(), Some("VersionTLS13"));
        assert_eq!(c.tls.client_ca.as_deref(), Some("CA"));
        Ok(())
    }

    #[test]
    fn hostile_values_are_refused_by_key() {
        let cases = [
            (
                r#"{"pod-network": {"tunnel-type": "routing"}}"#,
                "tunnel-type",
            ),
            (
                r#"{"pod-network": {"tunnel-type": "vxlan", "podip": "10.0.0.1", "interface": "eth0", "worker-node-ip": "10.0.0.2/24", "vxlan-id": 1}}"#,
                "podip",
            ),
            (
                r#"{"pod-network": {"tunnel-type": "vxlan", "podip": "10.0.0.1/24", "interface": "../../x", "worker-node-ip": "10.0.0.2/24", "vxlan-id": 1}}"#,
                "interface",
            ),
            (
                r#"{"pod-network": {"tunnel-type": "vxlan", "podip": "10.0.0.1/24", "interface": "eth0", "worker-node-ip": "10.0.0.2/24", "vxlan-id": 16777216}}"#,
                "vxlan-id",
            ),
            (
                r#"{"pod-network": {"tunnel-type": "vxlan", "podip": "10.0.0.1/33", "interface": "eth0", "worker-node-ip": "10.0.0.2/24", "vxlan-id": 1}}"#,
                "podip",
            ),
            (
                r#"{"pod-network": {"tunnel-type": "vxlan", "podip": "10.0.0.1/24", "interface": "eth0", "worker-node-ip": "10.0.0.2/24", "vxlan-id": 1, "pod-hw-addr": "zz:00:00:00:00:00"}}"#,
                "pod-hw-addr",
            ),
            (r#"{"sc": true}"#, "sc"),
        ];
        for (doc, key) in cases {
            let err = ApfConfig::parse(doc.as_bytes()).expect_err(doc).to_string();
            assert!(err.contains(key), "{doc}: {err}");
        }
        let many = format!(
            r#"{{"pod-network": {{"tunnel-type": "vxlan", "podip": "10.0.0.1/24", "interface": "eth0", "worker-node-ip": "10.0.0.2/24", "vxlan-id": 1, "routes": [{}]}}}}"#,
            vec![r#"{"dst":"10.1.0.0/16","dev":"eth0"}"#; MAX_ENTRIES + 1].join(",")
        );
        let err = ApfConfig::parse(many.as_bytes())
            .expect_err("too many routes")
            .to_string();
        assert!(err.contains("at most 256"), "{err}");
    }

    #[test]
    fn oversized_file_is_refused_unread() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("apf-big-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("apf.json");
        std::fs::write(&path, vec![b' '; (MAX_CONFIG_BYTES + 1) as usize])?;
        let err = ApfConfig::load(&path).expect_err("too large");
        assert!(matches!(err, ConfigError::TooLarge { .. }), "{err}");
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
