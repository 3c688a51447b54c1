//! The per-node VM limit advertiser against a stand-in of the API server's node endpoints: a
//! real HTTPS server (hyper over rustls) that checks the bearer token and applies the JSON
//! Patches it receives with RFC 6902 semantics (`test` included) to a node object, answering
//! 422 when a patch does not apply, as kube-apiserver does. (Debian has no kube-apiserver
//! package, so a real one cannot run here.)

mod common;

use common::apiserver::{ApiServer, NODE, TOKEN, a_node, wait_for};
use common::{Certs, TestResult};
use peerpod_webhook::advertiser::{
    AdvertiseError, Advertised, Advertiser, AdvertiserConfig, MAX_REPLY_BYTES, MAX_TOKEN_BYTES,
    OWNER_ANNOTATION, Withdrawn,
};
use serde_json::json;

/// The node as the API server holds it advertises `capacity` VMs, owned by `owner`.
fn assert_advertised(api: &ApiServer, capacity: &str, owner: &str) {
    let node = api.node();
    assert_eq!(node["status"]["capacity"]["kata.peerpods.io/vm"], capacity);
    assert_eq!(node["metadata"]["annotations"][OWNER_ANNOTATION], owner);
}

#[tokio::test]
async fn advertise_sets_the_capacity_with_the_owner_and_withdraw_removes_both() -> TestResult {
    let api = ApiServer::start(a_node()).await;
    let a = api.advertiser("advertiser-a", 10, TOKEN);
    assert_eq!(a.advertise().await?, Advertised::Set);
    let node = api.node();
    assert_eq!(node["status"]["capacity"]["kata.peerpods.io/vm"], "10");
    assert_eq!(node["status"]["capacity"]["cpu"], "4");
    assert_eq!(
        node["metadata"]["annotations"][OWNER_ANNOTATION],
        "advertiser-a"
    );
    assert_eq!(
        node["metadata"]["annotations"]["node.alpha.kubernetes.io/ttl"],
        "0"
    );
    // The patch path is upstream's, with the resource name escaped.
    let log = api.state.lock().expect("state").log.clone();
    let (_, path, body) = log.iter().find(|(m, _, _)| m == "PATCH").expect("a patch");
    assert_eq!(path, "/api/v1/nodes/worker-0/status");
    assert!(
        body.contains("/status/capacity/kata.peerpods.io~1vm"),
        "{body}"
    );

    assert_eq!(a.withdraw().await?, Withdrawn::Removed);
    let node = api.node();
    assert!(
        node["status"]["capacity"]
            .get("kata.peerpods.io/vm")
            .is_none(),
        "{node}"
    );
    assert!(
        node["metadata"]["annotations"]
            .get(OWNER_ANNOTATION)
            .is_none(),
        "{node}"
    );
    assert_eq!(node["status"]["capacity"]["pods"], "110");
    Ok(())
}

#[tokio::test]
async fn a_node_without_annotations_or_capacity_gets_them() -> TestResult {
    let api = ApiServer::start(
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}, "status": {}}),
    )
    .await;
    let a = api.advertiser("advertiser-a", 3, TOKEN);
    a.advertise().await?;
    assert_advertised(&api, "3", "advertiser-a");
    Ok(())
}

#[tokio::test]
async fn withdraw_leaves_another_owners_capacity() -> TestResult {
    let api = ApiServer::start(a_node()).await;
    let old = api.advertiser("advertiser-a", 10, TOKEN);
    let new = api.advertiser("advertiser-b", 8, TOKEN);
    old.advertise().await?;
    new.advertise().await?;
    assert_eq!(
        old.withdraw().await?,
        Withdrawn::NotOwner(Some("advertiser-b".to_owned()))
    );
    assert_advertised(&api, "8", "advertiser-b");
    Ok(())
}

#[tokio::test]
async fn a_takeover_between_read_and_patch_is_not_undone() -> TestResult {
    let api = ApiServer::start(a_node()).await;
    let a = api.advertiser("advertiser-a", 10, TOKEN);
    a.advertise().await?;
    // The next GET (withdraw's read) still shows us as owner, but b has taken over by the time
    // the patch arrives: the patch's `test` must fail and nothing be removed.
    {
        let mut s = api.state.lock().expect("state");
        let gets = s.gets;
        s.takeover = Some((gets + 1, "advertiser-b".to_owned()));
        s.node["status"]["capacity"]["kata.peerpods.io/vm"] = json!("8");
    }
    assert_eq!(
        a.withdraw().await?,
        Withdrawn::NotOwner(Some("advertiser-b".to_owned()))
    );
    assert_advertised(&api, "8", "advertiser-b");
    Ok(())
}

#[tokio::test]
async fn a_negative_limit_advertises_nothing_and_sends_nothing() -> TestResult {
    let api = ApiServer::start(a_node()).await;
    let a = api.advertiser("advertiser-a", -1, TOKEN);
    assert_eq!(a.advertise().await?, Advertised::Skipped);
    assert_eq!(a.withdraw().await?, Withdrawn::Skipped);
    assert!(!a.ensure().await?);
    assert_eq!(api.requests(), 0);
    assert_eq!(api.node(), a_node());
    Ok(())
}

#[tokio::test]
async fn ensure_readds_a_dropped_capacity_but_not_over_another_owner() -> TestResult {
    let api = ApiServer::start(a_node()).await;
    let a = api.advertiser("advertiser-a", 10, TOKEN);
    a.advertise().await?;
    assert!(!a.ensure().await?, "present: nothing to do");
    // A kubelet restart dropped it.
    api.state.lock().expect("state").node["status"]["capacity"]
        .as_object_mut()
        .expect("capacity")
        .remove("kata.peerpods.io/vm");
    assert!(a.ensure().await?);
    assert_eq!(
        api.node()["status"]["capacity"]["kata.peerpods.io/vm"],
        "10"
    );
    // Owned by b and dropped: a does not fight over it.
    {
        let mut s = api.state.lock().expect("state");
        s.node["metadata"]["annotations"][OWNER_ANNOTATION] = json!("advertiser-b");
        s.node["status"]["capacity"]
            .as_object_mut()
            .expect("capacity")
            .remove("kata.peerpods.io/vm");
    }
    assert!(!a.ensure().await?);
    assert!(
        api.node()["status"]["capacity"]
            .get("kata.peerpods.io/vm")
            .is_none()
    );
    Ok(())
}

#[tokio::test]
async fn api_errors_name_the_status_and_the_servers_reason() -> TestResult {
    let api = ApiServer::start(a_node()).await;
    let e = api
        .advertiser("advertiser-a", 10, "wrong-token")
        .advertise()
        .await
        .expect_err("accepted");
    assert!(
        matches!(e, AdvertiseError::Status { status: 401, .. }),
        "{e}"
    );
    assert!(
        e.to_string().contains("401") && e.to_string().contains("Unauthorized"),
        "{e}"
    );
    assert_eq!(api.node(), a_node(), "nothing changed");

    // Another node: 404 from GET.
    let mut other = api.advertiser("advertiser-a", 10, TOKEN);
    other = Advertiser::new(
        &api.url,
        api.certs.ca_pem.as_bytes(),
        TOKEN,
        AdvertiserConfig {
            node_name: "worker-9".to_owned(),
            ..other.config().clone()
        },
    )?;
    let e = other.advertise().await.expect_err("found");
    assert!(
        matches!(e, AdvertiseError::Status { status: 404, .. }),
        "{e}"
    );
    Ok(())
}

#[tokio::test]
async fn an_api_server_with_another_ca_is_refused() -> TestResult {
    let api = ApiServer::start(a_node()).await;
    let stranger = Certs::generate("stranger");
    let config = api.advertiser("a", 10, TOKEN).config().clone();
    let a = Advertiser::new(&api.url, stranger.ca_pem.as_bytes(), TOKEN, config)?;
    let e = a
        .advertise()
        .await
        .expect_err("an untrusted server was believed");
    assert!(matches!(e, AdvertiseError::Http(_)), "{e}");
    assert_eq!(api.requests(), 0, "the token never reached it");
    Ok(())
}

#[tokio::test]
async fn a_hostile_node_name_stays_one_path_segment() -> TestResult {
    let api = ApiServer::start(a_node()).await;
    let config = AdvertiserConfig {
        node_name: "../namespaces/kube-system/secrets/x?y#z".to_owned(),
        ..api.advertiser("a", 10, TOKEN).config().clone()
    };
    let a = Advertiser::new(&api.url, api.certs.ca_pem.as_bytes(), TOKEN, config)?;
    assert!(a.advertise().await.is_err());
    let log = api.state.lock().expect("state").log.clone();
    assert_eq!(log.len(), 1);
    assert_eq!(
        log[0].1,
        "/api/v1/nodes/..%2Fnamespaces%2Fkube-system%2Fsecrets%2Fx%3Fy%23z"
    );
    Ok(())
}

#[test]
fn configuration_from_the_environment() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    };
    let c = AdvertiserConfig::from_lookup(env(&[("NODE_NAME", "n1"), ("POD_NAME", "adv-xyz")]))
        .expect("config");
    assert_eq!(
        (
            c.node_name.as_str(),
            c.limit,
            c.resource.as_str(),
            c.owner.as_str()
        ),
        ("n1", 10, "kata.peerpods.io/vm", "adv-xyz")
    );
    let c = AdvertiserConfig::from_lookup(env(&[
        ("NODE_NAME", "n1"),
        ("PEERPODS_LIMIT_PER_NODE", "-1"),
        ("POD_VM_EXTENDED_RESOURCE", "kata.peerpods.io/vm-gcp"),
    ]))
    .expect("config");
    assert_eq!(
        (c.limit, c.resource.as_str()),
        (-1, "kata.peerpods.io/vm-gcp")
    );
    let e = AdvertiserConfig::from_lookup(env(&[("PEERPODS_LIMIT_PER_NODE", "5")]))
        .expect_err("no node");
    assert!(e.to_string().contains("NODE_NAME"), "{e}");
    let e = AdvertiserConfig::from_lookup(env(&[
        ("NODE_NAME", "n"),
        ("PEERPODS_LIMIT_PER_NODE", "ten"),
    ]))
    .expect_err("not a number");
    assert!(e.to_string().contains("PEERPODS_LIMIT_PER_NODE"), "{e}");
}

#[tokio::test]
async fn the_binary_advertises_in_cluster_and_withdraws_on_sigterm() -> TestResult {
    let api = ApiServer::start(a_node()).await;
    let sa = common::TempDir::new("sa");
    std::fs::write(sa.0.join("token"), format!("{TOKEN}\n"))?;
    std::fs::write(sa.0.join("ca.crt"), &api.certs.ca_pem)?;
    let port = api.url.rsplit(':').next().ok_or("port")?.to_owned();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_peerpod-vm-advertiser"))
        .arg("--service-account-dir")
        .arg(&sa.0)
        .env_clear()
        .env("KUBERNETES_SERVICE_HOST", "localhost")
        .env("KUBERNETES_SERVICE_PORT", &port)
        .env("NODE_NAME", NODE)
        .env("POD_NAME", "peerpod-vm-advertiser-x7k2p")
        .env("PEERPODS_LIMIT_PER_NODE", "7")
        .kill_on_drop(true)
        .spawn()?;
    wait_for(&api, "the capacity", |n| {
        n["status"]["capacity"]["kata.peerpods.io/vm"] == "7"
    })
    .await?;
    assert_eq!(
        api.node()["metadata"]["annotations"][OWNER_ANNOTATION],
        "peerpod-vm-advertiser-x7k2p"
    );
    // The kubelet rotates the projected token meanwhile: the withdrawal must use the new one.
    api.state.lock().expect("state").token = "rotated-token-2".to_owned();
    std::fs::write(sa.0.join("token"), "rotated-token-2\n")?;
    let pid = child.id().ok_or("no pid")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid)?),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait()).await??;
    assert!(status.success(), "{status}");
    let node = api.node();
    assert!(
        node["status"]["capacity"]
            .get("kata.peerpods.io/vm")
            .is_none(),
        "{node}"
    );
    assert!(
        node["metadata"]["annotations"]
            .get(OWNER_ANNOTATION)
            .is_none(),
        "{node}"
    );
    Ok(())
}

#[tokio::test]
async fn the_binary_without_node_name_fails_naming_it() -> TestResult {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_peerpod-vm-advertiser"))
        .env_clear()
        .output()
        .await?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("NODE_NAME"), "{stderr}");
    Ok(())
}

/// A reply far larger than the cap — announced or not, success or error — is refused by the
/// advertiser without reading it: it stops at the cap (or at the announced length) and says
/// which limit the reply broke.
#[tokio::test]
async fn a_huge_reply_is_refused_without_being_read_whole() -> TestResult {
    use std::sync::atomic::Ordering;
    const HUGE: u64 = 256 << 20;
    let api = ApiServer::start(a_node()).await;
    let a = api.advertiser("advertiser-a", 10, TOKEN);
    for (announce, error) in [(false, false), (true, false), (false, true)] {
        let sent = {
            let mut s = api.state.lock().expect("state");
            s.huge = Some((HUGE, announce));
            s.huge_error = error;
            s.huge_sent.store(0, Ordering::Relaxed);
            std::sync::Arc::clone(&s.huge_sent)
        };
        let e = a.advertise().await.expect_err("a huge reply was accepted");
        if error {
            assert!(
                matches!(e, AdvertiseError::Status { status: 500, ref body, .. } if body.is_empty()),
                "{e}"
            );
        } else {
            assert!(
                matches!(
                    e,
                    AdvertiseError::TooLarge {
                        limit: MAX_REPLY_BYTES,
                        ..
                    }
                ),
                "{e}"
            );
            assert!(e.to_string().contains(&MAX_REPLY_BYTES.to_string()), "{e}");
        }
        // What the stand-in managed to hand over: the cap plus what the sockets buffer, not
        // the 256 MiB (reading it all would take the whole reply).
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let handed = sent.load(Ordering::Relaxed);
        eprintln!("announce {announce}, error {error}: {handed} bytes handed over: {e}");
        assert!(
            handed < MAX_REPLY_BYTES as u64 + (32 << 20),
            "{handed} bytes were read"
        );
    }
    assert_eq!(api.node(), a_node(), "nothing was patched");
    Ok(())
}

/// The token file is read before every request: once the kubelet rotates it (and the API
/// server stops accepting the old one), the next request carries the new token.
#[tokio::test]
async fn a_rotated_token_file_is_used_on_the_next_request() -> TestResult {
    let api = ApiServer::start(a_node()).await;
    let dir = common::TempDir::new("token");
    let file = dir.0.join("token");
    std::fs::write(&file, format!("{TOKEN}\n"))?;
    let config = api.advertiser("advertiser-a", 10, TOKEN).config().clone();
    let a = Advertiser::with_token_file(&api.url, api.certs.ca_pem.as_bytes(), &file, config)?;
    assert_eq!(a.advertise().await?, Advertised::Set);
    // Rotation: the API server takes only the new token, the file holds it.
    api.state.lock().expect("state").token = "rotated-token-2".to_owned();
    std::fs::write(&file, "rotated-token-2\n")?;
    assert_eq!(a.withdraw().await?, Withdrawn::Removed);
    let log = api.state.lock().expect("state").log.clone();
    assert!(log.len() >= 4, "{log:?}");
    // A token file that is too large, empty or gone fails the request naming the file, and
    // nothing is sent.
    let before = api.requests();
    for (content, problem) in [
        (Some("x".repeat(MAX_TOKEN_BYTES + 1)), "larger than"),
        (Some("\n".to_owned()), "is empty"),
        (Some("two words".to_owned()), "cannot"),
        (None, "cannot be read"),
    ] {
        match content {
            Some(c) => std::fs::write(&file, c)?,
            None => std::fs::remove_file(&file)?,
        }
        let e = a.advertise().await.expect_err("a bad token file was used");
        assert!(matches!(e, AdvertiseError::Token { .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.contains(&file.display().to_string()) && text.contains(problem),
            "{text}"
        );
        assert!(
            !text.contains("xxxxxxxx"),
            "the token leaked into the error"
        );
    }
    assert_eq!(api.requests(), before, "a request went out without a token");
    Ok(())
}
