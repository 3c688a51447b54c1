//! The set-up the pull tests share: the root check overlay mounts need, a registry holding
//! one built image, an `[image]` config that trusts that registry over plain HTTP, a puller
//! over a recording store, and a tmpfs mounted for a test.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::Result;
use peerpod_image::resources::NoResources;
use peerpod_image::{ImageConfig, ImageError, LayerDirStore, Puller};

use super::{
    RecordingStore, Registry, RegistryOptions, Scratch, Step, build_image, file_uri, insecure_conf,
    run, test_config, tools_present,
};

pub fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// Root present (overlay mounts need it); otherwise a loud skip, a failure under `CI=true`.
pub fn root_present() -> bool {
    if is_root() {
        return true;
    }
    let _ = std::io::stderr().write_all(b"\n*** SKIPPED: overlay mounts need root ***\n");
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "CI runs as root"
    );
    false
}

/// Tools and root present; otherwise a loud skip (a failure under `CI=true`).
pub fn ready() -> bool {
    tools_present() && root_present()
}

/// A scratch directory `name`, a plain `docker-registry`, and the OCI layout
/// `<scratch>/layout` whose `v1` (one layer per group of `layers`) is pushed as `repo:v1`.
pub fn registry_with_image(
    name: &str,
    repo: &str,
    layers: &[Vec<Step<'_>>],
) -> Result<(Scratch, Registry, PathBuf)> {
    let scratch = Scratch::new(name);
    let registry = Registry::start(RegistryOptions::default())?;
    let layout = scratch.path().join("layout");
    build_image(&layout, "v1", layers)?;
    registry.push(&layout, "v1", repo, "v1", "oci")?;
    Ok((scratch, registry, layout))
}

/// `[image]` for tests with work_dir `<scratch>/<work>` and a registries.conf (`r.conf`)
/// marking `addr` insecure (plain HTTP).
pub fn insecure_config(scratch: &Scratch, addr: &str, work: &str) -> ImageConfig {
    let mut config = test_config(&scratch.path().join(work));
    config.registry_configuration_uri =
        Some(file_uri(scratch.path(), "r.conf", &insecure_conf(addr)));
    config
}

/// A puller with no resources (no KBS) over a fresh recording store.
pub fn recording_puller(config: ImageConfig) -> (Puller, Arc<RecordingStore>) {
    let store = Arc::new(RecordingStore::default());
    let p = Puller::new(config, Arc::new(NoResources), store.clone()).expect("puller");
    (p, store)
}

/// A puller with no resources over the real layer store in the config's work_dir.
pub fn store_puller(config: ImageConfig) -> Result<(Puller, Arc<LayerDirStore>)> {
    let store = Arc::new(LayerDirStore::open(&config.work_dir, Default::default())?);
    Ok((
        Puller::new(config, Arc::new(NoResources), store.clone())?,
        store,
    ))
}

/// Pulls `image` into `bundle` with `p`, which the signature policy must refuse with an error
/// naming each of `needles`; the error.
pub async fn refused_by_policy(
    p: &Puller,
    image: &str,
    bundle: &Path,
    needles: &[&str],
) -> Result<ImageError> {
    let e = match p.pull(image, bundle).await {
        Ok(_) => anyhow::bail!("{image} was pulled, not refused by the policy"),
        Err(e) => e,
    };
    assert!(matches!(e, ImageError::Signature { .. }), "{image}: {e}");
    for needle in needles {
        assert!(e.to_string().contains(needle), "{image}: {needle} in {e}");
    }
    Ok(e)
}

/// A tmpfs mounted at `at` (created) with `options`, lazily unmounted on drop.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(at: &Path, options: &str) -> Result<Self> {
        std::fs::create_dir_all(at)?;
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(at))?;
        Ok(Self(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
