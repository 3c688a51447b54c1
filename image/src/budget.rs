//! How much a pull may unpack: a gzip layer of a few kilobytes can inflate to gigabytes, and
//! `work_dir` is a tmpfs in the pod VM (its pages are guest memory). Two totals are enforced
//! while the tar streams, before the bytes reach the store:
//!
//! - per pull, the uncompressed bytes of every layer the pull reads (installed or verified):
//!   `[image] max_image_unpacked_bytes`, by default 3/4 of the space free in `work_dir`'s
//!   filesystem when the pull starts;
//! - per store, the unpacked bytes of every layer in `work_dir` (as their origin records give
//!   them) plus those being installed by every pull: `[image] max_layer_store_bytes`, by
//!   default 3/4 of the size of `work_dir`'s filesystem.
//!
//! Neither key exists upstream (image-rs has no such bound). The first read that would cross
//! a total fails with a message naming the total, where it came from and the key to raise;
//! the layer being unpacked is thrown away by the store.

use std::io::{self, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::ImageConfig;
use crate::error::ImageError;

/// The configuration key of the per-pull total.
pub const IMAGE_KEY: &str = "max_image_unpacked_bytes";
/// The configuration key of the store-wide total.
pub const STORE_KEY: &str = "max_layer_store_bytes";

/// One total and where its value came from.
#[derive(Debug, Clone)]
struct Limit {
    bytes: u64,
    /// `max_… = N in [image]` or how the default was derived.
    from: String,
}

/// The unpacked bytes of the layers in the store, shared by every pull of a puller; `None`
/// until the first pull after a collection counts them.
pub(crate) type StoreUsage = Arc<Mutex<Option<u64>>>;

/// The totals of one pull.
pub(crate) struct Budget {
    image: Limit,
    image_used: AtomicU64,
    store: Limit,
    store_used: StoreUsage,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `(free, size)` in bytes of the filesystem holding `path` (or its nearest existing parent).
fn space(path: &Path) -> Result<(u64, u64), ImageError> {
    let existing = path
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let s = rustix::fs::statvfs(existing).map_err(|e| {
        ImageError::Store(format!(
            "cannot measure the free space of {} for the unpacking limits: {e}",
            existing.display()
        ))
    })?;
    let unit = s.f_frsize.max(1);
    Ok((
        s.f_bavail.saturating_mul(unit),
        s.f_blocks.saturating_mul(unit),
    ))
}

impl Budget {
    /// The totals for a pull starting now. `store_used` is counted (with `count`) when unknown.
    pub(crate) fn start(
        config: &ImageConfig,
        store_used: StoreUsage,
        count: impl FnOnce() -> u64,
    ) -> Result<Self, ImageError> {
        let (free, size) = space(&config.work_dir)?;
        let dir = config.work_dir.display();
        let image = match config.max_image_unpacked_bytes {
            Some(n) => Limit {
                bytes: n,
                from: format!("{IMAGE_KEY} = {n} in [image]"),
            },
            None => Limit {
                bytes: free / 4 * 3,
                from: format!(
                    "by default 3/4 of the {free} bytes free in work_dir {dir} as the pull started"
                ),
            },
        };
        let store = match config.max_layer_store_bytes {
            Some(n) => Limit {
                bytes: n,
                from: format!("{STORE_KEY} = {n} in [image]"),
            },
            None => Limit {
                bytes: size / 4 * 3,
                from: format!("by default 3/4 of the {size} bytes of work_dir {dir}'s filesystem"),
            },
        };
        {
            let mut used = lock(&store_used);
            if used.is_none() {
                *used = Some(count());
            }
        }
        Ok(Self {
            image,
            image_used: AtomicU64::new(0),
            store,
            store_used,
        })
    }

    /// Counts `n` more bytes of a layer (`installing`: they go into the store). `Err` with the
    /// reason when a total would be crossed; nothing is counted then.
    fn take(&self, n: u64, installing: bool) -> Result<(), String> {
        let before = self.image_used.fetch_add(n, Ordering::Relaxed);
        if before.saturating_add(n) > self.image.bytes {
            self.image_used.fetch_sub(n, Ordering::Relaxed);
            return Err(format!(
                "unpacked, the image's layers take more than {} bytes ({}): refused, the layer is \
                 not kept; if the image really is this large, raise {IMAGE_KEY} in [image] of \
                 cdh.toml (or free space in work_dir)",
                self.image.bytes, self.image.from
            ));
        }
        if installing {
            let mut used = lock(&self.store_used);
            let now = used.unwrap_or(0);
            if now.saturating_add(n) > self.store.bytes {
                self.image_used.fetch_sub(n, Ordering::Relaxed);
                return Err(format!(
                    "the unpacked layers in work_dir would take more than {} bytes ({}): \
                     refused, the layer is not kept; remove unused containers, or raise \
                     {STORE_KEY} in [image] of cdh.toml",
                    self.store.bytes, self.store.from
                ));
            }
            *used = Some(now + n);
        }
        Ok(())
    }

    /// Gives back `n` bytes counted for the store by an install that failed.
    pub(crate) fn untake_store(&self, n: u64) {
        let mut used = lock(&self.store_used);
        if let Some(u) = used.as_mut() {
            *u = u.saturating_sub(n);
        }
    }
}

/// A reader that counts what passes against a pull's [`Budget`].
pub(crate) struct Metered<'a, R> {
    inner: R,
    budget: &'a Budget,
    installing: bool,
    /// Bytes counted so far.
    pub(crate) bytes: u64,
    /// Why the budget stopped the layer, when it did.
    pub(crate) refused: Option<String>,
}

impl<'a, R: Read> Metered<'a, R> {
    /// Counts `inner`'s bytes; `installing`: they go into the store.
    pub(crate) fn new(inner: R, budget: &'a Budget, installing: bool) -> Self {
        Self {
            inner,
            budget,
            installing,
            bytes: 0,
            refused: None,
        }
    }

    /// Reads (and counts) the rest, so the verifying reader underneath sees its end.
    pub(crate) fn finish(&mut self) -> io::Result<()> {
        let mut sink = vec![0u8; 64 << 10];
        while self.read(&mut sink)? > 0 {}
        Ok(())
    }
}

impl<R: Read> Read for Metered<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(reason) = &self.refused {
            return Err(io::Error::other(reason.clone()));
        }
        let n = self.inner.read(buf)?;
        if let Err(reason) = self.budget.take(n as u64, self.installing) {
            self.refused = Some(reason.clone());
            return Err(io::Error::other(reason));
        }
        self.bytes += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(image: Option<u64>, store: Option<u64>) -> ImageConfig {
        ImageConfig {
            work_dir: std::env::temp_dir().join("peerpod-budget-never-made/work"),
            max_image_unpacked_bytes: image,
            max_layer_store_bytes: store,
            ..Default::default()
        }
    }

    #[test]
    fn each_total_refuses_the_read_that_crosses_it_and_names_its_key() {
        let used: StoreUsage = Arc::default();
        let b = Budget::start(&config(Some(100), Some(1000)), used.clone(), || 950).expect("b");
        let data = [0u8; 60];
        let mut m = Metered::new(&data[..], &b, false);
        assert_eq!(m.read(&mut [0u8; 60]).expect("60 of 100"), 60);
        let mut m2 = Metered::new(&data[..], &b, false);
        let e = m2.read(&mut [0u8; 60]).expect_err("past 100");
        assert!(e.to_string().contains(IMAGE_KEY), "{e}");
        assert!(m2.read(&mut [0u8; 1]).is_err(), "stays refused");
        assert_eq!(*lock(&used), Some(950), "verification is not stored");
        // Installing: the store total (950 counted) is crossed first.
        let b = Budget::start(&config(Some(100), Some(1000)), used.clone(), || 0).expect("b");
        let mut m = Metered::new(&data[..], &b, true);
        let e = m.read(&mut [0u8; 60]).expect_err("past 1000");
        assert!(e.to_string().contains(STORE_KEY), "{e}");
        assert!(e.to_string().contains("= 1000 in [image]"), "{e}");
        b.untake_store(900);
        let mut m = Metered::new(&data[..], &b, true);
        m.finish().expect("fits now");
        assert_eq!((m.bytes, *lock(&used)), (60, Some(110)));
    }

    #[test]
    fn defaults_come_from_the_filesystem() {
        let b = Budget::start(&config(None, None), Arc::default(), || 0).expect("b");
        let (free, size) = space(Path::new("/tmp")).expect("statvfs");
        assert!(
            b.image.bytes <= free && b.image.bytes >= free / 2,
            "{:?}",
            b.image
        );
        assert_eq!(b.store.bytes, size / 4 * 3);
        assert!(b.image.from.contains("free in work_dir"), "{:?}", b.image);
    }
}
