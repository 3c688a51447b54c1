//! CreateContainer: the bundle, the agent's rewrites of the spec, and the created container.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType, Spec};
use peerpod_protocols::kata::agent;

use super::helper::Request;
use super::spawn::Stdio;
use super::{Container, Process, Runtime, Status, check_id, error_chain, spec, storage};
use crate::error::AgentError;

impl Runtime {
    /// CreateContainer: storages, bundle, and a created container whose process waits for
    /// StartContainer.
    pub async fn create_container(
        &self,
        request: &agent::CreateContainerRequest,
    ) -> Result<(), AgentError> {
        let reservation = self.reserve(&request.container_id)?;
        self.create_container_pulled(&reservation, request, None)
            .await
    }

    /// Claims the container id `id` for a CreateContainer, until the returned guard is dropped:
    /// a second request for the same id, even one that arrives while the first is still
    /// creating (pulling its image, say), is refused ALREADY_EXISTS rather than sharing (and
    /// later deleting) the first one's storages and bundle. Take it before anything touches
    /// the disk or the confidential data hub.
    pub fn reserve(&self, id: &str) -> Result<Reservation<'_>, AgentError> {
        check_id(id, "container_id")?;
        let containers = self
            .containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut creating = self.creating.lock().unwrap_or_else(PoisonError::into_inner);
        if containers.contains_key(id) || !creating.insert(id.to_owned()) {
            return Err(AgentError::AlreadyExists {
                what: format!("container {id:?}"),
            });
        }
        Ok(Reservation {
            creating: &self.creating,
            id: id.to_owned(),
        })
    }

    /// Refuses a CreateContainer whose other storages could not be prepared (unsupported
    /// drivers, relative or `..` mount points) before anything is pulled for it.
    pub fn check_storages(
        &self,
        request: &agent::CreateContainerRequest,
    ) -> Result<(), AgentError> {
        storage::check_all(&request.storages, &self.config.state_dir)
    }

    /// CreateContainer for the id `reservation` holds, with a root filesystem a guest pull
    /// prepared ([`crate::guest_pull`]): released with the container (or now, with its bundle,
    /// if the creation fails); its process, when it has one (the pause bundle's), replaces the
    /// request's.
    pub async fn create_container_pulled(
        &self,
        reservation: &Reservation<'_>,
        request: &agent::CreateContainerRequest,
        pulled: Option<crate::guest_pull::Pulled>,
    ) -> Result<(), AgentError> {
        let pulled_storage = pulled.as_ref().map(storage::Mounted::pulled);
        let process = pulled.and_then(|p| p.process);
        if reservation.id == request.container_id {
            self.create_with(request, process, pulled_storage).await
        } else {
            // The reservation is for another id: a caller's mistake, refused as unsafe.
            pulled_storage.iter().for_each(storage::Mounted::release);
            Err(AgentError::internal(
                "CreateContainer",
                format!(
                    "container {:?} was not reserved (the reservation is for {:?})",
                    request.container_id, reservation.id
                ),
            ))
        }
    }

    /// Creates the container; on a failure every storage, `pulled` included, is released.
    async fn create_with(
        &self,
        request: &agent::CreateContainerRequest,
        process: Option<oci_spec::runtime::Process>,
        pulled: Option<storage::Mounted>,
    ) -> Result<(), AgentError> {
        let id = request.container_id.clone();
        let mut spec = match spec::oci_spec(&request.OCI) {
            Ok(spec) => spec,
            Err(e) => {
                pulled.iter().for_each(storage::Mounted::release);
                return Err(AgentError::InvalidArgument(error_chain(&e)));
            }
        };
        if let Some(process) = process {
            spec.set_process(Some(process));
        }
        if let Some(process) = spec.process_mut() {
            spec::pin_groups(process);
            spec::pin_capabilities(process);
        }

        let mut storages = match storage::prepare_all(&request.storages, &self.config.state_dir) {
            Ok(storages) => storages,
            Err(e) => {
                pulled.iter().for_each(storage::Mounted::release);
                return Err(e);
            }
        };
        // Last: released after the container's other storages, which may sit inside it.
        storages.extend(pulled);
        let result = self.create_prepared(&id, &request.exec_id, &mut spec).await;
        match result {
            Ok((bundle, init)) => {
                let cgroup = spec
                    .linux()
                    .as_ref()
                    .and_then(|l| l.cgroups_path().clone())
                    .unwrap_or_default();
                let container = Arc::new(Container {
                    id: id.clone(),
                    process: spec.process().clone(),
                    bundle,
                    cgroup,
                    lifecycle: tokio::sync::Mutex::new(Status::Created),
                    init,
                    execs: Mutex::new(HashMap::new()),
                    storages,
                });
                self.containers
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(id, container);
                Ok(())
            }
            Err(e) => {
                storages.iter().for_each(storage::Mounted::release);
                Err(e)
            }
        }
    }

    async fn create_prepared(
        &self,
        id: &str,
        exec_id: &str,
        spec: &mut Spec,
    ) -> Result<(PathBuf, Arc<Process>), AgentError> {
        let root_path = spec
            .root()
            .as_ref()
            .map(|r| r.path().clone())
            .ok_or_else(|| AgentError::InvalidArgument("the OCI spec has no root".to_owned()))?;
        if !root_path.is_dir() {
            return Err(AgentError::FailedPrecondition(format!(
                "the container's root filesystem {} does not exist; prepare it with a storage",
                crate::error::quoted(&root_path)
            )));
        }
        self.rewrite(id, spec);
        apply_network_sysctls(spec)?;
        let bundle = self.config.state_dir.join("bundles").join(id);
        std::fs::create_dir_all(&bundle)
            .map_err(|e| AgentError::internal(format!("cannot create {}", bundle.display()), e))?;
        spec.save(bundle.join("config.json"))
            .map_err(|e| AgentError::internal("cannot write the container's config.json", e))?;

        let terminal = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        let stdio = match self.stdio(terminal) {
            Ok(stdio) => stdio,
            Err(e) => {
                let _ = crate::tree::remove_tree(&bundle);
                return Err(e);
            }
        };
        let request = Request::Create {
            id: id.to_owned(),
            root: self.root(),
            bundle: bundle.clone(),
            console_socket: match &stdio {
                Stdio::Terminal(console) => Some(console.path.clone()),
                Stdio::Pipes(..) => None,
            },
        };
        let (pid, io) = match self
            .spawn_with(request, stdio, &format!("cannot create container {id:?}"))
            .await
        {
            Ok(spawned) => spawned,
            Err(e) => {
                let _ = crate::tree::remove_tree(&bundle);
                return Err(e);
            }
        };
        tracing::debug!(container = %id, pid, "container created");
        let process = Arc::new(Process {
            exec_id: exec_id.to_owned(),
            pid,
            exit: self.reaper.register(pid),
            io,
        });
        Ok((bundle, process))
    }

    /// The agent's rewrites of a container spec: its cgroup under the agent's, and the network
    /// namespace shared with the agent (the sandbox's).
    fn rewrite(&self, id: &str, spec: &mut Spec) {
        let (sandbox, shared, shared_pid) = self
            .sandbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|s| (s.id.clone(), s.namespaces.clone(), s.pause.is_some()))
            .unwrap_or_else(|| ("no-sandbox".to_owned(), None, false));
        let sandbox = if sandbox.is_empty() {
            "sandbox".to_owned()
        } else {
            sandbox
        };
        if let Some(linux) = spec.linux_mut() {
            let sandbox = self.sandbox_cgroup(&sandbox);
            linux.set_cgroups_path(Some(PathBuf::from(format!("{sandbox}/{id}"))));
            // The network namespace the spec names, when it is a named one (`/run/netns/NAME`):
            // in a peer-pod VM the front door writes the pod's `/run/netns/podns` there, and
            // upstream's agent keeps the spec's network path. Read before the list is rebuilt.
            let named_network = linux
                .namespaces()
                .as_ref()
                .and_then(|list| {
                    list.iter()
                        .find(|n| n.typ() == LinuxNamespaceType::Network)
                        .and_then(|n| n.path().clone())
                })
                .filter(|path| is_named_netns(path));
            // Whatever else the spec lists: the network namespace is that named one or else the
            // sandbox's (the agent's own), IPC and UTS are the sandbox's, PID is the sandbox's
            // when it shares one and the container's own otherwise, mount is always the
            // container's own. Other kinds (user, cgroup, time) stay as the spec has them.
            let mut namespaces: Vec<LinuxNamespace> = linux
                .namespaces()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .filter(|n| {
                    !matches!(
                        n.typ(),
                        LinuxNamespaceType::Network
                            | LinuxNamespaceType::Ipc
                            | LinuxNamespaceType::Uts
                            | LinuxNamespaceType::Pid
                            | LinuxNamespaceType::Mount
                    )
                })
                .collect();
            let joined = |kind: &str| shared.as_ref().map(|dir| dir.join(kind));
            let pid = if shared_pid { joined("pid") } else { None };
            // Otherwise the agent's own network namespace, named by path: the container joins
            // it, and the runtime then accepts the pod's network sysctls.
            let network = named_network
                .unwrap_or_else(|| PathBuf::from(format!("/proc/{}/ns/net", std::process::id())));
            for (typ, path) in [
                (LinuxNamespaceType::Network, Some(network)),
                (LinuxNamespaceType::Mount, None),
                (LinuxNamespaceType::Pid, pid),
                (LinuxNamespaceType::Ipc, joined("ipc")),
                (LinuxNamespaceType::Uts, joined("uts")),
            ] {
                let mut namespace = LinuxNamespace::default();
                namespace.set_typ(typ);
                namespace.set_path(path);
                namespaces.push(namespace);
            }
            linux.set_namespaces(Some(namespaces));
        }
        // A joined UTS namespace already has the sandbox's hostname.
        if shared.is_some() {
            spec.set_hostname(None);
        }
    }
}

/// Takes the network sysctls (`net.*`) out of the spec and sets them in the agent's network
/// namespace, which the container joins: it is the pod's, and Kubernetes' network sysctls are
/// per pod. (libcontainer refuses network sysctls for a container joining its caller's network
/// namespace, as runc does, so the agent applies them itself.)
fn apply_network_sysctls(spec: &mut Spec) -> Result<(), AgentError> {
    let Some(linux) = spec.linux_mut() else {
        return Ok(());
    };
    let Some(sysctls) = linux.sysctl().clone() else {
        return Ok(());
    };
    let (network, other): (HashMap<String, String>, HashMap<String, String>) = sysctls
        .into_iter()
        .partition(|(key, _)| key.replace('/', ".").starts_with("net."));
    for (key, value) in &network {
        let name = key.replace('/', ".");
        let valid = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            && !name.contains("..")
            && !value.contains('\n');
        if !valid {
            return Err(AgentError::InvalidArgument(format!(
                "invalid sysctl {key:?} = {value:?}"
            )));
        }
        let path = PathBuf::from("/proc/sys").join(name.replace('.', "/"));
        std::fs::write(&path, value).map_err(|e| {
            AgentError::internal(format!("cannot set the sysctl {name} to {value:?}"), e)
        })?;
    }
    linux.set_sysctl((!other.is_empty()).then_some(other));
    Ok(())
}

/// A container id claimed by a CreateContainer in progress ([`Runtime::reserve`]); released
/// when dropped (by then the container is in the runtime's map, or its creation failed).
#[derive(Debug)]
pub struct Reservation<'a> {
    creating: &'a Mutex<HashSet<String>>,
    id: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.creating
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

/// Whether `path` names a network namespace made with `ip netns add`: `/run/netns/NAME`, NAME a
/// plain file name. Any other path the host writes (`/proc/1/ns/net`, `..` tricks) is not
/// joined: the container gets the agent's namespace instead, as before.
fn is_named_netns(path: &std::path::Path) -> bool {
    let mut components = path.components();
    matches!(
        (
            components.next(),
            components.next(),
            components.next(),
            components.next(),
            components.next(),
        ),
        (
            Some(std::path::Component::RootDir),
            Some(std::path::Component::Normal(run)),
            Some(std::path::Component::Normal(netns)),
            Some(std::path::Component::Normal(name)),
            None,
        ) if run == "run" && netns == "netns" && !name.is_empty()
    ) && path.as_os_str().len() <= 4096
        && !path.as_os_str().as_encoded_bytes().contains(&b'\0')
}

#[cfg(test)]
mod netns_tests {
    use super::is_named_netns;
    use std::path::Path;

    #[test]
    fn only_run_netns_names_are_named_namespaces() {
        for good in ["/run/netns/podns", "/run/netns/cni-1234"] {
            assert!(is_named_netns(Path::new(good)), "{good}");
        }
        for bad in [
            "/proc/1/ns/net",
            "/run/netns",
            "/run/netns/",
            "/run/netns/../../proc/1/ns/net",
            "/run/netns/a/b",
            "run/netns/podns",
            "/var/run/netns/podns",
        ] {
            assert!(!is_named_netns(Path::new(bad)), "{bad}");
        }
    }
}
