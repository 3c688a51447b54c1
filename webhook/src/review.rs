//! AdmissionReview in, AdmissionReview out: the HTTP-independent core of the webhook.
//!
//! A body that is not an AdmissionReview (not JSON, no `request`, another kind) is a
//! [`ReviewError`], answered with HTTP 400 and the reason. A well-formed review whose object
//! cannot be mutated (not a pod, a bad quantity) is answered with a review that denies it,
//! code 400 and the reason — as upstream's webhook does — so the API server refuses the pod
//! and tells its author why.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use kube_core::TypeMeta;
use kube_core::admission::{AdmissionResponse, Operation};
use kube_core::gvk::GroupVersionKind;
use kube_core::response::Status;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::mutate::{Mutation, MutationConfig, mutate};

/// The largest review read: 3 MiB, the API server's own limit on a request body
/// (kube-apiserver's `MaxRequestBodyBytes`), which Kubernetes' PodSecurity webhook also
/// applies to the reviews it reads. Larger bodies are answered HTTP 413.
pub const MAX_REVIEW_BYTES: usize = 3 << 20;
/// The longest reason sent back (longer reasons are cut).
pub const MAX_REASON_LEN: usize = 1024;

/// What the server does with a well-formed review.
#[derive(Debug, Clone)]
pub enum Handler {
    /// The peer-pods mutation.
    Mutate(MutationConfig),
    /// Admit every object unchanged: the same parsing and answering with no mutation (the
    /// benchmark's baseline).
    Echo,
}

/// Why a request body is not a usable AdmissionReview.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The body is empty.
    #[error("the request body is empty")]
    Empty,
    /// The body is larger than [`MAX_REVIEW_BYTES`].
    #[error("the AdmissionReview is larger than {MAX_REVIEW_BYTES} bytes")]
    TooLarge,
    /// Not JSON, or not an AdmissionReview's shape.
    #[error("the body is not an AdmissionReview: {0}")]
    Json(#[source] serde_json::Error),
    /// Another kind or API version.
    #[error(
        "expected kind AdmissionReview of admission.k8s.io/v1 (or v1beta1), got kind {kind:?} \
         of {api_version:?}"
    )]
    Kind {
        /// The kind sent.
        kind: String,
        /// The API version sent.
        api_version: String,
    },
    /// No `request` in the review.
    #[error("the AdmissionReview has no request")]
    NoRequest,
    /// The answer could not be serialised (a bug).
    #[error("the AdmissionReview response could not be serialised: {0}")]
    Serialize(#[source] serde_json::Error),
}

/// An AdmissionReview's request, as far as the webhook reads it: the object stays the JSON
/// text it arrived as (borrowed from the body), and every field not named here (`userInfo`,
/// `options`, `oldObject`, ...) is skipped by the parser without being kept.
#[derive(Debug)]
pub struct Review<'a> {
    /// `apiVersion` and `kind` of the review (the answer repeats them).
    pub types: TypeMeta,
    /// `request.uid`.
    pub uid: String,
    /// `request.kind`: the object's kind.
    pub kind: GroupVersionKind,
    /// `request.operation`.
    pub operation: Operation,
    /// `request.object` as JSON text; `None` when absent or null.
    pub object: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a> {
    api_version: String,
    kind: String,
    #[serde(borrow, default)]
    request: Option<RequestFields<'a>>,
}

#[derive(Deserialize)]
struct RequestFields<'a> {
    uid: String,
    kind: GroupVersionKind,
    operation: Operation,
    #[serde(borrow, default)]
    object: Option<&'a RawValue>,
}

/// Parses an AdmissionReview request body (the fuzzing entry point).
pub fn parse_review(body: &[u8]) -> Result<Review<'_>, ReviewError> {
    if body.is_empty() {
        return Err(ReviewError::Empty);
    }
    if body.len() > MAX_REVIEW_BYTES {
        return Err(ReviewError::TooLarge);
    }
    let review: Envelope<'_> = serde_json::from_slice(body).map_err(ReviewError::Json)?;
    if review.kind != "AdmissionReview"
        || !matches!(
            review.api_version.as_str(),
            "admission.k8s.io/v1" | "admission.k8s.io/v1beta1"
        )
    {
        return Err(ReviewError::Kind {
            kind: clip(&review.kind, 64),
            api_version: clip(&review.api_version, 64),
        });
    }
    let request = review.request.ok_or(ReviewError::NoRequest)?;
    Ok(Review {
        types: TypeMeta {
            api_version: review.api_version,
            kind: review.kind,
        },
        uid: request.uid,
        kind: request.kind,
        operation: request.operation,
        object: request.object,
    })
}

/// Answers one review body: the response body (HTTP 200), or why the body is unusable (HTTP
/// 400).
pub fn handle(handler: &Handler, body: &[u8]) -> Result<Vec<u8>, ReviewError> {
    let request = parse_review(body)?;
    let mut response = respond(handler, &request);
    // kube-core writes the patch bytes as a JSON array of numbers (kube-rs issue 1781); the
    // AdmissionReview API, and every Go webhook, send them base64-encoded as `[]byte` is.
    let patch = response.patch.take();
    let mut review =
        serde_json::to_value(response.into_review()).map_err(ReviewError::Serialize)?;
    if let Some(bytes) = patch {
        review["response"]["patch"] = Value::String(BASE64.encode(bytes));
    }
    serde_json::to_vec(&review).map_err(ReviewError::Serialize)
}

/// The answer admitting `request` unchanged (what kube-core's `From<&AdmissionRequest>` makes).
fn allowed(request: &Review<'_>) -> AdmissionResponse {
    let mut r = AdmissionResponse::invalid("");
    r.types = request.types.clone();
    r.uid = request.uid.clone();
    r.allowed = true;
    r.result = Status::default();
    r
}

fn respond(handler: &Handler, request: &Review<'_>) -> AdmissionResponse {
    let allowed = allowed(request);
    let config = match handler {
        Handler::Echo => return allowed,
        Handler::Mutate(config) => config,
    };
    let denied = |reason: String| {
        let mut r = allowed.clone().deny("");
        r.result = Status::failure(&clip(&reason, MAX_REASON_LEN), "BadRequest").with_code(400);
        r
    };
    let Some(object) = request.object else {
        return denied(format!(
            "the {:?} request carries no object to mutate",
            request.operation
        ));
    };
    let kind = &request.kind;
    if !(kind.group.is_empty() && kind.version == "v1" && kind.kind == "Pod") {
        return denied(format!(
            "expected a v1 Pod, got {}",
            clip(
                &format!("{}/{} {}", kind.group, kind.version, kind.kind),
                128
            )
        ));
    }
    match mutate(config, object.get()) {
        Ok(Mutation::Untouched) => allowed,
        Ok(Mutation::Patch(patch)) if patch.0.is_empty() => allowed,
        Ok(Mutation::Patch(patch)) => match allowed.clone().with_patch(patch) {
            Ok(r) => r,
            Err(e) => denied(format!("the patch could not be serialised: {e}")),
        },
        Err(e) => denied(crate::error_chain(&e)),
    }
}

/// At most `max` characters of `text`, with control characters escaped (the reason goes back
/// to whoever created the pod, and into logs).
pub(crate) fn clip(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for (n, c) in text.chars().enumerate() {
        if n >= max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}
