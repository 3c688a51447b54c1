//! Entry points for the fuzz target `cdh_inputs` in `fuzz/` and the in-tree mutation test: the
//! CDH's parsers of outside input — `cdh.toml` (initdata delivers it), sealed secrets, resource
//! URIs, key-provider requests, secure-mount options and `/proc/self/mountinfo` (the scratch
//! space check). None may panic.

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use crate::config::CdhConfig;
use crate::hub::UnwrapRequest;
use crate::sealed::{Sealed, make};
use crate::secure_mount::BlockDevice;
use crate::uri::ResourceUri;

fn jwk() -> &'static [u8] {
    static JWK: OnceLock<Vec<u8>> = OnceLock::new();
    JWK.get_or_init(|| match make::generate_key() {
        Ok(k) => make::public_jwk(&k).to_string().into_bytes(),
        Err(_) => Vec::new(),
    })
}

/// Feeds bytes to every parser; the first byte picks the kind of input.
pub fn cdh_inputs(data: &[u8]) {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match kind % 6 {
        0 => {
            if let Ok(c) = CdhConfig::parse(&text) {
                assert!(c.socket.starts_with("unix:///"), "bad socket accepted");
            }
        }
        1 => {
            for verify in [true, false] {
                if let Ok(s) = Sealed::parse(&text, verify)
                    && verify
                {
                    let _ = s.verify(jwk());
                    let _ = s.verify(rest);
                }
            }
        }
        2 => {
            if let Ok(uri) = ResourceUri::parse(&text) {
                let again = ResourceUri::parse(&uri.to_string()).expect("a printed URI parses");
                assert_eq!(again, uri, "URI round trip changed it");
                assert!(
                    !uri.path.to_string().contains(".."),
                    "a climbing path accepted"
                );
            }
        }
        3 => {
            let _ = UnwrapRequest::parse(rest);
        }
        5 => {
            // Without a sysfs that confirms a dm-crypt device, nothing is ever adopted.
            if let Ok(mounts) = crate::scratch::parse_mountinfo(rest) {
                for m in &mounts {
                    assert!(m.mount_point.starts_with(b"/"), "a relative mount point");
                }
                let verdict = crate::scratch::judge(
                    &mounts,
                    crate::config::SCRATCH_WORK_DIR.as_bytes(),
                    Path::new("/nonexistent-sysfs"),
                );
                assert!(
                    !matches!(verdict, crate::scratch::Verdict::Encrypted { .. }),
                    "adopted without sysfs"
                );
            }
        }
        _ => {
            if let Ok(map) = serde_json::from_slice::<HashMap<String, String>>(rest)
                && let Ok(d) = BlockDevice::parse(&map, Path::new("/nonexistent"))
            {
                assert!(d.device.is_absolute(), "a relative device accepted");
            }
        }
    }
}
