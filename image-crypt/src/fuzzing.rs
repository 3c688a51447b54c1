//! Entry points for the fuzz target in `fuzz/` and the in-tree mutation test: arbitrary bytes
//! as the annotations of an encrypted layer, as the documents inside them, and as ciphertext.
//! None may panic, and no error may quote the test KEK or a layer key.

use std::collections::BTreeMap;
use std::future::Future as _;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

use crate::key::KeyResolver;

/// The KEK the fuzz resolver hands out for every `kid`.
pub const FUZZ_KEK: [u8; 32] = [0x4b; 32];

struct Fixed;

#[async_trait::async_trait]
impl KeyResolver for Fixed {
    async fn resource(&self, uri: &str) -> Result<Zeroizing<Vec<u8>>, String> {
        if uri.ends_with("missing") {
            Err("no such resource".into())
        } else {
            Ok(Zeroizing::new(FUZZ_KEK.to_vec()))
        }
    }
}

/// Feeds `data` to the parsers. The first byte picks the input: 0 the public options JSON,
/// 1 the private options JSON, 2 a key packet JSON, 3 a JWE (opened with a fixed P-256 key),
/// anything else annotations as
/// `name=value` lines, then (if a key comes out) the rest after a blank line as ciphertext.
pub fn annotations(data: &[u8]) {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    match kind {
        0 => {
            let _ = crate::options::parse_public(body);
        }
        1 => {
            if let Err(e) = crate::options::parse_private(body) {
                let _ = e.to_string();
            }
        }
        2 => {
            if let Ok(p) = crate::packet::Packet::parse(body) {
                let _ = p.open(&FUZZ_KEK);
            }
        }
        3 => {
            if let Some(key) = crate::jwe::JwePrivateKey::fuzz_key() {
                let _ = crate::jwe::open(body, std::slice::from_ref(&key));
            }
        }
        _ => layer(body),
    }
}

fn layer(body: &[u8]) {
    let text = String::from_utf8_lossy(body);
    let (head, cipher) = text.split_once("\n\n").unwrap_or((&text, ""));
    let map: BTreeMap<String, String> = head
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let jwe: Vec<_> = crate::jwe::JwePrivateKey::fuzz_key().into_iter().collect();
    let fut = pin!(crate::key::layer_key_with(&map, &Fixed, &jwe));
    let mut cx = Context::from_waker(Waker::noop());
    // The fixed resolver never waits: one poll finishes.
    let Poll::Ready(result) = fut.poll(&mut cx) else {
        return;
    };
    match result {
        Ok(key) => {
            let _ = format!("{key:?}");
            let mut out = Vec::new();
            let _ = std::io::Read::read_to_end(
                &mut crate::decrypting_reader(cipher.as_bytes(), &key),
                &mut out,
            );
        }
        Err(e) => {
            // The KEK only reaches the text if this crate put it there, unless the input itself
            // spells it (a kid may be quoted).
            let text = format!("{e} {e:?}");
            let kek = STANDARD.encode(FUZZ_KEK);
            assert!(
                !text.contains(&kek) || text_in(body).contains(&kek),
                "the KEK leaked: {text}"
            );
        }
    }
}

fn text_in(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}
