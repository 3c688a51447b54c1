//! The peer-pods admission webhook and the per-node pod VM limit advertiser (cluster side: a
//! separate container image, built by `webhook/image/build.sh`, never in the pod VM).
//!
//! Every peer pod runs in its own VM, counted as the node extended resource
//! `kata.peerpods.io/vm`. Two small programs keep the scheduler honest about it:
//!
//! - `peerpod-webhook` is a mutating admission webhook (AdmissionReview v1 on
//!   `POST /mutate-v1-pod`, HTTPS on 9443). For pods of the peer-pods runtime class it turns
//!   the containers' CPU, memory and GPU requests/limits into the pod VM size annotations,
//!   clears every container's resources and gives the first container one
//!   `kata.peerpods.io/vm`: [`mutate`] holds those rules (cloud-api-adaptor's, kept exactly),
//!   on exact [`quantity`] arithmetic; [`review`] reads the AdmissionReview's few fields it
//!   needs, keeping the pod as its JSON text, and answers with kube-core's response type;
//!   [`view`] decodes from that text only what the mutation reads (k8s-openapi quantities),
//!   so a hostile review costs about its own size in memory; [`server`] is the HTTPS/HTTP 1.1
//!   server on tokio-rustls and hyper, with every per-client resource bounded (handshakes,
//!   connections, body size, body bytes in flight); [`tls`] parses
//!   `TLS_MIN_VERSION`/`TLS_CIPHER_SUITES` and serves a certificate re-read from its files
//!   when they change.
//! - `peerpod-vm-advertiser` ([`advertiser`]) sets `kata.peerpods.io/vm` capacity to
//!   `PEERPODS_LIMIT_PER_NODE` on its node's status with an owner annotation, and removes it
//!   at shutdown only while it is still the owner.
//!
//! Manifests are in `deploy/`; docs/webhook.md describes the whole.

pub mod advertiser;
pub mod mutate;
pub mod quantity;
pub mod review;
pub mod server;
pub mod tls;
pub mod view;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;

/// An error and its causes on one line (`a: b: c`), for logs and replies.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
