//! Policy entrypoints: the rule names under `data.agent_policy` the agent evaluates.
//!
//! An entrypoint is the protobuf request message name of an AgentService RPC, as the upstream
//! Kata agent names it, with a few RPCs sharing one message: `ReadStdout` and `ReadStderr` are
//! both `ReadStreamRequest`, `WriteStdin` is `WriteStreamRequest`, `GetGuestDetails` is
//! `GuestDetailsRequest`, `GetVolumeStats` is `VolumeStatsRequest` and the two memory-agent RPCs
//! are `MemAgentMemcgConfig` and `MemAgentCompactConfig`.

/// Every AgentService RPC with the entrypoint its requests are evaluated against.
pub const RPC_ENTRYPOINTS: &[(&str, &str)] = &[
    ("CreateContainer", "CreateContainerRequest"),
    ("StartContainer", "StartContainerRequest"),
    ("RemoveContainer", "RemoveContainerRequest"),
    ("ExecProcess", "ExecProcessRequest"),
    ("SignalProcess", "SignalProcessRequest"),
    ("WaitProcess", "WaitProcessRequest"),
    ("UpdateContainer", "UpdateContainerRequest"),
    ("UpdateEphemeralMounts", "UpdateEphemeralMountsRequest"),
    ("StatsContainer", "StatsContainerRequest"),
    ("PauseContainer", "PauseContainerRequest"),
    ("ResumeContainer", "ResumeContainerRequest"),
    (
        "RemoveStaleVirtiofsShareMounts",
        "RemoveStaleVirtiofsShareMountsRequest",
    ),
    ("WriteStdin", "WriteStreamRequest"),
    ("ReadStdout", "ReadStreamRequest"),
    ("ReadStderr", "ReadStreamRequest"),
    ("CloseStdin", "CloseStdinRequest"),
    ("TtyWinResize", "TtyWinResizeRequest"),
    ("UpdateInterface", "UpdateInterfaceRequest"),
    ("UpdateRoutes", "UpdateRoutesRequest"),
    ("ListInterfaces", "ListInterfacesRequest"),
    ("ListRoutes", "ListRoutesRequest"),
    ("AddARPNeighbors", "AddARPNeighborsRequest"),
    ("GetIPTables", "GetIPTablesRequest"),
    ("SetIPTables", "SetIPTablesRequest"),
    ("GetMetrics", "GetMetricsRequest"),
    ("CreateSandbox", "CreateSandboxRequest"),
    ("DestroySandbox", "DestroySandboxRequest"),
    ("OnlineCPUMem", "OnlineCPUMemRequest"),
    ("ReseedRandomDev", "ReseedRandomDevRequest"),
    ("GetGuestDetails", "GuestDetailsRequest"),
    ("MemHotplugByProbe", "MemHotplugByProbeRequest"),
    ("SetGuestDateTime", "SetGuestDateTimeRequest"),
    ("CopyFile", "CopyFileRequest"),
    ("GetOOMEvent", "GetOOMEventRequest"),
    ("AddSwap", "AddSwapRequest"),
    ("AddSwapPath", "AddSwapPathRequest"),
    ("GetVolumeStats", "VolumeStatsRequest"),
    ("ResizeVolume", "ResizeVolumeRequest"),
    ("SetPolicy", "SetPolicyRequest"),
    ("MemAgentMemcgSet", "MemAgentMemcgConfig"),
    ("MemAgentCompactSet", "MemAgentCompactConfig"),
    ("GetDiagnosticData", "GetDiagnosticDataRequest"),
];

/// The entrypoint an AgentService RPC (by method name, e.g. `ReadStdout`) is evaluated against.
pub fn entrypoint_for_rpc(rpc: &str) -> Option<&'static str> {
    RPC_ENTRYPOINTS
        .iter()
        .find(|(name, _)| *name == rpc)
        .map(|(_, entrypoint)| *entrypoint)
}

/// Every distinct entrypoint, in [`RPC_ENTRYPOINTS`] order.
pub fn all_entrypoints() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for (_, entrypoint) in RPC_ENTRYPOINTS {
        if !out.contains(entrypoint) {
            out.push(entrypoint);
        }
    }
    out
}

/// Whether `name` can be an entrypoint: a Rego identifier, so it cannot smuggle a query.
pub(crate) fn is_valid_entrypoint(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_messages_map_as_upstream() {
        assert_eq!(entrypoint_for_rpc("ReadStderr"), Some("ReadStreamRequest"));
        assert_eq!(entrypoint_for_rpc("WriteStdin"), Some("WriteStreamRequest"));
        assert_eq!(
            entrypoint_for_rpc("GetGuestDetails"),
            Some("GuestDetailsRequest")
        );
        assert_eq!(entrypoint_for_rpc("Nope"), None);
        let all = all_entrypoints();
        assert_eq!(all.iter().filter(|e| **e == "ReadStreamRequest").count(), 1);
    }

    #[test]
    fn entrypoint_names_are_identifiers() {
        assert!(is_valid_entrypoint("CreateContainerRequest"));
        assert!(!is_valid_entrypoint(""));
        assert!(!is_valid_entrypoint("x.y"));
        assert!(!is_valid_entrypoint("x[\"y\"]"));
        assert!(!is_valid_entrypoint("1x"));
    }
}
