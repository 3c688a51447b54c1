//! signedBy (simple signing): keys and signatures made by GnuPG, signatures served by a real
//! HTTPS lookaside, keys fetched through the resource fetcher (`kbs:///`) or inline.

mod common;

use std::sync::atomic::Ordering;

use base64::Engine;
use common::*;
use peerpod_image_signature::{AcceptedBy, LookasideConfig};

const KEY_URI: &str = "kbs:///default/simple-signing-key/app";
const APP: &str = "registry.example/app";

fn policy_for_key_uri(identity: &str) -> String {
    format!(
        r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{"{APP}":[{{"type":"signedBy","keyType":"GPGKeys","keyPath":"{KEY_URI}"{identity}}}]}}}}}}"#
    )
}

struct World {
    gpg: Gpg,
    key: String,
    lookaside: Lookaside,
    resources: MemResources,
    digest: String,
}

fn world() -> Option<World> {
    let gpg = Gpg::new()?;
    let key = gpg.generate("signer", "ed25519");
    let resources = MemResources::with(KEY_URI, gpg.export(&key, false));
    let (_, digest) = manifest("app v1");
    Some(World {
        gpg,
        key,
        lookaside: Lookaside::start(),
        resources,
        digest,
    })
}

#[tokio::test]
async fn signed_image_is_accepted_with_the_key_from_the_kbs() -> TestResult {
    let Some(w) = world() else { return Ok(()) };
    let sig = w.gpg.sign(
        &w.key,
        &simple_payload("registry.example/app:v1", &w.digest),
        &[],
    );
    w.lookaside.put("app", &w.digest, 1, sig);
    let img = image("registry.example", "app", Some("v1"), &w.digest);
    let accepted = check(
        &policy_for_key_uri(""),
        &img,
        &MemRegistry::default(),
        &w.resources,
        Some(&w.lookaside.config()),
    )
    .await?;
    assert_eq!(accepted.scope, format!("transports.docker[\"{APP}\"]"));
    assert_eq!(
        accepted.by,
        vec![AcceptedBy::SignedBy {
            fingerprint: w.key.clone()
        }]
    );
    assert_eq!(
        *w.resources.asked.lock().expect("lock"),
        vec![KEY_URI.to_string()]
    );
    // signature-1 was read, then signature-2 answered 404 and ended the list.
    assert_eq!(w.lookaside.hits.load(Ordering::SeqCst), 2);
    Ok(())
}

#[tokio::test]
async fn unsigned_image_is_refused() -> TestResult {
    let Some(w) = world() else { return Ok(()) };
    let img = image("registry.example", "app", Some("v1"), &w.digest);
    let (rule, reason) = refusal(
        check(
            &policy_for_key_uri(""),
            &img,
            &MemRegistry::default(),
            &w.resources,
            Some(&w.lookaside.config()),
        )
        .await,
    );
    assert_eq!(rule, format!("transports.docker[\"{APP}\"][0] signedBy"));
    assert!(reason.contains("no signature"), "{reason}");
    Ok(())
}

#[tokio::test]
async fn signature_by_another_key_is_refused() -> TestResult {
    let Some(w) = world() else { return Ok(()) };
    let other = w.gpg.generate("intruder", "ed25519");
    let sig = w.gpg.sign(
        &other,
        &simple_payload("registry.example/app:v1", &w.digest),
        &[],
    );
    w.lookaside.put("app", &w.digest, 1, sig);
    let img = image("registry.example", "app", Some("v1"), &w.digest);
    let (_, reason) = refusal(
        check(
            &policy_for_key_uri(""),
            &img,
            &MemRegistry::default(),
            &w.resources,
            Some(&w.lookaside.config()),
        )
        .await,
    );
    assert!(
        reason.contains("not signed by any of the policy's keys"),
        "{reason}"
    );
    assert!(
        reason.contains(&w.key),
        "the reason names the trusted key: {reason}"
    );
    Ok(())
}

#[tokio::test]
async fn signature_for_another_identity_is_refused() -> TestResult {
    let Some(w) = world() else { return Ok(()) };
    let sig = w.gpg.sign(
        &w.key,
        &simple_payload("registry.example/other:v1", &w.digest),
        &[],
    );
    w.lookaside.put("app", &w.digest, 1, sig);
    let img = image("registry.example", "app", Some("v1"), &w.digest);
    let (_, reason) = refusal(
        check(
            &policy_for_key_uri(""),
            &img,
            &MemRegistry::default(),
            &w.resources,
            Some(&w.lookaside.config()),
        )
        .await,
    );
    assert!(
        reason.contains("registry.example/other:v1") && reason.contains("matchRepoDigestOrExact"),
        "{reason}"
    );
    // Another tag of the same repository is another identity under the default rule.
    let sig = w.gpg.sign(
        &w.key,
        &simple_payload("registry.example/app:v2", &w.digest),
        &[],
    );
    w.lookaside.put("app", &w.digest, 1, sig);
    refusal(
        check(
            &policy_for_key_uri(""),
            &img,
            &MemRegistry::default(),
            &w.resources,
            Some(&w.lookaside.config()),
        )
        .await,
    );
    Ok(())
}

#[tokio::test]
async fn signature_for_another_manifest_is_refused() -> TestResult {
    let Some(w) = world() else { return Ok(()) };
    let (_, other_digest) = manifest("app v0");
    // Published under the pulled digest's path, but signing another manifest.
    let sig = w.gpg.sign(
        &w.key,
        &simple_payload("registry.example/app:v1", &other_digest),
        &[],
    );
    w.lookaside.put("app", &w.digest, 1, sig);
    let img = image("registry.example", "app", Some("v1"), &w.digest);
    let (_, reason) = refusal(
        check(
            &policy_for_key_uri(""),
            &img,
            &MemRegistry::default(),
            &w.resources,
            Some(&w.lookaside.config()),
        )
        .await,
    );
    assert!(
        reason.contains(&other_digest) && reason.contains("manifest"),
        "{reason}"
    );
    Ok(())
}

#[tokio::test]
async fn tampered_weak_and_garbage_signatures_are_refused() -> TestResult {
    let Some(w) = world() else { return Ok(()) };
    let img = image("registry.example", "app", Some("v1"), &w.digest);
    let payload = simple_payload("registry.example/app:v1", &w.digest);
    // Uncompressed, so the payload bytes are in the clear and can be changed.
    let mut tampered = w.gpg.sign(&w.key, &payload, &["--compress-algo", "none"]);
    let at = tampered
        .windows(4)
        .position(|x| x == b"app:")
        .expect("payload in the clear");
    tampered[at] = b'b';
    // SHA-1 over an RSA key (rpgp itself refuses SHA-1 with Ed25519); the keyring holds both.
    let rsa = w.gpg.generate("rsa-signer", "rsa2048");
    let weak = w.gpg.sign(&rsa, &payload, &["--digest-algo", "SHA1"]);
    let mut ring = w.gpg.export(&w.key, false);
    ring.extend(w.gpg.export(&rsa, false));
    let resources = MemResources::with(KEY_URI, ring);
    let detached = {
        let mut c = w.gpg.cmd();
        let path = w.gpg.home().join("detached-payload");
        std::fs::write(&path, &payload)?;
        let out = c
            .args(["--local-user", &w.key, "--detach-sign", "--output", "-"])
            .arg(&path)
            .output()?;
        out.stdout
    };
    for (name, sig, expect) in [
        ("tampered", tampered, "not signed by"),
        ("sha1", weak, "weak hash"),
        ("detached", detached, "OpenPGP"),
        (
            "garbage",
            b"not a signature".to_vec(),
            "not an OpenPGP message",
        ),
        ("empty", Vec::new(), ""),
        ("payload", payload.clone(), ""),
    ] {
        w.lookaside.put("app", &w.digest, 1, sig);
        let (_, reason) = refusal(
            check(
                &policy_for_key_uri(""),
                &img,
                &MemRegistry::default(),
                &resources,
                Some(&w.lookaside.config()),
            )
            .await,
        );
        assert!(reason.contains(expect), "{name}: {reason}");
    }
    Ok(())
}

#[tokio::test]
async fn a_later_good_signature_is_enough_and_each_bad_one_is_reported() -> TestResult {
    let Some(w) = world() else { return Ok(()) };
    let other = w.gpg.generate("intruder", "ed25519");
    let payload = simple_payload("registry.example/app:v1", &w.digest);
    w.lookaside
        .put("app", &w.digest, 1, w.gpg.sign(&other, &payload, &[]));
    w.lookaside
        .put("app", &w.digest, 2, w.gpg.sign(&w.key, &payload, &[]));
    let img = image("registry.example", "app", Some("v1"), &w.digest);
    let accepted = check(
        &policy_for_key_uri(""),
        &img,
        &MemRegistry::default(),
        &w.resources,
        Some(&w.lookaside.config()),
    )
    .await?;
    assert_eq!(
        accepted.by,
        vec![AcceptedBy::SignedBy {
            fingerprint: w.key.clone()
        }]
    );
    Ok(())
}

#[tokio::test]
async fn subkeys_armored_inline_keys_and_rsa_keys_verify() -> TestResult {
    let Some(w) = world() else { return Ok(()) };
    let payload = simple_payload("registry.example/app:v1", &w.digest);
    let img = image("registry.example", "app", Some("v1"), &w.digest);
    // A signing subkey: gpg signs with it, the policy holds the whole (armored, inline) key.
    let subkey = w.gpg.add_signing_subkey(&w.key);
    w.lookaside
        .put("app", &w.digest, 1, w.gpg.sign(&w.key, &payload, &[]));
    let armored = base64::engine::general_purpose::STANDARD.encode(w.gpg.export(&w.key, true));
    let inline = format!(
        r#"{{"default":[{{"type":"signedBy","keyType":"GPGKeys","keyData":"{armored}"}}]}}"#
    );
    let accepted = check(
        &inline,
        &img,
        &MemRegistry::default(),
        &MemResources::default(),
        Some(&w.lookaside.config()),
    )
    .await?;
    assert_eq!(
        accepted.by,
        vec![AcceptedBy::SignedBy {
            fingerprint: subkey
        }]
    );
    // RSA, the usual key of older setups, in a keyring with another key.
    let rsa = w.gpg.generate("rsa-signer", "rsa2048");
    w.lookaside
        .put("app", &w.digest, 1, w.gpg.sign(&rsa, &payload, &[]));
    let mut ring = w.gpg.export(&w.key, false);
    ring.extend(w.gpg.export(&rsa, false));
    let resources = MemResources::with(KEY_URI, ring);
    let accepted = check(
        &policy_for_key_uri(""),
        &img,
        &MemRegistry::default(),
        &resources,
        Some(&w.lookaside.config()),
    )
    .await?;
    assert_eq!(accepted.by, vec![AcceptedBy::SignedBy { fingerprint: rsa }]);
    Ok(())
}

#[tokio::test]
async fn signed_identity_rules() -> TestResult {
    let Some(w) = world() else { return Ok(()) };
    let d = &w.digest;
    let by_tag = image("registry.example", "app", Some("v1"), d);
    let by_digest = image("registry.example", "app", None, d);
    let mirror = image("mirror.example", "team/app", Some("v1"), d);
    let rule = |t: &str| format!(r#","signedIdentity":{t}"#);
    let exact = rule(r#"{"type":"matchExact"}"#);
    let repo = rule(r#"{"type":"matchRepository"}"#);
    let exact_ref =
        rule(r#"{"type":"exactReference","dockerReference":"quay.io/upstream/app:v1"}"#);
    let exact_repo =
        rule(r#"{"type":"exactRepository","dockerRepository":"quay.io/upstream/app"}"#);
    let remap = rule(
        r#"{"type":"remapIdentity","prefix":"mirror.example/team","signedPrefix":"quay.io/upstream"}"#,
    );
    // (image, signed reference, signedIdentity, accepted?)
    let cases: Vec<(&peerpod_image_signature::ImageIdentity, String, &str, bool)> = vec![
        (&by_tag, "registry.example/app:v1".into(), "", true),
        (&by_tag, "registry.example/app".into(), "", false),
        (&by_digest, "registry.example/app:v7".into(), "", true),
        (&by_digest, "registry.example/app".into(), "", true),
        (&by_digest, "registry.example/other:v1".into(), "", false),
        (&by_tag, "registry.example/app:v1".into(), &exact, true),
        (&by_digest, "registry.example/app:v1".into(), &exact, false),
        (
            &by_digest,
            format!("registry.example/app@{d}"),
            &exact,
            true,
        ),
        (&by_tag, "registry.example/app:other".into(), &repo, true),
        (&by_tag, "registry.example/apps:v1".into(), &repo, false),
        (&by_tag, "quay.io/upstream/app:v1".into(), &exact_ref, true),
        (&by_tag, "quay.io/upstream/app:v2".into(), &exact_ref, false),
        (&by_tag, "quay.io/upstream/app:v2".into(), &exact_repo, true),
        (
            &by_tag,
            "quay.io/upstream/other:v1".into(),
            &exact_repo,
            false,
        ),
        (&mirror, "quay.io/upstream/app:v1".into(), &remap, true),
        (&mirror, "mirror.example/team/app:v1".into(), &remap, false),
        (&mirror, "quay.io/upstream/app:v2".into(), &remap, false),
    ];
    for (img, signed, identity, ok) in cases {
        let payload = simple_payload(&signed, d);
        w.lookaside
            .put(&img.repository, d, 1, w.gpg.sign(&w.key, &payload, &[]));
        let policy = format!(
            r#"{{"default":[{{"type":"signedBy","keyType":"GPGKeys","keyPath":"{KEY_URI}"{identity}}}]}}"#
        );
        let result = check(
            &policy,
            img,
            &MemRegistry::default(),
            &w.resources,
            Some(&w.lookaside.config()),
        )
        .await;
        assert_eq!(
            result.is_ok(),
            ok,
            "{img:?} signed as {signed} under {identity:?}: {result:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn lookaside_is_bounded_and_its_failures_refuse() -> TestResult {
    let Some(w) = world() else { return Ok(()) };
    let img = image("registry.example", "app", Some("v1"), &w.digest);
    let other = w.gpg.generate("intruder", "ed25519");
    let bad = w.gpg.sign(
        &other,
        &simple_payload("registry.example/app:v1", &w.digest),
        &[],
    );
    // A store that never ends: 40 signatures, read up to 16.
    for n in 1..=40 {
        w.lookaside.put("app", &w.digest, n, bad.clone());
    }
    refusal(
        check(
            &policy_for_key_uri(""),
            &img,
            &MemRegistry::default(),
            &w.resources,
            Some(&w.lookaside.config()),
        )
        .await,
    );
    assert_eq!(w.lookaside.hits.load(Ordering::SeqCst), 16);
    // Oversized.
    w.lookaside.put("app", &w.digest, 1, vec![0x90; 65 << 10]);
    let (_, reason) = refusal(
        check(
            &policy_for_key_uri(""),
            &img,
            &MemRegistry::default(),
            &w.resources,
            Some(&w.lookaside.config()),
        )
        .await,
    );
    assert!(reason.contains("larger than"), "{reason}");
    // A server error is not "no more signatures".
    w.lookaside.put_status("app", &w.digest, 1, 500, Vec::new());
    let (_, reason) = refusal(
        check(
            &policy_for_key_uri(""),
            &img,
            &MemRegistry::default(),
            &w.resources,
            Some(&w.lookaside.config()),
        )
        .await,
    );
    assert!(reason.contains("500"), "{reason}");
    // The lookaside's certificate is not trusted by a client that does not know the test CA.
    let untrusting = LookasideConfig::parse(
        format!("default-docker:\n  lookaside: {}\n", w.lookaside.base()).as_bytes(),
    )?;
    let (_, reason) = refusal(
        check(
            &policy_for_key_uri(""),
            &img,
            &MemRegistry::default(),
            &w.resources,
            Some(&untrusting),
        )
        .await,
    );
    assert!(reason.contains("lookaside"), "{reason}");
    // No lookaside at all.
    let (_, reason) = refusal(
        check(
            &policy_for_key_uri(""),
            &img,
            &MemRegistry::default(),
            &w.resources,
            None,
        )
        .await,
    );
    assert!(reason.contains("sigstore_config_uri"), "{reason}");
    Ok(())
}

#[tokio::test]
async fn most_specific_lookaside_namespace_and_file_stores() -> TestResult {
    let Some(w) = world() else { return Ok(()) };
    let img = image("registry.example", "team/app", Some("v1"), &w.digest);
    let payload = simple_payload("registry.example/team/app:v1", &w.digest);
    let sig = w.gpg.sign(&w.key, &payload, &[]);
    // A file:// store for the namespace, an empty HTTPS default.
    let dir = peerpod_tests::scratch::ScratchDir::new("sig-file-store")?;
    let sigdir = dir
        .path()
        .join(format!("team/app@{}", w.digest.replacen(':', "=", 1)));
    std::fs::create_dir_all(&sigdir)?;
    std::fs::write(sigdir.join("signature-1"), &sig)?;
    let yaml = format!(
        "default-docker:\n  lookaside: {}\ndocker:\n  registry.example/team:\n    sigstore: file://{}\n  registry.example/team/other:\n    lookaside: https://unused.invalid\n",
        w.lookaside.base(),
        dir.path().display()
    );
    let config = LookasideConfig::parse(yaml.as_bytes())?;
    let policy = format!(
        r#"{{"default":[{{"type":"signedBy","keyType":"GPGKeys","keyPath":"{KEY_URI}"}}]}}"#
    );
    check(
        &policy,
        &img,
        &MemRegistry::default(),
        &w.resources,
        Some(&config),
    )
    .await?;
    assert_eq!(
        w.lookaside.hits.load(Ordering::SeqCst),
        0,
        "the default lookaside was not used"
    );
    Ok(())
}

/// A signature made by skopeo itself (`skopeo standalone-sign`, the way images are signed for
/// simple signing) is accepted; a `skopeo`-signed other manifest is not.
#[tokio::test]
async fn skopeo_standalone_signature_is_accepted() -> TestResult {
    let Some(w) = world() else { return Ok(()) };
    if !have_tool("skopeo", "skopeo") {
        return Ok(());
    }
    let (body, digest) = manifest("skopeo signed");
    let path = w.gpg.home().join("manifest.json");
    std::fs::write(&path, &body)?;
    let out_path = w.gpg.home().join("skopeo.sig");
    let out = std::process::Command::new("skopeo")
        .env("GNUPGHOME", w.gpg.home())
        .arg("standalone-sign")
        .arg(&path)
        .args(["registry.example/app:v1", &w.key, "--output"])
        .arg(&out_path)
        .output()?;
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    w.lookaside
        .put("app", &digest, 1, std::fs::read(&out_path)?);
    let img = image("registry.example", "app", Some("v1"), &digest);
    check(
        &policy_for_key_uri(""),
        &img,
        &MemRegistry::default(),
        &w.resources,
        Some(&w.lookaside.config()),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn expired_and_revoked_keys_do_not_verify() -> TestResult {
    let Some(w) = world() else { return Ok(()) };
    let img = image("registry.example", "app", Some("v1"), &w.digest);
    let payload = simple_payload("registry.example/app:v1", &w.digest);
    // Expired: made and used in 2020, with a lifetime of one day.
    let old = w.gpg.generate_expired("old");
    let sig = w
        .gpg
        .sign(&old, &payload, &["--faked-system-time", "20200101T010000"]);
    w.lookaside.put("app", &w.digest, 1, sig);
    let resources = MemResources::with(KEY_URI, w.gpg.export(&old, false));
    let (_, reason) = refusal(
        check(
            &policy_for_key_uri(""),
            &img,
            &MemRegistry::default(),
            &resources,
            Some(&w.lookaside.config()),
        )
        .await,
    );
    assert!(reason.contains("expired"), "{reason}");
    // Revoked: a good signature, then the owner revokes the key.
    let sig = w.gpg.sign(&w.key, &payload, &[]);
    w.lookaside.put("app", &w.digest, 1, sig);
    check(
        &policy_for_key_uri(""),
        &img,
        &MemRegistry::default(),
        &w.resources,
        Some(&w.lookaside.config()),
    )
    .await?;
    w.gpg.revoke(&w.key);
    let resources = MemResources::with(KEY_URI, w.gpg.export(&w.key, false));
    let (_, reason) = refusal(
        check(
            &policy_for_key_uri(""),
            &img,
            &MemRegistry::default(),
            &resources,
            Some(&w.lookaside.config()),
        )
        .await,
    );
    assert!(reason.contains("revoked"), "{reason}");
    Ok(())
}
