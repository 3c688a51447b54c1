//! Entry points for the fuzz target `aa_inputs` in `fuzz/` and the in-tree mutation test: the
//! attestation agent's parsers of outside input — `aa.toml` (delivered by initdata), the
//! `aa_kbc_params` fallback, and the event log read back from disk. None may panic.

use std::path::Path;

use crate::config::AaConfig;
use crate::eventlog;

/// Feeds bytes to every parser; the first byte picks the kind of input.
pub fn aa_inputs(data: &[u8]) {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    match kind % 3 {
        0 => {
            if let Ok(text) = std::str::from_utf8(rest)
                && let Ok(c) = AaConfig::parse(text)
            {
                assert!(c.init_pcr < 24, "init_pcr out of range accepted");
                if let Some(k) = &c.kbs {
                    assert!(k.url.starts_with("http"), "non-HTTP KBS URL accepted");
                }
            }
        }
        1 => {
            let text = String::from_utf8_lossy(rest);
            let mut c = AaConfig::default();
            c.apply_kbc_params(Some(&text), None);
            let mut c = AaConfig::default();
            c.apply_kbc_params(None, Some(&text));
            if let Some(k) = &c.kbs {
                assert!(k.url.starts_with("http"), "non-HTTP KBS URL accepted");
            }
        }
        _ => {
            if let Ok(entries) = eventlog::parse(Path::new("fuzz"), rest) {
                let again: Vec<u8> = entries.iter().flat_map(|e| e.to_bytes()).collect();
                assert_eq!(
                    again, rest,
                    "an event log that parses must re-encode to itself"
                );
            }
        }
    }
}
