//! Images pushed by hand (registry HTTP API) to Debian's `docker-registry`, for the tests of
//! what the puller does with layers an attacker names: raw layers, a KBS stand-in, and a
//! world (registry, work_dir, bundles) whose pullers use the real layer store.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use peerpod_image::{Digest, ImageConfig, LayerDirStore, Puller};

use super::*;

/// A tar of `files` (path, contents, mode).
pub fn tar_of(files: &[(&str, Vec<u8>, u32)]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, data, mode) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        tar.append_data(&mut h, path, &data[..]).unwrap();
    }
    tar.into_inner().unwrap()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

/// One layer of a hand-made image.
#[derive(Clone)]
pub struct RawLayer {
    pub media_type: &'static str,
    pub blob: Vec<u8>,
    pub diff_id: Digest,
    pub annotations: BTreeMap<String, String>,
}

pub const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const GZIP_ENCRYPTED: &str = "application/vnd.oci.image.layer.v1.tar+gzip+encrypted";

pub fn plain_layer(tar: &[u8]) -> RawLayer {
    RawLayer {
        media_type: GZIP,
        blob: gzip(tar),
        diff_id: Digest::of(tar),
        annotations: BTreeMap::new(),
    }
}

/// Pushes blobs, config and an OCI manifest as `repo:tag` through the registry's API.
pub async fn push_raw(
    registry: &Registry,
    repo: &str,
    tag: &str,
    layers: &[RawLayer],
) -> Result<()> {
    peerpod_tests::http::install_crypto_provider();
    let http = reqwest::Client::new();
    let addr = &registry.addr;
    let config = serde_json::json!({
        "architecture": peerpod_image::manifest::guest_architecture(), "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>()}
    })
    .to_string()
    .into_bytes();
    let config_size = config.len();
    let config_digest = upload(&http, addr, repo, config).await?;
    let mut descriptors = Vec::new();
    let mut uploaded = HashMap::new();
    for l in layers {
        let digest = match uploaded.get(&l.blob) {
            Some(d) => String::clone(d),
            None => {
                let d = upload(&http, addr, repo, l.blob.clone()).await?;
                uploaded.insert(l.blob.clone(), d.clone());
                d
            }
        };
        let mut d =
            serde_json::json!({"mediaType": l.media_type, "digest": digest, "size": l.blob.len()});
        if !l.annotations.is_empty() {
            d["annotations"] = serde_json::to_value(&l.annotations)?;
        }
        descriptors.push(d);
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": descriptors,
    });
    put_manifest(&http, addr, repo, tag, OCI_MANIFEST, manifest.to_string()).await
}

/// The OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Puts `body` (of `media_type`) as the manifest `repo:reference` on the plain-HTTP registry
/// at `addr`.
pub async fn put_manifest(
    http: &reqwest::Client,
    addr: &str,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: String,
) -> Result<()> {
    let r = http
        .put(format!("http://{addr}/v2/{repo}/manifests/{reference}"))
        .header("Content-Type", media_type)
        .body(body)
        .send()
        .await?;
    if !r.status().is_success() {
        bail!(
            "manifest push of {repo}:{reference}: {} {}",
            r.status(),
            r.text().await?
        );
    }
    Ok(())
}

pub async fn upload(
    http: &reqwest::Client,
    addr: &str,
    repo: &str,
    blob: Vec<u8>,
) -> Result<String> {
    let digest = Digest::of(&blob).to_string();
    let r = http
        .post(format!("http://{addr}/v2/{repo}/blobs/uploads/"))
        .send()
        .await?;
    let location = r
        .headers()
        .get("location")
        .context("upload location")?
        .to_str()?
        .to_string();
    let location = if location.starts_with('/') {
        format!("http://{addr}{location}")
    } else {
        location
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    let r = http
        .put(format!("{location}{sep}digest={digest}"))
        .header("Content-Type", "application/octet-stream")
        .body(blob)
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("blob upload: {}", r.status());
    }
    Ok(digest)
}

/// A KBS stand-in: the KEKs it gives this pod, by resource URI.
pub struct Kbs(pub HashMap<String, Vec<u8>>);

#[async_trait::async_trait]
impl peerpod_image::Resources for Kbs {
    async fn resource(&self, uri: &str) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
        self.0
            .get(uri)
            .map(|k| zeroize::Zeroizing::new(k.clone()))
            .ok_or_else(|| format!("the KBS does not give {uri} to this pod"))
    }
}

pub struct World {
    pub scratch: Scratch,
    pub registry: Registry,
    pub work: PathBuf,
}

impl World {
    pub fn new(name: &str) -> Result<Self> {
        let scratch = Scratch::new(name);
        let registry = Registry::start(RegistryOptions::default())?;
        let work = scratch.path().join("work");
        Ok(Self {
            scratch,
            registry,
            work,
        })
    }

    pub fn config(&self) -> ImageConfig {
        insecure_config(&self.scratch, &self.registry.addr, "work")
    }

    pub fn puller(
        &self,
        config: ImageConfig,
        kbs: HashMap<String, Vec<u8>>,
    ) -> Result<(Puller, Arc<LayerDirStore>)> {
        self.puller_with(config, Arc::new(Kbs(kbs)))
    }

    /// A puller over the real layer store, fetching `kbs://` resources from `resources`.
    pub fn puller_with(
        &self,
        config: ImageConfig,
        resources: Arc<dyn peerpod_image::Resources>,
    ) -> Result<(Puller, Arc<LayerDirStore>)> {
        let store = Arc::new(LayerDirStore::open(&config.work_dir, Default::default())?);
        Ok((Puller::new(config, resources, store.clone())?, store))
    }

    pub fn image(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.registry.addr)
    }

    /// Layers in the store.
    pub fn layer_count(&self) -> usize {
        std::fs::read_dir(self.work.join("layers/sha256")).map_or(0, |d| d.count())
    }

    /// Layers half unpacked.
    pub fn staging_count(&self) -> usize {
        std::fs::read_dir(self.work.join("layers/.tmp")).map_or(0, |d| d.count())
    }

    /// Pulls `repo_tag` into the bundle `bundle` with `p`, checks that one layer was fetched
    /// and that `file` in the root filesystem holds `len` bytes, and releases it.
    pub async fn pull_one_file(
        &self,
        p: &Puller,
        repo_tag: &str,
        bundle: &str,
        file: &str,
        len: usize,
    ) -> Result<()> {
        let out = p.pull(&self.image(repo_tag), &self.bundle(bundle)).await?;
        assert_eq!(out.fetched_layers, 1);
        assert_eq!(
            std::fs::read(self.bundle(bundle).join("rootfs").join(file))?.len(),
            len
        );
        p.release(&self.bundle(bundle))?;
        Ok(())
    }

    /// Pulls `repo_tag` into the bundle `bundle` with `p`, which must be refused by the limit
    /// `key` with an error naming it, `needles` and cdh.toml; the error's text.
    pub async fn refused_by_limit(
        &self,
        p: &Puller,
        repo_tag: &str,
        bundle: &str,
        key: &str,
        needles: &[&str],
    ) -> Result<String> {
        let e = match p.pull(&self.image(repo_tag), &self.bundle(bundle)).await {
            Ok(_) => bail!("{repo_tag} was pulled, not refused by {key}"),
            Err(e) => e,
        };
        let text = e.to_string();
        assert_eq!(e.limit_key(), Some(key), "{text}");
        assert!(
            matches!(e, peerpod_image::ImageError::Limit { .. }),
            "{text}"
        );
        for needle in [key, "cdh.toml"].iter().chain(needles) {
            assert!(text.contains(needle), "{needle} in {text}");
        }
        Ok(text)
    }

    pub fn bundle(&self, name: &str) -> PathBuf {
        let b = self.scratch.path().join("bundles").join(name);
        std::fs::create_dir_all(&b).unwrap();
        b
    }
}

/// Unmounts whatever the test left mounted under the bundles (a failing assertion).
impl Drop for World {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(self.scratch.path().join("bundles")) {
            for e in entries.flatten() {
                let _ = Command::new("umount")
                    .arg(e.path().join("rootfs"))
                    .stderr(std::process::Stdio::null())
                    .status();
            }
        }
    }
}
