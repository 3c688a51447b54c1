//! Entry points for the fuzz target `image_inputs` in `fuzz/` and the in-tree mutation test:
//! every parser of registry or configuration input — references, manifests and indexes (with
//! the platform choice and layer pairing), image configurations, `WWW-Authenticate`,
//! `auth.json`, `registries.conf` (with source selection) and `[image]`. None may panic.

use crate::auth::AuthFile;
use crate::challenge;
use crate::config::ImageConfig;
use crate::manifest::{self, Fetched};
use crate::reference::Reference;
use crate::registries::RegistryConfig;

/// Feeds bytes to every parser; the first byte picks the kind of input.
pub fn image_inputs(data: &[u8]) {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match kind % 7 {
        0 => {
            if let Ok(r) = Reference::parse(&text) {
                // What parses prints (fully qualified) and parses again to the same reference.
                assert_eq!(Reference::parse(&r.to_string()).ok(), Some(r.qualified()));
            }
        }
        1 => {
            if let Ok(Fetched::Index(entries)) = manifest::parse(rest, None) {
                let _ = manifest::choose_platform(&entries, "amd64");
            }
        }
        2 => {
            if let Ok(Fetched::Manifest(m)) = manifest::parse(rest, Some(manifest::OCI_MANIFEST))
                && let Ok(ids) = manifest::diff_ids(rest)
            {
                let _ = manifest::layers(&m, &ids);
            }
        }
        3 => {
            let _ = challenge::parse(&text);
        }
        4 => {
            if let Ok(f) = AuthFile::parse(rest)
                && let Ok(r) = Reference::parse("quay.io/team/app:v1")
            {
                let _ = f.lookup(&r);
            }
        }
        5 => {
            if let Ok(c) = RegistryConfig::parse(rest) {
                for r in [
                    "busybox",
                    "team/app:v1",
                    "docker.io/library/busybox",
                    "quay.io/a/b:v1",
                    "localhost:5000/x@sha256:0000000000000000000000000000000000000000000000000000000000000000",
                ] {
                    if let Ok(r) = Reference::parse(r) {
                        let _ = c.sources(&r);
                    }
                }
            }
        }
        _ => {
            if let Ok(table) = toml::from_str::<toml::Table>(&text) {
                let _ = ImageConfig::from_table(&table);
            }
        }
    }
}
