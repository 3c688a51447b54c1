//! What the tests share: a resolver over a map of KBS resources, and a driver for futures.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::sync::Mutex;

use peerpod_image_crypt::KeyResolver;
use zeroize::Zeroizing;

/// KBS resources by URI; records the URIs asked for.
#[derive(Default)]
pub struct Kbs {
    pub resources: BTreeMap<String, Vec<u8>>,
    pub asked: Mutex<Vec<String>>,
}

impl Kbs {
    pub fn with(uri: &str, value: &[u8]) -> Self {
        let mut k = Self::default();
        k.resources.insert(uri.to_string(), value.to_vec());
        k
    }
}

#[async_trait::async_trait]
impl KeyResolver for Kbs {
    async fn resource(&self, uri: &str) -> Result<Zeroizing<Vec<u8>>, String> {
        self.asked
            .lock()
            .map_err(|_| "poisoned".to_string())?
            .push(uri.to_string());
        self.resources
            .get(uri)
            .map(|v| Zeroizing::new(v.clone()))
            .ok_or_else(|| format!("the KBS answered 404 for {uri} (attestation refused?)"))
    }
}

/// Runs a future on a fresh current-thread runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a tokio runtime")
        .block_on(f)
}

/// Reads a reader to its end in chunks of `chunk` bytes; the bytes read and the final result.
pub fn read_all(r: &mut dyn std::io::Read, chunk: usize) -> (Vec<u8>, std::io::Result<()>) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; chunk];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return (out, Ok(())),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => return (out, Err(e)),
        }
    }
}

/// Deterministic pseudo-random bytes.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
