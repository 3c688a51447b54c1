//! The puller: reference → sources (registries.conf) → manifest (platform from an index) →
//! configuration → layers fetched concurrently, each in one streaming pass (download, blob
//! digest, decompression, diff_id, unpack into the store) → `bundle/rootfs` mounted.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};

use peerpod_image_signature::{LookasideConfig, Policy};
use tokio::sync::{OnceCell, RwLock, Semaphore};
use zeroize::Zeroizing;

use crate::auth::{AuthFile, MAX_AUTH_FILE};
use crate::budget::{Budget, StoreUsage};
use crate::client::{Client, Session};
use crate::config::ImageConfig;
use crate::digest::Digest;
use crate::error::ImageError;
use crate::layer_fetch::{AbandonOnDrop, Claim, InFlight, LayerJob, Mine};
use crate::manifest::{self, Fetched, Layer};
use crate::origin::Origins;
use crate::reference::Reference;
use crate::registries::{MAX_REGISTRIES_FILE, RegistryConfig, Source};
use crate::resources::{self, Resources};
use crate::store::Layers;
use crate::verify::{self, Verifier};

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
