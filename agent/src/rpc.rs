//! The AgentService and Health implementations: thin methods that ask the policy gate, call the
//! part of the agent that does the work, and turn its errors into ttrpc statuses.
//!
//! RPCs this agent does not (yet) carry out are still decided by the policy first, and then
//! answered UNIMPLEMENTED with the RPC's name: a denied request is always told it was denied.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use peerpod_protocols::kata::{agent, agent_ttrpc, csi, health, health_ttrpc, types};
use protobuf::MessageDyn;
use protobuf::well_known_types::empty::Empty;
use ttrpc::r#async::TtrpcContext;

use crate::cdh::CdhClient;
use crate::error::AgentError;
use crate::files::CopyFiles;
use crate::gate::PolicyGate;
use crate::network::Network;
use crate::runtime::Runtime;

/// Where CopyFile writes, as upstream's agent (its `KATA_GUEST_SHARE_DIR`).
pub const DEFAULT_COPY_ROOT: &str = "/run/kata-containers/shared/containers";

/// The storage drivers CreateSandbox and CreateContainer accept (see `runtime::storage`),
/// reported in GetGuestDetails as upstream reports its storage handlers.
pub const STORAGE_HANDLERS: &[&str] = &["bind", "ephemeral", "local"];

/// The optional features this agent has, by upstream's names for its build features (sorted,
/// as upstream reports them): the agent policy, and seccomp. Guest pull (the `image_guest_pull`
/// storage, through the confidential data hub: [`crate::guest_pull`]) is always built, not an
/// optional feature, so it is not listed.
pub const EXTRA_FEATURES: &[&str] = &["agent-policy", "seccomp"];

/// The agent's AgentService.
#[derive(Debug, Clone)]
pub struct AgentRpc {
    gate: PolicyGate,
    guest: GuestInfo,
    /// The guest's network, or why it is not available.
    network: Result<Arc<Network>, String>,
    runtime: Arc<Runtime>,
    cdh: Arc<CdhClient>,
    guest_pull: crate::guest_pull::GuestPull,
    files: Arc<CopyFiles>,
    /// Told once DestroySandbox has destroyed the sandbox, so that the agent stops.
    destroyed: Option<Arc<tokio::sync::Notify>>,
}

/// Where the agent reads facts about the guest and writes copied files (other places in
/// tests).
#[derive(Debug, Clone)]
pub struct GuestInfo {
    /// The sysfs mount, normally `/sys`.
    pub sysfs: PathBuf,
    /// The only directory CopyFile writes under, normally upstream's shared directory
    /// `/run/kata-containers/shared/containers` (where the runtime copies files when it shares
    /// no file system with the guest).
    pub copy_root: PathBuf,
    /// The guest's resolver configuration, which CreateSandbox's `dns` replaces.
    pub resolv_conf: PathBuf,
}

impl Default for GuestInfo {
    fn default() -> Self {
        Self {
            sysfs: PathBuf::from("/sys"),
            copy_root: PathBuf::from(DEFAULT_COPY_ROOT),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
        }
    }
}

impl AgentRpc {
    /// The service, deciding every request with `gate`.
    pub fn new(
        gate: PolicyGate,
        guest: GuestInfo,
        network: Result<Arc<Network>, String>,
        runtime: Arc<Runtime>,
    ) -> Self {
        Self {
            files: Arc::new(CopyFiles::new(guest.copy_root.clone())),
            gate,
            guest,
            network,
            runtime,
            cdh: Arc::new(CdhClient::new(
                crate::cdh::DEFAULT_CDH_SOCKET,
                std::time::Duration::from_secs(50),
            )),
            destroyed: None,
            guest_pull: crate::guest_pull::GuestPull::default(),
        }
    }

    /// Where `image_guest_pull` storages put their bundles and find the pause bundle.
    pub fn with_guest_pull(mut self, guest_pull: crate::guest_pull::GuestPull) -> Self {
        self.guest_pull = guest_pull;
        self
    }

    /// Notifies `destroyed` once DestroySandbox has destroyed the sandbox (after which
    /// upstream's agent exits).
    pub fn on_sandbox_destroyed(mut self, destroyed: Arc<tokio::sync::Notify>) -> Self {
        self.destroyed = Some(destroyed);
        self
    }

    /// Uses `cdh` to unseal sealed environment values.
    pub fn with_cdh(mut self, cdh: CdhClient) -> Self {
        self.cdh = Arc::new(cdh);
        self
    }

    /// CreateContainer once the policy allowed it, run as a task of its own (see
    /// `create_container`).
    async fn create_container_owned(
        &self,
        req: agent::CreateContainerRequest,
    ) -> ttrpc::Result<()> {
        // The id first: a duplicate is refused before the CDH is asked for anything (secrets,
        // an image pull) or a bundle is made.
        let reservation = self.runtime.reserve(&req.container_id)?;
        self.runtime.check_storages(&req)?;
        let mut req = req;
        self.cdh.unseal_env(&mut req).await?;
        let pulled = self.guest_pull.prepare(&self.cdh, &mut req).await?;
        self.runtime
            .create_container_pulled(&reservation, &req, pulled)
            .await?;
        Ok(())
    }

    /// ReadStdout/ReadStderr: read first, then ask the policy, as upstream does, so a denied
    /// stream answers empty data at the pace of the output instead of in a busy loop.
    async fn read_stream(
        &self,
        rpc: &'static str,
        req: agent::ReadStreamRequest,
    ) -> ttrpc::Result<agent::ReadStreamResponse> {
        let stderr = rpc == "ReadStderr";
        let len = usize::try_from(req.len).unwrap_or(usize::MAX);
        let data = self
            .runtime
            .read_stream(&req.container_id, &req.exec_id, stderr, len)
            .await?;
        let mut reply = agent::ReadStreamResponse::new();
        if self.gate.check(rpc, &req).await.is_ok() {
            reply.data = data;
        }
        Ok(reply)
    }

    fn network(&self) -> Result<&Network, AgentError> {
        self.network.as_deref().map_err(|why| {
            AgentError::FailedPrecondition(format!("the guest network cannot be managed: {why}"))
        })
    }

    /// Decides the request, then answers that the RPC is not implemented.
    async fn unsupported<T>(
        &self,
        rpc: &'static str,
        request: &dyn MessageDyn,
    ) -> ttrpc::Result<T> {
        self.gate.check(rpc, request).await?;
        Err(AgentError::Unimplemented { rpc }.into())
    }

    fn guest_details(&self, request: &agent::GuestDetailsRequest) -> agent::GuestDetailsResponse {
        let memory = self.guest.sysfs.join("devices/system/memory");
        let mut response = agent::GuestDetailsResponse::new();
        if request.mem_block_size {
            // The file holds the block size in hex, without a 0x prefix.
            response.mem_block_size_bytes =
                std::fs::read_to_string(memory.join("block_size_bytes"))
                    .ok()
                    .and_then(|text| u64::from_str_radix(text.trim(), 16).ok())
                    .unwrap_or(0);
        }
        if request.mem_hotplug_probe {
            response.support_mem_hotplug_probe = memory.join("probe").exists();
        }
        let mut details = agent::AgentDetails::new();
        details.version = env!("CARGO_PKG_VERSION").to_owned();
        details.init_daemon = std::process::id() == 1;
        // Containers and execs get their OCI seccomp profiles (libcontainer with libseccomp);
        // the Go runtime refuses to create containers with guest seccomp enabled otherwise.
        details.supports_seccomp = true;
        details.storage_handlers = STORAGE_HANDLERS.iter().map(|h| (*h).to_owned()).collect();
        details.extra_features = EXTRA_FEATURES.iter().map(|f| (*f).to_owned()).collect();
        response.agent_details = protobuf::MessageField::some(details);
        response
    }
}

#[async_trait]
impl agent_ttrpc::AgentService for AgentRpc {
    async fn read_stdout(
        &self,
        _: &TtrpcContext,
        req: agent::ReadStreamRequest,
    ) -> ttrpc::Result<agent::ReadStreamResponse> {
        self.read_stream("ReadStdout", req).await
    }

    async fn read_stderr(
        &self,
        _: &TtrpcContext,
        req: agent::ReadStreamRequest,
    ) -> ttrpc::Result<agent::ReadStreamResponse> {
        self.read_stream("ReadStderr", req).await
    }

    async fn copy_file(
        &self,
        _: &TtrpcContext,
        req: agent::CopyFileRequest,
    ) -> ttrpc::Result<Empty> {
        self.gate.check_copy_file(&req).await?;
        let files = Arc::clone(&self.files);
        tokio::task::spawn_blocking(move || files.copy(&req))
            .await
            .map_err(|e| AgentError::internal("CopyFile", e))??;
        Ok(Empty::new())
    }

    async fn get_guest_details(
        &self,
        _: &TtrpcContext,
        req: agent::GuestDetailsRequest,
    ) -> ttrpc::Result<agent::GuestDetailsResponse> {
        self.gate.check("GetGuestDetails", &req).await?;
        Ok(self.guest_details(&req))
    }

    async fn set_policy(
        &self,
        _: &TtrpcContext,
        req: agent::SetPolicyRequest,
    ) -> ttrpc::Result<Empty> {
        // The policy in force decides SetPolicyRequest itself, with the new text as input.
        self.gate.set_policy(req.policy).await?;
        Ok(Empty::new())
    }

    async fn create_container(
        &self,
        _: &TtrpcContext,
        req: agent::CreateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.gate.check("CreateContainer", &req).await?;
        // ttrpc drops a handler's future at the request's deadline (`timeout_nano`, which the
        // shim sets, a hostile one to a nanosecond). Dropped half-way, a creation would free
        // its id with its bundle left behind, into which the CDH still pulling then mounts.
        // So the creation runs as its own task: a request that gives up does not stop it; it
        // finishes (the container is made, and RemoveContainer removes it) or fails and
        // cleans up after itself.
        let this = self.clone();
        tokio::spawn(async move { this.create_container_owned(req).await })
            .await
            .map_err(|e| AgentError::internal("CreateContainer", e))??;
        Ok(Empty::new())
    }

    async fn start_container(
        &self,
        _: &TtrpcContext,
        req: agent::StartContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.gate.check("StartContainer", &req).await?;
        // Its own task, as CreateContainer's: a deadline ends the wait, never a start half-way
        // (the process let run, its state not marked running and its OOM watch not set).
        let runtime = Arc::clone(&self.runtime);
        tokio::spawn(async move { runtime.start_container(&req.container_id).await })
            .await
            .map_err(|e| AgentError::internal("StartContainer", e))??;
        Ok(Empty::new())
    }

    async fn remove_container(
        &self,
        _: &TtrpcContext,
        req: agent::RemoveContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.gate.check("RemoveContainer", &req).await?;
        let timeout = std::time::Duration::from_secs(u64::from(req.timeout));
        self.runtime
            .remove_container(&req.container_id, timeout)
            .await?;
        Ok(Empty::new())
    }

    async fn exec_process(
        &self,
        _: &TtrpcContext,
        req: agent::ExecProcessRequest,
    ) -> ttrpc::Result<Empty> {
        self.gate.check("ExecProcess", &req).await?;
        // Its own task, as CreateContainer's: dropped at the request's deadline, the exec could
        // leave a process started by the helper but never registered (nobody to wait for it,
        // signal it or read its output). A deadline ends the wait; the exec is registered (or
        // fails and starts nothing).
        let runtime = Arc::clone(&self.runtime);
        tokio::spawn(async move { runtime.exec_process(&req).await })
            .await
            .map_err(|e| AgentError::internal("ExecProcess", e))??;
        Ok(Empty::new())
    }

    async fn signal_process(
        &self,
        _: &TtrpcContext,
        req: agent::SignalProcessRequest,
    ) -> ttrpc::Result<Empty> {
        self.gate.check("SignalProcess", &req).await?;
        self.runtime
            .signal_process(&req.container_id, &req.exec_id, req.signal)
            .await?;
        Ok(Empty::new())
    }

    async fn wait_process(
        &self,
        _: &TtrpcContext,
        req: agent::WaitProcessRequest,
    ) -> ttrpc::Result<agent::WaitProcessResponse> {
        self.gate.check("WaitProcess", &req).await?;
        let mut reply = agent::WaitProcessResponse::new();
        reply.status = self
            .runtime
            .wait_process(&req.container_id, &req.exec_id)
            .await?;
        Ok(reply)
    }

    async fn update_container(
        &self,
        _: &TtrpcContext,
        req: agent::UpdateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.gate.check("UpdateContainer", &req).await?;
        self.runtime.update_container(&req).await?;
        Ok(Empty::new())
    }

    async fn update_ephemeral_mounts(
        &self,
        _: &TtrpcContext,
        req: agent::UpdateEphemeralMountsRequest,
    ) -> ttrpc::Result<Empty> {
        self.unsupported("UpdateEphemeralMounts", &req).await
    }

    async fn stats_container(
        &self,
        _: &TtrpcContext,
        req: agent::StatsContainerRequest,
    ) -> ttrpc::Result<agent::StatsContainerResponse> {
        self.gate.check("StatsContainer", &req).await?;
        Ok(self.runtime.stats_container(&req.container_id).await?)
    }

    async fn pause_container(
        &self,
        _: &TtrpcContext,
        req: agent::PauseContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.gate.check("PauseContainer", &req).await?;
        self.runtime
            .pause_container(&req.container_id, true)
            .await?;
        Ok(Empty::new())
    }

    async fn resume_container(
        &self,
        _: &TtrpcContext,
        req: agent::ResumeContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.gate.check("ResumeContainer", &req).await?;
        self.runtime
            .pause_container(&req.container_id, false)
            .await?;
        Ok(Empty::new())
    }

    async fn remove_stale_virtiofs_share_mounts(
        &self,
        _: &TtrpcContext,
        req: agent::RemoveStaleVirtiofsShareMountsRequest,
    ) -> ttrpc::Result<Empty> {
        // Peer pods share no virtio-fs with the host: there are no stale mounts to drop, and the
        // shim calls this on every container stop, so it succeeds (as upstream's agent does
        // when it finds none).
        self.gate
            .check("RemoveStaleVirtiofsShareMounts", &req)
            .await?;
        Ok(Empty::new())
    }

    async fn get_diagnostic_data(
        &self,
        _: &TtrpcContext,
        req: agent::GetDiagnosticDataRequest,
    ) -> ttrpc::Result<agent::GetDiagnosticDataResponse> {
        // Nothing is collected: an empty answer, as upstream's agent gives without diagnostics.
        self.gate.check("GetDiagnosticData", &req).await?;
        Ok(agent::GetDiagnosticDataResponse::new())
    }

    async fn write_stdin(
        &self,
        _: &TtrpcContext,
        req: agent::WriteStreamRequest,
    ) -> ttrpc::Result<agent::WriteStreamResponse> {
        self.gate.check("WriteStdin", &req).await?;
        let written = self
            .runtime
            .write_stdin(&req.container_id, &req.exec_id, &req.data)
            .await?;
        let mut reply = agent::WriteStreamResponse::new();
        reply.len = u32::try_from(written).unwrap_or(u32::MAX);
        Ok(reply)
    }

    async fn close_stdin(
        &self,
        _: &TtrpcContext,
        req: agent::CloseStdinRequest,
    ) -> ttrpc::Result<Empty> {
        self.gate.check("CloseStdin", &req).await?;
        self.runtime
            .close_stdin(&req.container_id, &req.exec_id)
            .await?;
        Ok(Empty::new())
    }

    async fn tty_win_resize(
        &self,
        _: &TtrpcContext,
        req: agent::TtyWinResizeRequest,
    ) -> ttrpc::Result<Empty> {
        self.gate.check("TtyWinResize", &req).await?;
        self.runtime
            .resize_terminal(&req.container_id, &req.exec_id, req.row, req.column)?;
        Ok(Empty::new())
    }

    async fn update_interface(
        &self,
        _: &TtrpcContext,
        req: agent::UpdateInterfaceRequest,
    ) -> ttrpc::Result<types::Interface> {
        self.gate.check("UpdateInterface", &req).await?;
        let Some(interface) = req.interface.as_ref() else {
            let why = "UpdateInterface needs an interface".to_owned();
            return Err(AgentError::InvalidArgument(why).into());
        };
        let network = self.network()?;
        Ok(network
            .update_interface(interface)
            .await
            .map_err(AgentError::from)?)
    }

    async fn update_routes(
        &self,
        _: &TtrpcContext,
        req: agent::UpdateRoutesRequest,
    ) -> ttrpc::Result<agent::Routes> {
        self.gate.check("UpdateRoutes", &req).await?;
        let routes = req
            .routes
            .as_ref()
            .map(|r| r.Routes.as_slice())
            .unwrap_or_default();
        let mut reply = agent::Routes::new();
        reply.Routes = self
            .network()?
            .update_routes(routes)
            .await
            .map_err(AgentError::from)?;
        Ok(reply)
    }

    async fn list_interfaces(
        &self,
        _: &TtrpcContext,
        req: agent::ListInterfacesRequest,
    ) -> ttrpc::Result<agent::Interfaces> {
        self.gate.check("ListInterfaces", &req).await?;
        let mut reply = agent::Interfaces::new();
        reply.Interfaces = self
            .network()?
            .list_interfaces()
            .await
            .map_err(AgentError::from)?;
        Ok(reply)
    }

    async fn list_routes(
        &self,
        _: &TtrpcContext,
        req: agent::ListRoutesRequest,
    ) -> ttrpc::Result<agent::Routes> {
        self.gate.check("ListRoutes", &req).await?;
        let mut reply = agent::Routes::new();
        reply.Routes = self
            .network()?
            .list_routes()
            .await
            .map_err(AgentError::from)?;
        Ok(reply)
    }

    async fn add_arp_neighbors(
        &self,
        _: &TtrpcContext,
        req: agent::AddARPNeighborsRequest,
    ) -> ttrpc::Result<Empty> {
        self.gate.check("AddARPNeighbors", &req).await?;
        let neighbors = req
            .neighbors
            .as_ref()
            .map(|n| n.ARPNeighbors.as_slice())
            .unwrap_or_default();
        let network = self.network()?;
        network
            .add_arp_neighbors(neighbors)
            .await
            .map_err(AgentError::from)?;
        Ok(Empty::new())
    }

    async fn get_ip_tables(
        &self,
        _: &TtrpcContext,
        req: agent::GetIPTablesRequest,
    ) -> ttrpc::Result<agent::GetIPTablesResponse> {
        self.unsupported("GetIPTables", &req).await
    }

    async fn set_ip_tables(
        &self,
        _: &TtrpcContext,
        req: agent::SetIPTablesRequest,
    ) -> ttrpc::Result<agent::SetIPTablesResponse> {
        self.unsupported("SetIPTables", &req).await
    }

    async fn get_metrics(
        &self,
        _: &TtrpcContext,
        req: agent::GetMetricsRequest,
    ) -> ttrpc::Result<agent::Metrics> {
        self.gate.check("GetMetrics", &req).await?;
        let mut reply = agent::Metrics::new();
        reply.metrics = crate::guest::metrics();
        Ok(reply)
    }

    async fn mem_agent_memcg_set(
        &self,
        _: &TtrpcContext,
        req: agent::MemAgentMemcgConfig,
    ) -> ttrpc::Result<Empty> {
        self.unsupported("MemAgentMemcgSet", &req).await
    }

    async fn mem_agent_compact_set(
        &self,
        _: &TtrpcContext,
        req: agent::MemAgentCompactConfig,
    ) -> ttrpc::Result<Empty> {
        self.unsupported("MemAgentCompactSet", &req).await
    }

    async fn create_sandbox(
        &self,
        _: &TtrpcContext,
        req: agent::CreateSandboxRequest,
    ) -> ttrpc::Result<Empty> {
        self.gate.check("CreateSandbox", &req).await?;
        let resolv = crate::guest::resolv_conf(&req.dns)?;
        self.runtime.create_sandbox(&req).await?;
        if let Some(text) = resolv {
            let path = &self.guest.resolv_conf;
            std::fs::write(path, text)
                .map_err(|e| AgentError::internal(format!("cannot write {}", path.display()), e))?;
        }
        Ok(Empty::new())
    }

    async fn destroy_sandbox(
        &self,
        _: &TtrpcContext,
        req: agent::DestroySandboxRequest,
    ) -> ttrpc::Result<Empty> {
        self.gate.check("DestroySandbox", &req).await?;
        self.runtime.destroy_sandbox().await?;
        if let Some(destroyed) = &self.destroyed {
            // The server stops after a short grace, once this answer is on its way.
            destroyed.notify_one();
        }
        Ok(Empty::new())
    }

    async fn online_cpu_mem(
        &self,
        _: &TtrpcContext,
        req: agent::OnlineCPUMemRequest,
    ) -> ttrpc::Result<Empty> {
        self.unsupported("OnlineCPUMem", &req).await
    }

    async fn reseed_random_dev(
        &self,
        _: &TtrpcContext,
        req: agent::ReseedRandomDevRequest,
    ) -> ttrpc::Result<Empty> {
        self.gate.check("ReseedRandomDev", &req).await?;
        crate::guest::reseed(&req.data)?;
        Ok(Empty::new())
    }

    async fn mem_hotplug_by_probe(
        &self,
        _: &TtrpcContext,
        req: agent::MemHotplugByProbeRequest,
    ) -> ttrpc::Result<Empty> {
        self.unsupported("MemHotplugByProbe", &req).await
    }

    async fn set_guest_date_time(
        &self,
        _: &TtrpcContext,
        req: agent::SetGuestDateTimeRequest,
    ) -> ttrpc::Result<Empty> {
        self.gate.check("SetGuestDateTime", &req).await?;
        crate::guest::set_date_time(req.Sec, req.Usec)?;
        Ok(Empty::new())
    }

    async fn get_oom_event(
        &self,
        _: &TtrpcContext,
        req: agent::GetOOMEventRequest,
    ) -> ttrpc::Result<agent::OOMEvent> {
        self.gate.check("GetOOMEvent", &req).await?;
        let mut reply = agent::OOMEvent::new();
        reply.container_id = self.runtime.next_oom_event().await?;
        Ok(reply)
    }

    async fn add_swap(&self, _: &TtrpcContext, req: agent::AddSwapRequest) -> ttrpc::Result<Empty> {
        self.unsupported("AddSwap", &req).await
    }

    async fn add_swap_path(
        &self,
        _: &TtrpcContext,
        req: agent::AddSwapPathRequest,
    ) -> ttrpc::Result<Empty> {
        self.unsupported("AddSwapPath", &req).await
    }

    async fn get_volume_stats(
        &self,
        _: &TtrpcContext,
        req: agent::VolumeStatsRequest,
    ) -> ttrpc::Result<csi::VolumeStatsResponse> {
        self.unsupported("GetVolumeStats", &req).await
    }

    async fn resize_volume(
        &self,
        _: &TtrpcContext,
        req: agent::ResizeVolumeRequest,
    ) -> ttrpc::Result<Empty> {
        self.unsupported("ResizeVolume", &req).await
    }
}

/// The Health service: not gated by the policy, so the runtime can always tell the agent is up.
#[derive(Debug, Clone, Default)]
pub struct HealthRpc;

#[async_trait]
impl health_ttrpc::Health for HealthRpc {
    async fn check(
        &self,
        _: &TtrpcContext,
        _: health::CheckRequest,
    ) -> ttrpc::Result<health::HealthCheckResponse> {
        let mut response = health::HealthCheckResponse::new();
        response.status = health::health_check_response::ServingStatus::SERVING.into();
        Ok(response)
    }

    async fn version(
        &self,
        _: &TtrpcContext,
        _: health::CheckRequest,
    ) -> ttrpc::Result<health::VersionCheckResponse> {
        let mut response = health::VersionCheckResponse::new();
        response.agent_version = env!("CARGO_PKG_VERSION").to_owned();
        response.grpc_version = "0.0.1".to_owned();
        Ok(response)
    }
}
