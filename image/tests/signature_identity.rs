//! The name the signature policy judges, against Debian's `docker-registry` on 127.0.0.1: a
//! short name found on a search registry (or resolved through an `[aliases]` entry) is that
//! registry's image, so Docker Hub's rules never let it through; a mirror serves the name the
//! user asked for, so it is judged under that name.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use common::*;
use peerpod_image::{ImageError, Puller};

/// Rejects everything but the given repositories, each `insecureAcceptAnything`.
fn policy(accepted: &[&str]) -> String {
    let scopes: Vec<String> = accepted
        .iter()
        .map(|s| format!(r#""{s}":[{{"type":"insecureAcceptAnything"}}]"#))
        .collect();
    format!(
        r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{{}}}}}}}"#,
        scopes.join(",")
    )
}

fn puller(
    scratch: &Scratch,
    name: &str,
    conf: &str,
    policy: &str,
) -> (Puller, Arc<RecordingStore>) {
    let mut config = test_config(&scratch.path().join(format!("work-{name}")));
    config.transfer.attempts = 1;
    config.registry_configuration_uri =
        Some(file_uri(scratch.path(), &format!("{name}.conf"), conf));
    config.image_security_policy_uri =
        Some(file_uri(scratch.path(), &format!("{name}.json"), policy));
    let (p, store) = recording_puller(config);
    (p, store)
}

fn bundle(n: &str) -> PathBuf {
    PathBuf::from(format!("/run/test-bundles/identity-{n}"))
}

/// Asserts a refusal by the policy that names `judged`, with nothing fetched or mounted.
fn assert_refused_as(
    e: &ImageError,
    judged: &str,
    store: &RecordingStore,
    b: &PathBuf,
) -> Result<()> {
    assert!(matches!(e, ImageError::Signature { .. }), "{e}");
    let text = e.to_string();
    assert!(text.contains(judged), "the refusal names {judged}: {text}");
    assert!(text.contains("default[0] reject"), "{text}");
    assert!(!text.contains("docker.io"), "{text}");
    assert!(store.installs.lock().unwrap().is_empty());
    assert!(!store.mounts.lock().unwrap().contains_key(b));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_short_name_from_a_search_registry_is_not_judged_as_docker_hubs_image() -> Result<()> {
    if !tools_present() {
        return Ok(());
    }
    let scratch = Scratch::new("identity-search");
    let registry = Registry::start(RegistryOptions::default())?;
    let a = &registry.addr;
    let layout = scratch.path().join("layout");
    build_image(&layout, "v1", &[vec![Step::Write("/etc/who", b"not hub")]])?;
    // The attacker's image, on the search registry, under the short name the pod asks for.
    registry.push(&layout, "v1", "busybox", "v1", "oci")?;
    let conf = format!(
        "unqualified-search-registries = [\"{a}\"]\n\
         [[registry]]\nlocation = \"{a}\"\ninsecure = true\n"
    );

    // Trusted: Docker Hub's busybox only. The search registry's busybox is another image.
    let hub_only = policy(&["docker.io/library/busybox"]);
    let (p, store) = puller(&scratch, "search", &conf, &hub_only);
    let b = bundle("search");
    let e = p
        .pull("busybox:v1", &b)
        .await
        .expect_err("a search registry's image is not Docker Hub's");
    assert_refused_as(&e, &format!("{a}/busybox"), &store, &b)?;

    // The control: the same pull, with that registry's repository trusted, goes through, so
    // the refusal above is the policy's and the image is pullable.
    let trusted = policy(&[&format!("{a}/busybox")]);
    let (p, store) = puller(&scratch, "search-trusted", &conf, &trusted);
    let out = p.pull("busybox:v1", &bundle("search-trusted")).await?;
    assert_eq!(out.source, format!("{a}/busybox:v1"));
    assert_eq!(store.installs.lock().unwrap().len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_alias_is_judged_under_its_target_and_a_mirror_under_the_name_asked_for() -> Result<()> {
    if !tools_present() {
        return Ok(());
    }
    let scratch = Scratch::new("identity-alias");
    let registry = Registry::start(RegistryOptions::default())?;
    let a = &registry.addr;
    let layout = scratch.path().join("layout");
    build_image(&layout, "v1", &[vec![Step::Write("/etc/who", b"alias")]])?;
    registry.push(&layout, "v1", "team/web", "v1", "oci")?;
    registry.push(&layout, "v1", "library/web", "v1", "oci")?;

    // `web` resolves through an alias to this registry's team/web: Docker Hub's rule for
    // `docker.io/library/web` (the name `web` parses to) does not apply.
    let alias = format!(
        "short-name-mode = \"enforcing\"\n\
         [aliases]\n\"web\" = \"{a}/team/web\"\n\
         [[registry]]\nlocation = \"{a}\"\ninsecure = true\n"
    );
    let hub_only = policy(&["docker.io/library/web"]);
    let (p, store) = puller(&scratch, "alias", &alias, &hub_only);
    let b = bundle("alias");
    let e = p
        .pull("web:v1", &b)
        .await
        .expect_err("an alias target is not Docker Hub's image");
    assert_refused_as(&e, &format!("{a}/team/web"), &store, &b)?;
    let target_only = policy(&[&format!("{a}/team/web")]);
    let (p, _) = puller(&scratch, "alias-trusted", &alias, &target_only);
    p.pull("web:v1", &bundle("alias-trusted")).await?;

    // A mirror of Docker Hub serves Docker Hub's image: judged under docker.io's name, and the
    // mirror's own name is not trusted by that (a rule for the mirror alone refuses it).
    let mirror = format!(
        "[[registry]]\nprefix = \"docker.io\"\nlocation = \"docker.io\"\n\
         [[registry.mirror]]\nlocation = \"{a}\"\ninsecure = true\n"
    );
    let (p, store) = puller(&scratch, "mirror", &mirror, &hub_only);
    let out = p.pull("web:v1", &bundle("mirror")).await?;
    assert_eq!(out.source, format!("{a}/library/web:v1"));
    assert_eq!(store.installs.lock().unwrap().len(), 1);
    let mirror_only = policy(&[&format!("{a}/library/web")]);
    let (p, store) = puller(&scratch, "mirror-named", &mirror, &mirror_only);
    let b = bundle("mirror-named");
    let e = p
        .pull("web:v1", &b)
        .await
        .expect_err("a mirror's own name does not vouch for Docker Hub's image");
    assert!(matches!(e, ImageError::Signature { .. }), "{e}");
    assert!(e.to_string().contains("docker.io/library/web"), "{e}");
    assert!(store.installs.lock().unwrap().is_empty());
    Ok(())
}
