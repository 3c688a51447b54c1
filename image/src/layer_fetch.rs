//! One layer of a pull: the layer task ([`LayerJob`]: key, reuse or fetch), the streaming
//! fetch (download, decryption, digests, unpacking into the store while each member is
//! charged against the pull's budget), and what ties a pull's layer tasks together: the
//! in-flight claims shared by pulls ([`Claim`]) and what one pull installed ([`Mine`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};

use bytes::Bytes;
use peerpod_image_crypt::{LayerDecryptor, LayerKey};
use peerpod_image_layer::ChargeHook;
use sha2::{Digest as _, Sha256};
use tokio::sync::{Mutex, Semaphore, mpsc};

use crate::budget::{Budget, Metered, Refusal};
use crate::client::{Session, backoff, describe};
use crate::digest::Digest;
use crate::error::ImageError;
use crate::manifest::Layer;
use crate::origin::{Origin, Origins, Record};
use crate::resources::Resources;
use crate::store::Layers;
use crate::stream::{ChannelReader, Chunk, TarReader};
use crate::verify::Keys;

/// Chunks in flight between a layer's download and its unpacking (each up to ~16 KiB as
/// hyper delivers them): the download waits when the unpacking falls behind, so memory stays
/// flat whatever the layer's size.
const CHANNEL_CHUNKS: usize = 16;

pub(crate) type InFlight = Arc<StdMutex<HashMap<Digest, Arc<Mutex<()>>>>>;

/// The layers one pull installed, for [`Layers::abandon`] when the pull fails, and its
/// unpacking threads still running. Such a thread outlives a cancelled layer task (it stops
/// when its download's channel closes): a failed pull waits for them before it answers, so
/// nothing half-unpacked is left behind it; one that finishes installing after the pull gave
/// up abandons its layer itself.
#[derive(Clone)]
pub(crate) struct Mine(
    Arc<StdMutex<MineState>>,
    Arc<tokio::sync::watch::Sender<usize>>,
);

impl Default for Mine {
    fn default() -> Self {
        Self(Arc::default(), Arc::new(tokio::sync::watch::Sender::new(0)))
    }
}

/// Abandons what a pull installed when the pull is dropped before it answers.
pub(crate) struct AbandonOnDrop<'a> {
    pub(crate) mine: &'a Mine,
    pub(crate) store: &'a dyn Layers,
    pub(crate) armed: bool,
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
    pub(crate) async fn settled(&self) {
        let _ = self.1.subscribe().wait_for(|n| *n == 0).await;
    }

    /// Marks the pull failed; answers what it installed.
    pub(crate) fn abandon(&self) -> Vec<Digest> {
        let mut state = lock(&self.0);
        state.failed = true;
        std::mem::take(&mut state.installed)
    }
}

/// A layer task's entry in the in-flight map, removed when the last task holding it ends
/// (success, error, or aborted with its pull).
pub(crate) struct Claim {
    map: InFlight,
    diff_id: Digest,
    lock: Option<Arc<Mutex<()>>>,
}

impl Claim {
    pub(crate) fn new(map: &InFlight, diff_id: &Digest) -> Self {
        let lock = lock(map).entry(diff_id.clone()).or_default().clone();
        Self {
            map: map.clone(),
            diff_id: diff_id.clone(),
            lock: Some(lock),
        }
    }

    /// Waits for the other pulls fetching this layer.
    pub(crate) async fn hold(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
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
pub(crate) struct LayerJob {
    pub(crate) session: Session,
    pub(crate) store: Arc<dyn Layers>,
    pub(crate) resources: Arc<dyn Resources>,
    pub(crate) origins: Arc<Origins>,
    pub(crate) budget: Arc<Budget>,
    pub(crate) image: String,
    pub(crate) layer: Layer,
    pub(crate) mine: Mine,
}

impl LayerJob {
    /// `None`: the store's copy is reused; `Some(bytes downloaded)` otherwise.
    pub(crate) async fn run(
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
        let refused = Arc::new(StdMutex::new(None::<Refusal>));
        let hook = {
            let (budget, charged, refused) = (budget.clone(), charged.clone(), refused.clone());
            ChargeHook::new(move |c| match budget.charge(c) {
                Ok(()) => {
                    charged.fetch_add(c.bytes, std::sync::atomic::Ordering::Relaxed);
                    Ok(())
                }
                Err(refusal) => {
                    let reason = refusal.reason.clone();
                    *lock(&refused) = Some(refusal);
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
        (Err(_), _, Some(refusal)) => Err(ImageError::Limit {
            key: refusal.key,
            diff_id: layer.diff_id.clone(),
            reason: format!("(blob {}) {}", layer.digest, refusal.reason),
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

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
