//! The puller: reference → sources (registries.conf) → manifest (platform from an index) →
//! configuration → layers fetched concurrently, each in one streaming pass (download, blob
//! digest, decompression, diff_id, unpack into the store) → `bundle/rootfs` mounted.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};

use sha2::{Digest as _, Sha256};
use tokio::sync::{Mutex, OnceCell, Semaphore, mpsc};

use crate::auth::{AuthFile, MAX_AUTH_FILE};
use crate::client::{Client, Session, backoff, describe};
use crate::config::ImageConfig;
use crate::digest::Digest;
use crate::error::ImageError;
use crate::manifest::{self, Fetched, Layer};
use crate::reference::Reference;
use crate::registries::{MAX_REGISTRIES_FILE, RegistryConfig, Source};
use crate::resources::{self, Resources};
use crate::store::Layers;
use crate::stream::{ChannelReader, Chunk, DiffIdMismatch, TarReader};

/// Chunks in flight between a layer's download and its unpacking (each up to ~16 KiB as
/// hyper delivers them): the download waits when the unpacking falls behind, so memory stays
/// flat whatever the layer's size.
const CHANNEL_CHUNKS: usize = 64;

/// What a pull did.
#[derive(Debug, Clone)]
pub struct PullOutcome {
    /// The digest the reference resolved to (the index's for a multi-platform image), as
    /// `image@digest` pins it.
    pub manifest_digest: Digest,
    /// The platform manifest's digest (the same as `manifest_digest` without an index).
    pub image_manifest_digest: Digest,
    /// The configuration's digest (the image ID).
    pub config_digest: Digest,
    /// Where it was pulled from (a mirror, the remapped location or the reference itself).
    pub source: String,
    /// The image's layers, lowest first.
    pub diff_ids: Vec<Digest>,
    /// Layers downloaded by this pull.
    pub fetched_layers: usize,
    /// Layers the store already had.
    pub reused_layers: usize,
    /// Compressed bytes downloaded.
    pub bytes: u64,
}

/// Pulls images into a layer store and mounts them in bundles.
pub struct Puller {
    config: ImageConfig,
    client: Client,
    resources: Arc<dyn Resources>,
    store: Arc<dyn Layers>,
    auth: OnceCell<Option<Arc<AuthFile>>>,
    registries: OnceCell<Arc<RegistryConfig>>,
    /// One lock per layer being fetched: two pulls sharing a layer fetch it once.
    in_flight: StdMutex<HashMap<Digest, Arc<Mutex<()>>>>,
    /// The layers each mounted bundle uses (for garbage collection).
    bundles: StdMutex<HashMap<PathBuf, Vec<Digest>>>,
}

impl Puller {
    /// A puller over `store`, fetching configured `kbs://` files through `resources`.
    pub fn new(
        config: ImageConfig,
        resources: Arc<dyn Resources>,
        store: Arc<dyn Layers>,
    ) -> Result<Self, ImageError> {
        let client = Client::new(&config)?;
        Ok(Self {
            config,
            client,
            resources,
            store,
            auth: OnceCell::new(),
            registries: OnceCell::new(),
            in_flight: StdMutex::new(HashMap::new()),
            bundles: StdMutex::new(HashMap::new()),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ImageConfig {
        &self.config
    }

    /// Pulls `image` and mounts it at `bundle/rootfs`.
    pub async fn pull(&self, image: &str, bundle: &Path) -> Result<PullOutcome, ImageError> {
        let reference = Reference::parse(image)?;
        check_bundle(bundle)?;
        self.check_signature_policy(&reference)?;
        let registries = self.registries().await?;
        let sources = registries
            .sources(&reference)
            .map_err(|e| ImageError::Config(e.to_string()))?;
        let auth = self.auth().await?;
        let mut errors = Vec::new();
        for source in &sources {
            let credential = auth
                .as_ref()
                .and_then(|a| a.lookup(&source.reference).cloned());
            let session = self.client.session(source, credential);
            match self.pull_from(&reference, source, &session).await {
                Ok(outcome) => {
                    self.store
                        .mount_rootfs(&outcome.diff_ids, bundle)
                        .map_err(|e| ImageError::Bundle {
                            path: bundle.to_path_buf(),
                            reason: format!("cannot mount the root filesystem: {e}"),
                        })?;
                    lock(&self.bundles).insert(bundle.to_path_buf(), outcome.diff_ids.clone());
                    tracing::info!(
                        image = %reference,
                        source = %outcome.source,
                        digest = %outcome.manifest_digest,
                        fetched = outcome.fetched_layers,
                        reused = outcome.reused_layers,
                        bytes = outcome.bytes,
                        bundle = %bundle.display(),
                        "image pulled"
                    );
                    return Ok(outcome);
                }
                Err(e) if e.is_final() || sources.len() == 1 => return Err(e),
                Err(e) => {
                    tracing::warn!(source = %source.reference, error = %e, "source failed, trying the next");
                    errors.push(format!("{}: {e}", source.reference));
                }
            }
        }
        Err(ImageError::AllSources {
            reference: reference.to_string(),
            errors,
        })
    }

    /// Unmounts `bundle/rootfs` and removes the layers no other bundle uses.
    pub fn release(&self, bundle: &Path) -> Result<(), ImageError> {
        let bundle_err = |reason: String| ImageError::Bundle {
            path: bundle.to_path_buf(),
            reason,
        };
        self.store
            .unmount_rootfs(bundle)
            .map_err(|e| bundle_err(format!("cannot unmount the root filesystem: {e}")))?;
        let in_use: Vec<Digest> = {
            let mut bundles = lock(&self.bundles);
            bundles.remove(bundle);
            let set: HashSet<Digest> = bundles.values().flatten().cloned().collect();
            set.into_iter().collect()
        };
        self.store
            .gc(&in_use)
            .map_err(|e| bundle_err(format!("cannot remove unused layers: {e}")))
    }

    fn check_signature_policy(&self, reference: &Reference) -> Result<(), ImageError> {
        if self.config.image_security_policy_uri.is_some()
            || self.config.image_security_policy.is_some()
        {
            // Fail closed: with a policy configured, no image is pulled unverified.
            return Err(ImageError::Signature {
                reference: reference.to_string(),
                reason: "an image security policy is configured (image_security_policy_uri) \
                         but signature verification is not built into this CDH yet; remove the \
                         policy only if unsigned images are acceptable"
                    .to_string(),
            });
        }
        Ok(())
    }

    async fn auth(&self) -> Result<Option<Arc<AuthFile>>, ImageError> {
        self.auth
            .get_or_try_init(|| async {
                let Some(uri) = &self.config.authenticated_registry_credentials_uri else {
                    return Ok(None);
                };
                let bytes = resources::fetch(
                    self.resources.as_ref(),
                    "authenticated_registry_credentials_uri",
                    uri,
                    MAX_AUTH_FILE,
                )
                .await?;
                let file = AuthFile::parse(&bytes)
                    .map_err(|e| ImageError::Config(format!("{uri}: {e}")))?;
                Ok(Some(Arc::new(file)))
            })
            .await
            .cloned()
    }

    async fn registries(&self) -> Result<Arc<RegistryConfig>, ImageError> {
        self.registries
            .get_or_try_init(|| async {
                let Some(uri) = &self.config.registry_configuration_uri else {
                    return Ok(Arc::new(RegistryConfig::default()));
                };
                let bytes = resources::fetch(
                    self.resources.as_ref(),
                    "registry_configuration_uri",
                    uri,
                    MAX_REGISTRIES_FILE,
                )
                .await?;
                let c = RegistryConfig::parse(&bytes)
                    .map_err(|e| ImageError::Config(format!("{uri}: {e}")))?;
                Ok(Arc::new(c))
            })
            .await
            .cloned()
    }

    async fn pull_from(
        &self,
        original: &Reference,
        source: &Source,
        session: &Session,
    ) -> Result<PullOutcome, ImageError> {
        let r = &source.reference;
        let what = format!("manifest of {r}");
        let (body, ct, dcd) = session
            .small(
                &format!("manifests/{}", r.manifest_ref()),
                Some(manifest::ACCEPT),
                manifest::MAX_MANIFEST,
                &what,
                r.digest.as_ref(),
            )
            .await?;
        let top = Digest::of(&body);
        if let Some(header) = dcd
            && r.digest.is_none()
            && Digest::parse(&header).is_ok_and(|d| d != top)
        {
            return Err(ImageError::DigestMismatch {
                what: format!("{what} (Docker-Content-Digest)"),
                expected: Digest::parse(&header).unwrap_or_else(|_| top.clone()),
                actual: top,
            });
        }
        let (image_manifest, image_manifest_digest) = match manifest::parse(&body, ct.as_deref())? {
            Fetched::Manifest(m) => (m, top.clone()),
            Fetched::Index(entries) => {
                let entry = manifest::choose_platform(&entries, manifest::guest_architecture())?;
                let digest =
                    Digest::parse(&entry.digest).map_err(|e| ImageError::Config(e.to_string()))?;
                let (body, ct, _) = session
                    .small(
                        &format!("manifests/{digest}"),
                        Some(manifest::ACCEPT),
                        manifest::MAX_MANIFEST,
                        &format!("platform manifest of {r}"),
                        Some(&digest),
                    )
                    .await?;
                match manifest::parse(&body, ct.as_deref())? {
                    Fetched::Manifest(m) => (m, digest),
                    Fetched::Index(_) => {
                        return Err(manifest::ManifestError {
                            what: "index",
                            reason: "an index entry is another index".into(),
                        }
                        .into());
                    }
                }
            }
        };
        let config_digest = Digest::parse(&image_manifest.config.digest)
            .map_err(|e| ImageError::Config(e.to_string()))?;
        let (config, _, _) = session
            .small(
                &format!("blobs/{config_digest}"),
                None,
                manifest::MAX_CONFIG,
                &format!("configuration of {r}"),
                Some(&config_digest),
            )
            .await?;
        let diff_ids = manifest::diff_ids(&config)?;
        let layers = manifest::layers(&image_manifest, &diff_ids)?;
        if let Some(l) = layers.iter().find(|l| l.encrypted) {
            return Err(ImageError::Encrypted {
                reference: original.to_string(),
                digest: l.digest.clone(),
                media_type: l.media_type.clone(),
                reason: "decrypting image layers is not built into this CDH yet; refused".into(),
            });
        }
        let (fetched, reused, bytes) = self.fetch_layers(session, &layers).await?;
        Ok(PullOutcome {
            manifest_digest: top,
            image_manifest_digest,
            config_digest,
            source: r.to_string(),
            diff_ids,
            fetched_layers: fetched,
            reused_layers: reused,
            bytes,
        })
    }

    /// Fetches the layers the store lacks, at most `max_concurrent_layer_downloads_per_image`
    /// at once; the first failure stops the others.
    async fn fetch_layers(
        &self,
        session: &Session,
        layers: &[Layer],
    ) -> Result<(usize, usize, u64), ImageError> {
        let mut seen = HashSet::new();
        let unique: Vec<Layer> = layers
            .iter()
            .filter(|l| seen.insert(l.diff_id.clone()))
            .cloned()
            .collect();
        let permits = Arc::new(Semaphore::new(
            self.config.max_concurrent_layer_downloads_per_image,
        ));
        let mut tasks = tokio::task::JoinSet::new();
        for layer in unique {
            let lock = {
                let mut map = lock(&self.in_flight);
                map.entry(layer.diff_id.clone()).or_default().clone()
            };
            let permits = permits.clone();
            let session = session.clone();
            let store = self.store.clone();
            tasks.spawn(async move {
                let _guard = lock.lock().await;
                if store.contains(&layer.diff_id) {
                    return Ok(None);
                }
                let _permit = permits
                    .acquire_owned()
                    .await
                    .map_err(|_| ImageError::Config("closed".into()))?;
                fetch_layer(&session, store, &layer).await.map(Some)
            });
        }
        let (mut fetched, mut reused, mut bytes) = (0, 0, 0);
        while let Some(joined) = tasks.join_next().await {
            let result =
                joined.map_err(|e| ImageError::Config(format!("a layer task failed: {e}")))?;
            match result? {
                Some(n) => {
                    fetched += 1;
                    bytes += n;
                }
                None => reused += 1,
            }
        }
        lock(&self.in_flight).retain(|_, l| Arc::strong_count(l) > 1);
        Ok((fetched, reused, bytes))
    }
}

/// One layer in one pass: the download task streams the blob (resuming with `Range` after a
/// dropped connection) into a channel; a blocking task decompresses it into the store.
async fn fetch_layer(
    session: &Session,
    store: Arc<dyn Layers>,
    layer: &Layer,
) -> Result<u64, ImageError> {
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    let diff_id = layer.diff_id.clone();
    let compression = layer.compression;
    let unpack = tokio::task::spawn_blocking(move || -> io::Result<u64> {
        let mut tar = TarReader::new(ChannelReader::new(rx), compression, diff_id.clone())?;
        store.install(&diff_id, &mut tar)?;
        tar.finish()?;
        Ok(tar.bytes)
    });
    let downloaded = download(session, layer, tx).await;
    let unpacked = unpack.await.map_err(|e| ImageError::Layer {
        diff_id: layer.diff_id.clone(),
        reason: format!("the unpacking task failed: {e}"),
    });
    // The download's error is the cause when both failed.
    downloaded?;
    match unpacked? {
        Ok(n) => {
            tracing::debug!(layer = %layer.digest, bytes = layer.size, unpacked = n, "layer installed");
            Ok(layer.size)
        }
        Err(e) => {
            if let Some(m) = e.get_ref().and_then(|i| i.downcast_ref::<DiffIdMismatch>()) {
                return Err(ImageError::DigestMismatch {
                    what: format!("uncompressed layer {}", layer.digest),
                    expected: m.expected.clone(),
                    actual: m.actual.clone(),
                });
            }
            Err(ImageError::Layer {
                diff_id: layer.diff_id.clone(),
                reason: e.to_string(),
            })
        }
    }
}

async fn download(
    session: &Session,
    layer: &Layer,
    tx: mpsc::Sender<Chunk>,
) -> Result<(), ImageError> {
    let what = format!("layer {}", layer.digest);
    let path = format!("blobs/{}", layer.digest);
    let t = session.transfer().clone();
    let mut hasher = Sha256::new();
    let mut received: u64 = 0;
    let mut attempt: u32 = 0;
    let mut last;
    loop {
        attempt += 1;
        let reply = session.get(&path, None, Some(received)).await?;
        let url = reply.url.clone();
        let mut response = reply.response;
        // A registry that ignores Range starts again from 0: skip what we already have.
        let mut skip = if received > 0 && response.status() != reqwest::StatusCode::PARTIAL_CONTENT
        {
            received
        } else {
            0
        };
        if received > 0 && skip == 0 && !content_range_starts_at(&response, received) {
            return Err(ImageError::Status {
                url,
                status: 206,
                detail: format!(": the resumed reply does not start at byte {received}"),
            });
        }
        loop {
            match response.chunk().await {
                Ok(Some(mut c)) => {
                    if skip > 0 {
                        let s = skip.min(c.len() as u64) as usize;
                        let _ = c.split_to(s);
                        skip -= s as u64;
                        if c.is_empty() {
                            continue;
                        }
                    }
                    received += c.len() as u64;
                    if received > layer.size {
                        return Err(ImageError::SizeMismatch {
                            what,
                            expected: layer.size,
                            actual: received,
                        });
                    }
                    hasher.update(&c);
                    if tx.send(Chunk::Data(c)).await.is_err() {
                        // The unpacking stopped: its error is reported by the caller.
                        return Ok(());
                    }
                }
                Ok(None) => {
                    last = format!("the reply ended after {received} of {} bytes", layer.size);
                    break;
                }
                Err(e) => {
                    last = describe(&e);
                    break;
                }
            }
        }
        if received == layer.size && skip == 0 {
            let actual = Digest::from_hasher(hasher);
            if actual != layer.digest {
                return Err(ImageError::DigestMismatch {
                    what,
                    expected: layer.digest.clone(),
                    actual,
                });
            }
            let _ = tx.send(Chunk::Verified).await;
            return Ok(());
        }
        if attempt >= t.attempts {
            return Err(ImageError::Transport {
                url,
                reason: last,
                attempts: attempt,
            });
        }
        tracing::warn!(layer = %layer.digest, received, attempt, error = %last, "layer download interrupted, resuming");
        tokio::time::sleep(backoff(&t, attempt)).await;
    }
}

fn content_range_starts_at(response: &reqwest::Response, offset: u64) -> bool {
    response
        .headers()
        .get(reqwest::header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes "))
        .and_then(|v| v.split('-').next())
        .and_then(|s| s.parse::<u64>().ok())
        == Some(offset)
}

fn check_bundle(bundle: &Path) -> Result<(), ImageError> {
    let ok = bundle.is_absolute()
        && bundle
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && bundle
            .to_str()
            .is_some_and(|s| !s.contains("/./") && !s.ends_with("/."));
    if !ok {
        return Err(ImageError::Bundle {
            path: bundle.to_path_buf(),
            reason: "expected an absolute path without '.' or '..' components".into(),
        });
    }
    Ok(())
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
