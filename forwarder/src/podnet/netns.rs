//! Running work inside a network namespace: a dedicated OS thread joins the namespace and runs
//! the work there (with its own single-threaded tokio runtime for netlink), so no runtime
//! thread ever changes namespace. Processes spawned from that thread (iptables) start in the
//! namespace too.

use std::path::{Path, PathBuf};

/// Why work could not run in a namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The namespace file could not be opened.
    #[error(
        "cannot open the network namespace {path}: create it first (ip netns add, as the netns@ unit does)"
    )]
    Open {
        /// The namespace.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `setns` failed.
    #[error("cannot enter the network namespace {path}")]
    Enter {
        /// The namespace.
        path: String,
        /// Why.
        #[source]
        source: nix::Error,
    },
    /// The worker thread or its runtime failed.
    #[error("the namespace worker failed: {0}")]
    Worker(String),
}

/// Runs `work` on a thread in the network namespace at `ns` (the caller's when `None`), with a
/// current-thread tokio runtime; the thread starts at once, the returned future yields the
/// result.
pub fn run_in<T, F, Fut>(
    ns: Option<&Path>,
    work: F,
) -> impl std::future::Future<Output = Result<T, NetnsError>> + Send + 'static
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    let ns: Option<PathBuf> = ns.map(Path::to_path_buf);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || {
            let result = (|| {
                if let Some(ns) = &ns {
                    let file = std::fs::File::open(ns).map_err(|source| NetnsError::Open {
                        path: ns.display().to_string(),
                        source,
                    })?;
                    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(
                        |source| NetnsError::Enter {
                            path: ns.display().to_string(),
                            source,
                        },
                    )?;
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| NetnsError::Worker(e.to_string()))?;
                Ok(rt.block_on(work()))
            })();
            let _ = tx.send(result);
        })
        .map_err(|e| NetnsError::Worker(e.to_string()));
    async move {
        spawned?;
        rx.await
            .map_err(|_| NetnsError::Worker("the thread ended without an answer".into()))?
    }
}
