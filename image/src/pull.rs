//! The puller: reference → sources (registries.conf) → manifest (platform from an index) →
//! configuration → layers fetched concurrently, each in one streaming pass (download, blob
//! digest, decompression, diff_id, unpack into the store) → `bundle/rootfs` mounted.

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};

use bytes::Bytes;
use peerpod_image_crypt::{LayerDecryptor, LayerKey};
use peerpod_image_layer::ChargeHook;
use peerpod_image_signature::{LookasideConfig, Policy};
use sha2::{Digest as _, Sha256};
use tokio::sync::{Mutex, OnceCell, RwLock, Semaphore, mpsc};
use zeroize::Zeroizing;

use crate::auth::{AuthFile, MAX_AUTH_FILE};
use crate::budget::{Budget, Metered, StoreUsage};
use crate::client::{Client, Session, backoff, describe};
use crate::config::ImageConfig;
use crate::digest::Digest;
use crate::error::ImageError;
use crate::manifest::{self, Fetched, Layer};
use crate::origin::{Origin, Origins, Record};
use crate::reference::Reference;
use crate::registries::{MAX_REGISTRIES_FILE, RegistryConfig, Source};
use crate::resources::{self, Resources};
use crate::store::Layers;
use crate::stream::{ChannelReader, Chunk, TarReader};
use crate::verify::{self, Keys, Verifier};

/// Chunks in flight between a layer's download and its unpacking (each up to ~16 KiB as
/// hyper delivers them): the download waits when the unpacking falls behind, so memory stays
/// flat whatever the layer's size.
const CHANNEL_CHUNKS: usize = 16;

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
    /// Layers downloaded by this pull (installed, or verified when the store had a copy this
    /// pull was not entitled to reuse unverified).
    pub fetched_layers: usize,
    /// Layers the store already had and this pull reused without downloading them.
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
    verifier: OnceCell<Option<Arc<Verifier>>>,
    /// One lock per layer being fetched: two pulls sharing a layer fetch it once. An entry
    /// lives while a layer task holds it ([`Claim`]), whatever way the task ends.
    in_flight: InFlight,
    /// Where installed layers came from ([`crate::origin`]).
    origins: Arc<Origins>,
    /// Unpacked bytes of the layers in the store, for `max_layer_store_bytes`.
    store_used: StoreUsage,
    /// Pulls hold it shared from their first look at the store to their mount; collections
    /// take it exclusively without waiting, so a layer a pull found installed (and will not
    /// fetch) is never deleted before that pull mounts it.
    collecting: RwLock<()>,
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
            client,
            resources,
            store,
            auth: OnceCell::new(),
            registries: OnceCell::new(),
            verifier: OnceCell::new(),
            in_flight: Arc::default(),
            origins: Arc::new(Origins::new(&config.work_dir)),
            store_used: StoreUsage::default(),
            collecting: RwLock::new(()),
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ImageConfig {
        &self.config
    }

    /// Layers being fetched right now, by every pull (diagnostics; 0 when no pull runs).
    pub fn layers_in_flight(&self) -> usize {
        lock(&self.in_flight).len()
    }

    /// Pulls `image` and mounts it at `bundle/rootfs`. `/b`, `/b/` and `//b` are the same
    /// bundle.
    pub async fn pull(&self, image: &str, bundle: &Path) -> Result<PullOutcome, ImageError> {
        let reference = Reference::parse(image)?;
        let bundle = &normalise_bundle(bundle)?;
        // Before this pull looks at the store: layers of containers removed since are deleted
        // now, not reused.
        if let Err(e) = self.collect().await {
            tracing::warn!(error = %e, "cannot collect unused layers before the pull; continuing");
        }
        let mine = Mine::default();
        // A pull dropped half-way (its caller gave up) abandons what it installed too; the
        // next collection removes it.
        let mut guard = AbandonOnDrop {
            mine: &mine,
            store: self.store.as_ref(),
            armed: true,
        };
        let result = {
            let _pulling = self.collecting.read().await;
            self.pull_sources(&reference, bundle, &mine).await
        };
        guard.armed = false;
        if result.is_err() {
            // What this pull installed will not be mounted by it: no longer kept as fresh,
            // collected now unless another bundle uses it.
            mine.settled().await;
            let abandoned = mine.abandon();
            if !abandoned.is_empty() {
                self.store.abandon(&abandoned);
                if let Err(e) = self.collect().await {
                    tracing::warn!(error = %e, "cannot collect the layers of the failed pull");
                }
            }
        }
        result
    }

    /// [`Puller::pull`] from each source in turn, under the shared collection lock.
    async fn pull_sources(
        &self,
        reference: &Reference,
        bundle: &Path,
        mine: &Mine,
    ) -> Result<PullOutcome, ImageError> {
        let verifier = self.verifier().await?;
        let registries = self.registries().await?;
        let sources = registries
            .sources(reference)
            .map_err(|e| ImageError::Config(e.to_string()))?;
        let auth = self.auth().await?;
        let mut errors = Vec::new();
        for source in &sources {
            let credential = auth
                .as_ref()
                .and_then(|a| a.lookup(&source.reference).cloned());
            let had_credential = credential.is_some();
            let session = self.client.session(source, credential);
            // The policy judges the image this source serves (`source.logical`): a short name
            // found on a search registry, or resolved through an alias, is that registry's image,
            // never Docker Hub's `library/` name as the reference parsed. Credentials stay those
            // of the registry actually contacted (`source.reference`), as containers/image.
            let mut result = self
                .pull_from(&source.logical, source, &session, verifier.as_deref(), mine)
                .await;
            // As image-rs: a registry that refuses the configured credentials (an expired
            // token, say) may still serve the image anonymously, when the configuration says so.
            if matches!(result, Err(ImageError::Unauthorized { .. }))
                && had_credential
                && self.config.anonymous_fallback_on_unauthorized
            {
                tracing::warn!(source = %source.reference, "the registry refused the configured credentials; retrying anonymously (anonymous_fallback_on_unauthorized)");
                let anonymous = self.client.session(source, None);
                result = self
                    .pull_from(
                        &source.logical,
                        source,
                        &anonymous,
                        verifier.as_deref(),
                        mine,
                    )
                    .await;
            }
            match result {
                Ok(outcome) => {
                    self.store
                        .mount_rootfs(&mount_order(&outcome.diff_ids), bundle)
                        .map_err(|e| ImageError::Bundle {
                            path: bundle.to_path_buf(),
                            reason: format!("cannot mount the root filesystem: {e}"),
                        })?;
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

    /// Unmounts `bundle/rootfs` and removes the layers no other bundle uses (unless a pull is
    /// in flight: then the next collection does).
    pub fn release(&self, bundle: &Path) -> Result<(), ImageError> {
        let bundle = &normalise_bundle(bundle)?;
        let bundle_err = |reason: String| ImageError::Bundle {
            path: bundle.to_path_buf(),
            reason,
        };
        self.store
            .unmount_rootfs(bundle)
            .map_err(|e| bundle_err(format!("cannot unmount the root filesystem: {e}")))?;
        let Ok(_collecting) = self.collecting.try_write() else {
            tracing::debug!(
                "a pull is in flight: unused layers are removed at the next collection"
            );
            return Ok(());
        };
        self.store
            .gc()
            .map_err(|e| bundle_err(format!("cannot remove unused layers: {e}")))?;
        self.forget_removed_layers();
        Ok(())
    }

    /// What the layers in the store take: their origin records' sizes, and for an installed
    /// layer without one (its record could not be written: a full disk, say) its measure.
    fn store_total(&self) -> u64 {
        let recorded = self.origins.total_bytes(|d| self.store.contains(d));
        self.store
            .installed()
            .iter()
            .filter(|d| self.origins.read(d).and_then(|r| r.bytes).is_none())
            .filter_map(|d| {
                let measured = self.store.usage(d);
                tracing::debug!(diff_id = %d, bytes = ?measured, "an installed layer without a recorded size, measured");
                measured
            })
            .fold(recorded, u64::saturating_add)
    }

    /// After a GC (under the exclusive lock): drops the origin records of removed layers and
    /// makes the next pull count the store's bytes again.
    fn forget_removed_layers(&self) {
        if let Err(e) = self.origins.prune(|d| self.store.contains(d)) {
            tracing::warn!(error = %e, "cannot remove the origin records of removed layers");
        }
        *lock(&self.store_used) = None;
    }

    /// Forgets the bundles whose root filesystem was unmounted by someone else (the kata-agent
    /// unmounts it when the container is removed), then removes the layers no mounted bundle
    /// uses. Every pull starts with it; the CDH also runs it on a timer. Answers the number of
    /// bundles forgotten, or `None` when a pull is in flight (skipped: the next one collects).
    pub async fn collect(&self) -> Result<Option<usize>, ImageError> {
        let Ok(_collecting) = self.collecting.try_write() else {
            return Ok(None);
        };
        let store = self.store.clone();
        let reaped = tokio::task::spawn_blocking(move || {
            let reaped = store.reap_unmounted()?;
            store.gc()?;
            Ok::<_, std::io::Error>(reaped)
        })
        .await
        .map_err(|e| {
            ImageError::Store(format!(
                "the collection of unused layers did not finish: {e}"
            ))
        })?
        .map_err(|e| ImageError::Store(format!("cannot collect unused layers: {e}")))?;
        self.forget_removed_layers();
        if reaped > 0 {
            tracing::info!(
                bundles = reaped,
                "root filesystems unmounted elsewhere were forgotten and their unused layers removed"
            );
        }
        Ok(Some(reaped))
    }

    /// The signature policy (`image_security_policy_uri`, else `image_security_policy`) and
    /// the lookaside configuration (`sigstore_config_uri`, else `sigstore_config`).
    async fn verifier(&self) -> Result<Option<Arc<Verifier>>, ImageError> {
        self.verifier
            .get_or_try_init(|| async {
                let c = &self.config;
                let policy = match (&c.image_security_policy_uri, &c.image_security_policy) {
                    (Some(uri), _) => Zeroizing::new(
                        resources::fetch(
                            self.resources.as_ref(),
                            "image_security_policy_uri",
                            uri,
                            peerpod_image_signature::MAX_POLICY_BYTES,
                        )
                        .await?
                        .to_vec(),
                    ),
                    (None, Some(text)) => Zeroizing::new(text.as_bytes().to_vec()),
                    (None, None) => return Ok(None),
                };
                let policy = Policy::parse(&policy)
                    .map_err(|e| ImageError::Config(format!("image security policy: {e}")))?;
                let lookaside = match (&c.sigstore_config_uri, &c.sigstore_config) {
                    (Some(uri), _) => Some(
                        resources::fetch(
                            self.resources.as_ref(),
                            "sigstore_config_uri",
                            uri,
                            1 << 20,
                        )
                        .await?
                        .to_vec(),
                    ),
                    (None, Some(text)) => Some(text.as_bytes().to_vec()),
                    (None, None) => None,
                };
                let lookaside = match lookaside {
                    Some(bytes) => Some(
                        LookasideConfig::parse(&bytes)
                            .map_err(|e| {
                                ImageError::Config(format!("sigstore configuration: {e}"))
                            })?
                            .with_http_client(self.client.http().clone()),
                    ),
                    None => None,
                };
                Ok(Some(Arc::new(Verifier { policy, lookaside })))
            })
            .await
            .cloned()
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

    /// Pulls from one `source`; `original` is the image it serves (`source.logical`): the name
    /// the signature policy judges and errors name.
    async fn pull_from(
        &self,
        original: &Reference,
        source: &Source,
        session: &Session,
        verifier: Option<&Verifier>,
        mine: &Mine,
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
        // The policy judges what the reference resolved to, before anything else is fetched.
        if let Some(v) = verifier {
            verify::check(v, self.resources.clone(), original, r, session, &top).await?;
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
        let budget = Arc::new(Budget::start(
            &self.config,
            self.store_used.clone(),
            || self.store_total(),
        )?);
        let (fetched, reused, bytes) = self
            .fetch_layers(original, session, &layers, budget, mine)
            .await?;
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

    /// Fetches the layers the store lacks (or holds from an origin this pull cannot vouch
    /// for), at most `max_concurrent_layer_downloads_per_image` at once; the first failure
    /// stops the others.
    async fn fetch_layers(
        &self,
        original: &Reference,
        session: &Session,
        layers: &[Layer],
        budget: Arc<Budget>,
        mine: &Mine,
    ) -> Result<(usize, usize, u64), ImageError> {
        let mut seen = HashSet::new();
        let unique: Vec<Layer> = layers
            .iter()
            .filter(|l| seen.insert(l.diff_id.clone()))
            .cloned()
            .collect();
        let slots = self.config.max_concurrent_layer_downloads_per_image;
        let permits = Arc::new(Semaphore::new(slots));
        // Unwrapping keys (a KBS request each) is bounded like the downloads.
        let key_permits = Arc::new(Semaphore::new(slots));
        let mut tasks = tokio::task::JoinSet::new();
        for layer in unique {
            let claim = Claim::new(&self.in_flight, &layer.diff_id);
            let job = LayerJob {
                session: session.clone(),
                store: self.store.clone(),
                resources: self.resources.clone(),
                origins: self.origins.clone(),
                budget: budget.clone(),
                image: original.to_string(),
                layer,
                mine: mine.clone(),
            };
            let permits = permits.clone();
            let key_permits = key_permits.clone();
            tasks.spawn(async move {
                let _held = claim.hold().await;
                job.run(&key_permits, &permits).await
            });
        }
        let (mut fetched, mut reused, mut bytes) = (0, 0, 0);
        while let Some(joined) = tasks.join_next().await {
            let result = joined
                .map_err(|e| ImageError::Config(format!("a layer task failed: {e}")))
                .and_then(|r| r);
            match result {
                Ok(Some(n)) => {
                    fetched += 1;
                    bytes += n;
                }
                Ok(None) => reused += 1,
                Err(e) => {
                    // The others stop here, not in the background after the pull answered.
                    tasks.shutdown().await;
                    return Err(e);
                }
            }
        }
        Ok((fetched, reused, bytes))
    }
}

type InFlight = Arc<StdMutex<HashMap<Digest, Arc<Mutex<()>>>>>;

/// The layers one pull installed, for [`Layers::abandon`] when the pull fails, and its
/// unpacking threads still running. Such a thread outlives a cancelled layer task (it stops
/// when its download's channel closes): a failed pull waits for them before it answers, so
/// nothing half-unpacked is left behind it; one that finishes installing after the pull gave
/// up abandons its layer itself.
#[derive(Clone)]
struct Mine(
    Arc<StdMutex<MineState>>,
    Arc<tokio::sync::watch::Sender<usize>>,
);

impl Default for Mine {
    fn default() -> Self {
        Self(Arc::default(), Arc::new(tokio::sync::watch::Sender::new(0)))
    }
}

/// Abandons what a pull installed when the pull is dropped before it answers.
struct AbandonOnDrop<'a> {
    mine: &'a Mine,
    store: &'a dyn Layers,
    armed: bool,
}

impl Drop for AbandonOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            let abandoned = self.mine.abandon();
            if !abandoned.is_empty() {
                self.store.abandon(&abandoned);
            }
        }
    }
}

/// One running unpacking thread of a pull, counted in its [`Mine`] while it lives.
struct Running(Arc<tokio::sync::watch::Sender<usize>>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

#[derive(Default)]
struct MineState {
    failed: bool,
    installed: Vec<Digest>,
}

impl Mine {
    /// Notes `diff_id` as installed by this pull; `false` when the pull already failed.
    fn installed(&self, diff_id: &Digest) -> bool {
        let mut state = lock(&self.0);
        if !state.failed {
            state.installed.push(diff_id.clone());
        }
        !state.failed
    }

    /// Counts an unpacking thread about to start.
    fn running(&self) -> Running {
        self.1.send_modify(|n| *n += 1);
        Running(self.1.clone())
    }

    /// Waits for the pull's unpacking threads to end.
    async fn settled(&self) {
        let _ = self.1.subscribe().wait_for(|n| *n == 0).await;
    }

    /// Marks the pull failed; answers what it installed.
    fn abandon(&self) -> Vec<Digest> {
        let mut state = lock(&self.0);
        state.failed = true;
        std::mem::take(&mut state.installed)
    }
}

/// A layer task's entry in the in-flight map, removed when the last task holding it ends
/// (success, error, or aborted with its pull).
struct Claim {
    map: InFlight,
    diff_id: Digest,
    lock: Option<Arc<Mutex<()>>>,
}

impl Claim {
    fn new(map: &InFlight, diff_id: &Digest) -> Self {
        let lock = lock(map).entry(diff_id.clone()).or_default().clone();
        Self {
            map: map.clone(),
            diff_id: diff_id.clone(),
            lock: Some(lock),
        }
    }

    /// Waits for the other pulls fetching this layer.
    async fn hold(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        Some(self.lock.clone()?.lock_owned().await)
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        // Clones are made under the map's lock only, so the count is exact here.
        let mut map = lock(&self.map);
        drop(self.lock.take());
        if map
            .get(&self.diff_id)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            map.remove(&self.diff_id);
        }
    }
}

/// What happens to one layer of a pull.
struct LayerJob {
    session: Session,
    store: Arc<dyn Layers>,
    resources: Arc<dyn Resources>,
    origins: Arc<Origins>,
    budget: Arc<Budget>,
    image: String,
    layer: Layer,
    mine: Mine,
}

impl LayerJob {
    /// `None`: the store's copy is reused; `Some(bytes downloaded)` otherwise.
    async fn run(
        self,
        key_permits: &Semaphore,
        permits: &Semaphore,
    ) -> Result<Option<u64>, ImageError> {
        let layer = &self.layer;
        // The key first, whatever the store holds: an encrypted layer is never used by a pull
        // that cannot unwrap its key, and a layer that cannot be decrypted is not downloaded.
        let key = if layer.encrypted {
            let _permit = key_permits
                .acquire()
                .await
                .map_err(|_| ImageError::Config("the key slots were closed".into()))?;
            let key =
                peerpod_image_crypt::layer_key(&layer.annotations, &Keys(self.resources.clone()))
                    .await
                    .map_err(|e| ImageError::Encrypted {
                        reference: self.image.clone(),
                        digest: layer.digest.clone(),
                        media_type: layer.media_type.clone(),
                        reason: e.to_string(),
                    })?;
            Some(key)
        } else {
            None
        };
        let origin = match &key {
            Some(k) => Origin::Encrypted {
                blob: layer.digest.clone(),
                key: self.origins.key_check(k),
            },
            None => Origin::Plain,
        };
        let installed = self.store.contains(&layer.diff_id);
        let record = installed
            .then(|| self.origins.read(&layer.diff_id))
            .flatten();
        if record.as_ref().is_some_and(|r| r.permits(&origin)) {
            return Ok(None);
        }
        if installed {
            // Decrypted for another image (or of unknown origin): this pull proves it can
            // produce the content before it mounts the shared copy.
            tracing::info!(layer = %layer.digest, diff_id = %layer.diff_id, "the store's copy of this layer was not obtained as this image obtains it; verifying it by downloading");
        }
        let _permit = permits
            .acquire()
            .await
            .map_err(|_| ImageError::Config("the download slots were closed".into()))?;
        let install = (!installed).then(|| Install {
            origins: self.origins.clone(),
            origin: origin.clone(),
            mine: self.mine.clone(),
        });
        let (downloaded, unpacked) = fetch_layer(
            &self.session,
            self.store.clone(),
            layer,
            key.as_ref(),
            &self.image,
            self.budget.clone(),
            install,
        )
        .await?;
        if installed {
            // Verified: this pull's origin joins the record (an install wrote its own).
            let mut record = record.unwrap_or_default();
            record.bytes = record.bytes.or(Some(unpacked));
            record.add(origin);
            write_record(&self.origins, &layer.diff_id, &record);
        }
        Ok(Some(downloaded))
    }
}

/// Writes a layer's origin record; a failure is logged (the layer then counts as of unknown
/// origin: verified at its next use).
fn write_record(origins: &Origins, diff_id: &Digest, record: &Record) {
    if let Err(e) = origins.write(diff_id, record) {
        tracing::warn!(diff_id = %diff_id, error = %e, "cannot record where the layer came from");
    }
}

/// What the unpacking thread of an install needs besides the store.
struct Install {
    origins: Arc<Origins>,
    origin: Origin,
    mine: Mine,
}

/// One layer in one pass: the download task streams the blob (resuming with `Range` after a
/// dropped connection) into a channel; a blocking task decompresses it into the store
/// (`install`: each member charged against the pull's budget; the origin record is written
/// by that thread right after the install, so a layer task cancelled meanwhile cannot leave
/// an installed layer without one) or only through its digests (the store has a copy; the
/// tar bytes counted). Answers the blob's size and what the layer costs (installed) or its
/// tar bytes (verified).
async fn fetch_layer(
    session: &Session,
    store: Arc<dyn Layers>,
    layer: &Layer,
    key: Option<&LayerKey>,
    image: &str,
    budget: Arc<Budget>,
    install: Option<Install>,
) -> Result<(u64, u64), ImageError> {
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    let diff_id = layer.diff_id.clone();
    let compression = layer.compression;
    let installing = install.is_some();
    let running = install.as_ref().map(|i| i.mine.running());
    let unpack = tokio::task::spawn_blocking(move || {
        let _running = running;
        let mut tar = match TarReader::new(ChannelReader::new(rx), compression, diff_id.clone()) {
            Ok(t) => t,
            Err(e) => return (Err(e), None, None),
        };
        let Some(install) = install else {
            let mut metered = Metered::new(&mut tar, Some(&budget));
            let result = std::io::copy(&mut metered, &mut std::io::sink())
                .map(|_| ())
                .and_then(|()| metered.finish());
            let refused = metered.refused.take();
            return (result.map(|()| tar.bytes), tar.mismatch.take(), refused);
        };
        let charged = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let refused = Arc::new(StdMutex::new(None::<String>));
        let hook = {
            let (budget, charged, refused) = (budget.clone(), charged.clone(), refused.clone());
            ChargeHook::new(move |c| match budget.charge(c) {
                Ok(()) => {
                    charged.fetch_add(c.bytes, std::sync::atomic::Ordering::Relaxed);
                    Ok(())
                }
                Err(reason) => {
                    *lock(&refused) = Some(reason.clone());
                    Err(reason)
                }
            })
        };
        let mut metered = Metered::new(&mut tar, None);
        let result = store
            .install(&diff_id, &mut metered, hook)
            .and_then(|()| metered.finish());
        let cost = charged.load(std::sync::atomic::Ordering::Relaxed);
        let refused = lock(&refused).take();
        if let Err(e) = result {
            budget.untake_store(cost);
            return (Err(e), tar.mismatch.take(), refused);
        }
        // Nothing charged: another process installed the layer first (the stream was only
        // verified) or it is empty; its size is then measured when the store is counted.
        let mut record = Record {
            bytes: (cost > 0).then_some(cost),
            ..Record::default()
        };
        record.add(install.origin);
        write_record(&install.origins, &diff_id, &record);
        if !install.mine.installed(&diff_id) {
            store.abandon(std::slice::from_ref(&diff_id));
        }
        (Ok(cost), tar.mismatch.take(), refused)
    });
    let downloaded = download(session, layer, tx, key.map(LayerDecryptor::new), image).await;
    let unpacked = unpack.await.map_err(|e| ImageError::Layer {
        diff_id: layer.diff_id.clone(),
        reason: format!("the unpacking task failed: {e}"),
    });
    // The download's error is the cause when both failed.
    downloaded?;
    match unpacked? {
        (Ok(n), _, _) => {
            tracing::debug!(layer = %layer.digest, bytes = layer.size, unpacked = n, installing, "layer fetched");
            Ok((layer.size, n))
        }
        (Err(_), _, Some(reason)) => Err(ImageError::Layer {
            diff_id: layer.diff_id.clone(),
            reason: format!("(blob {}) {reason}", layer.digest),
        }),
        (Err(_), Some(m), None) => Err(ImageError::DigestMismatch {
            what: format!("uncompressed layer {}", layer.digest),
            expected: m.expected,
            actual: m.actual,
        }),
        (Err(e), None, None) => Err(ImageError::Layer {
            diff_id: layer.diff_id.clone(),
            reason: e.to_string(),
        }),
    }
}

async fn download(
    session: &Session,
    layer: &Layer,
    tx: mpsc::Sender<Chunk>,
    mut decryptor: Option<LayerDecryptor>,
    image: &str,
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
                    let c = match decryptor.as_mut() {
                        Some(d) => {
                            let mut plain = c.to_vec();
                            d.update(&mut plain);
                            Bytes::from(plain)
                        }
                        None => c,
                    };
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
            if let Some(d) = decryptor {
                d.finish().map_err(|e| ImageError::Encrypted {
                    reference: image.to_string(),
                    digest: layer.digest.clone(),
                    media_type: layer.media_type.clone(),
                    reason: e.to_string(),
                })?;
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

/// Refuses a bundle path that is not absolute or has `.` or `..` components.
pub fn check_bundle(bundle: &Path) -> Result<(), ImageError> {
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

/// [`check_bundle`], then the path without repeated or trailing separators: `/b/` and `//b`
/// name the bundle `/b` does.
pub fn normalise_bundle(bundle: &Path) -> Result<PathBuf, ImageError> {
    check_bundle(bundle)?;
    Ok(bundle.components().collect())
}

/// The layers to stack for `diff_ids` (lowest first): a layer named more than once is kept at
/// its topmost place only (overlayfs refuses a lower directory twice). The view is the same:
/// every path the repeated layer sets or whites out is decided by its topmost copy anyway.
pub fn mount_order(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut seen = HashSet::new();
    let mut out: Vec<Digest> = diff_ids
        .iter()
        .rev()
        .filter(|d| seen.insert(*d))
        .cloned()
        .collect();
    out.reverse();
    out
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
