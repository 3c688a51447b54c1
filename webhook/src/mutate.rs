//! The pod mutation: VM size annotations from the containers' resources, then the pod VM
//! extended resource in their place.
//!
//! The rules are cloud-api-adaptor's webhook's, kept exactly (one difference: a pod of another
//! runtime class is passed without being decoded, where upstream refuses one its types cannot
//! read):
//!
//! - only pods whose `runtimeClassName` is the target runtime class are changed;
//! - CPU, memory and `nvidia.com/gpu` requests and limits are summed over the containers and
//!   the init containers (pod overhead is not counted: the VM is outside the node);
//! - CPU: when the request sum is not zero and the limit sum is at least the request sum, the
//!   limit sum is used, else a positive request sum; either is rounded up to whole CPUs and
//!   written to `io.katacontainers.config.hypervisor.default_vcpus`;
//! - memory: the same choice, rounded up to whole MiB, in `…default_memory`;
//! - GPUs: a positive request sum, as its canonical quantity text, in `…default_gpus`;
//! - no annotation is written for a value that is not chosen; other annotations are kept;
//! - every container's and init container's `resources` becomes `{}`, then the first
//!   container's becomes `{"requests": {R: "1"}, "limits": {R: "1"}}` for the pod VM resource R.
//!
//! The JSON Patch is made against the pod's JSON as received and touches only the annotations
//! and the containers' `resources`, so fields this crate's Kubernetes types do not know are
//! never removed. The pod is read through [`crate::view`]: only the fields above are decoded,
//! so a hostile review costs about its own size in memory.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;
use serde_json::{Map, Value, json};

use crate::quantity::{Quantity, QuantityError};
use crate::view::{ContainerView, PodView, runtime_class};

/// The runtime class mutated unless `TARGET_RUNTIMECLASS` says otherwise.
pub const DEFAULT_RUNTIME_CLASS: &str = "kata-remote";
/// The pod VM extended resource unless `POD_VM_EXTENDED_RESOURCE` says otherwise.
pub const DEFAULT_VM_RESOURCE: &str = "kata.peerpods.io/vm";
/// The annotation carrying the pod VM's vCPU count.
pub const CPU_ANNOTATION: &str = "io.katacontainers.config.hypervisor.default_vcpus";
/// The annotation carrying the pod VM's memory in MiB.
pub const MEMORY_ANNOTATION: &str = "io.katacontainers.config.hypervisor.default_memory";
/// The annotation carrying the pod VM's GPU count.
pub const GPU_ANNOTATION: &str = "io.katacontainers.config.hypervisor.default_gpus";
/// The GPU resource summed into [`GPU_ANNOTATION`].
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// What the mutation needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MutationConfig {
    /// Pods of this runtime class are mutated; others pass untouched.
    pub runtime_class: String,
    /// The extended resource every mutated pod requests one of.
    pub vm_resource: String,
}

impl Default for MutationConfig {
    fn default() -> Self {
        Self {
            runtime_class: DEFAULT_RUNTIME_CLASS.to_owned(),
            vm_resource: DEFAULT_VM_RESOURCE.to_owned(),
        }
    }
}

impl MutationConfig {
    /// From `TARGET_RUNTIMECLASS` and `POD_VM_EXTENDED_RESOURCE` (empty or unset: the
    /// defaults), through `lookup` so tests need not touch the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let or = |name: &str, default: &str| {
            lookup(name)
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_owned())
        };
        Self {
            runtime_class: or("TARGET_RUNTIMECLASS", DEFAULT_RUNTIME_CLASS),
            vm_resource: or("POD_VM_EXTENDED_RESOURCE", DEFAULT_VM_RESOURCE),
        }
    }
}

/// Why a pod could not be mutated (the review is answered "denied" with this reason).
#[derive(Debug, thiserror::Error)]
pub enum MutateError {
    /// The object is not a pod as Kubernetes' types describe it.
    #[error("the object is not a valid Pod")]
    NotAPod(#[source] serde_json::Error),
    /// A container's resource quantity is not a quantity.
    #[error("container {container:?}: {resource} {kind}")]
    Quantity {
        /// The container's name.
        container: String,
        /// The resource name.
        resource: String,
        /// `request` or `limit`.
        kind: &'static str,
        /// What is wrong with it.
        #[source]
        source: QuantityError,
    },
    /// A sum overflowed, or a rounded value does not fit the annotation.
    #[error("the pod's total {0} is out of range")]
    OutOfRange(&'static str),
    /// A pod of the target runtime class without containers (the API server would refuse it
    /// too; upstream's webhook crashes on it).
    #[error("the pod has no containers")]
    NoContainers,
}

/// The summed resources of a pod.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// CPU requests.
    pub cpu_request: Quantity,
    /// CPU limits.
    pub cpu_limit: Quantity,
    /// Memory requests.
    pub memory_request: Quantity,
    /// Memory limits.
    pub memory_limit: Quantity,
    /// GPU requests.
    pub gpu_request: Quantity,
}

impl Totals {
    /// Sums the resources of `pod`'s containers and init containers.
    pub fn of(pod: &PodView) -> Result<Self, MutateError> {
        let mut t = Totals::default();
        let Some(spec) = pod.spec.as_ref() else {
            return Ok(t);
        };
        let all = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter())
            .flat_map(|l| l.0.iter());
        for c in all {
            let Some(res) = c.resources.as_ref() else {
                continue;
            };
            let requests = res.requests.as_ref();
            let limits = res.limits.as_ref();
            add(
                &mut t.cpu_request,
                c,
                requests.and_then(|l| l.cpu.as_ref()),
                "cpu",
                "request",
                "CPU request",
            )?;
            add(
                &mut t.cpu_limit,
                c,
                limits.and_then(|l| l.cpu.as_ref()),
                "cpu",
                "limit",
                "CPU limit",
            )?;
            add(
                &mut t.memory_request,
                c,
                requests.and_then(|l| l.memory.as_ref()),
                "memory",
                "request",
                "memory request",
            )?;
            add(
                &mut t.memory_limit,
                c,
                limits.and_then(|l| l.memory.as_ref()),
                "memory",
                "limit",
                "memory limit",
            )?;
            add(
                &mut t.gpu_request,
                c,
                requests.and_then(|l| l.gpu.as_ref()),
                GPU_RESOURCE,
                "request",
                "GPU request",
            )?;
        }
        Ok(t)
    }

    /// The annotations these totals give, by upstream's rules (see the module documentation).
    pub fn annotations(&self) -> Result<Vec<(&'static str, String)>, MutateError> {
        let mut out = Vec::with_capacity(3);
        if let Some(cpu) = chosen(self.cpu_request, self.cpu_limit) {
            let vcpus = cpu.ceil_units().ok_or(MutateError::OutOfRange("CPU"))?;
            out.push((CPU_ANNOTATION, vcpus.to_string()));
        }
        if let Some(memory) = chosen(self.memory_request, self.memory_limit) {
            let mib = memory.ceil_mib().ok_or(MutateError::OutOfRange("memory"))?;
            out.push((MEMORY_ANNOTATION, mib.to_string()));
        }
        if self.gpu_request.is_positive() {
            out.push((GPU_ANNOTATION, self.gpu_request.to_decimal_si()));
        }
        Ok(out)
    }
}

/// The limit when the request is set and the limit covers it, else a positive request.
fn chosen(request: Quantity, limit: Quantity) -> Option<Quantity> {
    if !request.is_zero() && limit >= request {
        Some(limit)
    } else if request.is_positive() {
        Some(request)
    } else {
        None
    }
}

fn add(
    total: &mut Quantity,
    container: &ContainerView,
    text: Option<&K8sQuantity>,
    resource: &str,
    kind: &'static str,
    what: &'static str,
) -> Result<(), MutateError> {
    let Some(text) = text else {
        return Ok(());
    };
    let value = Quantity::parse(&text.0).map_err(|source| MutateError::Quantity {
        container: container.name.chars().take(64).collect(),
        resource: resource.to_owned(),
        kind,
        source,
    })?;
    *total = total
        .checked_add(value)
        .map_err(|_| MutateError::OutOfRange(what))?;
    Ok(())
}

/// The outcome of looking at one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Mutation {
    /// Not of the target runtime class: admitted as it is.
    Untouched,
    /// Admitted with this JSON Patch (RFC 6902) applied.
    Patch(json_patch::Patch),
}

/// Mutates `object` (a pod's JSON text, as the API server sent it) under `config`.
///
/// Pods of other runtime classes are passed before being decoded: whatever else is wrong with
/// them is the API server's to refuse, not this webhook's (upstream refuses any pod its types
/// cannot decode).
pub fn mutate(config: &MutationConfig, object: &str) -> Result<Mutation, MutateError> {
    if runtime_class(object).as_deref() != Some(config.runtime_class.as_str()) {
        return Ok(Mutation::Untouched);
    }
    let pod: PodView = serde_json::from_str(object).map_err(MutateError::NotAPod)?;
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(Mutation::Untouched);
    };
    if spec.runtime_class_name.as_deref() != Some(config.runtime_class.as_str()) {
        return Ok(Mutation::Untouched);
    }
    if spec.containers.as_ref().is_none_or(|l| l.0.is_empty()) {
        return Err(MutateError::NoContainers);
    }
    let annotations = Totals::of(&pod)?.annotations()?;
    Ok(Mutation::Patch(patch(
        &pod,
        &annotations,
        &config.vm_resource,
    )))
}

/// What a pod's metadata holds, for adding annotations to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnnotationsAt {
    /// `metadata.annotations` is a map: one `add` per annotation.
    Map,
    /// `metadata` has no `annotations`: one `add` of the whole map.
    NoMap,
    /// There is no `metadata`: one `add` of `metadata` holding the map.
    NoMetadata,
}

/// The JSON Patch operations that add `annotations` to a pod whose metadata is `at`.
pub fn annotation_ops(at: AnnotationsAt, annotations: &[(&str, String)]) -> Vec<PatchOperation> {
    let add = |path: PointerBuf, value: Value| PatchOperation::Add(AddOperation { path, value });
    let as_map = || {
        Value::Object(
            annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Value::String(v.clone())))
                .collect(),
        )
    };
    match at {
        AnnotationsAt::Map => annotations
            .iter()
            .map(|(key, value)| {
                add(
                    PointerBuf::from_tokens(["metadata", "annotations", key]),
                    Value::String(value.clone()),
                )
            })
            .collect(),
        AnnotationsAt::NoMap => vec![add(
            PointerBuf::from_tokens(["metadata", "annotations"]),
            as_map(),
        )],
        AnnotationsAt::NoMetadata => vec![add(
            PointerBuf::from_tokens(["metadata"]),
            json!({ "annotations": as_map() }),
        )],
    }
}

/// The JSON Patch that applies the mutation to the pod's JSON: one `add` per annotation (or of
/// the whole map when there is none), one `add` (which replaces) per container whose
/// `resources` is not already what it must be. Nothing else in the pod is touched.
fn patch(pod: &PodView, annotations: &[(&str, String)], vm_resource: &str) -> json_patch::Patch {
    let mut ops = Vec::new();
    let add = |path: PointerBuf, value: Value| PatchOperation::Add(AddOperation { path, value });
    if !annotations.is_empty() {
        let at = match &pod.metadata {
            Some(meta) if meta.annotations.is_some() => AnnotationsAt::Map,
            Some(_) => AnnotationsAt::NoMap,
            None => AnnotationsAt::NoMetadata,
        };
        ops.extend(annotation_ops(at, annotations));
    }
    let one = || {
        let mut m = Map::new();
        m.insert(vm_resource.to_owned(), Value::String("1".to_owned()));
        Value::Object(m)
    };
    let first = json!({ "requests": one(), "limits": one() });
    let empty = json!({});
    let Some(spec) = pod.spec.as_ref() else {
        return json_patch::Patch(ops);
    };
    let lists = [
        ("containers", spec.containers.as_ref()),
        ("initContainers", spec.init_containers.as_ref()),
    ];
    for (list, containers) in lists {
        let Some(containers) = containers else {
            continue;
        };
        for (i, c) in containers.0.iter().enumerate() {
            let is_first = list == "containers" && i == 0;
            let already = match &c.resources {
                None => false,
                Some(r) if is_first => r.is_one_of(vm_resource),
                Some(r) => r.is_empty(),
            };
            if !already {
                let index = i.to_string();
                ops.push(add(
                    PointerBuf::from_tokens(["spec", list, index.as_str(), "resources"]),
                    if is_first {
                        first.clone()
                    } else {
                        empty.clone()
                    },
                ));
            }
        }
    }
    json_patch::Patch(ops)
}
