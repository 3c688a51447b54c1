//! The mutation as it was made before the partial decoder (`crate::view`): the pod decoded
//! whole into k8s-openapi's `Pod`, the patch made against the pod as a `serde_json::Value`.
//! Kept only as the oracle the differential tests compare with.

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation};
use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;
use peerpod_webhook::mutate::{
    AnnotationsAt, GPU_RESOURCE, MutationConfig, Totals, annotation_ops,
};
use peerpod_webhook::quantity::Quantity;
use serde_json::{Map, Value, json};

/// `Ok(None)`: admitted untouched; `Ok(Some(patch))`: admitted with it; `Err(why)`: denied.
pub fn mutate(config: &MutationConfig, text: &str) -> Result<Option<json_patch::Patch>, String> {
    let object: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    if object["spec"]["runtimeClassName"].as_str() != Some(config.runtime_class.as_str()) {
        return Ok(None);
    }
    // k8s-openapi's `Pod` decoded from the text itself, as the previous path did from the
    // `Value`: the same, except that a value under a key repeated later is still checked
    // (the `Value` had already dropped it), as the streaming view must.
    let pod: Pod = serde_json::from_str(text).map_err(|e| format!("not a Pod: {e}"))?;
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(None);
    };
    if spec.runtime_class_name.as_deref() != Some(config.runtime_class.as_str()) {
        return Ok(None);
    }
    if spec.containers.is_empty() {
        return Err("no containers".into());
    }
    let mut t = Totals::default();
    let all = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for c in all {
        let Some(res) = c.resources.as_ref() else {
            continue;
        };
        let (req, lim) = (res.requests.as_ref(), res.limits.as_ref());
        add(&mut t.cpu_request, c, req, "cpu")?;
        add(&mut t.cpu_limit, c, lim, "cpu")?;
        add(&mut t.memory_request, c, req, "memory")?;
        add(&mut t.memory_limit, c, lim, "memory")?;
        add(&mut t.gpu_request, c, req, GPU_RESOURCE)?;
    }
    let annotations = t.annotations().map_err(|e| e.to_string())?;
    Ok(Some(patch(&object, &annotations, &config.vm_resource)))
}

fn add(
    total: &mut Quantity,
    c: &Container,
    list: Option<&BTreeMap<String, K8sQuantity>>,
    resource: &str,
) -> Result<(), String> {
    let Some(text) = list.and_then(|l| l.get(resource)) else {
        return Ok(());
    };
    let value = Quantity::parse(&text.0).map_err(|e| format!("{}: {e}", c.name))?;
    *total = total.checked_add(value).map_err(|e| e.to_string())?;
    Ok(())
}

fn patch(pod: &Value, annotations: &[(&str, String)], vm_resource: &str) -> json_patch::Patch {
    let mut ops = Vec::new();
    let add = |path: PointerBuf, value: Value| PatchOperation::Add(AddOperation { path, value });
    if !annotations.is_empty() {
        let at = match &pod["metadata"] {
            Value::Object(meta) if meta.get("annotations").is_some_and(Value::is_object) => {
                AnnotationsAt::Map
            }
            Value::Object(_) => AnnotationsAt::NoMap,
            _ => AnnotationsAt::NoMetadata,
        };
        ops.extend(annotation_ops(at, annotations));
    }
    let mut one = Map::new();
    one.insert(vm_resource.to_owned(), Value::String("1".to_owned()));
    let first = json!({ "requests": one.clone(), "limits": one });
    let empty = json!({});
    for list in ["containers", "initContainers"] {
        let Some(containers) = pod["spec"][list].as_array() else {
            continue;
        };
        for (i, c) in containers.iter().enumerate() {
            let want = if list == "containers" && i == 0 {
                &first
            } else {
                &empty
            };
            if c.get("resources") != Some(want) {
                let index = i.to_string();
                ops.push(add(
                    PointerBuf::from_tokens(["spec", list, index.as_str(), "resources"]),
                    want.clone(),
                ));
            }
        }
    }
    json_patch::Patch(ops)
}
