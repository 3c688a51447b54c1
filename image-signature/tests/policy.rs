//! policy.json: scope choice, reject / insecureAcceptAnything / default, malformed policies and
//! images.

mod common;

use common::*;
use peerpod_image_signature::{AcceptedBy, Policy, SignatureError};

const D: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

#[tokio::test]
async fn reject_refuses_and_names_the_rule() -> TestResult {
    let registry = MemRegistry::default();
    let (rule, reason) = refusal(
        check(
            r#"{"default":[{"type":"reject"}]}"#,
            &image("registry.example", "app", Some("v1"), D),
            &registry,
            &MemResources::default(),
            None,
        )
        .await,
    );
    assert_eq!(rule, "default[0] reject");
    assert!(reason.contains("rejects"), "{reason}");
    assert_eq!(
        registry.requests.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    Ok(())
}

#[tokio::test]
async fn insecure_accept_anything_accepts_without_contacting_anything() -> TestResult {
    let registry = MemRegistry::default();
    let resources = MemResources::default();
    let accepted = check(
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        &image("docker.io", "library/busybox", None, D),
        &registry,
        &resources,
        None,
    )
    .await?;
    assert_eq!(accepted.scope, "default");
    assert_eq!(accepted.by, vec![AcceptedBy::InsecureAcceptAnything]);
    assert_eq!(
        registry.requests.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    assert!(resources.asked.lock().expect("lock").is_empty());
    Ok(())
}

#[tokio::test]
async fn every_requirement_of_the_scope_must_accept() -> TestResult {
    let (rule, _) = refusal(
        check(
            r#"{"default":[{"type":"insecureAcceptAnything"}],
                "transports":{"docker":{"registry.example/app":[{"type":"insecureAcceptAnything"},{"type":"reject"}]}}}"#,
            &image("registry.example", "app", Some("v1"), D),
            &MemRegistry::default(),
            &MemResources::default(),
            None,
        )
        .await,
    );
    assert_eq!(
        rule,
        r#"transports.docker["registry.example/app"][1] reject"#
    );
    Ok(())
}

/// The most specific scope wins: reference, repository, namespaces, host, wildcards, then the
/// transport's "" and last `default`.
#[tokio::test]
async fn longest_scope_match_and_default_fallback() -> TestResult {
    let accept = r#"[{"type":"insecureAcceptAnything"}]"#;
    let policy = format!(
        r#"{{"default":[{{"type":"reject"}}],
            "transports":{{"docker":{{
                "registry.example/team/app:v1":{accept},
                "registry.example/team/app":{accept},
                "registry.example/team":{accept},
                "registry.example":{accept},
                "*.example.com":{accept},
                "*.com":{accept},
                "docker.io/library/busybox@{D}":{accept}
            }},
            "docker-daemon":{{"":[{{"type":"insecureAcceptAnything"}}]}}}}}}"#
    );
    let cases = [
        (
            image("registry.example", "team/app", Some("v1"), D),
            r#"transports.docker["registry.example/team/app:v1"]"#,
        ),
        (
            image("registry.example", "team/app", Some("v2"), D),
            r#"transports.docker["registry.example/team/app"]"#,
        ),
        (
            image("registry.example", "team/app", None, D),
            r#"transports.docker["registry.example/team/app"]"#,
        ),
        (
            image("registry.example", "team/other", Some("v1"), D),
            r#"transports.docker["registry.example/team"]"#,
        ),
        (
            image("registry.example", "team/sub/app", Some("v1"), D),
            r#"transports.docker["registry.example/team"]"#,
        ),
        (
            image("registry.example", "solo", Some("v1"), D),
            r#"transports.docker["registry.example"]"#,
        ),
        (
            image("a.b.example.com:5000", "x/y", Some("v1"), D),
            r#"transports.docker["*.example.com"]"#,
        ),
        (
            image("quay.io.example.com", "x", Some("v1"), D),
            r#"transports.docker["*.example.com"]"#,
        ),
        (
            image("other.com", "x", Some("v1"), D),
            r#"transports.docker["*.com"]"#,
        ),
        (
            image("docker.io", "library/busybox", None, D),
            &format!(r#"transports.docker["docker.io/library/busybox@{D}"]"#),
        ),
    ];
    for (img, scope) in &cases {
        let accepted = check(
            &policy,
            img,
            &MemRegistry::default(),
            &MemResources::default(),
            None,
        )
        .await?;
        assert_eq!(&accepted.scope, scope, "{img:?}");
    }
    // Nothing matches: the registry "registry.example:5000" is not "registry.example", and a
    // tag-pulled busybox is not the digest scope.
    for img in [
        image("registry.example:5000", "team/app", Some("v1"), D),
        image("docker.io", "library/busybox", Some("latest"), D),
        image("localhost", "app", Some("v1"), D),
    ] {
        let (rule, _) = refusal(
            check(
                &policy,
                &img,
                &MemRegistry::default(),
                &MemResources::default(),
                None,
            )
            .await,
        );
        assert_eq!(rule, "default[0] reject", "{img:?}");
    }
    // With a transport default, it comes before `default`.
    let with_empty = r#"{"default":[{"type":"reject"}],"transports":{"docker":{"":[{"type":"insecureAcceptAnything"}]}}}"#;
    let accepted = check(
        with_empty,
        &image("localhost", "app", Some("v1"), D),
        &MemRegistry::default(),
        &MemResources::default(),
        None,
    )
    .await?;
    assert_eq!(accepted.scope, r#"transports.docker[""]"#);
    Ok(())
}

#[test]
fn malformed_policies_are_refused_naming_the_place() {
    let k = "a2V5"; // base64 "key"
    let cases: Vec<(String, &str)> = vec![
        ("".into(), "(document)"),
        ("[]".into(), "(document)"),
        ("{\"default\":[{\"type\":\"reject\"}]".into(), "(document)"),
        (r#"{"transports":{}}"#.into(), "default"),
        (r#"{"default":[]}"#.into(), "default"),
        (r#"{"default":{"type":"reject"}}"#.into(), "default"),
        (r#"{"default":[{"type":"reject"}],"extra":1}"#.into(), "(document)"),
        (r#"{"default":[{"type":"rejected"}]}"#.into(), "default[0].type"),
        (r#"{"default":[{"type":"reject","keyPath":"/k"}]}"#.into(), "default[0]"),
        (r#"{"default":[{"kind":"reject"}]}"#.into(), "default[0]"),
        (r#"{"default":[{"type":"signedBy","keyPath":"/k"}]}"#.into(), "default[0]"),
        (r#"{"default":[{"type":"signedBy","keyType":"X509Certificates","keyPath":"/k"}]}"#.into(), "default[0].keyType"),
        (r#"{"default":[{"type":"signedBy","keyType":"GPGKeys"}]}"#.into(), "default[0]"),
        (format!(r#"{{"default":[{{"type":"signedBy","keyType":"GPGKeys","keyPath":"/k","keyData":"{k}"}}]}}"#), "default[0]"),
        (r#"{"default":[{"type":"signedBy","keyType":"GPGKeys","keyPath":"keys/k.gpg"}]}"#.into(), "default[0].keyPath"),
        (r#"{"default":[{"type":"signedBy","keyType":"GPGKeys","keyPath":"https://x/k"}]}"#.into(), "default[0].keyPath"),
        (r#"{"default":[{"type":"signedBy","keyType":"GPGKeys","keyPaths":[]}]}"#.into(), "default[0].keyPaths"),
        (r#"{"default":[{"type":"signedBy","keyType":"GPGKeys","keyPaths":"/k"}]}"#.into(), "default[0].keyPaths"),
        (r#"{"default":[{"type":"signedBy","keyType":"GPGKeys","keyData":"***"}]}"#.into(), "default[0].keyData"),
        (r#"{"default":[{"type":"signedBy","keyType":"GPGKeys","keyPath":"/k","signedIdentity":{"type":"matchAnything"}}]}"#.into(), "default[0].signedIdentity.type"),
        (r#"{"default":[{"type":"signedBy","keyType":"GPGKeys","keyPath":"/k","signedIdentity":{"type":"exactReference","dockerReference":"registry.example/app"}}]}"#.into(), "default[0].signedIdentity.dockerReference"),
        (r#"{"default":[{"type":"signedBy","keyType":"GPGKeys","keyPath":"/k","signedIdentity":{"type":"exactRepository","dockerRepository":"registry.example/app:v1"}}]}"#.into(), "default[0].signedIdentity.dockerRepository"),
        (r#"{"default":[{"type":"signedBy","keyType":"GPGKeys","keyPath":"/k","signedIdentity":{"type":"remapIdentity","prefix":"*.example","signedPrefix":"r.example"}}]}"#.into(), "default[0].signedIdentity.prefix"),
        (r#"{"default":[{"type":"signedBy","keyType":"GPGKeys","keyPath":"/k","signedIdentity":{"type":"matchExact","x":1}}]}"#.into(), "default[0].signedIdentity"),
        (r#"{"default":[{"type":"sigstoreSigned","keyPath":"/k","fulcio":{}}]}"#.into(), "default[0].fulcio"),
        (r#"{"default":[{"type":"sigstoreSigned","keyPath":"/k","rekorPublicKeyPath":"/r"}]}"#.into(), "default[0].rekorPublicKeyPath"),
        (r#"{"default":[{"type":"sigstoreSigned"}]}"#.into(), "default[0]"),
        (r#"{"default":[{"type":"signedBaseLayer"}]}"#.into(), "default[0].type"),
        (r#"{"default":[{"type":"reject"}],"transports":{"docker":{"busybox":[{"type":"reject"}]}}}"#.into(), r#"transports.docker["busybox"]"#),
        (r#"{"default":[{"type":"reject"}],"transports":{"docker":{"docker.io/busybox":[{"type":"reject"}]}}}"#.into(), r#"transports.docker["docker.io/busybox"]"#),
        (r#"{"default":[{"type":"reject"}],"transports":{"docker":{"Registry.example/App":[{"type":"reject"}]}}}"#.into(), r#"transports.docker["Registry.example/App"]"#),
        (r#"{"default":[{"type":"reject"}],"transports":{"docker":{"*.example:5000":[{"type":"reject"}]}}}"#.into(), r#"transports.docker["*.example:5000"]"#),
        (r#"{"default":[{"type":"reject"}],"transports":{"docker":{"r.example/app":[]}}}"#.into(), r#"transports.docker["r.example/app"]"#),
        (r#"{"default":[{"type":"reject"}],"transports":{"docker":[]}}"#.into(), "transports.docker"),
    ];
    for (json, at) in &cases {
        match Policy::parse(json.as_bytes()) {
            Err(SignatureError::InvalidPolicy { at: got, reason }) => {
                assert_eq!(&got, at, "{json}: {reason}");
                assert!(!reason.is_empty());
            }
            other => panic!("{json}: expected InvalidPolicy at {at}, got {other:?}"),
        }
    }
    // Bounds: size and list lengths.
    let huge = format!(
        r#"{{"default":[{{"type":"reject"}}],"x":"{}"}}"#,
        "a".repeat(1 << 20)
    );
    assert!(matches!(
        Policy::parse(huge.as_bytes()),
        Err(SignatureError::InvalidPolicy { .. })
    ));
    let many = format!(
        r#"{{"default":[{}]}}"#,
        vec![r#"{"type":"reject"}"#; 65].join(",")
    );
    assert!(matches!(
        Policy::parse(many.as_bytes()),
        Err(SignatureError::InvalidPolicy { .. })
    ));
}

#[test]
fn upstream_style_policies_parse() -> TestResult {
    // The shapes image-rs's and containers/image's documentation show.
    for json in [
        r#"{"default":[{"type":"insecureAcceptAnything"}],"transports":{"docker":{}}}"#,
        r#"{"default":[{"type":"reject"}],"transports":{"docker":{
            "quay.io/kata-containers/confidential-containers":[{"type":"signedBy","keyType":"GPGKeys","keyPath":"kbs:///default/simple-signing-key/test"}],
            "registry.example:5000/app":[{"type":"sigstoreSigned","keyPath":"kbs:///default/cosign-public-key/test"}],
            "docker.io/library/busybox":[{"type":"sigstoreSigned","keyPaths":["/etc/k1.pub","file:///etc/k2.pub"],"signedIdentity":{"type":"matchRepository"}}],
            "registry.example/mirror":[{"type":"signedBy","keyType":"GPGKeys","keyData":"a2V5","signedIdentity":{"type":"remapIdentity","prefix":"registry.example/mirror","signedPrefix":"quay.io/upstream"}}],
            "registry.example/pinned":[{"type":"signedBy","keyType":"GPGKeys","keyPaths":["/k"],"signedIdentity":{"type":"exactReference","dockerReference":"quay.io/upstream/app:v1"}}],
            "registry.example/anytag":[{"type":"sigstoreSigned","keyDatas":["a2V5"],"signedIdentity":{"type":"exactRepository","dockerRepository":"quay.io/upstream/app"}}],
            "":[{"type":"insecureAcceptAnything"}]
        }}}"#,
    ] {
        Policy::parse(json.as_bytes())?;
    }
    Ok(())
}

#[tokio::test]
async fn malformed_image_identities_are_refused() {
    let policy = r#"{"default":[{"type":"insecureAcceptAnything"}]}"#;
    for img in [
        image("registry.example", "../etc", Some("v1"), D),
        image("registry.example", "App", Some("v1"), D),
        image("registry.example/x", "app", Some("v1"), D),
        image("registry.example", "app", Some("v1\n"), D),
        image("registry.example", "app", Some("v1"), "sha256:12"),
        image(
            "registry.example",
            "app",
            Some("v1"),
            "md5:d41d8cd98f00b204e9800998ecf8427e",
        ),
        image("registry.example:99999x", "app", None, D),
    ] {
        let result = check(
            policy,
            &img,
            &MemRegistry::default(),
            &MemResources::default(),
            None,
        )
        .await;
        assert!(
            matches!(result, Err(SignatureError::InvalidImage(_))),
            "{img:?}: {result:?}"
        );
    }
}

#[tokio::test]
async fn a_key_that_cannot_be_fetched_refuses_naming_the_uri() {
    let policy =
        r#"{"default":[{"type":"sigstoreSigned","keyPath":"kbs:///default/cosign-key/missing"}]}"#;
    let (rule, reason) = refusal(
        check(
            policy,
            &image("registry.example", "app", Some("v1"), D),
            &MemRegistry::default(),
            &MemResources::default(),
            None,
        )
        .await,
    );
    assert_eq!(rule, "default[0] sigstoreSigned");
    assert!(
        reason.contains("kbs:///default/cosign-key/missing"),
        "{reason}"
    );
}

#[test]
fn lookaside_configurations_are_checked() {
    use peerpod_image_signature::LookasideConfig;
    for ok in [
        "",
        "default-docker:\n  lookaside: https://sigstore.example/sigs\n",
        "default-docker:\n  sigstore: file:///var/lib/containers/sigstore\ndocker:\n  registry.example/app:\n    lookaside: http://10.0.0.1:8080/s\n    use-sigstore-attachments: false\n",
    ] {
        assert!(LookasideConfig::parse(ok.as_bytes()).is_ok(), "{ok}");
    }
    for (bad, at) in [
        (
            "default-docker:\n  lookaside: ftp://x/y\n",
            "default-docker.lookaside",
        ),
        (
            "default-docker:\n  lookaside: https://x/y\n  sigstore: https://x/z\n",
            "default-docker",
        ),
        (
            "default-docker:\n  lookaside: https://x/y?q=1\n",
            "default-docker.lookaside",
        ),
        (
            "docker:\n  registry.example/App:\n    lookaside: https://x\n",
            "docker[\"registry.example/App\"]",
        ),
        ("default-docker:\n  look-aside: https://x\n", "(document)"),
        ("other: 1\n", "(document)"),
        ("- a\n- b\n", "(document)"),
    ] {
        match LookasideConfig::parse(bad.as_bytes()) {
            Err(SignatureError::InvalidLookasideConfig { at: got, .. }) => {
                assert_eq!(got, at, "{bad}")
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
    // Alias expansion (a "billion laughs" document) is refused, not expanded.
    let mut laughs = String::from("a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for (i, c) in ('b'..='j').enumerate() {
        let p = char::from(b'a' + i as u8);
        laughs.push_str(&format!(
            "{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        ));
    }
    laughs.push_str("default-docker:\n  lookaside: https://x\n");
    let started = std::time::Instant::now();
    assert!(LookasideConfig::parse(laughs.as_bytes()).is_err());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "refused without expanding"
    );
    let big = format!(
        "default-docker:\n  lookaside: https://x/{}\n",
        "a".repeat(300 << 10)
    );
    assert!(LookasideConfig::parse(big.as_bytes()).is_err());
}

#[test]
fn duplicate_keys_are_refused() {
    for json in [
        r#"{"default":[{"type":"reject"}],"default":[{"type":"insecureAcceptAnything"}]}"#,
        r#"{"default":[{"type":"reject","type":"insecureAcceptAnything"}]}"#,
        r#"{"default":[{"type":"reject"}],"transports":{"docker":{"r.example/a":[{"type":"reject"}],"r.example/a":[{"type":"insecureAcceptAnything"}]}}}"#,
    ] {
        match Policy::parse(json.as_bytes()) {
            Err(SignatureError::InvalidPolicy { reason, .. }) => {
                assert!(reason.contains("duplicate key"), "{json}: {reason}")
            }
            other => panic!("{json}: {other:?}"),
        }
    }
}
