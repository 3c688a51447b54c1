//! The agent's lifecycle: load the policy, bind the server address, serve until told to stop,
//! shut down within a bound and remove the socket.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use peerpod_policy::AgentPolicy;
use peerpod_policy::initdata::InitData;
use peerpod_protocols::kata::{agent_ttrpc, health_ttrpc};
use ttrpc::r#async::{MethodHandler, TtrpcContext};
use ttrpc::proto::ResponseInit;

use crate::config::AgentConfig;
use crate::gate::PolicyGate;
use crate::rpc::{AgentRpc, GuestInfo, HealthRpc};
use crate::runtime::reaper::Reaper;
use crate::runtime::{Runtime, RuntimeConfig};

/// How long shutdown may take before the agent gives up on open connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long the agent keeps serving after DestroySandbox answered, so that the answer reaches
/// the runtime before the connection closes.
const DESTROYED_GRACE: Duration = Duration::from_millis(200);

/// Why the agent could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The server address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: ttrpc::Error,
    },
    /// The socket's directory could not be prepared.
    #[error("cannot prepare the socket directory for {addr}")]
    SocketDir {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The agent could not become its children's reaper.
    #[error("cannot set up reaping of child processes")]
    Reaper(#[source] std::io::Error),
    /// The server failed to start or stop.
    #[error("the ttrpc server failed")]
    Server(#[source] ttrpc::Error),
}

/// Loads the policy the configuration points at: the `policy.rego` of the initdata document if
/// one is configured, else the policy file. Any failure yields a policy engine that denies every
/// request and says why; the agent still serves Health, and never falls open.
pub fn load_policy(config: &AgentConfig) -> AgentPolicy {
    let loaded = match &config.initdata_file {
        Some(path) => std::fs::read(path)
            .map_err(|e| format!("cannot read the initdata file {}: {e}", path.display()))
            .and_then(|raw| {
                InitData::parse(&raw)
                    .map_err(|e| format!("the initdata file {} is invalid: {e}", path.display()))
            })
            .and_then(|doc| match doc.policy() {
                Some(text) => AgentPolicy::load(text).map_err(|e| {
                    format!(
                        "the policy.rego of the initdata file {} is invalid: {e}",
                        path.display()
                    )
                }),
                None => load_policy_file(config),
            }),
        None => load_policy_file(config),
    };
    match loaded {
        Ok(policy) => policy,
        Err(reason) => {
            tracing::error!(%reason, "no agent policy in force: every request except Health is denied");
            AgentPolicy::deny_all(reason)
        }
    }
}

fn load_policy_file(config: &AgentConfig) -> Result<AgentPolicy, String> {
    let path = config.effective_policy_file();
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the policy file {}: {e}", path.display()))?;
    AgentPolicy::load(&text)
        .map_err(|e| format!("the policy file {} is invalid: {e}", path.display()))
}

/// Serves the agent API on the configured address until `shutdown` completes or DestroySandbox
/// has destroyed the sandbox.
pub async fn serve(
    config: &AgentConfig,
    policy: AgentPolicy,
    guest: GuestInfo,
    runtime: RuntimeConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    serve_with_front_door(config, policy, guest, runtime, None, shutdown).await
}

/// As [`serve`], and with `front_door`, the same services (one agent, one policy state) on the
/// pod VM's front door too; systemd hears `READY=1` once both serve, and the pod network is
/// torn down at the end.
pub async fn serve_with_front_door(
    config: &AgentConfig,
    policy: AgentPolicy,
    guest: GuestInfo,
    runtime: RuntimeConfig,
    front_door: Option<crate::front_door::Prepared>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let mut door = crate::front_door::Door::from(front_door);
    let result = serve_inner(config, policy, guest, runtime, &mut door, shutdown).await;
    // On every error path too: no VXLAN device, NAT path or iptables chain is left behind.
    door.close().await;
    result
}

async fn serve_inner(
    config: &AgentConfig,
    policy: AgentPolicy,
    guest: GuestInfo,
    runtime: RuntimeConfig,
    door: &mut crate::front_door::Door,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let addr = config.server_addr.to_uri();
    if let Some(path) = config.server_addr.unix_path() {
        peerpod_protocols::socket::prepare_unix_socket(path).map_err(|source| {
            ServeError::SocketDir {
                addr: addr.clone(),
                source,
            }
        })?;
    }

    let network = match crate::network::Network::new().await {
        Ok(network) => Ok(Arc::new(network)),
        Err(e) => {
            tracing::error!(error = %e, "cannot open netlink; network requests will fail");
            Err(e.to_string())
        }
    };
    let reaper = Reaper::start().map_err(ServeError::Reaper)?;
    let runtime = Arc::new(Runtime::new(runtime, Arc::clone(&reaper)));
    let destroyed = Arc::new(tokio::sync::Notify::new());
    let agent = AgentRpc::new(
        PolicyGate::new(policy),
        guest,
        network,
        Arc::clone(&runtime),
    )
    .with_cdh(
        crate::cdh::CdhClient::new(&config.cdh_socket, config.cdh_api_timeout)
            .with_image_pull_timeout(config.image_pull_timeout),
    )
    .on_sandbox_destroyed(Arc::clone(&destroyed));
    let agent: Arc<dyn agent_ttrpc::AgentService + Send + Sync> = Arc::new(agent);
    if door.is_prepared() {
        let mut services = logged(agent_ttrpc::create_agent_service(Arc::clone(&agent)));
        services.extend(health_ttrpc::create_health(Arc::new(HealthRpc)));
        door.start(services, reaper);
    }
    let agent_service = logged(agent_ttrpc::create_agent_service(agent));
    let health_service = health_ttrpc::create_health(Arc::new(HealthRpc));
    let mut server = ttrpc::r#async::Server::new()
        .bind(&addr)
        .map_err(|source| ServeError::Bind {
            addr: addr.clone(),
            source,
        })?
        .register_service(agent_service)
        .register_service(health_service);
    server.start().await.map_err(ServeError::Server)?;
    tracing::info!(%addr, "agent serving");
    if door.is_running() {
        peerpod_forwarder::front_door::notify("READY=1");
    }

    // As upstream's agent, stop after DestroySandbox: the pod is gone, nothing is left to serve.
    tokio::select! {
        () = shutdown => {}
        () = destroyed.notified() => {
            tracing::info!("sandbox destroyed; the agent stops");
            tokio::time::sleep(DESTROYED_GRACE).await;
        }
    }
    tracing::info!("shutting down");
    door.close().await;
    if let Err(e) = runtime.shutdown().await {
        tracing::warn!(error = %e, "containers left behind at shutdown");
    }
    match tokio::time::timeout(SHUTDOWN_GRACE, server.shutdown()).await {
        Ok(result) => result.map_err(ServeError::Server)?,
        Err(_) => tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; leaving them"),
    }
    if let Some(path) = config.server_addr.unix_path() {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// Wraps every method of `services` so that a failed request leaves a warning in the log.
fn logged(
    mut services: std::collections::HashMap<String, ttrpc::r#async::Service>,
) -> std::collections::HashMap<String, ttrpc::r#async::Service> {
    for service in services.values_mut() {
        let methods = std::mem::take(&mut service.methods);
        service.methods = methods
            .into_iter()
            .map(|(name, inner)| {
                let handler: Box<dyn MethodHandler + Send + Sync> = Box::new(Logged {
                    method: name.clone(),
                    inner,
                });
                (name, handler)
            })
            .collect();
    }
    services
}

/// A method handler that logs the requests that fail: the method, the status code and the
/// reason, never the request. Policy denials are logged by the gate (with the policy's
/// cause) and not again here; the end of an output stream (ReadStdout/ReadStderr's `EOF`) is
/// how every stream ends and is logged at debug level only.
struct Logged {
    method: String,
    inner: Box<dyn MethodHandler + Send + Sync>,
}

#[async_trait]
impl MethodHandler for Logged {
    async fn handler(
        &self,
        ctx: TtrpcContext,
        request: ttrpc::Request,
    ) -> ttrpc::Result<ttrpc::Response> {
        let result = self.inner.handler(ctx, request).await;
        let (code, reason) = match &result {
            Ok(response) => match response.non_ok() {
                Some(status) => (status.code(), status.message().to_owned()),
                None => return result,
            },
            // The request could not be decoded or the answer encoded.
            Err(e) => (ttrpc::Code::INVALID_ARGUMENT, e.to_string()),
        };
        let method = self.method.as_str();
        let reason = crate::error::loggable(&reason);
        match code {
            ttrpc::Code::PERMISSION_DENIED => {}
            ttrpc::Code::INTERNAL if reason == "EOF" && method.starts_with("Read") => {
                tracing::debug!(method, "output stream ended");
            }
            _ => tracing::warn!(method, code = ?code, %reason, "request failed"),
        }
        result
    }
}
