//! An encrypter for tests (feature `testing`): layers encrypted as skopeo with
//! `--encryption-key provider:attestation-agent:…` and coco-keyprovider would encrypt them —
//! AES-256-CTR-HMAC-SHA256 under a random layer key, the private options sealed with the KEK by
//! AES-256-GCM in a v2 annotation packet. Not for production: it holds the whole layer in memory.

use std::collections::BTreeMap;

use aes_gcm::aead::{Aead as _, KeyInit as _};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ctr::cipher::{KeyIvInit as _, StreamCipher as _};
use hmac::{Hmac, Mac as _};
use serde_json::json;
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::{KEYPROVIDER_ANNOTATION, LAYER_CIPHER, PUBOPTS_ANNOTATION};

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    if getrandom::fill(&mut b).is_err() {
        panic!("the test encrypter needs the operating system's random generator");
    }
    b
}

/// Encrypts `plain` for the KEK `kek` that the KBS holds as `kid`; returns the ciphertext and
/// the annotations of its descriptor (key-provider packet and pubopts).
pub fn encrypt_layer(
    plain: &[u8],
    kek: &[u8; 32],
    kid: &str,
) -> (Vec<u8>, BTreeMap<String, String>) {
    let symkey = Zeroizing::new(random::<32>());
    let nonce = random::<16>();
    let (cipher, tag) = encrypt_with(plain, &symkey, &nonce);
    let private = private_options(
        &symkey,
        &nonce,
        &format!("sha256:{}", hex(&Sha256::digest(plain))),
    );
    let mut annotations = BTreeMap::new();
    annotations.insert(
        KEYPROVIDER_ANNOTATION.to_string(),
        STANDARD.encode(wrap(&private, kek, kid)),
    );
    annotations.insert(PUBOPTS_ANNOTATION.to_string(), public_options(&tag));
    (cipher, annotations)
}

/// AES-256-CTR of `plain` from `nonce` and the HMAC-SHA256 of the result under `symkey`.
pub fn encrypt_with(plain: &[u8], symkey: &[u8; 32], nonce: &[u8; 16]) -> (Vec<u8>, [u8; 32]) {
    let mut data = plain.to_vec();
    let mut c = ctr::Ctr128BE::<aes::Aes256>::new(symkey.into(), nonce.into());
    c.apply_keystream(&mut data);
    let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(symkey)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(&data);
    (data, mac.finalize().into_bytes().into())
}

/// The private options JSON as ocicrypt writes it.
pub fn private_options(symkey: &[u8; 32], nonce: &[u8; 16], digest: &str) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(
        json!({
            "symkey": STANDARD.encode(symkey),
            "digest": digest,
            "cipheroptions": {"nonce": STANDARD.encode(nonce)},
        })
        .to_string()
        .into_bytes(),
    )
}

/// The pubopts annotation value (base64 of the public options JSON), with the HMAC both where
/// ocicrypt-rs (`hmac`) and ocicrypt (`cipheroptions.hmac`) put it.
pub fn public_options(tag: &[u8; 32]) -> String {
    STANDARD.encode(
        json!({
            "cipher": LAYER_CIPHER,
            "hmac": STANDARD.encode(tag),
            "cipheroptions": {"hmac": STANDARD.encode(tag)},
        })
        .to_string(),
    )
}

/// A v2 annotation packet (JSON, not yet base64) sealing `options` with `kek`, as
/// coco-keyprovider writes it.
pub fn wrap(options: &[u8], kek: &[u8; 32], kid: &str) -> Vec<u8> {
    let iv = random::<12>();
    let sealed = Aes256Gcm::new(kek.into())
        .encrypt(&Nonce::from(iv), options)
        .unwrap_or_else(|_| unreachable!("AES-GCM seals any short message"));
    json!({
        "version": crate::packet::VERSION,
        "kid": kid,
        "wrapped_data": STANDARD.encode(sealed),
        "provider": "kbs",
        "iv": STANDARD.encode(iv),
        "wrap_type": crate::packet::WRAP_TYPE,
        "provider_settings": {},
        "annotations": {},
    })
    .to_string()
    .into_bytes()
}

/// Opens a packet (JSON) with `kek`: the options it seals, for the test key provider's
/// `keyunwrap`.
pub fn unwrap(packet: &[u8], kek: &[u8]) -> Result<Zeroizing<Vec<u8>>, crate::CryptError> {
    crate::packet::Packet::parse(packet)?.open(kek)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
