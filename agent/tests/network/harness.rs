//! The test's own network namespace, and the `ip` command's view of it.

use std::collections::BTreeSet;
use std::future::Future;
use std::process::Command;

use nix::sched::{CloneFlags, unshare};
use peerpod_protocols::kata::types;
use serde_json::Value;

pub(crate) const IFF_UP: u32 = 0x1;
pub(crate) const IFF_NOARP: u32 = 0x80;
pub(crate) const RTNH_F_ONLINK: u32 = 0x4;
pub(crate) const NTF_ROUTER: i32 = 0x80;
pub(crate) const SCOPE_LINK: u32 = 253;

/// Runs `body` in a new network namespace, on a thread of its own with its own runtime.
pub(crate) fn in_fresh_netns<F, Fut>(body: F)
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

pub(crate) fn require_ip() {
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
pub(crate) fn ip(args: &[&str]) -> String {
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
pub(crate) fn ip_json(args: &[&str]) -> Vec<Value> {
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
pub(crate) fn veth(name: &str, mac: &str) {
    let peer = format!("p-{name}");
    ip(&[
        "link", "add", name, "address", mac, "type", "veth", "peer", "name", &peer,
    ]);
    ip(&["link", "set", &peer, "up"]);
}

/// `ip -j link show DEV`.
pub(crate) fn ip_link(dev: &str) -> Value {
    ip_json(&["link", "show", "dev", dev])
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("ip shows no link {dev}"))
}

pub(crate) fn ip_link_flags(dev: &str) -> Vec<String> {
    ip_link(dev)["flags"]
        .as_array()
        .expect("flags")
        .iter()
        .map(|f| f.as_str().expect("flag").to_owned())
        .collect()
}

/// The addresses `ip` shows on `dev`, as `address/len`.
pub(crate) fn ip_addresses(dev: &str) -> BTreeSet<String> {
    ip_json(&["addr", "show", "dev", dev])
        .iter()
        .flat_map(|link| link["addr_info"].as_array().cloned().unwrap_or_default())
        .map(|info| format!("{}/{}", str_of(&info["local"]), info["prefixlen"]))
        .collect()
}

/// The main table as `ip` shows it, IPv4 then IPv6.
pub(crate) fn ip_routes() -> Vec<Value> {
    let mut routes = ip_json(&["-4", "route", "show", "table", "main"]);
    routes.extend(ip_json(&["-6", "route", "show", "table", "main"]));
    routes
}

pub(crate) fn str_of(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

/// One `ip -j route` entry, in short: `dst [via gw] dev D [scope S] [src P] [mtu M] [onlink]`.
pub(crate) fn ip_route_summary(route: &Value) -> String {
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
pub(crate) fn route_summary(route: &types::Route) -> String {
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

pub(crate) fn summaries(routes: &[types::Route]) -> BTreeSet<String> {
    routes.iter().map(route_summary).collect()
}

pub(crate) fn ip_summaries() -> BTreeSet<String> {
    ip_routes().iter().map(ip_route_summary).collect()
}

pub(crate) fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}
