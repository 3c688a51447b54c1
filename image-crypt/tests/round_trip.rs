//! Layers encrypted by the test encrypter (coco-keyprovider's format) come back intact through
//! `layer_key` and `decrypting_reader`, whatever the read sizes.

mod common;

use common::{Kbs, block_on, bytes, read_all};
use peerpod_image_crypt::{LayerDecryptor, decrypting_reader, layer_key, testing};
use sha2::{Digest as _, Sha256};

const KID: &str = "kbs:///default/image-kek/app";

#[test]
fn layers_of_every_size_decrypt_to_their_plaintext() {
    let kek = [0x11u8; 32];
    let kbs = Kbs::with(KID, &kek);
    for (i, len) in [0usize, 1, 15, 16, 17, 4095, 65536, 1 << 20]
        .into_iter()
        .enumerate()
    {
        let plain = bytes(len, i as u64 + 1);
        let (cipher, ann) = testing::encrypt_layer(&plain, &kek, KID);
        assert_eq!(cipher.len(), plain.len());
        if len > 16 {
            assert_ne!(cipher, plain, "the ciphertext is not the plaintext");
        }
        let key = block_on(layer_key(&ann, &kbs)).expect("the layer key unwraps");
        assert_eq!(key.kid(), KID);
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&plain)));
        assert_eq!(key.plain_digest(), Some(digest.as_str()));
        for chunk in [1, 7, 16, 4096, 1 << 16] {
            if len > 70_000 && chunk < 4096 {
                continue;
            }
            let (out, end) = read_all(&mut decrypting_reader(cipher.as_slice(), &key), chunk);
            end.expect("the HMAC matches");
            assert!(out == plain, "len {len} chunk {chunk}: plaintext differs");
        }
        let mut d = LayerDecryptor::new(&key);
        let mut buf = cipher.clone();
        for part in buf.chunks_mut(1000) {
            d.update(part);
        }
        d.finish()
            .expect("the sans-I/O decryptor authenticates it too");
        assert!(buf == plain);
    }
    assert_eq!(
        kbs.asked.lock().expect("lock").len(),
        8,
        "one KBS fetch per layer key"
    );
}

#[test]
fn the_reader_stays_at_its_end() {
    let kek = [0x12u8; 32];
    let plain = bytes(1000, 9);
    let (cipher, ann) = testing::encrypt_layer(&plain, &kek, KID);
    let key = block_on(layer_key(&ann, &Kbs::with(KID, &kek))).expect("key");
    let mut r = decrypting_reader(cipher.as_slice(), &key);
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut r, &mut out).expect("authentic");
    let mut more = [0u8; 8];
    assert_eq!(
        std::io::Read::read(&mut r, &mut more).expect("still at the end"),
        0
    );
    assert_eq!(out, plain);
}

#[test]
fn a_second_wrapped_key_is_used_when_the_first_cannot_be() {
    let kek = [0x13u8; 32];
    let plain = bytes(3000, 3);
    let (cipher, mut ann) = testing::encrypt_layer(&plain, &kek, KID);
    // A first entry for a KEK this pod is not given, as when an image is encrypted for two.
    let other = testing::wrap(b"{}", &[0x77; 32], "kbs:///default/image-kek/other-tenant");
    let value = ann
        .get_mut(peerpod_image_crypt::KEYPROVIDER_ANNOTATION)
        .expect("annotation");
    use base64::Engine as _;
    *value = format!(
        "{},{value}",
        base64::engine::general_purpose::STANDARD.encode(other)
    );
    let kbs = Kbs::with(KID, &kek);
    let key = block_on(layer_key(&ann, &kbs)).expect("the second entry works");
    let (out, end) = read_all(&mut decrypting_reader(cipher.as_slice(), &key), 512);
    end.expect("authentic");
    assert_eq!(out, plain);
    assert_eq!(
        *kbs.asked.lock().expect("lock"),
        vec![
            "kbs:///default/image-kek/other-tenant".to_string(),
            KID.to_string()
        ]
    );
}

#[test]
fn the_first_packet_form_without_version_and_provider_is_read() {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    let kek = [0x14u8; 32];
    let plain = bytes(5000, 4);
    let (cipher, mut ann) = testing::encrypt_layer(&plain, &kek, KID);
    let name = peerpod_image_crypt::KEYPROVIDER_ANNOTATION;
    let mut packet: serde_json::Value =
        serde_json::from_slice(&STANDARD.decode(&ann[name]).expect("b64")).expect("JSON");
    let obj = packet.as_object_mut().expect("object");
    for field in ["version", "provider", "provider_settings", "annotations"] {
        assert!(obj.remove(field).is_some(), "{field}");
    }
    let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    assert_eq!(keys, ["iv", "kid", "wrap_type", "wrapped_data"]);
    ann.insert(name.to_string(), STANDARD.encode(packet.to_string()));
    let key = block_on(layer_key(&ann, &Kbs::with(KID, &kek))).expect("v1 packet");
    let (out, end) = read_all(&mut decrypting_reader(cipher.as_slice(), &key), 1000);
    end.expect("authentic");
    assert_eq!(out, plain);
}
