//! How much a pull may unpack: a gzip layer of a few kilobytes can inflate to gigabytes (or to
//! hundreds of thousands of empty files), and `work_dir` is a tmpfs in the pod VM (its pages
//! and inodes are guest memory). Each member a pull installs is charged, before it is written,
//! what it costs the filesystem (a [`Charge`] from the unpacker: data rounded up to blocks, a
//! block per inode, xattr bytes; not its tar bytes, which undercount empty files and small
//! ones), against three totals:
//!
//! - per pull, the bytes of every layer the pull installs or verifies (verified layers count
//!   their tar bytes: nothing is written): `[image] max_image_unpacked_bytes`, by default 3/4
//!   of the space free in `work_dir`'s filesystem when the pull starts;
//! - per pull, the inodes made: `[image] max_image_unpacked_inodes`, by default 3/4 of the
//!   inodes free in `work_dir`'s filesystem when the pull starts (no limit on a filesystem
//!   that reports no inode count);
//! - per store, the bytes of every layer in `work_dir` (as their origin records give them)
//!   plus those being installed by every pull: `[image] max_layer_store_bytes`, by default
//!   3/4 of the size of `work_dir`'s filesystem.
//!
//! None of these keys exists upstream (image-rs has no such bound). The first member that
//! would cross a total is refused with a message naming the total, where it came from and the
//! key to raise; the layer being unpacked is thrown away by the store. The refusal is a
//! `Refusal` naming the key, which the pull reports as [`ImageError::Limit`].

use std::io::{self, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use peerpod_image_layer::Charge;

use crate::config::ImageConfig;
use crate::error::ImageError;

/// The configuration key of the per-pull total.
pub const IMAGE_KEY: &str = "max_image_unpacked_bytes";
/// The configuration key of the store-wide total.
pub const STORE_KEY: &str = "max_layer_store_bytes";
/// The configuration key of the per-pull inode total.
pub const INODES_KEY: &str = "max_image_unpacked_inodes";

/// A total refusing a member: the `[image]` key of the total and the message (which names
/// the total, where its value came from and the fix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// [`IMAGE_KEY`], [`STORE_KEY`] or [`INODES_KEY`].
    pub(crate) key: &'static str,
    /// Why, for people.
    pub(crate) reason: String,
}

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
    inodes: Limit,
    inodes_used: AtomicU64,
    store: Limit,
    store_used: StoreUsage,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What the filesystem holding a path has.
struct Space {
    /// Bytes free to unprivileged users.
    free: u64,
    /// Bytes in all.
    size: u64,
    /// Inodes free to unprivileged users; `None` when the filesystem reports no inode count.
    free_inodes: Option<u64>,
}

/// The [`Space`] of the filesystem holding `path` (or its nearest existing parent).
fn space(path: &Path) -> Result<Space, ImageError> {
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
    Ok(Space {
        free: s.f_bavail.saturating_mul(unit),
        size: s.f_blocks.saturating_mul(unit),
        free_inodes: (s.f_files > 0).then_some(s.f_favail),
    })
}

impl Budget {
    /// The totals for a pull starting now. `store_used` is counted (with `count`) when unknown.
    pub(crate) fn start(
        config: &ImageConfig,
        store_used: StoreUsage,
        count: impl FnOnce() -> u64,
    ) -> Result<Self, ImageError> {
        let Space {
            free,
            size,
            free_inodes,
        } = space(&config.work_dir)?;
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
        let inodes = match (config.max_image_unpacked_inodes, free_inodes) {
            (Some(n), _) => Limit {
                bytes: n,
                from: format!("{INODES_KEY} = {n} in [image]"),
            },
            (None, Some(free)) => Limit {
                bytes: free / 4 * 3,
                from: format!(
                    "by default 3/4 of the {free} inodes free in work_dir {dir} as the pull started"
                ),
            },
            (None, None) => Limit {
                bytes: u64::MAX,
                from: format!("work_dir {dir}'s filesystem reports no inode count"),
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
            inodes,
            inodes_used: AtomicU64::new(0),
            store,
            store_used,
        })
    }

    /// Counts `n` more bytes of a layer (`installing`: they go into the store). `Err` with the
    /// reason when a total would be crossed; nothing is counted then.
    fn take(&self, n: u64, installing: bool) -> Result<(), Refusal> {
        let before = self.image_used.fetch_add(n, Ordering::Relaxed);
        if before.saturating_add(n) > self.image.bytes {
            self.image_used.fetch_sub(n, Ordering::Relaxed);
            return Err(Refusal {
                key: IMAGE_KEY,
                reason: format!(
                    "unpacked, the image's layers take more than {} bytes of work_dir ({}): refused, \
                 the layer is not kept; if the image really is this large, raise {IMAGE_KEY} in [image] of \
                 cdh.toml (or free space in work_dir)",
                    self.image.bytes, self.image.from
                ),
            });
        }
        if installing {
            let mut used = lock(&self.store_used);
            let now = used.unwrap_or(0);
            if now.saturating_add(n) > self.store.bytes {
                self.image_used.fetch_sub(n, Ordering::Relaxed);
                return Err(Refusal {
                    key: STORE_KEY,
                    reason: format!(
                        "the unpacked layers in work_dir would take more than {} bytes ({}): \
                     refused, the layer is not kept; remove unused containers, or raise \
                     {STORE_KEY} in [image] of cdh.toml",
                        self.store.bytes, self.store.from
                    ),
                });
            }
            *used = Some(now + n);
        }
        Ok(())
    }

    /// Charges one member a pull installs (see [`Charge`]). `Err` with the reason when a total
    /// would be crossed; nothing is counted then.
    pub(crate) fn charge(&self, c: Charge) -> Result<(), Refusal> {
        let before = self.inodes_used.fetch_add(c.inodes, Ordering::Relaxed);
        if before.saturating_add(c.inodes) > self.inodes.bytes {
            self.inodes_used.fetch_sub(c.inodes, Ordering::Relaxed);
            return Err(Refusal {
                key: INODES_KEY,
                reason: format!(
                    "unpacked, the image's layers make more than {} files, directories and links \
                 ({}): refused, the layer is not kept; if the image really has this many, raise \
                 {INODES_KEY} in [image] of cdh.toml (or free inodes in work_dir)",
                    self.inodes.bytes, self.inodes.from
                ),
            });
        }
        self.take(c.bytes, true).inspect_err(|_| {
            self.inodes_used.fetch_sub(c.inodes, Ordering::Relaxed);
        })
    }

    /// Gives back `n` bytes counted for the store by an install that failed.
    pub(crate) fn untake_store(&self, n: u64) {
        let mut used = lock(&self.store_used);
        if let Some(u) = used.as_mut() {
            *u = u.saturating_sub(n);
        }
    }
}

/// A reader that counts what passes, against a pull's [`Budget`] when given one (a layer only
/// verified; an installed one is charged member by member instead).
pub(crate) struct Metered<'a, R> {
    inner: R,
    budget: Option<&'a Budget>,
    /// Bytes counted so far.
    pub(crate) bytes: u64,
    /// Why the budget stopped the layer, when it did.
    pub(crate) refused: Option<Refusal>,
}

impl<'a, R: Read> Metered<'a, R> {
    /// Counts `inner`'s bytes, against `budget`'s per-pull total when given.
    pub(crate) fn new(inner: R, budget: Option<&'a Budget>) -> Self {
        Self {
            inner,
            budget,
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
        if let Some(refusal) = &self.refused {
            return Err(io::Error::other(refusal.reason.clone()));
        }
        let n = self.inner.read(buf)?;
        if let Some(Err(refusal)) = self.budget.map(|b| b.take(n as u64, false)) {
            let e = io::Error::other(refusal.reason.clone());
            self.refused = Some(refusal);
            return Err(e);
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

    fn charge(bytes: u64, inodes: u64) -> Charge {
        Charge { bytes, inodes }
    }

    #[test]
    fn each_total_refuses_the_read_that_crosses_it_and_names_its_key() {
        let used: StoreUsage = Arc::default();
        let b = Budget::start(&config(Some(100), Some(1000)), used.clone(), || 950).expect("b");
        let data = [0u8; 60];
        let mut m = Metered::new(&data[..], Some(&b));
        assert_eq!(m.read(&mut [0u8; 60]).expect("60 of 100"), 60);
        let mut m2 = Metered::new(&data[..], Some(&b));
        let e = m2.read(&mut [0u8; 60]).expect_err("past 100");
        assert!(e.to_string().contains(IMAGE_KEY), "{e}");
        assert_eq!(m2.refused.as_ref().map(|r| r.key), Some(IMAGE_KEY));
        assert!(m2.read(&mut [0u8; 1]).is_err(), "stays refused");
        assert_eq!(*lock(&used), Some(950), "verification is not stored");
        // Installing: the store total (950 counted) is crossed first.
        let b = Budget::start(&config(Some(100), Some(1000)), used.clone(), || 0).expect("b");
        let e = b.charge(charge(60, 1)).expect_err("past 1000");
        assert_eq!(e.key, STORE_KEY);
        assert!(e.reason.contains(STORE_KEY), "{e:?}");
        assert!(e.reason.contains("= 1000 in [image]"), "{e:?}");
        b.untake_store(900);
        b.charge(charge(60, 1)).expect("fits now");
        assert_eq!(*lock(&used), Some(110));
        let mut m = Metered::new(&data[..], None);
        m.finish().expect("uncounted");
        assert_eq!((m.bytes, *lock(&used)), (60, Some(110)), "only counted");
    }

    #[test]
    fn the_inode_total_refuses_the_member_that_crosses_it_and_names_its_key() {
        let used: StoreUsage = Arc::default();
        let c = ImageConfig {
            max_image_unpacked_inodes: Some(3),
            ..config(Some(1 << 20), Some(1 << 20))
        };
        let b = Budget::start(&c, used.clone(), || 0).expect("b");
        for _ in 0..3 {
            b.charge(charge(4096, 1)).expect("three inodes");
        }
        b.charge(charge(4096, 0))
            .expect("a hard link makes no inode");
        let e = b.charge(charge(4096, 1)).expect_err("a fourth");
        assert_eq!(e.key, INODES_KEY);
        assert!(
            e.reason.contains(INODES_KEY) && e.reason.contains("= 3 in [image]"),
            "{e:?}"
        );
        assert_eq!(
            *lock(&used),
            Some(4 * 4096),
            "the refused member is not counted"
        );
        // A member refused by the byte totals gives its inode back.
        let c = ImageConfig {
            max_image_unpacked_inodes: Some(1),
            ..config(Some(100), None)
        };
        let b = Budget::start(&c, used, || 0).expect("b");
        b.charge(charge(200, 1)).expect_err("past 100 bytes");
        b.charge(charge(50, 1)).expect("the inode was given back");
    }

    #[test]
    fn defaults_come_from_the_filesystem() {
        let b = Budget::start(&config(None, None), Arc::default(), || 0).expect("b");
        let Space { free, size, .. } = space(Path::new("/tmp")).expect("statvfs");
        assert!(
            b.image.bytes <= free && b.image.bytes >= free / 2,
            "{:?}",
            b.image
        );
        assert_eq!(b.store.bytes, size / 4 * 3);
        assert!(b.image.from.contains("free in work_dir"), "{:?}", b.image);
    }
}
