//! The network requests' netlink side, each test in a fresh network namespace of its own: links
//! are made with `ip`, configured through `Network`, and checked twice — with `Network`'s own
//! listings and, independently, with `ip -j` output.
//!
//! Each test body runs on a thread of its own that first unshares its network namespace (a
//! namespace belongs to the thread), then builds a single-threaded tokio runtime there, so the
//! netlink socket, the connection task and the `ip` child processes all live in that namespace
//! and the host's network is never touched. The tests need root and `ip` (Debian package
//! iproute2); without either they fail, saying so. The UpdateInterface and UpdateRoutes requests
//! of the shared genpolicy fixture are replayed as they are.
//!
//! One test binary, one module per topic; `harness` holds the namespace and `ip` views,
//! `requests` the request builders and the shared fixture's cases.

mod harness;
mod requests;

mod errors;
mod interfaces;
mod neighbors;
mod routes;
