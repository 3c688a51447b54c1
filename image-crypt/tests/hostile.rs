//! The attacker's side: a host or registry that alters the layer, its HMAC, its annotations or
//! the wrapped key, a KBS that refuses or hands out the wrong KEK. Every case is refused, the
//! error names the cause, and nothing secret is in any error or Debug text.

mod common;

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::{Kbs, block_on, bytes, read_all};
use peerpod_image_crypt::{
    CryptError, KEYPROVIDER_ANNOTATION, PUBOPTS_ANNOTATION, decrypting_reader, layer_key, testing,
};
use serde_json::Value;

const KID: &str = "kbs:///default/image-kek/app";

/// An alteration of a JSON document, with what the refusal must say.
type Change = Box<dyn Fn(&mut Value)>;
const KEK: [u8; 32] = [
    0xd1, 0x3e, 0x55, 0x02, 0x9a, 0x41, 0x7c, 0xee, 0x10, 0x82, 0x6b, 0x3f, 0xa0, 0x04, 0x99, 0x5d,
    0x27, 0xc8, 0x61, 0x0e, 0xf3, 0x4a, 0x88, 0x1b, 0x5c, 0x76, 0x2d, 0x9e, 0x03, 0xb4, 0x6f, 0x12,
];

fn layer() -> (Vec<u8>, Vec<u8>, BTreeMap<String, String>) {
    let plain = bytes(20_000, 42);
    let (cipher, ann) = testing::encrypt_layer(&plain, &KEK, KID);
    (plain, cipher, ann)
}

fn decode(ann: &BTreeMap<String, String>, name: &str) -> Value {
    let raw = STANDARD.decode(&ann[name]).expect("base64");
    serde_json::from_slice(&raw).expect("JSON")
}

fn encode(ann: &mut BTreeMap<String, String>, name: &str, v: &Value) {
    ann.insert(name.to_string(), STANDARD.encode(v.to_string()));
}

/// Decrypts `cipher` with the key of `ann`; the error text at the end, or `None` if it passed.
fn decrypt_error(cipher: &[u8], ann: &BTreeMap<String, String>) -> Option<String> {
    let key = block_on(layer_key(ann, &Kbs::with(KID, &KEK))).expect("the key itself unwraps");
    let (_, end) = read_all(&mut decrypting_reader(cipher, &key), 4096);
    end.err().map(|e| {
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        let inner = e.get_ref().and_then(|i| i.downcast_ref::<CryptError>());
        assert!(
            matches!(inner, Some(CryptError::Authentication { kid }) if kid == KID),
            "{e:?}"
        );
        e.to_string()
    })
}

#[test]
fn altered_ciphertext_fails_at_the_end_of_the_stream() {
    let (_, cipher, ann) = layer();
    for at in [0, 1, 9_999, cipher.len() - 1] {
        let mut bad = cipher.clone();
        bad[at] ^= 0x01;
        let e = decrypt_error(&bad, &ann).expect("a flipped bit is refused");
        assert!(
            e.contains("failed authentication") && e.contains(KID),
            "{e}"
        );
    }
    assert!(
        decrypt_error(&cipher[..cipher.len() - 1], &ann).is_some(),
        "truncated"
    );
    assert!(decrypt_error(&cipher[..0], &ann).is_some(), "emptied");
    let mut longer = cipher.clone();
    longer.push(0);
    assert!(decrypt_error(&longer, &ann).is_some(), "extended");
    assert!(
        decrypt_error(&cipher, &ann).is_none(),
        "the original passes"
    );
}

#[test]
fn the_error_repeats_on_every_read_after_it() {
    let (_, mut cipher, ann) = layer();
    cipher[5] ^= 0x80;
    let key = block_on(layer_key(&ann, &Kbs::with(KID, &KEK))).expect("key");
    let mut r = decrypting_reader(cipher.as_slice(), &key);
    let (_, end) = read_all(&mut r, 1 << 16);
    assert!(end.is_err());
    let mut buf = [0u8; 16];
    for _ in 0..3 {
        let e = std::io::Read::read(&mut r, &mut buf).expect_err("still failed");
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    }
}

#[test]
fn an_altered_or_missing_hmac_is_refused() {
    let (_, cipher, ann) = layer();
    // Another valid-looking HMAC in both places.
    let mut a = ann.clone();
    let mut p = decode(&a, PUBOPTS_ANNOTATION);
    let other = STANDARD.encode([0u8; 32]);
    p["hmac"] = other.clone().into();
    p["cipheroptions"]["hmac"] = other.into();
    encode(&mut a, PUBOPTS_ANNOTATION, &p);
    assert!(decrypt_error(&cipher, &a).is_some());
    // Only in one place, differing from the other.
    let mut b = ann.clone();
    let mut p = decode(&b, PUBOPTS_ANNOTATION);
    p["hmac"] = STANDARD.encode([1u8; 32]).into();
    encode(&mut b, PUBOPTS_ANNOTATION, &p);
    let e = block_on(layer_key(&b, &Kbs::with(KID, &KEK))).expect_err("disagreeing HMACs");
    assert!(e.to_string().contains("differ"), "{e}");
    // No HMAC at all.
    let mut c = ann.clone();
    let mut p = decode(&c, PUBOPTS_ANNOTATION);
    p["hmac"] = Value::Null;
    p["cipheroptions"] = Value::Null;
    encode(&mut c, PUBOPTS_ANNOTATION, &p);
    let e = block_on(layer_key(&c, &Kbs::with(KID, &KEK))).expect_err("no HMAC");
    assert!(e.to_string().contains("cannot be authenticated"), "{e}");
    // No pubopts.
    let mut d = ann.clone();
    d.remove(PUBOPTS_ANNOTATION);
    let e = block_on(layer_key(&d, &Kbs::with(KID, &KEK))).expect_err("no pubopts");
    assert!(matches!(e, CryptError::NoPublicOptions { .. }), "{e}");
}

#[test]
fn altered_public_options_are_refused() {
    let (_, _, ann) = layer();
    let cases: Vec<(&str, Change)> = vec![
        (
            "not supported",
            Box::new(|p| p["cipher"] = "AES_128_GCM".into()),
        ),
        ("not supported", Box::new(|p| p["cipher"] = Value::Null)),
        (
            "\"nonce\"",
            Box::new(|p| p["cipheroptions"]["nonce"] = STANDARD.encode([0u8; 16]).into()),
        ),
        (
            "32 of HMAC",
            Box::new(|p| p["hmac"] = STANDARD.encode([0u8; 8]).into()),
        ),
        ("base64", Box::new(|p| p["hmac"] = "%%%".into())),
    ];
    for (want, change) in cases {
        let mut a = ann.clone();
        let mut p = decode(&a, PUBOPTS_ANNOTATION);
        change(&mut p);
        encode(&mut a, PUBOPTS_ANNOTATION, &p);
        let e = block_on(layer_key(&a, &Kbs::with(KID, &KEK))).expect_err("refused");
        assert!(e.to_string().contains(want), "{want}: {e}");
    }
    let mut a = ann.clone();
    a.insert(PUBOPTS_ANNOTATION.into(), "not base64!".into());
    assert!(block_on(layer_key(&a, &Kbs::with(KID, &KEK))).is_err());
}

fn packet(ann: &BTreeMap<String, String>) -> Value {
    decode(ann, KEYPROVIDER_ANNOTATION)
}

#[test]
fn an_altered_key_packet_is_refused_naming_the_kid() {
    let (_, _, ann) = layer();
    let flip = |field: &str| {
        let mut a = ann.clone();
        let mut p = packet(&a);
        let mut raw = STANDARD
            .decode(p[field].as_str().expect("field"))
            .expect("b64");
        raw[0] ^= 1;
        p[field] = STANDARD.encode(raw).into();
        encode(&mut a, KEYPROVIDER_ANNOTATION, &p);
        a
    };
    for field in ["wrapped_data", "iv"] {
        let e = block_on(layer_key(&flip(field), &Kbs::with(KID, &KEK))).expect_err(field);
        assert!(
            matches!(&e, CryptError::Unwrap { kid } if kid == KID),
            "{field}: {e}"
        );
        assert!(e.to_string().contains("another KEK"), "{e}");
    }
    // The packet pointed at another resource that the attacker can read: its KEK does not open it.
    let mut a = ann.clone();
    let mut p = packet(&a);
    p["kid"] = "kbs:///default/image-kek/attacker".into();
    encode(&mut a, KEYPROVIDER_ANNOTATION, &p);
    let mut kbs = Kbs::with(KID, &KEK);
    kbs.resources
        .insert("kbs:///default/image-kek/attacker".into(), vec![0x55; 32]);
    let e = block_on(layer_key(&a, &kbs)).expect_err("other KEK");
    assert!(
        e.to_string().contains("kbs:///default/image-kek/attacker"),
        "{e}"
    );

    let cases: Vec<(&str, Change)> = vec![
        ("A256CTR", Box::new(|p| p["wrap_type"] = "A256CTR".into())),
        ("no wrap_type", Box::new(|p| p["wrap_type"] = Value::Null)),
        ("\"aliyun\"", Box::new(|p| p["provider"] = "aliyun".into())),
        ("\"0.2.0\"", Box::new(|p| p["version"] = "0.2.0".into())),
        (
            "kbs:// resource URI",
            Box::new(|p| p["kid"] = "https://evil/k".into()),
        ),
        (
            "kbs:// resource URI",
            Box::new(|p| p["kid"] = "kbs:///a/b/c\nFAKE LOG".into()),
        ),
        (
            "kbs:// resource URI",
            Box::new(|p| p["kid"] = format!("kbs:///{}", "a".repeat(600)).into()),
        ),
        ("no kid", Box::new(|p| p["kid"] = Value::Null)),
        (
            "12 of AES-GCM",
            Box::new(|p| p["iv"] = STANDARD.encode([0u8; 16]).into()),
        ),
        (
            "shorter than",
            Box::new(|p| p["wrapped_data"] = STANDARD.encode([0u8; 4]).into()),
        ),
        ("wrong fields", Box::new(|p| p["iv"] = 5.into())),
    ];
    for (want, change) in cases {
        let mut a = ann.clone();
        let mut p = packet(&a);
        change(&mut p);
        encode(&mut a, KEYPROVIDER_ANNOTATION, &p);
        let kbs = Kbs::with(KID, &KEK);
        let e = block_on(layer_key(&a, &kbs)).expect_err(want);
        let text = e.to_string();
        assert!(text.contains(want), "{want}: {text}");
        assert!(
            !text.contains('\n'),
            "no raw newline from the packet reaches the text: {text}"
        );
        assert!(
            kbs.asked.lock().expect("lock").is_empty(),
            "{want}: no KBS fetch for a bad packet"
        );
    }
}

#[test]
fn the_wrong_kek_or_a_kek_of_the_wrong_size_is_refused() {
    let (_, _, ann) = layer();
    let mut wrong = KEK;
    wrong[31] ^= 1;
    let e = block_on(layer_key(&ann, &Kbs::with(KID, &wrong))).expect_err("wrong KEK");
    assert!(
        matches!(&e, CryptError::Unwrap { kid } if kid == KID),
        "{e}"
    );
    // The kid is the image's to choose: any KBS resource the pod may read can be named as the
    // KEK. The refusal must not tell the host how long that resource is.
    let mut texts = Vec::new();
    for len in [0, 16, 31, 33, 64, 4096] {
        let e = block_on(layer_key(&ann, &Kbs::with(KID, &vec![7u8; len]))).expect_err("size");
        assert!(
            matches!(&e, CryptError::KekSize { kid } if kid == KID),
            "{e}"
        );
        texts.push(format!("{e} | {e:?}"));
    }
    texts.dedup();
    assert_eq!(texts.len(), 1, "the length shows: {texts:?}");
}

#[test]
fn a_resolver_failure_is_surfaced_with_the_kid() {
    let (_, _, ann) = layer();
    let e = block_on(layer_key(&ann, &Kbs::default())).expect_err("no resource");
    let text = e.to_string();
    assert!(matches!(e, CryptError::Resolver { .. }), "{e}");
    assert!(text.contains(KID) && text.contains("404"), "{text}");
}

#[test]
fn layers_without_a_usable_key_annotation_say_what_to_do() {
    let (_, _, ann) = layer();
    let mut none = ann.clone();
    none.remove(KEYPROVIDER_ANNOTATION);
    let e = block_on(layer_key(&none, &Kbs::with(KID, &KEK))).expect_err("none");
    assert!(matches!(e, CryptError::NoKeyAnnotation { .. }), "{e}");
    assert!(e.to_string().contains("provider:attestation-agent"), "{e}");
    let mut jwe = none.clone();
    jwe.insert(
        "org.opencontainers.image.enc.keys.jwe".into(),
        "eyJ9".into(),
    );
    jwe.insert(
        "org.opencontainers.image.enc.keys.provider.other".into(),
        "e30=".into(),
    );
    let e = block_on(layer_key(&jwe, &Kbs::with(KID, &KEK))).expect_err("jwe");
    let text = e.to_string();
    assert!(
        text.contains("\"jwe\"") && text.contains("\"provider.other\""),
        "{text}"
    );
}

#[test]
fn sizes_and_counts_are_bounded() {
    let (_, _, ann) = layer();
    let entry = ann[KEYPROVIDER_ANNOTATION].clone();
    let mut many = ann.clone();
    many.insert(
        KEYPROVIDER_ANNOTATION.into(),
        vec![entry.as_str(); 17].join(","),
    );
    let e = block_on(layer_key(&many, &Kbs::with(KID, &KEK))).expect_err("17 entries");
    assert!(
        matches!(
            e,
            CryptError::TooLarge {
                len: 17,
                max: 16,
                ..
            }
        ),
        "{e}"
    );
    let mut sixteen = ann.clone();
    sixteen.insert(
        KEYPROVIDER_ANNOTATION.into(),
        vec![entry.as_str(); 16].join(","),
    );
    block_on(layer_key(&sixteen, &Kbs::with(KID, &KEK))).expect("16 entries are accepted");
    let mut huge = ann.clone();
    huge.insert(KEYPROVIDER_ANNOTATION.into(), "A".repeat(64 * 1024 + 1));
    let e = block_on(layer_key(&huge, &Kbs::with(KID, &KEK))).expect_err("huge");
    assert!(matches!(e, CryptError::TooLarge { .. }), "{e}");
    let mut big_packet = ann.clone();
    let mut p = packet(&big_packet);
    p["annotations"] = "x".repeat(20_000).into();
    encode(&mut big_packet, KEYPROVIDER_ANNOTATION, &p);
    let e = block_on(layer_key(&big_packet, &Kbs::with(KID, &KEK))).expect_err("big packet");
    assert!(matches!(e, CryptError::TooLarge { .. }), "{e}");
    let mut big_pub = ann.clone();
    big_pub.insert(PUBOPTS_ANNOTATION.into(), "A".repeat(8 * 1024 + 4));
    let e = block_on(layer_key(&big_pub, &Kbs::with(KID, &KEK))).expect_err("big pubopts");
    assert!(matches!(e, CryptError::TooLarge { .. }), "{e}");
}

#[test]
fn wrapped_options_that_are_not_valid_are_refused_without_quoting_them() {
    // A KEK holder (or a buggy encrypter) seals bad options; the key must not leak via errors.
    let symkey = [0xa7u8; 32];
    let key_b64 = STANDARD.encode(symkey);
    let tag = [0u8; 32];
    let cases = [
        format!(r#"{{"symkey":"{key_b64}","digest":"","cipheroptions":{{}}}}"#),
        format!(r#"{{"symkey":"{key_b64}","cipheroptions":{{"nonce":"AAAA"}}}}"#),
        format!(r#"{{"symkey":"{key_b64}","cipheroptions":{{"nonce":7}}}}"#),
        format!(r#"{{"symkey":"{key_b64}" trailing"#),
        format!(
            r#"{{"symkey":"{}","cipheroptions":{{"nonce":"{}"}}}}"#,
            STANDARD.encode([1u8; 16]),
            STANDARD.encode([0u8; 16])
        ),
        format!(
            r#"{{"symkey":"{key_b64}","cipheroptions":{{"nonce":"{}"}},"digest":"sha256:{key_b64}!"}}"#,
            STANDARD.encode([0u8; 16])
        ),
    ];
    for opts in cases {
        let mut ann = BTreeMap::new();
        ann.insert(
            KEYPROVIDER_ANNOTATION.to_string(),
            STANDARD.encode(testing::wrap(opts.as_bytes(), &KEK, KID)),
        );
        ann.insert(
            PUBOPTS_ANNOTATION.to_string(),
            testing::public_options(&tag),
        );
        let e = block_on(layer_key(&ann, &Kbs::with(KID, &KEK))).expect_err(&opts);
        let text = format!("{e} {e:?}");
        assert!(!text.contains(&key_b64) && !text.contains("p6en"), "{text}");
        assert!(text.contains("unwrapped layer options"), "{text}");
    }
}

/// Every way the KEK, the layer key, the nonce and the wrapped options could be spelled.
fn secret_spellings(secret: &[u8]) -> Vec<String> {
    vec![
        hex::encode(secret),
        hex::encode(secret).to_uppercase(),
        STANDARD.encode(secret),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret),
        format!("{secret:?}"),
        format!("{:?}", &secret[..8]),
        String::from_utf8_lossy(secret).into_owned(),
    ]
}

#[test]
fn no_key_bytes_in_any_error_or_debug_text() {
    let (_, cipher, ann) = layer();
    let kbs = Kbs::with(KID, &KEK);
    let key = block_on(layer_key(&ann, &kbs)).expect("key");
    // The layer key and nonce, read back out of the wrapped options with the test's KEK.
    let p = packet(&ann);
    let wrapped = p.to_string();
    let opts = testing::unwrap(wrapped.as_bytes(), &KEK).expect("opens");
    let opts: Value = serde_json::from_slice(&opts).expect("json");
    let symkey = STANDARD
        .decode(opts["symkey"].as_str().expect("symkey"))
        .expect("b64");
    let nonce = STANDARD
        .decode(opts["cipheroptions"]["nonce"].as_str().expect("nonce"))
        .expect("b64");

    let mut texts = vec![
        format!("{key:?}"),
        format!("{:?}", peerpod_image_crypt::LayerDecryptor::new(&key)),
    ];
    texts.push(format!("{:?}", decrypting_reader(cipher.as_slice(), &key)));
    let mut bad = cipher.clone();
    bad[0] ^= 1;
    let (_, end) = read_all(&mut decrypting_reader(bad.as_slice(), &key), 999);
    let e = end.expect_err("tampered");
    texts.push(format!("{e} {e:?}"));
    let mut wrong = KEK;
    wrong[0] ^= 0xff;
    for e in [
        block_on(layer_key(&ann, &Kbs::with(KID, &wrong))).expect_err("wrong KEK"),
        block_on(layer_key(&ann, &Kbs::with(KID, &KEK[..31]))).expect_err("short KEK"),
        block_on(layer_key(&ann, &Kbs::default())).expect_err("no KEK"),
    ] {
        texts.push(format!("{e} {e:?}"));
    }
    let text = texts.join("\n");
    assert!(text.contains(KID), "the kid is named: {text}");
    for secret in [&KEK[..], &wrong[..], &symkey[..], &nonce[..]] {
        for spelling in secret_spellings(secret) {
            assert!(!text.contains(&spelling), "{spelling} leaked in: {text}");
        }
    }
    assert!(!text.contains("symkey"), "{text}");
}
