//! Short names and `registries.conf` against Debian's `docker-registry` on 127.0.0.1: only a
//! reference without a registry goes through `[aliases]` and `unqualified-search-registries`,
//! as `short-name-mode` allows; a fully qualified one (`docker.io/...` included) is never
//! pulled from another registry. A decoy listener stands for the registries that must not be
//! asked (it counts the connections it gets).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Result;
use common::*;
use peerpod_image::{ImageError, Puller};

/// A port that accepts connections and drops them at once, counting them.
async fn decoy() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    (addr, count)
}

fn puller(scratch: &Scratch, name: &str, conf: &str) -> (Puller, Arc<RecordingStore>) {
    let mut config = test_config(&scratch.path().join(format!("work-{name}")));
    config.transfer.attempts = 1;
    config.registry_configuration_uri = Some(file_uri(scratch.path(), name, conf));
    let (p, store) = recording_puller(config);
    (p, store)
}

fn bundle(n: &str) -> PathBuf {
    PathBuf::from(format!("/run/test-bundles/short-{n}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fully_qualified_docker_io_reference_is_never_pulled_from_a_search_registry() -> Result<()>
{
    if !tools_present() {
        return Ok(());
    }
    // The attacker's image, at the path the user named on Docker Hub.
    let (scratch, registry, _) = registry_with_image(
        "short-qualified",
        "team/app",
        &[vec![Step::Write("/etc/who", b"search")]],
    )?;
    let (hub, hub_connections) = decoy().await;
    // Docker Hub (remapped to the decoy, standing for a hub the host made unreachable) and
    // the search registry holding the other image.
    let conf = format!(
        "unqualified-search-registries = [\"{a}\"]\n\
         [[registry]]\nprefix = \"docker.io\"\nlocation = \"{hub}\"\ninsecure = true\n\
         [[registry]]\nlocation = \"{a}\"\ninsecure = true\n",
        a = registry.addr
    );
    let (p, store) = puller(&scratch, "qualified.conf", &conf);
    let e = p
        .pull("docker.io/team/app:v1", &bundle("hub"))
        .await
        .expect_err("a docker.io image is pulled from docker.io only");
    assert!(matches!(e, ImageError::Transport { .. }), "{e}");
    assert!(e.to_string().contains(&hub), "{e}");
    assert!(hub_connections.load(Ordering::SeqCst) >= 1);
    assert!(store.installs.lock().unwrap().is_empty());

    // The same name written short is a search: the one search registry serves it.
    let out = p.pull("team/app:v1", &bundle("short")).await?;
    assert_eq!(
        out.source.to_string(),
        format!("{}/team/app:v1", registry.addr)
    );
    assert_eq!(out.fetched_layers, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn short_names_follow_short_name_mode_and_aliases() -> Result<()> {
    if !tools_present() {
        return Ok(());
    }
    let (scratch, registry, _) =
        registry_with_image("short-modes", "app", &[vec![Step::Write("/etc/who", b"a")]])?;
    let (first, first_connections) = decoy().await;
    let a = &registry.addr;
    let search = format!(
        "unqualified-search-registries = [\"{first}\", \"{a}\"]\n\
         [[registry]]\nlocation = \"{first}\"\ninsecure = true\n\
         [[registry]]\nlocation = \"{a}\"\ninsecure = true\n"
    );

    // Unset (permissive) and disabled: every search registry in order.
    for (i, mode) in ["", "short-name-mode = \"disabled\"\n"].iter().enumerate() {
        let before = first_connections.load(Ordering::SeqCst);
        let (p, _) = puller(&scratch, &format!("m{i}.conf"), &format!("{mode}{search}"));
        let out = p.pull("app:v1", &bundle(&format!("m{i}"))).await?;
        assert_eq!(out.source.to_string(), format!("{a}/app:v1"), "{mode}");
        assert!(first_connections.load(Ordering::SeqCst) > before, "{mode}");
    }

    // Enforcing with two search registries: refused before any registry is asked.
    let before = first_connections.load(Ordering::SeqCst);
    let enforcing = format!("short-name-mode = \"enforcing\"\n{search}");
    let (p, store) = puller(&scratch, "enforcing.conf", &enforcing);
    let e = p
        .pull("app:v1", &bundle("enforcing"))
        .await
        .expect_err("ambiguous");
    assert!(matches!(e, ImageError::Config(_)), "{e}");
    let text = e.to_string();
    assert!(text.contains("fully qualify the image"), "{text}");
    assert!(text.contains("enforcing"), "{text}");
    assert_eq!(first_connections.load(Ordering::SeqCst), before);
    assert!(store.installs.lock().unwrap().is_empty());
    // ... but a fully qualified name is pulled.
    let out = p.pull(&format!("{a}/app:v1"), &bundle("qualified")).await?;
    assert_eq!(out.source.to_string(), format!("{a}/app:v1"));

    // An alias resolves the short name under enforcing, without the search list.
    let aliased = format!("{enforcing}[aliases]\n\"web\" = \"{a}/app\"\n");
    let (p, _) = puller(&scratch, "alias.conf", &aliased);
    let out = p.pull("web:v1", &bundle("alias")).await?;
    assert_eq!(out.source.to_string(), format!("{a}/app:v1"));
    assert_eq!(first_connections.load(Ordering::SeqCst), before);
    Ok(())
}
