//! The container spec: from the request's protobuf OCI spec to an OCI `config.json`.
//!
//! The protobuf form names fields after the OCI Go structs (`Process.Args`, `Linux.CgroupsPath`,
//! `UIDMappings`, ...) and uses zero values for "unset"; the OCI JSON form uses the spec's own
//! names (`process.args`, `linux.cgroupsPath`, `uidMappings`) and omits what is unset. The
//! conversion walks the protobuf message's JSON (see `peerpod_protocols::json`) and renames keys:
//! the first letter lowered, except for a table of irregular names; `null`s and empty strings are
//! dropped, and so are zeros inside `linux.resources`, where zero means "no limit" in the
//! protobuf form. The result is checked by deserialising it into `oci_spec`'s typed `Spec`.
//!
//! Where upstream's agent accepts several spellings of an OCI enum, so does this conversion:
//! namespace types `mnt`/`mount` and `net`/`network`, capabilities with or without `CAP_` (and
//! JSON-quoted). Device cgroup rules are converted field by field: a negative major or minor is
//! "any", zero is the number zero; a rule without a type denies everything or is refused.
//!
//! An exec'd process inherits from its container's process what its request leaves unset
//! ([`exec_process`]).

use oci_spec::runtime::{Capabilities, LinuxResources, Process, Spec};
use peerpod_protocols::json::to_json;
use peerpod_protocols::kata::oci;
use serde_json::{Map, Value};

/// Why a spec could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The request carries no OCI spec (or process).
    #[error("the request has no OCI spec or process")]
    Missing,
    /// The converted spec is not a valid OCI spec.
    #[error("the OCI spec is invalid")]
    Invalid(#[source] serde_json::Error),
    /// An exec'd process sets no capabilities and its container has none to give it.
    #[error("the process sets no capabilities and its container has none to inherit")]
    NoCapabilities,
    /// A device cgroup rule would allow more than it names.
    #[error("device cgroup rule {index}: {reason}")]
    DeviceRule {
        /// The rule's position in the list.
        index: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Keys whose OCI name is not the protobuf name with its first letter lowered.
const RENAMES: &[(&str, &str)] = &[
    ("Version", "ociVersion"),
    ("UIDMappings", "uidMappings"),
    ("GIDMappings", "gidMappings"),
    ("HostID", "hostID"),
    ("ContainerID", "containerID"),
    ("UID", "uid"),
    ("GID", "gid"),
    ("OOMScoreAdj", "oomScoreAdj"),
    ("KernelTCP", "kernelTCP"),
    ("DisableOOMKiller", "disableOOMKiller"),
    ("Pagesize", "pageSize"),
    ("ClassID", "classID"),
    ("ClosID", "closID"),
    ("L3CacheSchema", "l3CacheSchema"),
    ("MemBwSchema", "memBwSchema"),
    ("BlockIO", "blockIO"),
    ("CPU", "cpu"),
    ("IntelRdt", "intelRdt"),
    ("type_", "type"),
];

/// Objects whose keys are data, not field names: left as they are.
const MAPS: &[&str] = &["Annotations", "Sysctl"];

/// Protobuf fields with no OCI counterpart on Linux.
const DROPPED: &[&str] = &["Solaris", "Windows"];

/// Converts the request's protobuf spec into a typed OCI spec.
pub fn oci_spec(spec: &protobuf::MessageField<oci::Spec>) -> Result<Spec, SpecError> {
    let spec = spec.as_ref().ok_or(SpecError::Missing)?;
    let json = convert(to_json(spec), false)?;
    serde_json::from_value(json).map_err(SpecError::Invalid)
}

/// What an exec'd process takes from its container's process when its request leaves it unset:
/// the user (with its groups), capabilities, rlimits and security labels. (Upstream inherits
/// the capabilities; the rest is stricter than upstream, which runs an exec without `User` as
/// root and without `Rlimits` unlimited. The seccomp profile is the container's in every case:
/// see the executor.)
const INHERITED: &[&str] = &[
    "user",
    "capabilities",
    "rlimits",
    "apparmorProfile",
    "selinuxLabel",
];

/// Converts an ExecProcess request's protobuf process into a typed OCI process, filling what it
/// leaves unset from `container`, the container's own process: see [`INHERITED`]. `no_new_privs`
/// is set if either sets it. Without a user in either, the process runs as uid and gid 0, as
/// upstream's.
pub fn exec_process(
    process: &protobuf::MessageField<oci::Process>,
    container: Option<&Process>,
) -> Result<Process, SpecError> {
    let process = process.as_ref().ok_or(SpecError::Missing)?;
    let mut json = convert(to_json(process), false)?;
    let inherited = container
        .map(serde_json::to_value)
        .transpose()
        .map_err(SpecError::Invalid)?
        .unwrap_or(Value::Null);
    if let Value::Object(exec) = &mut json {
        for key in INHERITED {
            let unset = match exec.get(*key) {
                None => true,
                Some(Value::Array(items)) => items.is_empty(),
                Some(_) => false,
            };
            if unset && let Some(value) = inherited.get(*key) {
                exec.insert((*key).to_owned(), value.clone());
            }
        }
        if inherited.get("noNewPrivileges") == Some(&Value::Bool(true)) {
            exec.insert("noNewPrivileges".to_owned(), Value::Bool(true));
        }
        exec.entry("user")
            .or_insert_with(|| serde_json::json!({"uid": 0, "gid": 0}));
        // libcontainer leaves a process without capabilities with all of the agent's; as
        // upstream, such an exec is refused.
        if !exec.contains_key("capabilities") {
            return Err(SpecError::NoCapabilities);
        }
    }
    let mut process: Process = serde_json::from_value(json).map_err(SpecError::Invalid)?;
    pin_groups(&mut process);
    pin_capabilities(&mut process);
    if let Some(bounding) = container
        .and_then(|c| c.capabilities().as_ref())
        .and_then(|c| c.bounding().as_ref())
    {
        clamp_capabilities(&mut process, bounding);
    }
    Ok(process)
}

/// Keeps an exec'd process's capabilities within its container's bounding set: whatever an
/// exec asks for, it never holds what its container cannot (stricter than upstream, which
/// grants what the request lists).
fn clamp_capabilities(process: &mut Process, bounding: &Capabilities) {
    let Some(mut caps) = process.capabilities().clone() else {
        return;
    };
    let within = |set: &Option<Capabilities>| {
        set.as_ref().map(|set| {
            set.intersection(bounding)
                .copied()
                .collect::<Capabilities>()
        })
    };
    caps.set_bounding(within(caps.bounding()));
    caps.set_effective(within(caps.effective()));
    caps.set_permitted(within(caps.permitted()));
    caps.set_inheritable(within(caps.inheritable()));
    caps.set_ambient(within(caps.ambient()));
    process.set_capabilities(Some(caps));
}

/// Makes every capability set of the process explicit: a set the spec does not list is empty,
/// and a process with no `capabilities` at all gets five empty sets. libcontainer (like runc,
/// and like upstream's rustjail) changes nothing it is not given, so a container whose spec
/// leaves them out would otherwise run with all of the agent's root capabilities. Fail closed
/// instead: the kata shim always sends containerd's capability lists (CRI sets them for every
/// container, privileged ones included), so only a hand-made or hostile spec has none.
/// `no_new_privs` is left as the spec has it.
pub fn pin_capabilities(process: &mut Process) {
    let mut caps = process
        .capabilities()
        .clone()
        .unwrap_or_else(empty_capabilities);
    let empty = Capabilities::new;
    caps.set_bounding(Some(caps.bounding().clone().unwrap_or_else(empty)));
    caps.set_effective(Some(caps.effective().clone().unwrap_or_else(empty)));
    caps.set_permitted(Some(caps.permitted().clone().unwrap_or_else(empty)));
    caps.set_inheritable(Some(caps.inheritable().clone().unwrap_or_else(empty)));
    caps.set_ambient(Some(caps.ambient().clone().unwrap_or_else(empty)));
    process.set_capabilities(Some(caps));
}

/// Capability sets with nothing in any of them.
fn empty_capabilities() -> oci_spec::runtime::LinuxCapabilities {
    let mut caps = oci_spec::runtime::LinuxCapabilities::default();
    caps.set_bounding(None);
    caps.set_effective(None);
    caps.set_permitted(None);
    caps.set_inheritable(None);
    caps.set_ambient(None);
    caps
}

/// Makes the process's supplementary groups explicit. libcontainer calls `setgroups` only for a
/// non-empty `additionalGids`, so a process without them would keep the agent's own groups;
/// with its primary gid as the one supplementary group it gets exactly what it asked for.
pub fn pin_groups(process: &mut Process) {
    let user = process.user();
    if user.additional_gids().as_ref().is_none_or(Vec::is_empty) {
        let mut user = user.clone();
        user.set_additional_gids(Some(vec![user.gid()]));
        process.set_user(user);
    }
}

/// Converts an UpdateContainer request's protobuf resources into typed OCI resources.
pub fn oci_resources(
    resources: &protobuf::MessageField<oci::LinuxResources>,
) -> Result<LinuxResources, SpecError> {
    let resources = resources.as_ref().ok_or(SpecError::Missing)?;
    let json = convert(to_json(resources), true)?;
    serde_json::from_value(json).map_err(SpecError::Invalid)
}

fn oci_key(key: &str) -> String {
    if let Some((_, renamed)) = RENAMES.iter().find(|(from, _)| *from == key) {
        return (*renamed).to_owned();
    }
    let mut chars = key.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn convert(value: Value, in_resources: bool) -> Result<Value, SpecError> {
    Ok(match value {
        Value::Object(object) => {
            let mut out = Map::new();
            for (key, item) in object {
                // A syscall rule's errno is a one-field oneof in the protobuf form: flatten it.
                let item = match (key.as_str(), item) {
                    ("ErrnoRet", Value::Object(set)) => {
                        set.into_values().next().unwrap_or(Value::Null)
                    }
                    (_, item) => item,
                };
                if DROPPED.contains(&key.as_str()) || is_unset(&item, in_resources) {
                    continue;
                }
                let converted = if MAPS.contains(&key.as_str()) {
                    item
                } else if in_resources && key == "Devices" {
                    device_rules(item)?
                } else if key == "Namespaces" {
                    namespaces(convert(item, in_resources)?)
                } else if CAPABILITY_SETS.contains(&key.as_str()) {
                    capabilities(item)
                } else {
                    convert(item, in_resources || key == "Resources")?
                };
                if is_unset(&converted, in_resources) {
                    continue;
                }
                out.insert(oci_key(&key), converted);
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|item| convert(item, in_resources))
                .collect::<Result<_, _>>()?,
        ),
        other => other,
    })
}

/// The lists of capability names inside `Process.Capabilities`.
const CAPABILITY_SETS: &[&str] = &[
    "Bounding",
    "Effective",
    "Inheritable",
    "Permitted",
    "Ambient",
];

/// Capability names as upstream accepts them: a JSON-quoted name is unquoted (`oci_spec` takes
/// care of the optional `CAP_` prefix and of case). Only a plain quoted name is unquoted: with
/// escapes inside (`"CAP_SYS_\u0041DMIN"`) the policy would have judged one text and the agent
/// run another, so such a name is left as it is, and refused as no capability.
fn capabilities(item: Value) -> Value {
    match item {
        Value::Array(names) => Value::Array(
            names
                .into_iter()
                .map(|name| match name {
                    Value::String(s) if !s.contains('\\') => {
                        match serde_json::from_str::<String>(&s) {
                            Ok(unquoted) => Value::String(unquoted),
                            Err(_) => Value::String(s),
                        }
                    }
                    other => other,
                })
                .collect(),
        ),
        other => other,
    }
}

/// Namespace types in the spelling `oci_spec` reads: upstream's runtime writes `mnt` and `net`.
fn namespaces(item: Value) -> Value {
    match item {
        Value::Array(list) => Value::Array(
            list.into_iter()
                .map(|mut namespace| {
                    if let Some(typ) = namespace.get_mut("type") {
                        let canonical = match typ.as_str() {
                            Some("mnt") => Some("mount"),
                            Some("net") => Some("network"),
                            _ => None,
                        };
                        if let Some(canonical) = canonical {
                            *typ = Value::String(canonical.to_owned());
                        }
                    }
                    namespace
                })
                .collect(),
        ),
        other => other,
    }
}

/// Device cgroup rules, each as the policy saw it. The protobuf form cannot leave a number out:
/// a negative major or minor means "any" (what upstream's runtime sends for a wildcard); zero
/// is device number zero, never a wildcard. A rule without a type is one of "all devices",
/// which is kept when it denies (the usual first rule) and refused when it allows, since the
/// policy could not have seen what it would allow.
fn device_rules(item: Value) -> Result<Value, SpecError> {
    let Value::Array(rules) = item else {
        return Ok(item);
    };
    let mut out = Vec::with_capacity(rules.len());
    for (index, rule) in rules.into_iter().enumerate() {
        let allow = rule.get("Allow").and_then(Value::as_bool).unwrap_or(false);
        let typ = rule.get("Type").and_then(Value::as_str).unwrap_or("");
        let typ = match typ {
            "" if allow => {
                return Err(SpecError::DeviceRule {
                    index,
                    reason: "a rule that allows must name its device type",
                });
            }
            "" => "a",
            typ => typ,
        };
        let mut converted = Map::new();
        converted.insert("allow".to_owned(), Value::Bool(allow));
        converted.insert("type".to_owned(), Value::String(typ.to_owned()));
        for (from, to) in [("Major", "major"), ("Minor", "minor")] {
            match rule.get(from) {
                None | Some(Value::Null) => {}
                Some(number) => match number.as_i64() {
                    Some(n) if n < 0 => {}
                    Some(n) => {
                        converted.insert(to.to_owned(), Value::from(n));
                    }
                    None => {
                        return Err(SpecError::DeviceRule {
                            index,
                            reason: "a device number is not an integer",
                        });
                    }
                },
            }
        }
        if let Some(access) = rule.get("Access").and_then(Value::as_str)
            && !access.is_empty()
        {
            converted.insert("access".to_owned(), Value::String(access.to_owned()));
        }
        out.push(Value::Object(converted));
    }
    Ok(Value::Array(out))
}

/// Whether a protobuf value means "not set".
fn is_unset(value: &Value, in_resources: bool) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        // In resources, zero is "no limit"; a negative device number is "any".
        Value::Number(n) if in_resources => n.as_f64().is_some_and(|f| f <= 0.0),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerpod_protocols::json::from_json;
    use peerpod_protocols::kata::agent::CreateContainerRequest;

    /// A CreateContainer request as the upstream runtime sends it (trimmed from the shared
    /// genpolicy fixture's writer container).
    fn request() -> CreateContainerRequest {
        let json = serde_json::json!({
            "container_id": "c1",
            "OCI": {
                "Version": "1.1.0",
                "Hostname": "pod",
                "Annotations": {"io.kubernetes.cri.container-name": "writer"},
                "Hooks": null,
                "Mounts": [
                    {"destination": "/proc", "options": ["nosuid"], "source": "proc", "type_": "proc"},
                    {"destination": "/data", "options": ["rbind"], "source": "/run/x", "type_": "bind"}
                ],
                "Process": {
                    "ApparmorProfile": "",
                    "Args": ["/bin/sh", "-c", "date"],
                    "Capabilities": {"Ambient": [], "Bounding": ["CAP_CHOWN"], "Effective": ["CAP_CHOWN"],
                                     "Inheritable": [], "Permitted": ["CAP_CHOWN"]},
                    "ConsoleSize": null,
                    "Cwd": "/",
                    "Env": ["PATH=/bin"],
                    "NoNewPrivileges": true,
                    "OOMScoreAdj": 1000,
                    "Rlimits": [{"Type": "RLIMIT_NOFILE", "Hard": 1024, "Soft": 1024}],
                    "SelinuxLabel": "",
                    "Terminal": false,
                    "User": {"AdditionalGids": [1000], "GID": 1000, "UID": 1000, "Username": ""}
                },
                "Root": {"Path": "/run/kata-containers/c1/rootfs", "Readonly": true},
                "Linux": {
                    "CgroupsPath": "/kubepods/besteffort/pod1/c1",
                    "Devices": [],
                    "GIDMappings": [],
                    "UIDMappings": [],
                    "IntelRdt": null,
                    "MaskedPaths": ["/proc/kcore"],
                    "MountLabel": "",
                    "Namespaces": [{"Path": "", "Type": "ipc"}, {"Path": "", "Type": "mount"}],
                    "ReadonlyPaths": ["/proc/sys"],
                    "Resources": {
                        "BlockIO": null,
                        "CPU": {"Cpus": "", "Mems": "", "Period": 100000, "Quota": 0,
                                "RealtimePeriod": 0, "RealtimeRuntime": 0, "Shares": 2},
                        "Devices": [{"Allow": false, "Access": "rwm", "Major": -1, "Minor": -1, "Type": "a"}],
                        "HugepageLimits": [],
                        "Memory": {"Limit": 67108864, "Reservation": 0, "Swap": 0, "Kernel": 0,
                                   "KernelTCP": 0, "Swappiness": 0, "DisableOOMKiller": false},
                        "Network": null,
                        "Pids": {"Limit": 100}
                    },
                    "RootfsPropagation": "",
                    "Seccomp": null,
                    "Sysctl": {"net.ipv4.ip_unprivileged_port_start": "0"}
                },
                "Solaris": null,
                "Windows": null
            }
        });
        let mut request = CreateContainerRequest::new();
        from_json(&json, &mut request).expect("fixture fits our protos");
        request
    }

    #[test]
    fn converts_an_upstream_request_spec() {
        let spec = oci_spec(&request().OCI).expect("valid OCI spec");
        let json = serde_json::to_value(&spec).expect("serialises");
        assert_eq!(json["ociVersion"], "1.1.0");
        assert_eq!(json["hostname"], "pod");
        assert_eq!(
            json["annotations"]["io.kubernetes.cri.container-name"],
            "writer"
        );
        assert_eq!(json["mounts"][1]["type"], "bind");
        let process = &json["process"];
        assert_eq!(
            process["args"],
            serde_json::json!(["/bin/sh", "-c", "date"])
        );
        assert_eq!(process["user"]["uid"], 1000);
        assert_eq!(process["user"]["additionalGids"], serde_json::json!([1000]));
        assert_eq!(process["oomScoreAdj"], 1000);
        assert_eq!(process["noNewPrivileges"], true);
        assert_eq!(
            process["capabilities"]["bounding"],
            serde_json::json!(["CAP_CHOWN"])
        );
        assert_eq!(process["rlimits"][0]["type"], "RLIMIT_NOFILE");
        assert!(process.get("apparmorProfile").is_none());
        let linux = &json["linux"];
        assert_eq!(linux["cgroupsPath"], "/kubepods/besteffort/pod1/c1");
        assert_eq!(linux["sysctl"]["net.ipv4.ip_unprivileged_port_start"], "0");
        assert_eq!(linux["namespaces"][0]["type"], "ipc");
        assert!(linux["namespaces"][0].get("path").is_none());
        let resources = &linux["resources"];
        assert_eq!(resources["cpu"]["shares"], 2);
        assert_eq!(resources["cpu"]["period"], 100_000);
        assert!(
            resources["cpu"].get("quota").is_none(),
            "zero quota means no limit"
        );
        assert_eq!(resources["memory"]["limit"], 67_108_864);
        assert!(resources["memory"].get("swap").is_none());
        assert_eq!(resources["pids"]["limit"], 100);
        assert_eq!(resources["devices"][0]["allow"], false);
        assert!(
            resources["devices"][0].get("major").is_none(),
            "-1 means any"
        );
        assert_eq!(json["root"]["readonly"], true);
    }

    fn resources(devices: serde_json::Value) -> protobuf::MessageField<oci::LinuxResources> {
        let mut resources = oci::LinuxResources::new();
        from_json(&serde_json::json!({ "Devices": devices }), &mut resources)
            .expect("resources fit our protos");
        protobuf::MessageField::some(resources)
    }

    #[test]
    fn device_number_zero_is_not_a_wildcard() {
        let converted = oci_resources(&resources(serde_json::json!([
            {"Allow": false, "Type": "", "Access": "rwm", "Major": 0, "Minor": 0},
            {"Allow": true, "Type": "c", "Access": "rw", "Major": 4, "Minor": 0},
            {"Allow": true, "Type": "c", "Access": "rwm", "Major": 0, "Minor": 7},
            {"Allow": true, "Type": "c", "Access": "rwm", "Major": 136, "Minor": -1}
        ])))
        .expect("valid rules");
        let json = serde_json::to_value(&converted).expect("serialises");
        let rules = &json["devices"];
        assert_eq!(
            rules[0]["type"], "a",
            "an untyped deny rule denies everything"
        );
        assert_eq!(rules[0]["allow"], false);
        assert_eq!(
            (&rules[1]["major"], &rules[1]["minor"]),
            (&4.into(), &0.into())
        );
        assert_eq!(
            (&rules[2]["major"], &rules[2]["minor"]),
            (&0.into(), &7.into())
        );
        assert_eq!(rules[3]["major"], 136);
        assert!(rules[3].get("minor").is_none(), "-1 is any minor");
    }

    #[test]
    fn an_untyped_allow_rule_is_refused() {
        let untyped = resources(serde_json::json!([
            {"Allow": true, "Type": "", "Access": "rwm", "Major": 4, "Minor": 0}
        ]));
        assert!(matches!(
            oci_resources(&untyped),
            Err(SpecError::DeviceRule { index: 0, .. })
        ));
        // The same rule in a CreateContainer spec.
        let mut request = request();
        let linux = request
            .OCI
            .mut_or_insert_default()
            .Linux
            .mut_or_insert_default();
        linux.Resources = untyped;
        assert!(matches!(
            oci_spec(&request.OCI),
            Err(SpecError::DeviceRule { .. })
        ));
    }

    #[test]
    fn namespace_types_in_every_upstream_spelling() {
        let mut request = request();
        let linux = request
            .OCI
            .mut_or_insert_default()
            .Linux
            .mut_or_insert_default();
        linux.Namespaces.clear();
        from_json(
            &serde_json::json!({"Namespaces": [
                {"Type": "mnt"}, {"Type": "mount"}, {"Type": "net"}, {"Type": "network"},
                {"Type": "pid"}, {"Type": "ipc"}, {"Type": "uts"}, {"Type": "user"},
                {"Type": "cgroup"}, {"Type": "time"}
            ]}),
            &mut *linux,
        )
        .expect("namespaces fit");
        let spec = oci_spec(&request.OCI).expect("every spelling is accepted");
        let types: Vec<String> = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().clone())
            .unwrap_or_default()
            .iter()
            .map(|n| n.typ().to_string())
            .collect();
        assert_eq!(
            types,
            [
                "mnt", "mnt", "net", "net", "pid", "ipc", "uts", "user", "cgroup", "time"
            ]
        );
        request
            .OCI
            .mut_or_insert_default()
            .Linux
            .mut_or_insert_default()
            .Namespaces[0]
            .Type = "netns".into();
        assert!(
            oci_spec(&request.OCI).is_err(),
            "an unknown type is still refused"
        );
    }

    #[test]
    fn capabilities_in_every_upstream_spelling() {
        let mut request = request();
        let caps = request
            .OCI
            .mut_or_insert_default()
            .Process
            .mut_or_insert_default()
            .Capabilities
            .mut_or_insert_default();
        caps.Bounding = vec!["KILL".into(), "\"CAP_CHOWN\"".into(), "cap_setuid".into()];
        let spec = oci_spec(&request.OCI).expect("accepted");
        let bounding = spec
            .process()
            .as_ref()
            .and_then(|p| p.capabilities().as_ref())
            .and_then(|c| c.bounding().clone())
            .expect("bounding set");
        let mut names: Vec<String> = bounding.iter().map(|c| c.to_string()).collect();
        names.sort();
        assert_eq!(names, ["CHOWN", "KILL", "SETUID"]);
        // A quoted name with escapes would be one text to the policy and another here.
        request
            .OCI
            .mut_or_insert_default()
            .Process
            .mut_or_insert_default()
            .Capabilities
            .mut_or_insert_default()
            .Bounding = vec!["\"CAP_SYS_\\u0041DMIN\"".into()];
        assert!(
            oci_spec(&request.OCI).is_err(),
            "an escaped name is refused"
        );
    }

    fn exec(json: serde_json::Value) -> protobuf::MessageField<oci::Process> {
        let mut process = oci::Process::new();
        from_json(&json, &mut process).expect("process fits our protos");
        protobuf::MessageField::some(process)
    }

    #[test]
    fn an_exec_inherits_what_it_leaves_unset() {
        let container = oci_spec(&request().OCI)
            .expect("valid")
            .process()
            .clone()
            .expect("a process");
        let mut container = container;
        container.set_apparmor_profile(Some("pod-profile".into()));
        container.set_selinux_label(Some("system_u:system_r:container_t:s0".into()));
        let bare = exec(serde_json::json!({"Args": ["/bin/sh"], "Cwd": "/"}));
        let process = exec_process(&bare, Some(&container)).expect("an exec without a user");
        assert_eq!(process.apparmor_profile().as_deref(), Some("pod-profile"));
        assert_eq!(
            process.selinux_label().as_deref(),
            Some("system_u:system_r:container_t:s0")
        );
        let json = serde_json::to_value(&process).expect("serialises");
        assert_eq!(json["user"]["uid"], 1000, "the container's user");
        assert_eq!(json["user"]["additionalGids"], serde_json::json!([1000]));
        assert_eq!(
            json["capabilities"]["bounding"],
            serde_json::json!(["CAP_CHOWN"])
        );
        assert_eq!(json["noNewPrivileges"], true);
        assert_eq!(json["rlimits"][0]["type"], "RLIMIT_NOFILE");

        // What the exec sets is its own.
        let own = exec(serde_json::json!({
            "Args": ["/bin/sh"], "Cwd": "/",
            "User": {"UID": 0, "GID": 0},
            "Capabilities": {"Bounding": ["CAP_SYS_ADMIN", "CAP_CHOWN"], "Effective": ["CAP_SYS_ADMIN"]},
            "Rlimits": [{"Type": "RLIMIT_NPROC", "Hard": 10, "Soft": 10}]
        }));
        let json = serde_json::to_value(exec_process(&own, Some(&container)).expect("valid"))
            .expect("json");
        assert_eq!(json["user"]["uid"], 0);
        assert_eq!(
            json["user"]["additionalGids"],
            serde_json::json!([0]),
            "groups pinned"
        );
        // Within the container's bounding set (CAP_CHOWN) whatever it asks for.
        assert_eq!(
            json["capabilities"]["bounding"],
            serde_json::json!(["CAP_CHOWN"])
        );
        assert_eq!(json["capabilities"]["effective"], serde_json::json!([]));
        assert_eq!(json["rlimits"][0]["type"], "RLIMIT_NPROC");
        assert_eq!(
            json["noNewPrivileges"], true,
            "no_new_privs cannot be turned off"
        );

        // Without a user to inherit from: uid and gid 0, as upstream.
        let caps_only = exec(serde_json::json!({
            "Args": ["/bin/sh"], "Cwd": "/", "Capabilities": {"Bounding": ["CAP_KILL"]}
        }));
        let json =
            serde_json::to_value(exec_process(&caps_only, None).expect("valid")).expect("json");
        assert_eq!(
            (&json["user"]["uid"], &json["user"]["gid"]),
            (&0.into(), &0.into())
        );
        // Without capabilities to inherit: refused, as upstream, never the agent's own.
        assert!(matches!(
            exec_process(&bare, None),
            Err(SpecError::NoCapabilities)
        ));
    }

    /// No `capabilities` at all: five empty sets, never "unchanged" (the agent's own). A set
    /// left out of a present `capabilities` is empty too; the listed ones stay as they are.
    #[test]
    fn a_process_without_capabilities_gets_empty_sets() {
        let mut bare: Process = serde_json::from_value(serde_json::json!({
            "cwd": "/", "args": ["/pause"], "user": {"uid": 0, "gid": 0}
        }))
        .expect("process");
        assert!(bare.capabilities().is_none());
        pin_capabilities(&mut bare);
        let json = serde_json::to_value(&bare).expect("json");
        for set in [
            "bounding",
            "effective",
            "permitted",
            "inheritable",
            "ambient",
        ] {
            assert_eq!(json["capabilities"][set], serde_json::json!([]), "{set}");
        }
        let mut partial: Process = serde_json::from_value(serde_json::json!({
            "cwd": "/", "args": ["/pause"], "user": {"uid": 0, "gid": 0},
            "capabilities": {"bounding": ["CAP_KILL"]}
        }))
        .expect("process");
        pin_capabilities(&mut partial);
        let json = serde_json::to_value(&partial).expect("json");
        assert_eq!(
            json["capabilities"]["bounding"],
            serde_json::json!(["CAP_KILL"])
        );
        for set in ["effective", "permitted", "inheritable", "ambient"] {
            assert_eq!(json["capabilities"][set], serde_json::json!([]), "{set}");
        }
    }

    #[test]
    fn a_request_without_a_spec_is_refused() {
        let request = CreateContainerRequest::new();
        assert!(matches!(oci_spec(&request.OCI), Err(SpecError::Missing)));
    }
}
