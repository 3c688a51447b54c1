//! The hub: one key broker client, the attestation agent connection, and the operations the
//! services expose. Transport-free, so the ttrpc server, the REST endpoint and tests share it.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::config::{CdhConfig, Credential, Kbc};
use crate::error::CdhError;
use crate::kbc::{AaClient, CcKbc, OfflineFs};
use crate::sealed::{Resources, Sealed};
use crate::secure_mount::{self, BlockDevice, KeySource};
use crate::uri::ResourceUri;

enum Source {
    Kbs(CcKbc),
    Offline(OfflineFs),
}

/// How often the CDH binary collects unused image layers ([`collect_layers_periodically`]).
pub const LAYER_COLLECTION_PERIOD: std::time::Duration = std::time::Duration::from_secs(60);

/// The event-log domain of image pulls (upstream's).
pub const PULL_IMAGE_DOMAIN: &str = "github.com/confidential-containers";

/// The confidential data hub.
pub struct Hub {
    config: CdhConfig,
    source: Arc<Option<Source>>,
    /// Made at the first PullImage (it creates the layer store under `[image] work_dir`).
    puller: tokio::sync::OnceCell<Arc<peerpod_image::Puller>>,
    /// Where the encrypted scratch space is looked for: the work directory when `cdh.toml`
    /// sets none and it is mounted by the first PullImage (the kata agent starts only after it
    /// is) from a dm-crypt device.
    scratch: crate::scratch::ScratchProbe,
}

/// Runs [`Hub::collect_layers`] every `period` (the binary uses [`LAYER_COLLECTION_PERIOD`]),
/// for as long as the returned future is polled. Failures are logged and the next round tries
/// again: the CDH keeps serving.
pub async fn collect_layers_periodically(hub: Arc<Hub>, period: std::time::Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(e) = hub.collect_layers().await {
            let mut text = e.to_string();
            peerpod_text::push_causes(&mut text, std::error::Error::source(&e));
            tracing::warn!(error = %text, "cannot collect unused image layers; trying again later");
        }
    }
}

/// The hub's key broker as the image puller's source of `kbs://` files and keys.
struct ImageResources(Arc<Option<Source>>);

#[async_trait::async_trait]
impl peerpod_image::Resources for ImageResources {
    async fn resource(&self, uri: &str) -> Result<Zeroizing<Vec<u8>>, String> {
        let uri = ResourceUri::parse(uri).map_err(|e| e.to_string())?;
        fetch_from(&self.0, &uri).await.map_err(|e| {
            let mut text = e.to_string();
            peerpod_text::push_causes(&mut text, std::error::Error::source(&e));
            text
        })
    }
}

async fn fetch_from(
    source: &Option<Source>,
    uri: &ResourceUri,
) -> Result<Zeroizing<Vec<u8>>, CdhError> {
    let value = match source {
        Some(Source::Kbs(k)) => k.get(uri).await?,
        Some(Source::Offline(o)) => o.get(uri)?,
        None => return Err(CdhError::NoKbc),
    };
    tracing::debug!(resource = %uri, "resource fetched");
    Ok(value)
}

impl Hub {
    /// Sets up the configured key broker client (nothing is contacted yet).
    pub fn new(config: CdhConfig) -> Result<Self, CdhError> {
        let source = match &config.kbc {
            Some(Kbc::CcKbc { url, cert }) => {
                let init_data = match &config.initdata {
                    Some(path) => {
                        Some(
                            std::fs::read_to_string(path).map_err(|source| CdhError::Io {
                                action: "read the initdata document",
                                path: path.clone(),
                                source,
                            })?,
                        )
                    }
                    None => None,
                };
                Some(Source::Kbs(CcKbc::new(
                    url,
                    cert.as_deref(),
                    config.insecure_http,
                    Arc::new(AaClient::new(&config.aa_socket, config.request_timeout)),
                    config.request_timeout,
                    config.kbs_timeout,
                    init_data,
                )?))
            }
            Some(Kbc::OfflineFs) => Some(Source::Offline(OfflineFs::load(
                &config.offline_fs_kbc_files,
            )?)),
            None => None,
        };
        Ok(Self {
            config,
            source: Arc::new(source),
            puller: tokio::sync::OnceCell::new(),
            scratch: crate::scratch::ScratchProbe::default(),
        })
    }

    /// Looks for the scratch space's mount at `dir` instead (tests).
    pub fn with_scratch_dir(mut self, dir: PathBuf) -> Self {
        self.scratch = crate::scratch::ScratchProbe::at(dir);
        self
    }

    /// Looks for the scratch space with `probe` (tests: a recorded sysfs).
    pub fn with_scratch_probe(mut self, probe: crate::scratch::ScratchProbe) -> Self {
        self.scratch = probe;
        self
    }

    /// `PullImage`: pulls `image_url` and mounts it at `bundle_path/rootfs`; answers the digest
    /// the reference resolved to.
    pub async fn pull_image(&self, image_url: &str, bundle_path: &str) -> Result<String, CdhError> {
        let image = |source| CdhError::Image {
            source: Box::new(source),
        };
        // The request is checked before the layer store is created.
        peerpod_image::Reference::parse(image_url).map_err(|e| image(e.into()))?;
        peerpod_image::pull::check_bundle(Path::new(bundle_path)).map_err(image)?;
        let puller = self
            .puller
            .get_or_try_init(|| async {
                let mut whole = self.config.clone();
                crate::scratch::log_choice(
                    whole.use_scratch_work_dir(&self.scratch).as_ref(),
                    &whole.image.work_dir,
                    &self.scratch.mount_point,
                );
                let config = whole.image;
                let work_dir = config.work_dir.clone();
                let shown = work_dir.clone();
                let store = tokio::task::spawn_blocking(move || {
                    peerpod_image::LayerDirStore::open(&work_dir, Default::default())
                })
                .await
                .map_err(|e| CdhError::Io {
                    action: "open the layer store in",
                    path: shown.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?
                .map_err(|source| CdhError::Io {
                    action: "open the layer store in",
                    path: shown.clone(),
                    source,
                })?;
                let resources = Arc::new(ImageResources(self.source.clone()));
                peerpod_image::Puller::new(config, resources, Arc::new(store))
                    .map(Arc::new)
                    .map_err(image)
            })
            .await?;
        let bundle = Path::new(bundle_path);
        let outcome = puller.pull(image_url, bundle).await.map_err(image)?;
        // As upstream: the platform manifest's digest, recorded in the attestation agent's
        // event log before the container can use the image.
        let digest = outcome.image_manifest_digest.to_string();
        if let Err(e) = self.measure_pull(image_url, &digest).await {
            // Not measured, not used: the root filesystem goes away again.
            if let Err(undo) = puller.release(bundle) {
                tracing::warn!(bundle = %bundle.display(), error = %undo, "cannot unmount after a failed measurement");
            }
            return Err(e);
        }
        Ok(digest)
    }

    /// Forgets the pulled root filesystems the kata-agent has unmounted (it does so itself when
    /// a container is removed, without telling the CDH) and removes the layers no mounted root
    /// filesystem uses from `[image] work_dir`. Every `PullImage` does it first too. Answers the
    /// number of root filesystems forgotten, or `None` when there was nothing to do (no image
    /// pulled yet, so no layer store) or a pull is in flight (the next collection does it).
    pub async fn collect_layers(&self) -> Result<Option<usize>, CdhError> {
        let Some(puller) = self.puller.get() else {
            return Ok(None);
        };
        puller.collect().await.map_err(|source| CdhError::Image {
            source: Box::new(source),
        })
    }

    /// Records `PullImage` `{"image", "digest"}` in the attestation agent's event log (domain
    /// `github.com/confidential-containers`, upstream's event). As upstream: without an agent
    /// socket, or when the agent answers that runtime measurements are not supported or not
    /// enabled, it is skipped with a warning; an agent that fails the request fails the pull.
    /// With `[peerpod] require_pull_measurement` (a cdh.toml in the initdata says so) every
    /// skip is a refusal instead: the image is used only once it is in the event log.
    async fn measure_pull(&self, image_url: &str, digest: &str) -> Result<(), CdhError> {
        let required = self.config.require_pull_measurement;
        let path = self
            .config
            .aa_socket
            .strip_prefix("unix://")
            .unwrap_or(&self.config.aa_socket);
        if !Path::new(path).exists() {
            if required {
                return Err(CdhError::Unmeasured {
                    reason: format!(
                        "no attestation agent at {} ([aa] aa_socket)",
                        self.config.aa_socket
                    ),
                });
            }
            tracing::warn!(socket = %self.config.aa_socket, "no attestation agent: the image pull is not recorded in the event log");
            return Ok(());
        }
        let content = serde_json::json!({"image": image_url, "digest": digest}).to_string();
        let aa = AaClient::new(&self.config.aa_socket, self.config.request_timeout);
        let result = aa
            .extend_runtime_measurement(PULL_IMAGE_DOMAIN, "PullImage", &content)
            .await?;
        match result.as_str() {
            "OK" => {
                tracing::info!(
                    image = image_url,
                    digest,
                    "image pull recorded in the event log"
                );
                Ok(())
            }
            other if required => Err(CdhError::Unmeasured {
                reason: match other {
                    "NOT_ENABLED" => "the attestation agent's event log is off (set \
                                      [eventlog_config] enable_eventlog = true in aa.toml)"
                        .to_owned(),
                    "NOT_SUPPORTED" => {
                        "this platform has no runtime measurement register".to_owned()
                    }
                    _ => "the attestation agent answered an unknown result".to_owned(),
                },
            }),
            other => {
                tracing::warn!(image = image_url, digest, result = %other, "the attestation agent did not record the image pull");
                Ok(())
            }
        }
    }

    /// Fetches the `[[credentials]]` and writes them (mode 0600). Any failure is an error: a pod
    /// VM without its credentials should not start.
    pub async fn init(&self) -> Result<(), CdhError> {
        for c in &self.config.credentials {
            self.write_credential(c)
                .await
                .map_err(|e| CdhError::Credential {
                    uri: c.resource_uri.to_string(),
                    path: c.path.clone(),
                    source: Box::new(e),
                })?;
        }
        Ok(())
    }

    async fn write_credential(&self, c: &Credential) -> Result<(), CdhError> {
        let path = checked_credential_path(&self.config.credentials_root, &c.path)?;
        let value = self.fetch(&c.resource_uri).await?;
        let dir = path.parent().ok_or_else(|| CdhError::CredentialPath {
            path: path.to_path_buf(),
            root: self.config.credentials_root.clone(),
        })?;
        std::fs::create_dir_all(dir).map_err(|source| CdhError::Io {
            action: "create",
            path: dir.to_path_buf(),
            source,
        })?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.tmp"));
        let write = || -> std::io::Result<()> {
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&value)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            CdhError::Io {
                action: "write",
                path: path.to_path_buf(),
                source,
            }
        })?;
        tracing::info!(resource = %c.resource_uri, path = %path.display(), "credential written");
        Ok(())
    }

    async fn fetch(&self, uri: &ResourceUri) -> Result<Zeroizing<Vec<u8>>, CdhError> {
        fetch_from(&self.source, uri).await
    }

    /// `GetResource`: `ResourcePath` is a `kbs://` URI.
    pub async fn get_resource(&self, uri: &str) -> Result<Zeroizing<Vec<u8>>, CdhError> {
        let uri = ResourceUri::parse(uri)?;
        self.fetch(&uri).await
    }

    /// `UnsealSecret`: `sealed.<JWS>` → the secret.
    pub async fn unseal(&self, secret: &[u8]) -> Result<Zeroizing<Vec<u8>>, CdhError> {
        let text = std::str::from_utf8(secret).map_err(|_| CdhError::Sealed {
            reason: "not UTF-8",
        })?;
        let verify = !self.config.skip_sealed_secret_verification;
        let sealed = Sealed::parse(text.trim(), verify)?;
        if verify {
            let kid = sealed.kid().unwrap_or_default().to_string();
            let jwk = self.verification_key(&kid).await?;
            sealed.verify(&jwk)?;
        }
        sealed.unseal(self).await
    }

    /// The verification key a sealed secret's `kid` names: a KBS resource among
    /// `sealed_secret_verification_keys` (checked before anything is fetched, so a secret cannot
    /// make the CDH fetch and echo another resource), or a file in `sealed_secret_key_dir`.
    async fn verification_key(&self, kid: &str) -> Result<Zeroizing<Vec<u8>>, CdhError> {
        if kid.starts_with("kbs://") {
            let uri = ResourceUri::parse(kid)?;
            if !self
                .config
                .sealed_secret_verification_keys
                .iter()
                .any(|p| p.matches(&uri))
            {
                return Err(CdhError::KeyNotAllowed {
                    kid: uri.to_string(),
                });
            }
            return self.fetch(&uri).await;
        }
        let plain = !kid.is_empty()
            && Path::new(kid)
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
        if !plain {
            return Err(CdhError::BadKid {
                kid: kid.chars().take(200).collect(),
                dir: self.config.sealed_secret_key_dir.clone(),
            });
        }
        let path = self.config.sealed_secret_key_dir.join(kid);
        std::fs::read(&path)
            .map(Zeroizing::new)
            .map_err(|source| CdhError::NoKeyFile { path, source })
    }

    /// `UnWrapKey` of the ocicrypt key-provider protocol: the request's annotation packet names
    /// a key-encryption key in the KBS (`kid`) and the wrapped layer key.
    pub async fn unwrap_key(&self, input: &[u8]) -> Result<Vec<u8>, CdhError> {
        let req = UnwrapRequest::parse(input)?;
        let kek = self.fetch(&req.kid).await?;
        let key = crate::sealed::aes_gcm_open(&kek, &req.iv, &req.wrapped, "wrapped_data")?;
        let reply = serde_json::json!({"keyunwrapresults": {"optsdata": key.as_slice()}});
        Ok(reply.to_string().into_bytes())
    }
}

impl Hub {
    /// `SecureMount`: sets up an encrypted volume at `mount_point` (see [`crate::secure_mount`]).
    pub async fn secure_mount(
        &self,
        volume_type: &str,
        options: &std::collections::HashMap<String, String>,
        mount_point: &str,
    ) -> Result<String, CdhError> {
        if !matches!(volume_type, "block-device" | "BlockDevice") {
            return Err(CdhError::Unsupported {
                what: "secure mount: volume_type",
                value: volume_type.to_string(),
                supported: "block-device",
            });
        }
        let dev = BlockDevice::parse(options, Path::new("/sys/dev/block"))?;
        let key = match &dev.key {
            KeySource::Random => secure_mount::random_key()?,
            KeySource::Named(k) => self.key_bytes(k).await?,
        };
        secure_mount::mount(
            &dev,
            &key,
            Path::new(mount_point),
            &self.config.luks_header_dir,
        )
        .await?;
        Ok(mount_point.to_string())
    }

    async fn key_bytes(&self, key: &str) -> Result<Zeroizing<Vec<u8>>, CdhError> {
        if key.starts_with(crate::sealed::PREFIX) {
            self.unseal(key.as_bytes()).await
        } else if key.starts_with("kbs://") {
            self.get_resource(key).await
        } else if let Some(path) = key.strip_prefix("file://") {
            std::fs::read(path)
                .map(Zeroizing::new)
                .map_err(|source| CdhError::Io {
                    action: "read the secure-mount key file",
                    path: path.into(),
                    source,
                })
        } else {
            Err(CdhError::Mount {
                reason: "key must be sealed.…, kbs://… or file://…",
            })
        }
    }
}

#[async_trait::async_trait]
impl Resources for Hub {
    async fn resource(&self, uri: &ResourceUri) -> Result<Zeroizing<Vec<u8>>, CdhError> {
        self.fetch(uri).await
    }
}

/// A parsed `UnWrapKey` request: which KBS key unwraps what.
#[derive(Debug)]
pub struct UnwrapRequest {
    /// The key-encryption key's resource.
    pub kid: ResourceUri,
    /// The AES-GCM nonce.
    pub iv: [u8; 12],
    /// The wrapped key with its tag.
    pub wrapped: Vec<u8>,
}

impl UnwrapRequest {
    /// Parses the key-provider JSON and its base64 annotation packet.
    pub fn parse(input: &[u8]) -> Result<Self, CdhError> {
        let bad = |reason: &'static str| CdhError::Unwrap { reason };
        #[derive(Deserialize)]
        struct Request {
            op: String,
            keyunwrapparams: UnwrapParams,
        }
        #[derive(Deserialize)]
        struct UnwrapParams {
            annotation: Option<String>,
        }
        #[derive(Deserialize)]
        struct Packet {
            kid: String,
            wrapped_data: String,
            iv: Option<String>,
            wrap_type: Option<String>,
            #[serde(default)]
            provider: Option<String>,
        }
        let req: Request = serde_json::from_slice(input)
            .map_err(|_| bad("not a key-provider request {op, keyunwrapparams}"))?;
        if req.op != "keyunwrap" {
            return Err(bad("op is not keyunwrap"));
        }
        let annotation = req
            .keyunwrapparams
            .annotation
            .ok_or_else(|| bad("keyunwrapparams.annotation is missing"))?;
        let std = base64::engine::general_purpose::STANDARD;
        let packet = std
            .decode(annotation.trim())
            .map_err(|_| bad("the annotation is not standard base64"))?;
        let packet: Packet = serde_json::from_slice(&packet)
            .map_err(|_| bad("the annotation is not a key packet {kid, wrapped_data, iv}"))?;
        if let Some(p) = &packet.provider
            && !p.eq_ignore_ascii_case("kbs")
        {
            return Err(CdhError::Unsupported {
                what: "UnWrapKey: provider",
                value: p.clone(),
                supported: "kbs",
            });
        }
        if let Some(w) = packet.wrap_type.as_deref()
            && w != "A256GCM"
        {
            return Err(CdhError::Unsupported {
                what: "UnWrapKey: wrap_type",
                value: w.to_string(),
                supported: "A256GCM",
            });
        }
        let kid = ResourceUri::parse(&packet.kid)?;
        let iv = std
            .decode(packet.iv.as_deref().unwrap_or_default())
            .map_err(|_| bad("iv is not standard base64"))?;
        let iv: [u8; 12] = iv
            .as_slice()
            .try_into()
            .map_err(|_| bad("iv is not 12 bytes"))?;
        let wrapped = std
            .decode(&packet.wrapped_data)
            .map_err(|_| bad("wrapped_data is not standard base64"))?;
        Ok(Self { kid, iv, wrapped })
    }
}

/// `path` if it is absolute, inside `root` and free of `.` and `..` components.
fn checked_credential_path<'a>(root: &Path, path: &'a Path) -> Result<&'a Path, CdhError> {
    // Textual segments: `Path::components` would quietly drop a `.` in the middle.
    let clean = path.is_absolute()
        && path.to_str().is_some_and(|p| {
            p.split('/')
                .skip(1)
                .all(|s| !s.is_empty() && s != "." && s != "..")
        });
    if !clean || !path.starts_with(root) || path == root {
        return Err(CdhError::CredentialPath {
            path: path.to_path_buf(),
            root: root.to_path_buf(),
        });
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch work directory with a stale bundle state (a mount that crashed before
    /// recording its bundle, a minute ago) and a layer only it references.
    fn stale_state(work: &Path, n: u8) -> (std::path::PathBuf, std::path::PathBuf) {
        let hex = format!("{:02x}", n).repeat(32);
        let layer = work.join("layers/sha256").join(&hex);
        std::fs::create_dir_all(&layer).expect("a layer directory");
        let state = work.join("overlay").join(&hex);
        std::fs::create_dir_all(&state).expect("a state directory");
        std::fs::write(state.join("layers"), format!("sha256:{hex}\n")).expect("references");
        let then = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        std::fs::File::open(&state)
            .and_then(|dir| dir.set_modified(then))
            .expect("backdated");
        (state, layer)
    }

    /// With no `[image] work_dir` in cdh.toml, the first pull makes the layer store on the
    /// scratch space when the probe finds the dm-crypt device there: a real tmpfs mount whose
    /// device number a recorded sysfs calls a crypt device (no device-mapper on the test
    /// host; `scratch::tests` and `tests/scratch_adoption.rs` check the refusals on the real
    /// sysfs). With a `work_dir`, the configured directory is used even so.
    #[tokio::test(flavor = "multi_thread")]
    async fn the_first_pull_puts_the_store_on_the_encrypted_scratch_space() {
        use std::os::unix::ffi::OsStrExt as _;
        let dir = peerpod_tests::scratch::ScratchDir::new("cdh-scratch-hub").expect("temp");
        let scratch = dir.path().join("image");
        std::fs::create_dir_all(&scratch).expect("scratch dir");
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "/dev/mapper/cdh-test"])
            .arg(&scratch)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            assert!(std::env::var_os("CI").is_none(), "cannot mount a tmpfs");
            eprintln!("SKIPPED: cannot mount a tmpfs (not root?)");
            return;
        }
        let umount = || {
            let _ = std::process::Command::new("umount").arg(&scratch).status();
        };
        let real = std::fs::canonicalize(&scratch).expect("resolved");
        let text = std::fs::read(crate::scratch::MOUNTINFO).expect("mountinfo");
        let mounts = crate::scratch::parse_mountinfo(&text).expect("mountinfo parses");
        let Some(&(major, minor)) = mounts
            .iter()
            .rev()
            .find(|m| m.mount_point == real.as_os_str().as_bytes())
            .map(|m| &m.device)
        else {
            umount();
            panic!("the tmpfs is not in mountinfo");
        };
        let sys = dir.path().join("sys");
        let block = sys.join("block/dm-9");
        std::fs::create_dir_all(block.join("dm")).expect("sysfs");
        std::fs::write(block.join("dev"), format!("{major}:{minor}\n")).expect("dev");
        std::fs::write(block.join("dm/name"), "cdh-test\n").expect("name");
        std::fs::write(block.join("dm/uuid"), "CRYPT-LUKS2-00-cdh-test\n").expect("uuid");
        std::fs::create_dir_all(sys.join("dev/block")).expect("sysfs");
        std::os::unix::fs::symlink(
            "../../block/dm-9",
            sys.join(format!("dev/block/{major}:{minor}")),
        )
        .expect("link");
        let probe = crate::scratch::ScratchProbe {
            sys,
            ..crate::scratch::ScratchProbe::at(scratch.clone())
        };

        let unset = CdhConfig::parse("").expect("parse");
        let hub = Hub::new(unset)
            .expect("a hub without a KBC")
            .with_scratch_probe(probe.clone());
        let pull = hub.pull_image("127.0.0.1:1/x/y:v1", "/run/kata-containers/cdh-scratch/b");
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), pull).await;
        let on_scratch = scratch.join("overlay").is_dir();

        let explicit = dir.path().join("configured");
        let set = CdhConfig::parse(&format!("[image]\nwork_dir = \"{}\"\n", explicit.display()))
            .expect("parse");
        let hub = Hub::new(set)
            .expect("a hub without a KBC")
            .with_scratch_probe(probe);
        let pull = hub.pull_image("127.0.0.1:1/x/y:v1", "/run/kata-containers/cdh-scratch/c");
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), pull).await;
        let on_configured = explicit.join("overlay").is_dir();
        umount();
        assert!(on_scratch, "the store is not on the scratch space");
        assert!(on_configured, "the configured work_dir was not used");
    }

    /// On demand, then on the timer: the timer collects, survives failed rounds (counted from
    /// its own warnings, with nothing deleted meanwhile) and collects again once it can.
    #[tokio::test(flavor = "multi_thread")]
    async fn layers_are_collected_on_demand_and_on_the_timer_once_a_pull_made_the_store() {
        use tracing::instrument::WithSubscriber as _;
        let work = std::env::temp_dir().join(format!("cdh-collect-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        let mut config = CdhConfig::default();
        config.image.work_dir = work.clone();
        let hub = Arc::new(Hub::new(config).expect("a hub without a KBC"));
        // No pull yet: no store, nothing created.
        assert_eq!(hub.collect_layers().await.expect("nothing to do"), None);
        assert!(!work.exists());
        // A pull that fails (nothing listens on port 1) still makes the store.
        let pull = hub.pull_image("127.0.0.1:1/x/y:v1", "/run/kata-containers/cdh-collect/b");
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), pull).await;
        assert!(work.join("overlay").is_dir());

        let (state, layer) = stale_state(&work, 0xab);
        assert_eq!(hub.collect_layers().await.expect("collected"), Some(1));
        assert!(!state.exists() && !layer.exists());

        let (state, layer) = stale_state(&work, 0xcd);
        let failures = Arc::new(FailureCount::default());
        let timer = tokio::spawn(
            collect_layers_periodically(hub.clone(), std::time::Duration::from_millis(50))
                .with_subscriber(tracing::Dispatch::from(Arc::clone(&failures))),
        );
        let wait_for = |what: &'static str, done: Box<dyn Fn() -> bool + Send>| async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !done() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "never happened: {what}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        };
        let gone = layer.clone();
        wait_for("the timer collects", Box::new(move || !gone.exists())).await;
        assert!(!state.exists(), "the bundle state went with its layer");
        assert_eq!(failures.get(), 0);

        // A store the timer cannot read (a references file that does not parse): each round
        // fails and is logged, no layer is deleted (the unreadable bundle might use it; the
        // stale bundle state itself may go), and the timer goes on: two failed rounds, the
        // stale layer still there, then the store repaired and the very same timer collects.
        let garbled = work.join("overlay").join("f".repeat(64));
        std::fs::create_dir_all(&garbled).expect("a state directory");
        std::fs::write(garbled.join("layers"), b"not a diff ID\n").expect("garbage");
        let (state, layer) = stale_state(&work, 0xef);
        let counted = Arc::clone(&failures);
        wait_for("two failed rounds", Box::new(move || counted.get() >= 2)).await;
        assert!(layer.exists(), "a failed collection deleted a layer");
        std::fs::remove_dir_all(&garbled).expect("repaired");
        let gone = layer.clone();
        wait_for(
            "the timer collects after its failures",
            Box::new(move || !gone.exists()),
        )
        .await;
        assert!(!state.exists());
        assert!(!timer.is_finished(), "the timer stopped");
        timer.abort();
        let _ = std::fs::remove_dir_all(&work);
    }

    /// Counts the timer's "cannot collect" warnings (a subscriber for the timer's task only).
    #[derive(Default)]
    struct FailureCount(std::sync::atomic::AtomicUsize);

    impl FailureCount {
        fn get(&self) -> usize {
            self.0.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    struct Message(String);

    impl tracing::field::Visit for Message {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.0 = format!("{value:?}");
            }
        }
    }

    impl tracing::Subscriber for FailureCount {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            let mut message = Message(String::new());
            event.record(&mut message);
            if *event.metadata().level() == tracing::Level::WARN
                && message.0.contains("cannot collect unused image layers")
            {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    #[test]
    fn credential_paths() {
        let root = Path::new("/run/confidential-containers/cdh");
        for ok in [
            "/run/confidential-containers/cdh/kbs/a.json",
            "/run/confidential-containers/cdh/x",
        ] {
            assert!(checked_credential_path(root, Path::new(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "/run/confidential-containers/cdh",
            "/run/confidential-containers/cdh/../etc/passwd",
            "/run/confidential-containers/cdh/./x",
            "/run/confidential-containers/cdhx/y",
            "relative/x",
            "/etc/shadow",
        ] {
            assert!(
                checked_credential_path(root, Path::new(bad)).is_err(),
                "{bad}"
            );
        }
    }
}
