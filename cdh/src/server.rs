//! Serving the services on the CDH's Unix socket until told to stop.

use std::future::Future;
use std::sync::Arc;

use crate::hub::Hub;
use crate::rpc::Services;

pub use peerpod_protocols::socket::ServeError;

/// Serves `hub` on `addr` until `shutdown` completes, then removes the socket.
pub async fn serve(
    addr: &str,
    hub: Arc<Hub>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let services = Services::new(hub).all();
    peerpod_protocols::socket::serve_unix("confidential data hub", addr, services, shutdown).await
}
