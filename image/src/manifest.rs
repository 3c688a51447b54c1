//! Manifests, indexes and image configurations: OCI and Docker v2 schema 2 media types, the
//! platform choice in an index, and the checks that bound what a registry can make us do.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::digest::Digest;

/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker v2 schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// The `Accept` header of manifest requests.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// The largest manifest or index read (4 MiB, the distribution project's limit).
pub const MAX_MANIFEST: usize = 4 << 20;
/// The largest image configuration read.
pub const MAX_CONFIG: usize = 8 << 20;
/// The most layers an image may have (overlayfs stacks at most ~500 lower directories).
pub const MAX_LAYERS: usize = 256;
/// The most entries an index may have.
pub const MAX_INDEX_ENTRIES: usize = 1024;

/// A content descriptor.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type.
    pub media_type: String,
    /// Digest (checked by the parsers here).
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Annotations (encrypted layers carry their wrapped keys here).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Platform, in an index.
    #[serde(default)]
    pub platform: Option<Platform>,
}

/// A platform in an index.
#[derive(Debug, Clone, Deserialize)]
pub struct Platform {
    /// `amd64`, `arm64`, …
    pub architecture: String,
    /// `linux`, …
    pub os: String,
    /// `v8`, …
    #[serde(default)]
    pub variant: Option<String>,
}

/// How a layer is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (possibly multi-member).
    Gzip,
    /// zstd.
    Zstd,
}

/// A layer the puller can fetch.
#[derive(Debug, Clone)]
pub struct Layer {
    /// The blob's digest.
    pub digest: Digest,
    /// The blob's size.
    pub size: u64,
    /// Its compression.
    pub compression: Compression,
    /// The uncompressed tar's digest, from the configuration.
    pub diff_id: Digest,
    /// `+encrypted` (ocicrypt): the blob must be decrypted first.
    pub encrypted: bool,
    /// The media type as the manifest gave it.
    pub media_type: String,
    /// The descriptor's annotations.
    pub annotations: BTreeMap<String, String>,
}

/// Why a manifest, index or configuration is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct ManifestError {
    /// Which document.
    pub what: &'static str,
    /// What is wrong.
    pub reason: String,
}

fn bad(what: &'static str, reason: impl Into<String>) -> ManifestError {
    ManifestError {
        what,
        reason: reason.into(),
    }
}

/// What a manifest request returned.
#[derive(Debug)]
pub enum Fetched {
    /// An index: pick a platform.
    Index(Vec<Descriptor>),
    /// An image manifest.
    Manifest(ImageManifest),
}

/// An image manifest.
#[derive(Debug, Clone)]
pub struct ImageManifest {
    /// The configuration blob.
    pub config: Descriptor,
    /// The layers, lowest first.
    pub layers: Vec<Descriptor>,
}

/// Parses a manifest or index; `content_type` is the reply's, used when the body has no
/// `mediaType`.
pub fn parse(body: &[u8], content_type: Option<&str>) -> Result<Fetched, ManifestError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Any {
        schema_version: Option<u32>,
        media_type: Option<String>,
        config: Option<Descriptor>,
        layers: Option<Vec<Descriptor>>,
        manifests: Option<Vec<Descriptor>>,
    }
    const WHAT: &str = "manifest";
    if body.len() > MAX_MANIFEST {
        return Err(bad(WHAT, format!("larger than {MAX_MANIFEST} bytes")));
    }
    let any: Any = serde_json::from_slice(body).map_err(|e| {
        bad(
            WHAT,
            format!(
                "not a JSON manifest (line {}, column {})",
                e.line(),
                e.column()
            ),
        )
    })?;
    if any.schema_version != Some(2) {
        return Err(bad(
            WHAT,
            "schemaVersion is not 2 (Docker schema 1 manifests are not supported: push the \
             image again with a current tool)",
        ));
    }
    let ct = content_type
        .map(|c| c.split(';').next().unwrap_or_default().trim().to_string())
        .filter(|c| c != "application/json" && c != "text/plain" && !c.is_empty());
    let media = any.media_type.clone().or(ct).unwrap_or_else(|| {
        if any.manifests.is_some() {
            OCI_INDEX.to_string()
        } else {
            OCI_MANIFEST.to_string()
        }
    });
    match media.as_str() {
        OCI_INDEX | DOCKER_LIST => {
            let manifests = any
                .manifests
                .ok_or_else(|| bad("index", "no \"manifests\""))?;
            if manifests.len() > MAX_INDEX_ENTRIES {
                return Err(bad(
                    "index",
                    format!("more than {MAX_INDEX_ENTRIES} entries"),
                ));
            }
            for m in &manifests {
                Digest::parse(&m.digest).map_err(|e| bad("index", e.to_string()))?;
            }
            Ok(Fetched::Index(manifests))
        }
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let config = any.config.ok_or_else(|| bad(WHAT, "no \"config\""))?;
            let layers = any.layers.ok_or_else(|| bad(WHAT, "no \"layers\""))?;
            if layers.is_empty() || layers.len() > MAX_LAYERS {
                return Err(bad(
                    WHAT,
                    format!("{} layers: expected 1 to {MAX_LAYERS}", layers.len()),
                ));
            }
            Digest::parse(&config.digest).map_err(|e| bad(WHAT, e.to_string()))?;
            if config.size > MAX_CONFIG as u64 {
                return Err(bad(
                    WHAT,
                    format!(
                        "the configuration is {} bytes: at most {MAX_CONFIG}",
                        config.size
                    ),
                ));
            }
            Ok(Fetched::Manifest(ImageManifest { config, layers }))
        }
        other => Err(bad(
            WHAT,
            format!(
                "media type {:?} is not an image manifest or index (expected one of {ACCEPT})",
                crate::digest::clipped(other)
            ),
        )),
    }
}

/// The guest's platform in index terms.
pub fn guest_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "s390x" => "s390x",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The entry of an index for `linux/<arch>`.
pub fn choose_platform<'a>(
    entries: &'a [Descriptor],
    arch: &str,
) -> Result<&'a Descriptor, ManifestError> {
    entries
        .iter()
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == arch)
                && matches!(d.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST)
        })
        .ok_or_else(|| {
            let have: Vec<String> = entries
                .iter()
                .filter_map(|d| d.platform.as_ref())
                .take(20)
                .map(|p| crate::digest::clipped(&format!("{}/{}", p.os, p.architecture)))
                .collect();
            bad(
                "index",
                format!(
                    "no image for linux/{arch} (the index has: {})",
                    have.join(", ")
                ),
            )
        })
}

/// The configuration's `rootfs.diff_ids`.
pub fn diff_ids(config: &[u8]) -> Result<Vec<Digest>, ManifestError> {
    #[derive(Deserialize)]
    struct Config {
        rootfs: RootFs,
    }
    #[derive(Deserialize)]
    struct RootFs {
        r#type: String,
        diff_ids: Vec<String>,
    }
    let c: Config = serde_json::from_slice(config).map_err(|e| {
        bad(
            "image configuration",
            format!(
                "no rootfs.diff_ids (line {}, column {})",
                e.line(),
                e.column()
            ),
        )
    })?;
    if c.rootfs.r#type != "layers" {
        return Err(bad("image configuration", "rootfs.type is not \"layers\""));
    }
    c.rootfs
        .diff_ids
        .iter()
        .map(|d| Digest::parse(d).map_err(|e| bad("image configuration", e.to_string())))
        .collect()
}

/// Pairs the manifest's layers with the configuration's diff_ids and checks their media types.
pub fn layers(manifest: &ImageManifest, diff_ids: &[Digest]) -> Result<Vec<Layer>, ManifestError> {
    if manifest.layers.len() != diff_ids.len() {
        return Err(bad(
            "image",
            format!(
                "{} layers but {} diff_ids in the configuration",
                manifest.layers.len(),
                diff_ids.len()
            ),
        ));
    }
    manifest
        .layers
        .iter()
        .zip(diff_ids)
        .map(|(d, diff_id)| {
            let digest = Digest::parse(&d.digest).map_err(|e| bad("manifest", e.to_string()))?;
            let (base, encrypted) = match d.media_type.strip_suffix("+encrypted") {
                Some(b) => (b, true),
                None => (d.media_type.as_str(), false),
            };
            let compression = match base {
                "application/vnd.oci.image.layer.v1.tar"
                | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Compression::None,
                "application/vnd.oci.image.layer.v1.tar+gzip"
                | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
                | "application/vnd.docker.image.rootfs.diff.tar.gzip"
                | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Compression::Gzip,
                "application/vnd.oci.image.layer.v1.tar+zstd"
                | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => {
                    Compression::Zstd
                }
                other => {
                    return Err(bad(
                        "manifest",
                        format!(
                            "layer media type {:?} is not a tar, tar+gzip or tar+zstd layer",
                            crate::digest::clipped(other)
                        ),
                    ));
                }
            };
            Ok(Layer {
                digest,
                size: d.size,
                compression,
                diff_id: diff_id.clone(),
                encrypted,
                media_type: d.media_type.clone(),
                annotations: d.annotations.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: char) -> String {
        format!("sha256:{}", n.to_string().repeat(64))
    }

    #[test]
    fn manifest_and_index() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}",
            "config":{{"mediaType":"x","digest":"{}","size":10}},
            "layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"{}","size":5}},
                      {{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd+encrypted","digest":"{}","size":6}}]}}"#,
            d('a'),
            d('b'),
            d('c')
        );
        let Fetched::Manifest(man) = parse(m.as_bytes(), None).expect("manifest") else {
            panic!("not a manifest");
        };
        let ids = [
            Digest::parse(&d('e')).expect("d"),
            Digest::parse(&d('f')).expect("d"),
        ];
        let ls = layers(&man, &ids).expect("layers");
        assert_eq!(ls[0].compression, Compression::Gzip);
        assert!(!ls[0].encrypted);
        assert_eq!(ls[1].compression, Compression::Zstd);
        assert!(ls[1].encrypted);
        assert!(layers(&man, &ids[..1]).is_err());

        let i = format!(
            r#"{{"schemaVersion":2,"manifests":[
            {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"architecture":"arm64","os":"linux"}}}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
            d('1'),
            d('2')
        );
        let Fetched::Index(entries) = parse(i.as_bytes(), Some(OCI_INDEX)).expect("index") else {
            panic!("not an index");
        };
        assert_eq!(
            choose_platform(&entries, "amd64").expect("amd64").digest,
            d('2')
        );
        let e = choose_platform(&entries, "riscv64").expect_err("none");
        assert!(e.reason.contains("linux/arm64"), "{e}");
    }

    #[test]
    fn hostile_documents_refused() {
        let layer = |mt: &str| {
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"x","digest":"{}","size":1}},
                "layers":[{{"mediaType":"{mt}","digest":"{}","size":1}}]}}"#,
                d('a'),
                d('b')
            )
        };
        let Fetched::Manifest(m) = parse(layer("application/x-evil").as_bytes(), None).expect("p")
        else {
            panic!("not a manifest")
        };
        let ids = [Digest::parse(&d('e')).expect("d")];
        assert!(layers(&m, &ids).is_err());
        let many = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"x","digest":"{}","size":1}},"layers":[{}]}}"#,
            d('a'),
            vec![format!(r#"{{"mediaType":"x","digest":"{}","size":1}}"#, d('b')); MAX_LAYERS + 1]
                .join(",")
        );
        for bad_doc in [
            r#"{"schemaVersion":1,"fsLayers":[]}"#.to_string(),
            "[]".to_string(),
            format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","layers":[]}}"#),
            many,
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"x","digest":"sha256:../../x","size":1}},"layers":[{{"mediaType":"x","digest":"{}","size":1}}]}}"#,
                d('b')
            ),
            r#"{"schemaVersion":2,"mediaType":"text/html"}"#.to_string(),
        ] {
            assert!(parse(bad_doc.as_bytes(), None).is_err(), "{bad_doc}");
        }
        assert!(parse(&vec![b' '; MAX_MANIFEST + 1], None).is_err());
        assert!(diff_ids(br#"{"rootfs":{"type":"layers","diff_ids":["md5:x"]}}"#).is_err());
        assert!(diff_ids(br#"{"rootfs":{"type":"other","diff_ids":[]}}"#).is_err());
    }
}
