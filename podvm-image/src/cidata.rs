//! The user data cloud-api-adaptor sends a pod VM, on a cidata ISO as a libvirt/QEMU provider
//! attaches it: a cloud-config `write_files` document (apf.json, auth.json, initdata...).

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;

use crate::PodvmError;

/// A cloud-config document with `write_files` entries (contents base64-encoded, `b64`).
#[derive(Debug, Clone, Default)]
pub struct UserData {
    entries: Vec<(String, Vec<u8>)>,
}

impl UserData {
    /// An empty document.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a file.
    pub fn file(mut self, path: &str, content: impl AsRef<[u8]>) -> Self {
        self.entries
            .push((path.to_string(), content.as_ref().to_vec()));
        self
    }

    /// The pod's initdata (a TOML document), written as its annotation form (base64 of gzip).
    pub fn initdata(self, document: &str) -> Self {
        let encoded = peerpod_policy::initdata::encode_annotation(document.as_bytes());
        self.file("/run/peerpod/initdata", encoded)
    }

    /// The YAML text.
    pub fn to_cloud_config(&self) -> String {
        let mut doc = String::from("#cloud-config\nwrite_files:\n");
        for (path, content) in &self.entries {
            let b64 = base64::engine::general_purpose::STANDARD.encode(content);
            doc.push_str(&format!(
                "- path: {path}\n  encoding: b64\n  content: {b64}\n"
            ));
        }
        doc
    }
}

/// Writes an ISO 9660 image labelled `cidata` with `user-data` and an empty `meta-data` into
/// `dir` (genisoimage, or xorriso's mkisofs mode).
pub fn cidata_iso(dir: &Path, user_data: &str) -> Result<PathBuf, PodvmError> {
    let content = dir.join("cidata");
    std::fs::create_dir_all(&content).map_err(|e| PodvmError::io("create cidata dir", e))?;
    std::fs::write(content.join("user-data"), user_data)
        .map_err(|e| PodvmError::io("write user-data", e))?;
    std::fs::write(content.join("meta-data"), "")
        .map_err(|e| PodvmError::io("write meta-data", e))?;
    let iso = dir.join("cidata.iso");
    let mut last = String::from("neither genisoimage nor xorriso ran");
    for (tool, prefix) in [
        ("genisoimage", &[][..]),
        ("xorriso", &["-as", "mkisofs"][..]),
    ] {
        let out = Command::new(tool)
            .args(prefix)
            .arg("-output")
            .arg(&iso)
            .args(["-volid", "cidata", "-joliet", "-rock", "-quiet"])
            .arg(&content)
            .output();
        match out {
            Ok(o) if o.status.success() => return Ok(iso),
            Ok(o) => last = format!("{tool}: {}", String::from_utf8_lossy(&o.stderr).trim()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(PodvmError::io(format!("run {tool}"), e)),
        }
    }
    if last.starts_with("neither") {
        return Err(PodvmError::MissingTool {
            tool: "genisoimage",
            package: "genisoimage",
        });
    }
    Err(PodvmError::Command {
        command: "genisoimage".into(),
        output: last,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_config_carries_each_file_base64() {
        let doc = UserData::new()
            .file("/run/peerpod/apf.json", "{\"a\": \"b\\n\"}")
            .to_cloud_config();
        assert!(doc.starts_with("#cloud-config\nwrite_files:\n- path: /run/peerpod/apf.json\n"));
        assert!(
            doc.contains("  encoding: b64\n  content: eyJhIjogImJcbiJ9\n"),
            "{doc}"
        );
    }
}
