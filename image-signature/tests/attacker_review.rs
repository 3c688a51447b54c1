//! An attacker's review: a registry, lookaside or signer that tries to get an image accepted
//! that containers/image would refuse, or to hold the pull without end.

mod common;

use std::sync::atomic::Ordering;

use base64::Engine;
use common::*;
use peerpod_image_signature::{ImageIdentity, Policy, RegistryAccess};

const COSIGN_KEY_URI: &str = "kbs:///default/cosign-public-key/app";
const NAME: &str = "registry.example:5000/team/app";

fn cosign_policy() -> String {
    format!(
        r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{"{NAME}":[{{"type":"sigstoreSigned","keyPath":"{COSIGN_KEY_URI}"}}]}}}}}}"#
    )
}

/// Pulled by digest, which the default identity rule (matchRepoDigestOrExact) accepts for a
/// cosign signature of the repository.
fn app(digest: &str) -> ImageIdentity {
    image("registry.example:5000", "team/app", None, digest)
}

fn signature_tag(digest: &str) -> String {
    format!("{}.sig", digest.replacen(':', "-", 1))
}

/// cosign writes (and sigstore verifies) an ASN.1 DER signature; the fixed-size `r || s` form
/// of the same signature is not one, and containers/image refuses it.
#[tokio::test]
async fn a_cosign_signature_that_is_not_der_is_refused() -> TestResult {
    use p256::ecdsa::signature::Signer;
    let key = CosignKey::generate();
    let resources = MemResources::with(COSIGN_KEY_URI, key.public_pem());
    let registry = MemRegistry::default();
    let (_, digest) = manifest("raw signature");
    let payload = cosign_payload(NAME, &digest);
    let sig: p256::ecdsa::Signature = key.signing.sign(&payload);
    let d = registry.put_blob(NAME, payload.clone());
    // The DER form is accepted (the control) …
    let der = base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes());
    registry.put_manifest(
        NAME,
        &signature_tag(&digest),
        cosign_manifest(&[(d.clone(), payload.len(), der)]),
    );
    check(&cosign_policy(), &app(&digest), &registry, &resources, None).await?;
    // … the raw 64 bytes are not.
    let raw = base64::engine::general_purpose::STANDARD.encode(sig.to_bytes());
    registry.put_manifest(
        NAME,
        &signature_tag(&digest),
        cosign_manifest(&[(d, payload.len(), raw)]),
    );
    let (_, reason) =
        refusal(check(&cosign_policy(), &app(&digest), &registry, &resources, None).await);
    assert!(reason.contains("DER"), "{reason}");
    Ok(())
}

/// The signature manifest's layers are read up to the bound, and no further.
#[tokio::test]
async fn cosign_layers_past_the_bound_are_not_fetched() {
    let key = CosignKey::generate();
    let resources = MemResources::with(COSIGN_KEY_URI, key.public_pem());
    let registry = MemRegistry::default();
    let (_, digest) = manifest("many layers");
    let intruder = CosignKey::generate();
    let layers: Vec<_> = (0..200)
        .map(|n| {
            let payload = cosign_payload(&format!("{NAME}{n}"), &digest);
            let d = registry.put_blob(NAME, payload.clone());
            (d, payload.len(), intruder.sign(&payload))
        })
        .collect();
    registry.put_manifest(NAME, &signature_tag(&digest), cosign_manifest(&layers));
    refusal(check(&cosign_policy(), &app(&digest), &registry, &resources, None).await);
    // One manifest, then at most 64 payloads.
    let asked = registry.requests.load(Ordering::SeqCst);
    assert!((2..=65).contains(&asked), "{asked} requests");
}

/// A signature manifest past 4 MiB is refused before it is parsed.
#[tokio::test]
async fn an_oversized_signature_manifest_is_refused() {
    let key = CosignKey::generate();
    let resources = MemResources::with(COSIGN_KEY_URI, key.public_pem());
    let registry = MemRegistry::default();
    let (_, digest) = manifest("huge manifest");
    let mut body = cosign_manifest(&[]);
    body.extend(std::iter::repeat_n(b' ', 4 << 20));
    registry.put_manifest(NAME, &signature_tag(&digest), body);
    let (_, reason) =
        refusal(check(&cosign_policy(), &app(&digest), &registry, &resources, None).await);
    assert!(reason.contains("larger than"), "{reason}");
}

/// A registry that answers the signature manifest, then never sends the payload.
struct Stalling(MemRegistry);

#[async_trait::async_trait]
impl RegistryAccess for Stalling {
    async fn manifest(
        &self,
        registry: &str,
        repository: &str,
        reference: &str,
    ) -> Result<Option<(String, Vec<u8>)>, String> {
        self.0.manifest(registry, repository, reference).await
    }

    async fn blob(&self, _: &str, _: &str, _: &str, _: usize) -> Result<Vec<u8>, String> {
        std::future::pending().await
    }
}

/// Reading cosign signatures is bounded in time, whatever the registry client does.
#[tokio::test(start_paused = true)]
async fn a_registry_that_stalls_is_given_up_on() {
    let key = CosignKey::generate();
    let resources = MemResources::with(COSIGN_KEY_URI, key.public_pem());
    let registry = MemRegistry::default();
    let (_, digest) = manifest("stalling");
    registry.cosign_sign(NAME, &digest, &key, &cosign_payload(NAME, &digest));
    let stalling = Stalling(registry);
    let policy = Policy::parse(cosign_policy().as_bytes()).expect("policy parses");
    let started = tokio::time::Instant::now();
    let result =
        peerpod_image_signature::verify(&policy, &app(&digest), &stalling, &resources, None).await;
    let (_, reason) = refusal(result);
    assert!(reason.contains("took more than"), "{reason}");
    assert!(started.elapsed() <= std::time::Duration::from_secs(120));
}

/// A lookaside that accepts the connection and never answers refuses the image in bounded
/// time.
#[tokio::test(start_paused = true)]
async fn a_lookaside_that_never_answers_is_given_up_on() -> TestResult {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            open.push(stream);
        }
    });
    let config = peerpod_image_signature::LookasideConfig::parse(
        format!("default-docker:\n  lookaside: http://127.0.0.1:{port}/sigs\n").as_bytes(),
    )?;
    let key_uri = "kbs:///default/simple-signing-key/app";
    let policy = format!(
        r#"{{"default":[{{"type":"signedBy","keyType":"GPGKeys","keyPath":"{key_uri}"}}]}}"#
    );
    let Some(gpg) = Gpg::new() else {
        return Ok(());
    };
    let key = gpg.generate("signer", "ed25519");
    let resources = MemResources::with(key_uri, gpg.export(&key, false));
    let (_, digest) = manifest("stalling lookaside");
    let (_, reason) = refusal(
        check(
            &policy,
            &image("registry.example", "app", Some("v1"), &digest),
            &MemRegistry::default(),
            &resources,
            Some(&config),
        )
        .await,
    );
    assert!(
        reason.contains("timed out") || reason.contains("took more than"),
        "{reason}"
    );
    held.abort();
    Ok(())
}

/// gpg --default-sig-expire: a signature past its own expiry is refused, as containers/image
/// (gpgme) refuses it, even though the key itself never expires.
#[tokio::test]
async fn an_expired_signature_is_refused() -> TestResult {
    let Some(gpg) = Gpg::new() else {
        return Ok(());
    };
    // A key made in 2020 that never expires.
    let out = gpg
        .cmd()
        .args([
            "--faked-system-time",
            "20200101T000000",
            "--quick-gen-key",
            "dated <dated@example.test>",
            "ed25519",
            "sign",
            "never",
        ])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = gpg.fingerprint("dated");
    let key_uri = "kbs:///default/simple-signing-key/app";
    let resources = MemResources::with(key_uri, gpg.export(&key, false));
    let policy = format!(
        r#"{{"default":[{{"type":"signedBy","keyType":"GPGKeys","keyPath":"{key_uri}"}}]}}"#
    );
    let (_, digest) = manifest("expired signature");
    let img = image("registry.example", "app", Some("v1"), &digest);
    let payload = simple_payload("registry.example/app:v1", &digest);
    let lookaside = Lookaside::start();
    // A signature made in 2020 that never expires: accepted (the control).
    let lasting = gpg.sign(&key, &payload, &["--faked-system-time", "20200101T010000"]);
    lookaside.put("app", &digest, 1, lasting);
    check(
        &policy,
        &img,
        &MemRegistry::default(),
        &resources,
        Some(&lookaside.config()),
    )
    .await?;
    // The same, valid for one day only.
    let dated = gpg.sign(
        &key,
        &payload,
        &[
            "--faked-system-time",
            "20200101T010000",
            "--default-sig-expire",
            "1d",
        ],
    );
    lookaside.put("app", &digest, 1, dated);
    let (_, reason) = refusal(
        check(
            &policy,
            &img,
            &MemRegistry::default(),
            &resources,
            Some(&lookaside.config()),
        )
        .await,
    );
    assert!(reason.contains("expired"), "{reason}");
    Ok(())
}

/// A key file past 1 MiB from the resource fetcher is refused, not parsed.
#[tokio::test]
async fn an_oversized_key_is_refused() {
    let resources = MemResources::with(COSIGN_KEY_URI, vec![b'-'; (1 << 20) + 1]);
    let (_, digest) = manifest("big key");
    let (_, reason) = refusal(
        check(
            &cosign_policy(),
            &app(&digest),
            &MemRegistry::default(),
            &resources,
            None,
        )
        .await,
    );
    assert!(reason.contains("larger than"), "{reason}");
}

/// Every count and size bound of the policy is enforced.
#[test]
fn policy_bounds() {
    let reject = r#"[{"type":"reject"}]"#;
    let scopes: Vec<String> = (0..4097)
        .map(|n| format!(r#""registry.example/app{n}":{reject}"#))
        .collect();
    let many_scopes = format!(
        r#"{{"default":{reject},"transports":{{"docker":{{{}}}}}}}"#,
        scopes.join(",")
    );
    let e = Policy::parse(many_scopes.as_bytes()).expect_err("too many scopes");
    assert!(e.to_string().contains("more than 4096 scopes"), "{e}");
    let paths: Vec<String> = (0..65).map(|n| format!(r#""/keys/{n}.gpg""#)).collect();
    let many_keys = format!(
        r#"{{"default":[{{"type":"signedBy","keyType":"GPGKeys","keyPaths":[{}]}}]}}"#,
        paths.join(",")
    );
    let e = Policy::parse(many_keys.as_bytes()).expect_err("too many keys");
    assert!(e.to_string().contains("1 to 64 keys"), "{e}");
    let big = base64::engine::general_purpose::STANDARD.encode(vec![0u8; (256 << 10) + 3]);
    let big_key = format!(r#"{{"default":[{{"type":"sigstoreSigned","keyData":"{big}"}}]}}"#);
    let e = Policy::parse(big_key.as_bytes()).expect_err("key too large");
    assert!(e.to_string().contains("a key larger than"), "{e}");
}

/// A signed message that inflates past the payload bound (gpg compresses what it signs: 16 MiB
/// of spaces make a signature of a few KiB) is refused without being inflated in full.
#[tokio::test]
async fn a_compressed_signature_that_inflates_past_the_bound_is_refused() -> TestResult {
    let Some(gpg) = Gpg::new() else {
        return Ok(());
    };
    let key = gpg.generate("bomber", "ed25519");
    let key_uri = "kbs:///default/simple-signing-key/app";
    let resources = MemResources::with(key_uri, gpg.export(&key, false));
    let policy = format!(
        r#"{{"default":[{{"type":"signedBy","keyType":"GPGKeys","keyPath":"{key_uri}"}}]}}"#
    );
    let (_, digest) = manifest("bomb");
    let mut payload = simple_payload("registry.example/app:v1", &digest);
    payload.extend(std::iter::repeat_n(b' ', 16 << 20));
    let signature = gpg.sign(&key, &payload, &["--compress-algo", "zlib", "-z", "9"]);
    assert!(signature.len() < 64 << 10, "{} bytes", signature.len());
    let lookaside = Lookaside::start();
    lookaside.put("app", &digest, 1, signature);
    let (_, reason) = refusal(
        check(
            &policy,
            &image("registry.example", "app", Some("v1"), &digest),
            &MemRegistry::default(),
            &resources,
            Some(&lookaside.config()),
        )
        .await,
    );
    assert!(reason.contains("signed data larger than"), "{reason}");
    Ok(())
}

/// A keyring of more than 64 keys: only the first 64 are read, so a signature by the 65th
/// does not verify.
#[tokio::test]
async fn keys_past_the_keyring_bound_are_not_read() -> TestResult {
    let Some(gpg) = Gpg::new() else {
        return Ok(());
    };
    let mut ring = Vec::new();
    let mut keys = Vec::new();
    for n in 0..65 {
        let key = gpg.generate(&format!("k{n}"), "ed25519");
        ring.extend(gpg.export(&key, false));
        keys.push(key);
    }
    let key_uri = "kbs:///default/simple-signing-key/app";
    let resources = MemResources::with(key_uri, ring);
    let policy = format!(
        r#"{{"default":[{{"type":"signedBy","keyType":"GPGKeys","keyPath":"{key_uri}"}}]}}"#
    );
    let (_, digest) = manifest("ring");
    let payload = simple_payload("registry.example/app:v1", &digest);
    let lookaside = Lookaside::start();
    let img = image("registry.example", "app", Some("v1"), &digest);
    // The 64th key is read (the control) …
    lookaside.put("app", &digest, 1, gpg.sign(&keys[63], &payload, &[]));
    check(
        &policy,
        &img,
        &MemRegistry::default(),
        &resources,
        Some(&lookaside.config()),
    )
    .await?;
    // … the 65th is not.
    lookaside.put("app", &digest, 1, gpg.sign(&keys[64], &payload, &[]));
    let (_, reason) = refusal(
        check(
            &policy,
            &img,
            &MemRegistry::default(),
            &resources,
            Some(&lookaside.config()),
        )
        .await,
    );
    assert!(
        reason.contains("not signed by any of the policy's keys"),
        "{reason}"
    );
    Ok(())
}

/// `gpg --armor --sign` output verifies as gpgme (containers/image) verifies it; a tampered
/// armored payload does not.
#[tokio::test]
async fn an_armored_signature_is_read() -> TestResult {
    let Some(gpg) = Gpg::new() else {
        return Ok(());
    };
    let key = gpg.generate("armor", "ed25519");
    let key_uri = "kbs:///default/simple-signing-key/app";
    let resources = MemResources::with(key_uri, gpg.export(&key, false));
    let policy = format!(
        r#"{{"default":[{{"type":"signedBy","keyType":"GPGKeys","keyPath":"{key_uri}"}}]}}"#
    );
    let (_, digest) = manifest("armor");
    let img = image("registry.example", "app", Some("v1"), &digest);
    let payload = simple_payload("registry.example/app:v1", &digest);
    let lookaside = Lookaside::start();
    let armored = gpg.sign(&key, &payload, &["--armor"]);
    assert!(armored.starts_with(b"-----BEGIN PGP MESSAGE-----"));
    lookaside.put("app", &digest, 1, armored);
    check(
        &policy,
        &img,
        &MemRegistry::default(),
        &resources,
        Some(&lookaside.config()),
    )
    .await?;
    // Armored, uncompressed, with the identity changed in the clear.
    let plain = gpg.sign(&key, &payload, &["--armor", "--compress-algo", "none"]);
    let text = String::from_utf8(plain)?;
    let body: String = text
        .lines()
        .skip_while(|l| !l.is_empty())
        .skip(1)
        .take_while(|l| !l.starts_with('=') && !l.starts_with("-----"))
        .collect();
    let mut raw = base64::engine::general_purpose::STANDARD.decode(body)?;
    let at = raw
        .windows(3)
        .position(|w| w == b"app")
        .expect("the payload is in the clear");
    raw[at] = b'b';
    let tampered = format!(
        "-----BEGIN PGP MESSAGE-----\n\n{}\n-----END PGP MESSAGE-----\n",
        base64::engine::general_purpose::STANDARD.encode(&raw)
    );
    lookaside.put("app", &digest, 1, tampered.into_bytes());
    let (_, reason) = refusal(
        check(
            &policy,
            &img,
            &MemRegistry::default(),
            &resources,
            Some(&lookaside.config()),
        )
        .await,
    );
    assert!(
        reason.contains("not signed by any of the policy's keys"),
        "{reason}"
    );
    Ok(())
}
