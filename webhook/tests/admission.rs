//! Upstream's eleven mutation scenarios, and the webhook's refusals, through the real HTTPS
//! server with a real TLS client: each review goes over TLS to `/mutate-v1-pod`, the returned
//! JSON Patch is applied to the pod as the API server would, and the result is checked.

mod common;

use common::{Conn, Server, TestResult, container, patch_of, patched, pod, review_of};
use peerpod_webhook::mutate::{CPU_ANNOTATION, GPU_ANNOTATION, MEMORY_ANNOTATION, MutationConfig};
use peerpod_webhook::review::Handler;
use peerpod_webhook::tls::TlsOptions;
use serde_json::{Value, json};

const VM: &str = "kata.peerpods.io/vm";

async fn server() -> Server {
    Server::start(
        Handler::Mutate(MutationConfig::default()),
        TlsOptions::default(),
        None,
    )
    .await
}

/// Sends `pod` in a review, checks the envelope of an allowed answer, returns the patched pod.
async fn admit(pod: &Value) -> Result<(Value, Value), common::BoxError> {
    let server = server().await;
    let mut conn = Conn::connect(server.addr, server.client_config()).await?;
    let reply = conn.review(&review_of(pod.clone())).await?;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let review = reply.json();
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["kind"], "AdmissionReview");
    assert_eq!(
        review["response"]["uid"],
        "705ab4f5-6393-11e8-b7cc-42010a800002"
    );
    assert_eq!(review["response"]["allowed"], true, "{review}");
    Ok((patched(pod, &review), review))
}

fn annotation<'a>(pod: &'a Value, key: &str) -> Option<&'a str> {
    pod["metadata"]["annotations"][key].as_str()
}

/// Every container's resources cleared except the first's, which holds one pod VM.
fn assert_resources_replaced(pod: &Value) {
    let containers = pod["spec"]["containers"].as_array().expect("containers");
    assert_eq!(
        containers[0]["resources"],
        json!({"requests": {VM: "1"}, "limits": {VM: "1"}})
    );
    for c in &containers[1..] {
        assert_eq!(c["resources"], json!({}), "{c}");
    }
    for c in pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
    {
        assert_eq!(c["resources"], json!({}), "{c}");
    }
    assert_eq!(annotation(pod, "existing"), Some("kept"));
}

fn expect(pod: &Value, cpu: Option<&str>, memory: Option<&str>, gpu: Option<&str>) {
    assert_eq!(
        annotation(pod, CPU_ANNOTATION),
        cpu,
        "cpu in {}",
        pod["metadata"]
    );
    assert_eq!(
        annotation(pod, MEMORY_ANNOTATION),
        memory,
        "memory in {}",
        pod["metadata"]
    );
    assert_eq!(
        annotation(pod, GPU_ANNOTATION),
        gpu,
        "gpu in {}",
        pod["metadata"]
    );
    assert_resources_replaced(pod);
}

fn kata(containers: Vec<Value>) -> Value {
    pod(Some("kata-remote"), vec![], containers)
}

#[tokio::test]
async fn scenario_cpu_mem_request_and_limit() -> TestResult {
    let p = kata(vec![container(
        "container1",
        &[("cpu", "2"), ("memory", "4Gi")],
        &[("cpu", "3"), ("memory", "5Gi")],
    )]);
    let (out, _) = admit(&p).await?;
    expect(&out, Some("3"), Some("5120"), None);
    Ok(())
}

#[tokio::test]
async fn scenario_cpu_request_only() -> TestResult {
    let (out, _) = admit(&kata(vec![container("container1", &[("cpu", "2")], &[])])).await?;
    expect(&out, Some("2"), None, None);
    Ok(())
}

#[tokio::test]
async fn scenario_memory_request_only() -> TestResult {
    let (out, _) = admit(&kata(vec![container(
        "container1",
        &[("memory", "4Gi")],
        &[],
    )]))
    .await?;
    expect(&out, None, Some("4096"), None);
    Ok(())
}

#[tokio::test]
async fn scenario_gpu_request_only() -> TestResult {
    let p = kata(vec![container(
        "container1",
        &[("nvidia.com/gpu", "1")],
        &[],
    )]);
    let (out, _) = admit(&p).await?;
    expect(&out, None, None, Some("1"));
    Ok(())
}

#[tokio::test]
async fn scenario_no_requests() -> TestResult {
    let (out, _) = admit(&kata(vec![container("container1", &[], &[])])).await?;
    expect(&out, None, None, None);
    Ok(())
}

#[tokio::test]
async fn scenario_request_equals_limit() -> TestResult {
    let p = kata(vec![container(
        "container1",
        &[("cpu", "2"), ("memory", "4Gi")],
        &[("cpu", "2"), ("memory", "4Gi")],
    )]);
    let (out, _) = admit(&p).await?;
    expect(&out, Some("2"), Some("4096"), None);
    Ok(())
}

#[tokio::test]
async fn scenario_init_containers_and_several_containers() -> TestResult {
    let p = pod(
        Some("kata-remote"),
        vec![container(
            "init-container1",
            &[("cpu", "1"), ("memory", "2Gi")],
            &[("cpu", "1"), ("memory", "2Gi")],
        )],
        vec![
            container(
                "container1",
                &[("cpu", "2"), ("memory", "4Gi")],
                &[("cpu", "3"), ("memory", "5Gi")],
            ),
            container(
                "container2",
                &[("cpu", "1"), ("memory", "1Gi")],
                &[("cpu", "1"), ("memory", "1Gi")],
            ),
            container(
                "container3",
                &[("cpu", "1"), ("nvidia.com/gpu", "1")],
                &[("cpu", "1"), ("nvidia.com/gpu", "1")],
            ),
        ],
    );
    let (out, _) = admit(&p).await?;
    expect(&out, Some("6"), Some("8192"), Some("1"));
    Ok(())
}

#[tokio::test]
async fn scenario_other_runtime_class_untouched() -> TestResult {
    let p = pod(
        Some("different-runtime"),
        vec![],
        vec![container(
            "container1",
            &[("cpu", "2"), ("memory", "4Gi")],
            &[("cpu", "3"), ("memory", "5Gi")],
        )],
    );
    let (out, review) = admit(&p).await?;
    assert!(patch_of(&review).is_none(), "{review}");
    assert_eq!(out, p);
    // No runtime class at all: untouched too.
    let p = pod(None, vec![], vec![container("c", &[("cpu", "2")], &[])]);
    let (out, review) = admit(&p).await?;
    assert!(patch_of(&review).is_none());
    assert_eq!(out, p);
    Ok(())
}

#[tokio::test]
async fn scenario_fractional_cpu_below_one() -> TestResult {
    let p = kata(vec![container(
        "container1",
        &[("cpu", "200m"), ("memory", "4Gi")],
        &[("cpu", "500m"), ("memory", "4Gi")],
    )]);
    let (out, _) = admit(&p).await?;
    expect(&out, Some("1"), Some("4096"), None);
    Ok(())
}

#[tokio::test]
async fn scenario_fractional_cpu_above_one() -> TestResult {
    let p = kata(vec![container(
        "container1",
        &[("cpu", "200m"), ("memory", "4Gi")],
        &[("cpu", "1500m"), ("memory", "4Gi")],
    )]);
    let (out, _) = admit(&p).await?;
    expect(&out, Some("2"), Some("4096"), None);
    Ok(())
}

#[tokio::test]
async fn scenario_fractional_cpu_over_several_containers() -> TestResult {
    let p = pod(
        Some("kata-remote"),
        vec![container(
            "init-container1",
            &[("cpu", "200m"), ("memory", "4Gi")],
            &[("cpu", "0.7"), ("memory", "4Gi")],
        )],
        vec![container(
            "container1",
            &[("cpu", "200m"), ("memory", "4Gi")],
            &[("cpu", "0.5"), ("memory", "4Gi")],
        )],
    );
    let (out, _) = admit(&p).await?;
    expect(&out, Some("2"), Some("8192"), None);
    Ok(())
}

// Beyond upstream's scenarios: its rules at their edges, kept as upstream has them.

#[tokio::test]
async fn a_limit_without_a_request_writes_no_annotation_as_upstream() -> TestResult {
    // Upstream chooses the limit only when the request sum is not zero.
    let p = kata(vec![container(
        "c",
        &[],
        &[("cpu", "2"), ("memory", "1Gi")],
    )]);
    let (out, _) = admit(&p).await?;
    expect(&out, None, None, None);
    Ok(())
}

#[tokio::test]
async fn a_limit_below_the_request_loses_to_it() -> TestResult {
    let p = kata(vec![container(
        "c",
        &[("cpu", "3"), ("memory", "2Gi")],
        &[("cpu", "1"), ("memory", "1Gi")],
    )]);
    let (out, _) = admit(&p).await?;
    expect(&out, Some("3"), Some("2048"), None);
    Ok(())
}

#[tokio::test]
async fn memory_rounds_up_to_whole_mib_and_gpus_keep_their_canonical_text() -> TestResult {
    let p = kata(vec![
        container("a", &[("memory", "1G"), ("nvidia.com/gpu", "1")], &[]),
        container("b", &[("memory", "1"), ("nvidia.com/gpu", "1")], &[]),
    ]);
    let (out, _) = admit(&p).await?;
    // 10^9 + 1 bytes = 953.67… MiB → 954; 1 + 1 GPUs → "2".
    expect(&out, None, Some("954"), Some("2"));
    Ok(())
}

#[tokio::test]
async fn fields_unknown_to_the_types_survive_the_patch() -> TestResult {
    let mut p = kata(vec![container("c", &[("cpu", "1")], &[])]);
    p["spec"]["futureField"] = json!({"x": [1, 2]});
    p["spec"]["containers"][0]["futureContainerField"] = json!("kept");
    p["metadata"]["annotations"][CPU_ANNOTATION] = json!("7");
    let (out, review) = admit(&p).await?;
    assert_eq!(out["spec"]["futureField"], json!({"x": [1, 2]}));
    assert_eq!(out["spec"]["containers"][0]["futureContainerField"], "kept");
    // An annotation the user set is overwritten by the computed value.
    assert_eq!(annotation(&out, CPU_ANNOTATION), Some("1"));
    // The patch touches only annotations and resources.
    for op in patch_of(&review).expect("a patch").0 {
        let path = op.path().to_string();
        assert!(
            path.starts_with("/metadata/annotations") || path.contains("/resources"),
            "unexpected op on {path}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_pod_without_annotations_gets_them() -> TestResult {
    let mut p = kata(vec![container("c", &[("cpu", "1")], &[])]);
    p["metadata"]
        .as_object_mut()
        .expect("metadata")
        .remove("annotations");
    let (out, _) = admit(&p).await?;
    assert_eq!(out["metadata"]["annotations"], json!({CPU_ANNOTATION: "1"}));
    Ok(())
}

#[tokio::test]
async fn the_extended_resource_and_runtime_class_are_configurable() -> TestResult {
    let config = MutationConfig::from_lookup(|name| match name {
        "TARGET_RUNTIMECLASS" => Some("kata-remote-gcp".to_owned()),
        "POD_VM_EXTENDED_RESOURCE" => Some("kata.peerpods.io/vm-gcp".to_owned()),
        _ => None,
    });
    let server = Server::start(Handler::Mutate(config), TlsOptions::default(), None).await;
    let mut conn = Conn::connect(server.addr, server.client_config()).await?;
    let p = pod(
        Some("kata-remote-gcp"),
        vec![],
        vec![container("c", &[("cpu", "1")], &[])],
    );
    let review = conn.review(&review_of(p.clone())).await?.json();
    let out = patched(&p, &review);
    assert_eq!(
        out["spec"]["containers"][0]["resources"],
        json!({"requests": {"kata.peerpods.io/vm-gcp": "1"}, "limits": {"kata.peerpods.io/vm-gcp": "1"}})
    );
    // The default class is now someone else's.
    let other = kata(vec![container("c", &[("cpu", "1")], &[])]);
    let review = conn.review(&review_of(other)).await?.json();
    assert!(patch_of(&review).is_none());
    // Empty variables mean the defaults, as upstream.
    assert_eq!(
        MutationConfig::from_lookup(|_| Some(String::new())),
        MutationConfig::default()
    );
    Ok(())
}

#[tokio::test]
async fn many_reviews_share_one_keep_alive_connection() -> TestResult {
    let server = server().await;
    let mut conn = Conn::connect(server.addr, server.client_config()).await?;
    for n in 1..=20 {
        let p = kata(vec![container("c", &[("cpu", &n.to_string())], &[])]);
        let review = conn.review(&review_of(p.clone())).await?.json();
        let n = n.to_string();
        assert_eq!(
            annotation(&patched(&p, &review), CPU_ANNOTATION),
            Some(n.as_str())
        );
    }
    Ok(())
}

#[tokio::test]
async fn reinvocation_of_a_mutated_pod_changes_nothing() -> TestResult {
    // The configuration says reinvocationPolicy: IfNeeded, so a mutated pod can come back.
    let p = pod(
        Some("kata-remote"),
        vec![container("i", &[("cpu", "1")], &[("cpu", "1")])],
        vec![
            container("a", &[("cpu", "2"), ("memory", "1Gi")], &[("cpu", "2")]),
            container("b", &[("nvidia.com/gpu", "2")], &[]),
        ],
    );
    let (once, _) = admit(&p).await?;
    expect(&once, Some("3"), Some("1024"), Some("2"));
    let (twice, review) = admit(&once).await?;
    assert!(patch_of(&review).is_none_or(|p| p.0.is_empty()), "{review}");
    assert_eq!(twice, once);
    Ok(())
}

#[tokio::test]
async fn a_malformed_pod_of_another_runtime_class_is_left_to_the_api_server() -> TestResult {
    let mut p = pod(Some("runc"), vec![], vec![container("c", &[], &[])]);
    p["spec"]["containers"][0]["resources"]["requests"] = json!(["not", "a", "map"]);
    let (out, review) = admit(&p).await?;
    assert!(patch_of(&review).is_none());
    assert_eq!(out, p);
    // The same pod in the peer-pods class is refused (tests/refusals.rs checks the reason).
    p["spec"]["runtimeClassName"] = json!("kata-remote");
    let server = server().await;
    let mut conn = Conn::connect(server.addr, server.client_config()).await?;
    let answer = conn.review(&review_of(p)).await?.json();
    assert_eq!(answer["response"]["allowed"], false);
    Ok(())
}

#[tokio::test]
async fn a_review_in_a_real_clusters_shape() -> TestResult {
    // A ReplicaSet's pod as kube-apiserver sends it at mutating admission: generateName and no
    // name yet, managedFields, a projected token volume, an init container, defaults filled in.
    let body = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/review-replicaset-pod.json"
    ))?;
    let review: Value = serde_json::from_slice(&body)?;
    let server = server().await;
    let mut conn = Conn::connect(server.addr, server.client_config()).await?;
    let reply = conn
        .send("POST", "/mutate-v1-pod", Some("application/json"), body)
        .await?;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let answer = reply.json();
    assert_eq!(
        answer["response"]["uid"],
        "3c8a7d29-5b0e-4f43-9d53-2f1f1c6b7a10"
    );
    let before = &review["request"]["object"];
    let after = patched(before, &answer);
    // CPU: requests 0.1 + 0.5 + 0.05 = 0.65, limits 0.25 + 1 = 1.25 ≥ 0.65 → 2 vCPUs.
    // Memory: requests 64 + 256 + 32 = 352 Mi, limits 128 + 512 = 640 Mi → 640.
    assert_eq!(annotation(&after, CPU_ANNOTATION), Some("2"));
    assert_eq!(annotation(&after, MEMORY_ANNOTATION), Some("640"));
    assert_eq!(annotation(&after, GPU_ANNOTATION), None);
    assert_eq!(
        annotation(&after, "io.katacontainers.config.hypervisor.machine_type"),
        Some("Standard_DC2as_v5")
    );
    assert_eq!(
        after["spec"]["containers"][0]["resources"],
        json!({"requests": {VM: "1"}, "limits": {VM: "1"}})
    );
    assert_eq!(after["spec"]["containers"][1]["resources"], json!({}));
    assert_eq!(after["spec"]["initContainers"][0]["resources"], json!({}));
    // Everything else is as it came, overhead and managedFields included.
    let mut rest_before = before.clone();
    let mut rest_after = after.clone();
    for pod in [&mut rest_before, &mut rest_after] {
        pod["metadata"]["annotations"] = Value::Null;
        for list in ["containers", "initContainers"] {
            for c in pod["spec"][list].as_array_mut().expect("containers") {
                c["resources"] = Value::Null;
            }
        }
    }
    assert_eq!(rest_before, rest_after);
    Ok(())
}
