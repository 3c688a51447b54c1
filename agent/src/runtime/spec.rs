//! The container spec: from the request's protobuf OCI spec to an OCI `config.json`.
//!
//! The protobuf form names fields after the OCI Go structs (`Process.Args`, `Linux.CgroupsPath`,
//! `UIDMappings`, ...) and uses zero values for "unset"; the OCI JSON form uses the spec's own
//! names (`process.args`, `linux.cgroupsPath`, `uidMappings`) and omits what is unset. The
//! conversion walks the protobuf message's JSON (see `peerpod_protocols::json`) and renames keys:
//! the first letter lowered, except for a table of irregular names; `null`s and empty strings are
//! dropped, and so are zeros inside `linux.resources`, where zero means "no limit" in the
//! protobuf form. The result is checked by deserialising it into `oci_spec`'s typed `Spec`.

use oci_spec::runtime::{LinuxResources, Process, Spec};
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
    let json = convert(to_json(spec), false);
    serde_json::from_value(json).map_err(SpecError::Invalid)
}

/// Converts an ExecProcess request's protobuf process into a typed OCI process.
pub fn oci_process(process: &protobuf::MessageField<oci::Process>) -> Result<Process, SpecError> {
    let process = process.as_ref().ok_or(SpecError::Missing)?;
    let json = convert(to_json(process), false);
    serde_json::from_value(json).map_err(SpecError::Invalid)
}

/// Converts an UpdateContainer request's protobuf resources into typed OCI resources.
pub fn oci_resources(
    resources: &protobuf::MessageField<oci::LinuxResources>,
) -> Result<LinuxResources, SpecError> {
    let resources = resources.as_ref().ok_or(SpecError::Missing)?;
    let json = convert(to_json(resources), true);
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

fn convert(value: Value, in_resources: bool) -> Value {
    match value {
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
                } else {
                    convert(item, in_resources || key == "Resources")
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
                .collect(),
        ),
        other => other,
    }
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

    #[test]
    fn a_request_without_a_spec_is_refused() {
        let request = CreateContainerRequest::new();
        assert!(matches!(oci_spec(&request.OCI), Err(SpecError::Missing)));
    }
}
