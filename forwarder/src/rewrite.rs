//! The two requests the forwarder changes on their way to the agent, as upstream's
//! interceptor does:
//!
//! - `CreateContainer`: the container joins the pod's network namespace. Every network
//!   namespace entry the host sent (`network` or `net`, in any letter case) is replaced by
//!   exactly one naming the pod namespace (`/run/netns/podns`), so the host cannot point a
//!   container at the VM's own network namespace or another. Missing bind-mount sources are created as directories, but only
//!   below the allowed prefixes (`/run/kata-containers/` by default, where the shim's
//!   shared paths live), one component at a time relative to a directory descriptor opened
//!   with `O_NOFOLLOW | O_DIRECTORY` (so a symbolic link swapped in meanwhile is never
//!   followed), at most [`MAX_CREATED_SOURCES`] sources, [`MAX_CREATED_DIRS`] directories and
//!   [`MAX_SOURCE_DEPTH`] components below the prefix per request. Sources elsewhere are left to the agent (and its policy) to refuse.
//! - `CreateSandbox`: the DNS entries are dropped, so the host does not rewrite the pod VM's
//!   `/etc/resolv.conf` (upstream's cloud-api-adaptor issue 98).
//!
//! Every other request passes untouched, without being decoded. A request that is to be
//! rewritten but does not decode is refused (it is never forwarded unrewritten: a container
//! must not escape the pod's network namespace because its request was malformed).

use std::path::{Component, Path, PathBuf};

use peerpod_protocols::kata::{agent, oci};
use protobuf::Message as _;
use tracing::{debug, info, warn};

use crate::frame::{ScanError, request_method};

/// The most missing bind-mount sources one CreateContainer may have created.
pub const MAX_CREATED_SOURCES: usize = 64;
/// The most directories one CreateContainer may create, over all its sources.
pub const MAX_CREATED_DIRS: usize = 256;
/// The most path components below the prefix a created source may have.
pub const MAX_SOURCE_DEPTH: usize = 32;
/// The agent service's name on the wire.
pub const AGENT_SERVICE: &str = "grpc.AgentService";
/// The pod's network namespace upstream uses.
pub const DEFAULT_POD_NETNS: &str = "/run/netns/podns";
/// Where missing bind-mount sources may be created by default.
pub const DEFAULT_BIND_SOURCE_PREFIX: &str = "/run/kata-containers";

/// Why a request whose rewritten form is over ttrpc's 4 MiB is refused (`INVALID_ARGUMENT`,
/// after `agent-protocol-forwarder: `), by the separate forwarder and the in-agent dispatch
/// alike.
pub const REWRITTEN_TOO_LARGE: &str = "the rewritten request is over ttrpc's 4 MiB limit";

/// Why a request was refused instead of forwarded.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    /// The ttrpc request envelope is malformed.
    #[error(transparent)]
    Envelope(#[from] ScanError),
    /// The request to rewrite does not decode.
    #[error("{method} request does not decode: {reason}")]
    Decode {
        /// The method.
        method: &'static str,
        /// Why.
        reason: String,
    },
    /// CreateContainer without an OCI spec.
    #[error("CreateContainer carries no OCI spec")]
    NoSpec,
    /// The rewritten request could not be encoded.
    #[error("{method} request cannot be re-encoded: {reason}")]
    Encode {
        /// The method.
        method: &'static str,
        /// Why.
        reason: String,
    },
}

/// What the rewrites do.
#[derive(Debug, Clone)]
pub struct RewriteOptions {
    /// The pod's network namespace path (`-pod-namespace`).
    pub pod_netns: String,
    /// The directories below which missing bind-mount sources are created.
    pub bind_source_prefixes: Vec<PathBuf>,
}

impl Default for RewriteOptions {
    fn default() -> Self {
        Self {
            pod_netns: DEFAULT_POD_NETNS.to_owned(),
            bind_source_prefixes: vec![PathBuf::from(DEFAULT_BIND_SOURCE_PREFIX)],
        }
    }
}

/// Rewrites requests per [`RewriteOptions`].
#[derive(Debug, Clone, Default)]
pub struct Rewriter {
    options: RewriteOptions,
}

impl Rewriter {
    /// A rewriter with `options`.
    pub fn new(options: RewriteOptions) -> Self {
        Self { options }
    }

    /// The rewritten `ttrpc.Request` for `payload`, or `None` when it passes unchanged.
    pub fn rewrite(&self, payload: &[u8]) -> Result<Option<Vec<u8>>, RewriteError> {
        let (service, method) = request_method(payload)?;
        if service != AGENT_SERVICE.as_bytes() {
            return Ok(None);
        }
        match method {
            b"CreateContainer" => self
                .rewrite_inner(payload, "CreateContainer", |this, bytes| {
                    this.create_container(bytes)
                })
                .map(Some),
            b"CreateSandbox" => self
                .rewrite_inner(payload, "CreateSandbox", |_, bytes| create_sandbox(bytes))
                .map(Some),
            _ => Ok(None),
        }
    }

    fn rewrite_inner(
        &self,
        payload: &[u8],
        method: &'static str,
        change: impl FnOnce(&Self, &[u8]) -> Result<Vec<u8>, RewriteError>,
    ) -> Result<Vec<u8>, RewriteError> {
        let mut request =
            ttrpc::Request::parse_from_bytes(payload).map_err(|e| RewriteError::Decode {
                method,
                reason: e.to_string(),
            })?;
        request.payload = change(self, &request.payload)?;
        request.write_to_bytes().map_err(|e| RewriteError::Encode {
            method,
            reason: e.to_string(),
        })
    }

    fn create_container(&self, bytes: &[u8]) -> Result<Vec<u8>, RewriteError> {
        const M: &str = "CreateContainer";
        let mut req = agent::CreateContainerRequest::parse_from_bytes(bytes).map_err(|e| {
            RewriteError::Decode {
                method: M,
                reason: e.to_string(),
            }
        })?;
        let spec = req.OCI.as_mut().ok_or(RewriteError::NoSpec)?;
        let linux = spec.Linux.mut_or_insert_default();
        let before = linux.Namespaces.len();
        linux
            .Namespaces
            .retain(|ns| !is_network_namespace(&ns.Type));
        let dropped = before - linux.Namespaces.len();
        let mut podns = oci::LinuxNamespace::new();
        podns.Type = "network".into();
        podns.Path = self.options.pod_netns.clone();
        linux.Namespaces.push(podns);
        info!(
            container = %peerpod_text_safe(&req.container_id),
            netns = %self.options.pod_netns,
            replaced = dropped,
            "CreateContainer: the container joins the pod network namespace"
        );
        let mut created = 0usize;
        let mut dirs_left = MAX_CREATED_DIRS;
        for mount in &spec.Mounts {
            if mount.type_ != "bind" || mount.source.is_empty() {
                continue;
            }
            let source = Path::new(&mount.source);
            if source.symlink_metadata().is_ok() {
                continue;
            }
            if created == MAX_CREATED_SOURCES {
                warn!(
                    "CreateContainer: more than {MAX_CREATED_SOURCES} missing bind-mount sources; \
                     the rest are left to the agent"
                );
                break;
            }
            match self.create_source(source, &mut dirs_left) {
                Ok(true) => created += 1,
                Ok(false) => {
                    debug!(source = %source.display(), "missing bind-mount source outside the allowed prefixes: left to the agent")
                }
                Err(reason) => {
                    warn!(source = %source.display(), %reason, "missing bind-mount source not created")
                }
            }
        }
        req.write_to_bytes().map_err(|e| RewriteError::Encode {
            method: M,
            reason: e.to_string(),
        })
    }

    /// Creates `source` as a directory if it is a clean absolute path below an allowed
    /// prefix, without following symbolic links: each component is opened (or made, then
    /// opened) relative to its parent's descriptor with `O_NOFOLLOW | O_DIRECTORY`, so a
    /// component swapped for a link meanwhile stops the walk. At most `dirs_left` directories
    /// are made (the count goes down). `Ok(false)`: not below an allowed prefix.
    fn create_source(&self, source: &Path, dirs_left: &mut usize) -> Result<bool, String> {
        use nix::errno::Errno;
        use nix::fcntl::{OFlag, openat};
        use nix::sys::stat::{Mode, mkdirat};

        if !source.is_absolute()
            || source
                .components()
                .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        {
            return Ok(false);
        }
        let Some(prefix) = self
            .options
            .bind_source_prefixes
            .iter()
            .find(|p| source.starts_with(p) && source != p.as_path())
        else {
            return Ok(false);
        };
        let rest = source
            .strip_prefix(prefix)
            .map_err(|_| "not below the prefix".to_owned())?;
        let depth = rest.components().count();
        if depth > MAX_SOURCE_DEPTH {
            return Err(format!(
                "{depth} components below {}: at most {MAX_SOURCE_DEPTH}",
                prefix.display()
            ));
        }
        let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut dir = nix::fcntl::open(prefix.as_path(), dir_flags, Mode::empty())
            .map_err(|e| format!("the prefix {} is unusable: {e}", prefix.display()))?;
        let mut path = prefix.clone();
        for part in rest.components() {
            let Component::Normal(name) = part else {
                return Err(format!("{} is not a plain path", source.display()));
            };
            path.push(name);
            let not_dir = |e: Errno| match e {
                Errno::ELOOP | Errno::ENOTDIR => format!(
                    "{} exists and is not a directory (a symbolic link is never followed)",
                    path.display()
                ),
                e => format!("cannot open {}: {e}", path.display()),
            };
            dir = match openat(&dir, name, dir_flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => {
                    if *dirs_left == 0 {
                        return Err(format!(
                            "{}: more than {MAX_CREATED_DIRS} directories in one request",
                            path.display()
                        ));
                    }
                    match mkdirat(&dir, name, Mode::from_bits_truncate(0o755)) {
                        Ok(()) => *dirs_left -= 1,
                        Err(Errno::EEXIST) => {}
                        Err(e) => return Err(format!("cannot create {}: {e}", path.display())),
                    }
                    openat(&dir, name, dir_flags, Mode::empty()).map_err(not_dir)?
                }
                Err(e) => return Err(not_dir(e)),
            };
        }
        info!(source = %source.display(), "created a missing bind-mount source");
        Ok(true)
    }
}

/// Whether a namespace entry's type names the network namespace in any spelling a runtime
/// or spec library accepts (`network`, `net`, in any letter case, surrounding blanks
/// ignored): every one is removed, so none survives next to the pod namespace.
fn is_network_namespace(kind: &str) -> bool {
    let kind = kind.trim();
    kind.eq_ignore_ascii_case("network") || kind.eq_ignore_ascii_case("net")
}

fn create_sandbox(bytes: &[u8]) -> Result<Vec<u8>, RewriteError> {
    const M: &str = "CreateSandbox";
    let mut req =
        agent::CreateSandboxRequest::parse_from_bytes(bytes).map_err(|e| RewriteError::Decode {
            method: M,
            reason: e.to_string(),
        })?;
    if !req.dns.is_empty() {
        info!(
            entries = req.dns.len(),
            "CreateSandbox: DNS settings dropped, so the host does not rewrite the pod VM's resolv.conf"
        );
        req.dns.clear();
    }
    req.write_to_bytes().map_err(|e| RewriteError::Encode {
        method: M,
        reason: e.to_string(),
    })
}

/// A host-chosen string for a log line: printable ASCII, at most 80 characters.
fn peerpod_text_safe(s: &str) -> String {
    s.chars()
        .take(80)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn envelope(method: &str, payload: Vec<u8>) -> Vec<u8> {
        let mut r = ttrpc::Request::new();
        r.service = AGENT_SERVICE.into();
        r.method = method.into();
        r.payload = payload;
        r.write_to_bytes().unwrap()
    }

    fn decode_cc(bytes: &[u8]) -> agent::CreateContainerRequest {
        let env = ttrpc::Request::parse_from_bytes(bytes).unwrap();
        agent::CreateContainerRequest::parse_from_bytes(&env.payload).unwrap()
    }

    #[test]
    fn host_network_namespaces_are_replaced_by_the_pod_one() {
        let mut req = agent::CreateContainerRequest::new();
        req.container_id = "c1".into();
        let mut spec = oci::Spec::new();
        let mut linux = oci::Linux::new();
        for (t, p) in [
            ("network", "/proc/1/ns/net"),
            ("mount", ""),
            ("network", ""),
            ("net", "/proc/1/ns/net"),
            ("NET", "/proc/1/ns/net"),
            ("Network", "/var/run/netns/other"),
            (" net", "/proc/1/ns/net"),
        ] {
            let mut ns = oci::LinuxNamespace::new();
            ns.Type = t.into();
            ns.Path = p.into();
            linux.Namespaces.push(ns);
        }
        spec.Linux = Some(linux).into();
        req.OCI = Some(spec).into();
        let out = Rewriter::default()
            .rewrite(&envelope("CreateContainer", req.write_to_bytes().unwrap()))
            .unwrap()
            .unwrap();
        let got = decode_cc(&out);
        let ns: Vec<_> = got
            .OCI
            .Linux
            .Namespaces
            .iter()
            .map(|n| (n.Type.as_str(), n.Path.as_str()))
            .collect();
        assert_eq!(ns, [("mount", ""), ("network", "/run/netns/podns")]);
        assert_eq!(got.container_id, "c1");
    }

    #[test]
    fn other_requests_pass_undecoded_and_bad_ones_are_refused() {
        let r = Rewriter::default();
        assert!(
            r.rewrite(&envelope("StartContainer", vec![0xFF, 0xFF]))
                .unwrap()
                .is_none()
        );
        let err = r
            .rewrite(&envelope("CreateContainer", vec![0xFF, 0xFF]))
            .unwrap_err();
        assert!(matches!(err, RewriteError::Decode { .. }), "{err}");
        let err = r
            .rewrite(&envelope("CreateContainer", Vec::new()))
            .unwrap_err();
        assert!(matches!(err, RewriteError::NoSpec), "{err}");
        assert!(r.rewrite(&[0x0A, 0x09, b'g']).is_err());
    }

    #[test]
    fn sandbox_dns_is_dropped() {
        let mut req = agent::CreateSandboxRequest::new();
        req.hostname = "pod".into();
        req.dns = vec!["nameserver 10.96.0.10".into()];
        let out = Rewriter::default()
            .rewrite(&envelope("CreateSandbox", req.write_to_bytes().unwrap()))
            .unwrap()
            .unwrap();
        let env = ttrpc::Request::parse_from_bytes(&out).unwrap();
        let got = agent::CreateSandboxRequest::parse_from_bytes(&env.payload).unwrap();
        assert!(got.dns.is_empty());
        assert_eq!(got.hostname, "pod");
    }

    #[test]
    fn bind_sources_are_created_only_below_the_prefix_and_never_through_links() {
        let base = std::env::temp_dir().join(format!("fwd-bind-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let allowed = base.join("kata");
        let outside = base.join("outside");
        std::fs::create_dir_all(&allowed).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, allowed.join("link")).unwrap();
        let r = Rewriter::new(RewriteOptions {
            pod_netns: "/run/netns/podns".into(),
            bind_source_prefixes: vec![allowed.clone()],
        });
        let mut spec = oci::Spec::new();
        for src in [
            allowed.join("shared/containers/c1-hostname"),
            allowed.join("link/escaped"),
            base.join("elsewhere"),
            allowed.join("a/../../dotdot"),
        ] {
            let mut m = oci::Mount::new();
            m.type_ = "bind".into();
            m.source = src.display().to_string();
            m.destination = "/x".into();
            spec.Mounts.push(m);
        }
        let mut req = agent::CreateContainerRequest::new();
        req.OCI = Some(spec).into();
        r.rewrite(&envelope("CreateContainer", req.write_to_bytes().unwrap()))
            .unwrap();
        assert!(allowed.join("shared/containers/c1-hostname").is_dir());
        assert!(!outside.join("escaped").exists(), "a link was followed");
        assert!(!base.join("elsewhere").exists());
        assert!(!base.join("dotdot").exists());
        std::fs::remove_dir_all(&base).unwrap();
    }

    fn create_request(sources: &[PathBuf]) -> Vec<u8> {
        let mut spec = oci::Spec::new();
        for src in sources {
            let mut m = oci::Mount::new();
            m.type_ = "bind".into();
            m.source = src.display().to_string();
            m.destination = "/x".into();
            spec.Mounts.push(m);
        }
        let mut req = agent::CreateContainerRequest::new();
        req.OCI = Some(spec).into();
        envelope("CreateContainer", req.write_to_bytes().unwrap())
    }

    fn count_dirs(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir())
            .map(|p| 1 + count_dirs(&p))
            .sum()
    }

    #[test]
    fn bind_sources_are_capped_in_directories_and_depth() {
        let base = std::env::temp_dir().join(format!("fwd-bind-cap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let allowed = base.join("kata");
        std::fs::create_dir_all(&allowed).unwrap();
        let r = Rewriter::new(RewriteOptions {
            pod_netns: "/run/netns/podns".into(),
            bind_source_prefixes: vec![allowed.clone()],
        });
        // 20 sources of 20 new directories each: 400 asked for, 256 made at most.
        let sources: Vec<PathBuf> = (0..20)
            .map(|i| {
                let mut p = allowed.join(format!("s{i}"));
                for d in 1..20 {
                    p.push(format!("d{d}"));
                }
                p
            })
            .collect();
        r.rewrite(&create_request(&sources)).unwrap();
        assert_eq!(count_dirs(&allowed), MAX_CREATED_DIRS);
        // Too deep: nothing made.
        let deep_root = base.join("deep");
        std::fs::create_dir_all(&deep_root).unwrap();
        let r = Rewriter::new(RewriteOptions {
            pod_netns: "/run/netns/podns".into(),
            bind_source_prefixes: vec![deep_root.clone()],
        });
        let mut deep = deep_root.clone();
        for d in 0..=MAX_SOURCE_DEPTH {
            deep.push(format!("{d}"));
        }
        r.rewrite(&create_request(&[deep])).unwrap();
        assert_eq!(count_dirs(&deep_root), 0);
        std::fs::remove_dir_all(&base).unwrap();
    }

    /// A component swapped between a directory and a link to elsewhere while sources are
    /// created: nothing is ever made through the link.
    #[test]
    fn a_symlink_swapped_in_during_creation_is_never_followed() {
        let base = std::env::temp_dir().join(format!("fwd-bind-race-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let allowed = base.join("kata");
        let outside = base.join("outside");
        std::fs::create_dir_all(&allowed).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let r = Rewriter::new(RewriteOptions {
            pod_netns: "/run/netns/podns".into(),
            bind_source_prefixes: vec![allowed.clone()],
        });
        std::fs::create_dir(allowed.join("x")).unwrap();
        std::os::unix::fs::symlink(&outside, allowed.join("x.l")).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let (allowed, stop) = (allowed.clone(), stop.clone());
            std::thread::spawn(move || {
                // "x" and "x.l" trade places atomically, again and again: a directory one
                // moment, a link to `outside` the next.
                let (x, link) = (allowed.join("x"), allowed.join("x.l"));
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = nix::fcntl::renameat2(
                        nix::fcntl::AT_FDCWD,
                        &x,
                        nix::fcntl::AT_FDCWD,
                        &link,
                        nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                    );
                }
            })
        };
        for i in 0..3000 {
            r.rewrite(&create_request(&[allowed.join(format!("x/y{i}"))]))
                .unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        swapper.join().unwrap();
        let escaped: Vec<_> = std::fs::read_dir(&outside).unwrap().collect();
        assert!(escaped.is_empty(), "made through the link: {escaped:?}");
        std::fs::remove_dir_all(&base).unwrap();
    }
}
