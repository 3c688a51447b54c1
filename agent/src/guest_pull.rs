//! The `image_guest_pull` storage: the container's root filesystem is pulled inside the pod VM
//! by the confidential data hub (`PullImage{image_url, bundle_path}`), which leaves it mounted
//! at `<bundle>/rootfs` (and records the pull in the attestation agent's event log), as
//! upstream's agent does. The bundle is `/run/kata-containers/<container id>`.
//!
//! The sandbox (pause) container is not pulled: its root filesystem is the pause binary from
//! the guest's own bundle (`/pause_bundle`, upstream's path), and its process is the one that
//! bundle's `config.json` names, whatever the request says — as upstream does.
//!
//! The request's policy is decided before any of this, on the request as the host sent it.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use peerpod_protocols::kata::agent::CreateContainerRequest;
use serde::Deserialize;

use crate::cdh::CdhClient;
use crate::error::AgentError;

/// The storage driver.
pub const DRIVER: &str = "image_guest_pull";
/// Where pulled bundles live (upstream's `CONTAINER_BASE`).
pub const CONTAINER_BASE: &str = "/run/kata-containers";
/// The guest's own pause bundle (upstream's path).
pub const PAUSE_BUNDLE: &str = "/pause_bundle";
/// The annotations that say a container is the sandbox's (upstream checks both).
pub const CONTAINER_TYPE_KEYS: [&str; 2] = [
    "io.kubernetes.cri.container-type",
    "io.kubernetes.cri-o.ContainerType",
];
/// The largest driver option read.
const MAX_DRIVER_OPTION: usize = 64 << 10;

/// Where guest pulls put their bundles, and where the pause bundle is.
#[derive(Debug, Clone)]
pub struct GuestPull {
    /// Bundles are `<base>/<container id>`.
    pub base: PathBuf,
    /// The pause bundle (`config.json` and `rootfs/`).
    pub pause_bundle: PathBuf,
}

impl Default for GuestPull {
    fn default() -> Self {
        Self {
            base: PathBuf::from(CONTAINER_BASE),
            pause_bundle: PathBuf::from(PAUSE_BUNDLE),
        }
    }
}

/// A root filesystem prepared by a guest pull.
#[derive(Debug)]
pub struct Pulled {
    /// `<base>/<container id>`, made by this pull: removed with the container.
    pub bundle: PathBuf,
    /// `<bundle>/rootfs`.
    pub rootfs: PathBuf,
    /// Whether it is a mount (a pulled image) to undo when the container goes.
    pub mounted: bool,
    /// The process that replaces the request's (the pause bundle's, for the sandbox).
    pub process: Option<oci_spec::runtime::Process>,
    /// The digest the CDH answered (empty for the pause bundle).
    pub manifest_digest: String,
}

/// The storage's `image_guest_pull=<JSON>` driver option (upstream's `ImagePullVolume`).
#[derive(Debug, Default, Deserialize)]
struct ImagePullVolume {
    #[serde(default)]
    metadata: HashMap<String, String>,
}

impl GuestPull {
    /// For a request with an `image_guest_pull` storage: pulls its image (or unpacks the pause
    /// bundle for the sandbox), points the spec's root at `<bundle>/rootfs`, and takes the
    /// storage out of the request (the rootfs is the container's, released with it). `None`
    /// for a request without one.
    pub async fn prepare(
        &self,
        cdh: &CdhClient,
        req: &mut CreateContainerRequest,
    ) -> Result<Option<Pulled>, AgentError> {
        let pulls: Vec<usize> = req
            .storages
            .iter()
            .enumerate()
            .filter(|(_, s)| s.driver == DRIVER)
            .map(|(i, _)| i)
            .collect();
        let index = match pulls.as_slice() {
            [] => return Ok(None),
            [one] => *one,
            _ => {
                return Err(AgentError::InvalidArgument(
                    "more than one image_guest_pull storage: a container has one root filesystem"
                        .to_owned(),
                ));
            }
        };
        let storage = &req.storages[index];
        let volume = image_pull_volume(&storage.driver_options)?;
        let id = req.container_id.clone();
        if !peerpod_text::is_safe_name(&id) || id.len() > 256 {
            return Err(AgentError::InvalidArgument(format!(
                "container_id {id:?} must be 1-256 letters, digits, '-', '_' or '.', not starting with '.'"
            )));
        }
        let bundle = self.base.join(&id);
        self.make_bundle(&bundle)?;
        let annotations = req.OCI.as_ref().map(|s| &s.Annotations);
        let sandbox = is_sandbox(&volume.metadata) || annotations.is_some_and(is_sandbox);
        let result = if sandbox {
            self.unpack_pause(&bundle)
        } else {
            let image = storage.source.clone();
            cdh.pull_image(&image, &bundle.display().to_string())
                .await
                .map_err(|reason| {
                    AgentError::FailedPrecondition(format!(
                        "storage image_guest_pull: cannot pull {}: {reason}",
                        crate::error::quoted(Path::new(&image))
                    ))
                })
                .map(|digest| {
                    tracing::info!(container = %id, image = %image, digest = %digest, "image pulled in the guest");
                    Pulled {
                        rootfs: bundle.join("rootfs"),
                        bundle: bundle.clone(),
                        mounted: true,
                        process: None,
                        manifest_digest: digest,
                    }
                })
        };
        let pulled = match result {
            Ok(pulled) => pulled,
            Err(e) => {
                // Whatever the pull left (a mount the CDH made before it failed, a copied
                // pause binary) goes with the bundle made above.
                crate::runtime::release_pulled_bundle(&bundle);
                return Err(e);
            }
        };
        req.storages.remove(index);
        req.OCI
            .mut_or_insert_default()
            .Root
            .mut_or_insert_default()
            .Path = pulled.rootfs.display().to_string();
        Ok(Some(pulled))
    }

    /// Makes `bundle` (its parent, the base, as needed): a bundle directory that already exists
    /// is refused, never reused — it is another container's, a leftover, or planted.
    fn make_bundle(&self, bundle: &Path) -> Result<(), AgentError> {
        std::fs::create_dir_all(&self.base).map_err(|e| {
            AgentError::internal(
                format!("cannot create {}", crate::error::quoted(&self.base)),
                e,
            )
        })?;
        match std::fs::create_dir(bundle) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                tracing::warn!(bundle = %bundle.display(), "the container bundle already exists (an earlier container's leftover, or put there by something else): not reused");
                Err(AgentError::AlreadyExists {
                    what: format!("the container bundle {}", crate::error::quoted(bundle)),
                })
            }
            Err(e) => Err(AgentError::internal(
                format!("cannot create {}", crate::error::quoted(bundle)),
                e,
            )),
        }
    }

    /// The pause bundle's `config.json` and pause binary under `bundle`; its process.
    fn unpack_pause(&self, bundle: &Path) -> Result<Pulled, AgentError> {
        let missing = |what: String| {
            AgentError::FailedPrecondition(format!(
                "the guest pause bundle {}: {what}; the pod VM image must carry it",
                crate::error::quoted(&self.pause_bundle)
            ))
        };
        let config_path = self.pause_bundle.join("config.json");
        let spec = oci_spec::runtime::Spec::load(&config_path)
            .map_err(|e| missing(format!("config.json is not readable ({e})")))?;
        let process = spec
            .process()
            .clone()
            .ok_or_else(|| missing("config.json has no process".to_owned()))?;
        let arg0 = process
            .args()
            .as_ref()
            .and_then(|a| a.first())
            .cloned()
            .ok_or_else(|| missing("config.json's process has no args".to_owned()))?;
        let relative = Path::new(&arg0)
            .strip_prefix("/")
            .ok()
            .filter(|p| p.components().all(|c| matches!(c, Component::Normal(_))))
            .ok_or_else(|| {
                missing(format!(
                    "the pause binary {arg0:?} is not an absolute path without '..'"
                ))
            })?
            .to_path_buf();
        let rootfs = bundle.join("rootfs");
        let target = rootfs.join(&relative);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| {
                AgentError::internal(format!("cannot create {}", crate::error::quoted(parent)), e)
            })?;
        }
        copy_new(&self.pause_bundle.join("rootfs").join(&relative), &target)
            .map_err(|e| missing(format!("cannot copy the pause binary ({e})")))?;
        std::fs::copy(&config_path, bundle.join("config.json"))
            .map_err(|e| missing(format!("cannot copy config.json ({e})")))?;
        Ok(Pulled {
            rootfs,
            bundle: bundle.to_path_buf(),
            mounted: false,
            process: Some(process),
            manifest_digest: String::new(),
        })
    }
}

fn image_pull_volume(options: &[String]) -> Result<ImagePullVolume, AgentError> {
    for option in options {
        if let Some((DRIVER, value)) = option.split_once('=') {
            if value.len() > MAX_DRIVER_OPTION {
                return Err(AgentError::InvalidArgument(format!(
                    "storage driver option {DRIVER} is longer than {MAX_DRIVER_OPTION} bytes"
                )));
            }
            return serde_json::from_str(value).map_err(|e| {
                AgentError::InvalidArgument(format!(
                    "storage driver option {DRIVER} is not {{\"metadata\": {{…}}}} JSON (line {}, column {})",
                    e.line(),
                    e.column()
                ))
            });
        }
    }
    Err(AgentError::InvalidArgument(format!(
        "storage {DRIVER}: the driver option {DRIVER}=<JSON> with the image information is missing"
    )))
}

fn is_sandbox(map: &HashMap<String, String>) -> bool {
    CONTAINER_TYPE_KEYS
        .iter()
        .any(|k| map.get(*k).is_some_and(|v| v == "sandbox"))
}

/// Copies `from` to a file that must not exist yet at `to` (O_CREAT|O_EXCL, which never follows
/// a symlink there): a bundle whose rootfs already holds something at that name (another
/// container's, with a planted symlink) is refused instead of written through.
fn copy_new(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut source = std::fs::File::open(from)?;
    let mut target = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o755)
        .open(to)?;
    std::io::copy(&mut source, &mut target)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerpod_protocols::kata::agent::Storage;

    fn request(id: &str, metadata: &str) -> CreateContainerRequest {
        let mut req = CreateContainerRequest {
            container_id: id.into(),
            ..Default::default()
        };
        req.storages.push(Storage {
            driver: DRIVER.into(),
            driver_options: vec![format!("{DRIVER}={metadata}")],
            source: "registry.example/app:v1".into(),
            mount_point: format!("/run/kata-containers/{id}/rootfs"),
            ..Default::default()
        });
        req
    }

    #[tokio::test]
    async fn the_sandbox_gets_the_pause_bundle_and_its_process() {
        let dir = std::env::temp_dir().join(format!("guest-pull-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let pause = dir.join("pause_bundle");
        std::fs::create_dir_all(pause.join("rootfs")).expect("dir");
        std::fs::write(pause.join("rootfs/pause"), b"\x7fELF-pause").expect("pause");
        std::fs::write(
            pause.join("config.json"),
            r#"{"ociVersion":"1.0.2","process":{"cwd":"/","args":["/pause"],"user":{"uid":65535,"gid":65535}},"root":{"path":"rootfs"}}"#,
        )
        .expect("config");
        let pull = GuestPull {
            base: dir.join("base"),
            pause_bundle: pause,
        };
        // No CDH is reachable: the sandbox never calls it.
        let cdh = CdhClient::new(
            "unix:///nonexistent/cdh.sock",
            std::time::Duration::from_secs(1),
        );
        let mut req = request(
            "sandbox1",
            r#"{"metadata":{"io.kubernetes.cri.container-type":"sandbox"}}"#,
        );
        let pulled = pull
            .prepare(&cdh, &mut req)
            .await
            .expect("pause")
            .expect("pulled");
        assert!(req.storages.is_empty());
        assert_eq!(
            std::fs::read(dir.join("base/sandbox1/rootfs/pause")).expect("copied"),
            b"\x7fELF-pause"
        );
        assert_eq!(
            req.OCI.Root.Path,
            dir.join("base/sandbox1/rootfs").display().to_string()
        );
        let process = pulled.process.expect("pause process");
        assert_eq!(process.args().as_deref(), Some(&["/pause".to_string()][..]));
        assert!(!pulled.mounted);

        // A workload container goes to the CDH: unreachable here, a clear error.
        let mut req = request("app1", r#"{"metadata":{}}"#);
        let e = pull.prepare(&cdh, &mut req).await.expect_err("no CDH");
        assert!(e.to_string().contains("cannot pull"), "{e}");
        // The bundle the failed pull made is gone again.
        assert!(!dir.join("base/app1").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A bundle that already exists with a symlink at the pause binary's name (a running
    /// container's rootfs, say): refused, nothing is written through the link, and the
    /// existing bundle is left as it was (it is not this request's to remove).
    #[tokio::test]
    async fn a_symlink_at_the_pause_binary_is_not_written_through() {
        let dir = std::env::temp_dir().join(format!("guest-pull-link-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let pause = dir.join("pause_bundle");
        std::fs::create_dir_all(pause.join("rootfs")).expect("dir");
        std::fs::write(pause.join("rootfs/pause"), b"\x7fELF-pause").expect("pause");
        std::fs::write(
            pause.join("config.json"),
            r#"{"ociVersion":"1.0.2","process":{"cwd":"/","args":["/pause"],"user":{"uid":65535,"gid":65535}},"root":{"path":"rootfs"}}"#,
        )
        .expect("config");
        let victim = dir.join("victim");
        std::fs::write(&victim, b"guest file").expect("victim");
        let rootfs = dir.join("base/w1/rootfs");
        std::fs::create_dir_all(&rootfs).expect("rootfs");
        std::os::unix::fs::symlink(&victim, rootfs.join("pause")).expect("planted link");
        let pull = GuestPull {
            base: dir.join("base"),
            pause_bundle: pause,
        };
        let cdh = CdhClient::new(
            "unix:///nonexistent/cdh.sock",
            std::time::Duration::from_secs(1),
        );
        let mut req = request(
            "w1",
            r#"{"metadata":{"io.kubernetes.cri.container-type":"sandbox"}}"#,
        );
        let e = pull.prepare(&cdh, &mut req).await.expect_err("refused");
        assert!(matches!(e, AgentError::AlreadyExists { .. }), "{e}");
        assert!(e.to_string().contains("bundle"), "{e}");
        assert_eq!(std::fs::read(&victim).expect("victim"), b"guest file");
        assert!(
            std::fs::symlink_metadata(rootfs.join("pause"))
                .expect("the link stays")
                .file_type()
                .is_symlink()
        );
        assert_eq!(req.storages.len(), 1, "the request is left as it was");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn hostile_storages_refused() {
        let pull = GuestPull::default();
        let cdh = CdhClient::new(
            "unix:///nonexistent/cdh.sock",
            std::time::Duration::from_secs(1),
        );
        for (id, metadata) in [
            ("../etc", r#"{"metadata":{}}"#),
            ("ok", "not json"),
            ("ok", r#"{"metadata":{"a":1}}"#),
        ] {
            let mut req = request(id, metadata);
            let e = pull.prepare(&cdh, &mut req).await.expect_err(id);
            assert!(matches!(e, AgentError::InvalidArgument(_)), "{e}");
        }
        let mut req = request("ok", r#"{"metadata":{}}"#);
        req.storages[0].driver_options.clear();
        assert!(pull.prepare(&cdh, &mut req).await.is_err());
        let mut req = request("ok", r#"{"metadata":{}}"#);
        let twice = req.storages[0].clone();
        req.storages.push(twice);
        assert!(pull.prepare(&cdh, &mut req).await.is_err());
        let mut none = CreateContainerRequest::default();
        assert!(pull.prepare(&cdh, &mut none).await.expect("none").is_none());
    }
}
