//! sigstoreSigned (cosign): signatures in cosign's registry format (`sha256-<hex>.sig`, payload
//! layers with the signature annotation), made here with p256 because Debian ships no cosign;
//! an in-memory registry serves them.

mod common;

use std::sync::atomic::Ordering;

use base64::Engine;
use common::*;
use peerpod_image_signature::AcceptedBy;

const KEY_URI: &str = "kbs:///default/cosign-public-key/app";
const NAME: &str = "registry.example:5000/team/app";

/// The identity rule a policy needs to accept cosign signatures (repository only) on an image
/// pulled by tag; without it the default, matchRepoDigestOrExact, accepts them only for a pull
/// by digest.
const REPO: &str = r#","signedIdentity":{"type":"matchRepository"}"#;

fn policy(extra: &str) -> String {
    format!(
        r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{"{NAME}":[{{"type":"sigstoreSigned","keyPath":"{KEY_URI}"{extra}}}]}}}}}}"#
    )
}

fn setup() -> (CosignKey, MemResources, MemRegistry, String) {
    let key = CosignKey::generate();
    let resources = MemResources::with(KEY_URI, key.public_pem());
    let (_, digest) = manifest("cosign app");
    (key, resources, MemRegistry::default(), digest)
}

fn app(tag: Option<&str>, digest: &str) -> peerpod_image_signature::ImageIdentity {
    image("registry.example:5000", "team/app", tag, digest)
}

#[tokio::test]
async fn cosign_signed_image_is_accepted() -> TestResult {
    let (key, resources, registry, digest) = setup();
    // cosign signs the repository, without the tag.
    registry.cosign_sign(NAME, &digest, &key, &cosign_payload(NAME, &digest));
    let accepted = check(
        &policy(REPO),
        &app(Some("v1"), &digest),
        &registry,
        &resources,
        None,
    )
    .await?;
    assert_eq!(
        accepted.by,
        vec![AcceptedBy::SigstoreSigned { key_index: 0 }]
    );
    assert_eq!(accepted.scope, format!("transports.docker[\"{NAME}\"]"));
    // Pulled by digest too.
    check(
        &policy(REPO),
        &app(None, &digest),
        &registry,
        &resources,
        None,
    )
    .await?;
    // The signature manifest and the payload blob, twice.
    assert_eq!(registry.requests.load(Ordering::SeqCst), 4);
    Ok(())
}

#[tokio::test]
async fn unsigned_image_is_refused() {
    let (_, resources, registry, digest) = setup();
    let (rule, reason) = refusal(
        check(
            &policy(REPO),
            &app(Some("v1"), &digest),
            &registry,
            &resources,
            None,
        )
        .await,
    );
    assert_eq!(
        rule,
        format!("transports.docker[\"{NAME}\"][0] sigstoreSigned")
    );
    let tag = format!("{}.sig", digest.replacen(':', "-", 1));
    assert!(
        reason.contains(&tag) && reason.contains("does not exist"),
        "{reason}"
    );
}

#[tokio::test]
async fn signature_by_another_key_is_refused() {
    let (_, resources, registry, digest) = setup();
    registry.cosign_sign(
        NAME,
        &digest,
        &CosignKey::generate(),
        &cosign_payload(NAME, &digest),
    );
    let (_, reason) = refusal(
        check(
            &policy(REPO),
            &app(Some("v1"), &digest),
            &registry,
            &resources,
            None,
        )
        .await,
    );
    assert!(
        reason.contains("not signed by any of the policy's keys"),
        "{reason}"
    );
}

#[tokio::test]
async fn signature_for_another_repository_or_manifest_is_refused() {
    let (key, resources, registry, digest) = setup();
    registry.cosign_sign(
        NAME,
        &digest,
        &key,
        &cosign_payload("registry.example:5000/team/other", &digest),
    );
    let (_, reason) = refusal(
        check(
            &policy(REPO),
            &app(Some("v1"), &digest),
            &registry,
            &resources,
            None,
        )
        .await,
    );
    assert!(
        reason.contains("team/other") && reason.contains("matchRepository"),
        "{reason}"
    );

    let (_, other) = manifest("another build");
    registry.cosign_sign(NAME, &digest, &key, &cosign_payload(NAME, &other));
    let (_, reason) = refusal(
        check(
            &policy(REPO),
            &app(Some("v1"), &digest),
            &registry,
            &resources,
            None,
        )
        .await,
    );
    assert!(reason.contains(&other), "{reason}");

    // A simple-signing payload type is not a cosign payload.
    registry.cosign_sign(NAME, &digest, &key, &simple_payload(NAME, &digest));
    let (_, reason) = refusal(
        check(
            &policy(REPO),
            &app(Some("v1"), &digest),
            &registry,
            &resources,
            None,
        )
        .await,
    );
    assert!(reason.contains("critical.type"), "{reason}");
}

#[tokio::test]
async fn matchexact_needs_the_tag_in_the_signature() -> TestResult {
    let (key, resources, registry, digest) = setup();
    let exact = r#","signedIdentity":{"type":"matchExact"}"#;
    registry.cosign_sign(NAME, &digest, &key, &cosign_payload(NAME, &digest));
    refusal(
        check(
            &policy(exact),
            &app(Some("v1"), &digest),
            &registry,
            &resources,
            None,
        )
        .await,
    );
    registry.cosign_sign(
        NAME,
        &digest,
        &key,
        &cosign_payload(&format!("{NAME}:v1"), &digest),
    );
    check(
        &policy(exact),
        &app(Some("v1"), &digest),
        &registry,
        &resources,
        None,
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn tampered_payload_and_malformed_manifests_are_refused() {
    let (key, resources, registry, digest) = setup();
    let payload = cosign_payload(NAME, &digest);
    registry.cosign_sign(NAME, &digest, &key, &payload);
    // The registry swaps the payload behind the same digest.
    let payload_digest = digest_of(&payload);
    registry.blobs.lock().expect("lock").insert(
        (NAME.into(), payload_digest.clone()),
        cosign_payload("registry.example:5000/team/evil", &digest),
    );
    let (_, reason) = refusal(
        check(
            &policy(REPO),
            &app(Some("v1"), &digest),
            &registry,
            &resources,
            None,
        )
        .await,
    );
    assert!(reason.contains("digest"), "{reason}");

    registry.put_blob(NAME, payload.clone());
    let tag = format!("{}.sig", digest.replacen(':', "-", 1));
    let sig = key.sign(&payload);
    for (name, body, expect) in [
        ("not json", b"{".to_vec(), "not JSON"),
        ("no layers", br#"{"schemaVersion":2}"#.to_vec(), "no layers"),
        ("wrong layer type", cosign_manifest(&[]), "holds no"),
        (
            "bad signature base64",
            cosign_manifest(&[(payload_digest.clone(), payload.len(), "!!!".into())]),
            "holds no",
        ),
        (
            "huge size",
            cosign_manifest(&[(payload_digest.clone(), 1 << 30, sig.clone())]),
            "larger than",
        ),
        (
            "not a signature",
            cosign_manifest(&[(
                payload_digest.clone(),
                payload.len(),
                base64::engine::general_purpose::STANDARD.encode(b"xyz"),
            )]),
            "not an ECDSA",
        ),
        (
            "unknown blob",
            cosign_manifest(&[(digest_of(b"nothing"), 7, sig.clone())]),
            "blob unknown",
        ),
    ] {
        registry.put_manifest(NAME, &tag, body);
        let (_, reason) = refusal(
            check(
                &policy(REPO),
                &app(Some("v1"), &digest),
                &registry,
                &resources,
                None,
            )
            .await,
        );
        assert!(reason.contains(expect), "{name}: {reason}");
    }
    // An index under the signature tag is not a signature manifest.
    registry.manifests.lock().expect("lock").insert(
        (NAME.into(), tag),
        (
            "application/vnd.oci.image.index.v1+json".into(),
            b"{}".to_vec(),
        ),
    );
    let (_, reason) = refusal(
        check(
            &policy(REPO),
            &app(Some("v1"), &digest),
            &registry,
            &resources,
            None,
        )
        .await,
    );
    assert!(reason.contains("media type"), "{reason}");
}

fn digest_of(b: &[u8]) -> String {
    common::digest(b)
}

#[tokio::test]
async fn several_keys_and_signatures() -> TestResult {
    let (key, _, registry, digest) = setup();
    let other = CosignKey::generate();
    let payload = cosign_payload(NAME, &digest);
    // Two signature layers: the first by an unknown key, the second by the policy's second key.
    let stranger = CosignKey::generate();
    let d = registry.put_blob(NAME, payload.clone());
    let tag = format!("{}.sig", digest.replacen(':', "-", 1));
    registry.put_manifest(
        NAME,
        &tag,
        cosign_manifest(&[
            (d.clone(), payload.len(), stranger.sign(&payload)),
            (d, payload.len(), other.sign(&payload)),
        ]),
    );
    let key_data = |k: &CosignKey| base64::engine::general_purpose::STANDARD.encode(k.public_pem());
    let inline = format!(
        r#"{{"default":[{{"type":"sigstoreSigned","keyDatas":["{}","{}"],"signedIdentity":{{"type":"matchRepository"}}}}]}}"#,
        key_data(&key),
        key_data(&other)
    );
    let accepted = check(
        &inline,
        &app(Some("v1"), &digest),
        &registry,
        &MemResources::default(),
        None,
    )
    .await?;
    assert_eq!(
        accepted.by,
        vec![AcceptedBy::SigstoreSigned { key_index: 1 }]
    );
    Ok(())
}

/// Go's ECDSA (cosign) does not normalise s: a high-s signature is as valid as its low-s twin.
#[tokio::test]
async fn high_and_low_s_signatures_verify() -> TestResult {
    use p256::ecdsa::signature::Signer;
    let (key, resources, registry, digest) = setup();
    let payload = cosign_payload(NAME, &digest);
    let sig: p256::ecdsa::Signature = key.signing.sign(&payload);
    let (r, s) = sig.split_scalars();
    let twin = p256::ecdsa::Signature::from_scalars(r, -*s)?;
    assert_ne!(sig, twin, "one of the two is high-s");
    let d = registry.put_blob(NAME, payload.clone());
    for variant in [sig, twin] {
        let b64 = base64::engine::general_purpose::STANDARD.encode(variant.to_der().as_bytes());
        registry.put_manifest(
            NAME,
            &format!("{}.sig", digest.replacen(':', "-", 1)),
            cosign_manifest(&[(d.clone(), payload.len(), b64)]),
        );
        check(
            &policy(REPO),
            &app(Some("v1"), &digest),
            &registry,
            &resources,
            None,
        )
        .await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_key_that_is_not_a_p256_public_key_is_refused() {
    let (_, _, registry, digest) = setup();
    for bad in [
        b"not a key".to_vec(),
        b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".to_vec(),
    ] {
        let resources = MemResources::with(KEY_URI, bad);
        let (_, reason) = refusal(
            check(
                &policy(REPO),
                &app(Some("v1"), &digest),
                &registry,
                &resources,
                None,
            )
            .await,
        );
        assert!(reason.contains("P-256"), "{reason}");
    }
    assert_eq!(
        registry.requests.load(Ordering::SeqCst),
        0,
        "no registry request with a bad key"
    );
}

/// Both kinds in one scope: each must accept.
#[tokio::test]
async fn cosign_and_simple_signing_together() -> TestResult {
    let Some(gpg) = Gpg::new() else { return Ok(()) };
    let (key, mut resources, registry, digest) = setup();
    let fpr = gpg.generate("both", "ed25519");
    resources
        .resources
        .insert("kbs:///default/gpg/app".into(), gpg.export(&fpr, false));
    registry.cosign_sign(NAME, &digest, &key, &cosign_payload(NAME, &digest));
    let lookaside = Lookaside::start();
    let policy = format!(
        r#"{{"default":[{{"type":"sigstoreSigned","keyPath":"{KEY_URI}","signedIdentity":{{"type":"matchRepository"}}}},{{"type":"signedBy","keyType":"GPGKeys","keyPath":"kbs:///default/gpg/app"}}]}}"#
    );
    let img = app(Some("v1"), &digest);
    let (rule, _) = refusal(
        check(
            &policy,
            &img,
            &registry,
            &resources,
            Some(&lookaside.config()),
        )
        .await,
    );
    assert_eq!(rule, "default[1] signedBy");
    lookaside.put(
        "team/app",
        &digest,
        1,
        gpg.sign(&fpr, &simple_payload(&format!("{NAME}:v1"), &digest), &[]),
    );
    let accepted = check(
        &policy,
        &img,
        &registry,
        &resources,
        Some(&lookaside.config()),
    )
    .await?;
    assert_eq!(
        accepted.by,
        vec![
            AcceptedBy::SigstoreSigned { key_index: 0 },
            AcceptedBy::SignedBy { fingerprint: fpr }
        ]
    );
    Ok(())
}

/// A payload with two `docker-manifest-digest` keys is refused even when correctly signed:
/// another parser could read the other copy.
#[tokio::test]
async fn signed_payload_with_duplicate_keys_is_refused() {
    let (key, resources, registry, digest) = setup();
    let (_, other) = manifest("other");
    let payload = format!(
        r#"{{"critical":{{"identity":{{"docker-reference":"{NAME}"}},"image":{{"docker-manifest-digest":"{other}","docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":null}}"#
    );
    registry.cosign_sign(NAME, &digest, &key, payload.as_bytes());
    let (_, reason) = refusal(
        check(
            &policy(REPO),
            &app(Some("v1"), &digest),
            &registry,
            &resources,
            None,
        )
        .await,
    );
    assert!(reason.contains("duplicate key"), "{reason}");
}

/// Without `signedIdentity`, as in containers/image, a cosign signature (repository only) is
/// accepted for a pull by digest and refused for a pull by tag: otherwise the registry could serve
/// any other signed image of the repository (an older, vulnerable one) under the requested tag.
#[tokio::test]
async fn default_identity_accepts_a_digest_pull_and_refuses_a_tag_pull_saying_how() -> TestResult {
    let (key, resources, registry, digest) = setup();
    registry.cosign_sign(NAME, &digest, &key, &cosign_payload(NAME, &digest));
    check(
        &policy(""),
        &app(None, &digest),
        &registry,
        &resources,
        None,
    )
    .await?;
    let (_, reason) = refusal(
        check(
            &policy(""),
            &app(Some("v1"), &digest),
            &registry,
            &resources,
            None,
        )
        .await,
    );
    assert!(
        reason.contains("matchRepoDigestOrExact")
            && reason.contains("pull the image by digest")
            && reason.contains("matchRepository"),
        "{reason}"
    );
    Ok(())
}
