//! Where configured files come from: `kbs:///…` through the embedding program (the CDH's KBS
//! client), `file://…` from the guest's own file system.

use zeroize::Zeroizing;

use crate::error::ImageError;

/// Fetches KBS resources for the puller (auth.json, registries.conf, policies, keys).
#[async_trait::async_trait]
pub trait Resources: Send + Sync {
    /// The resource at `uri` (`kbs:///<repo>/<type>/<tag>`). The error text must not carry the
    /// resource's bytes.
    async fn resource(&self, uri: &str) -> Result<Zeroizing<Vec<u8>>, String>;
}

/// No KBS: every `kbs://` URI is refused with a message saying so.
pub struct NoResources;

#[async_trait::async_trait]
impl Resources for NoResources {
    async fn resource(&self, _uri: &str) -> Result<Zeroizing<Vec<u8>>, String> {
        Err("no key broker is configured ([kbc] in cdh.toml)".to_string())
    }
}

/// Fetches `uri` (`kbs://` or `file://`), at most `limit` bytes.
pub async fn fetch(
    resources: &dyn Resources,
    what: &'static str,
    uri: &str,
    limit: usize,
) -> Result<Zeroizing<Vec<u8>>, ImageError> {
    let err = |reason: String| ImageError::Resource {
        what,
        uri: crate::digest::clipped(uri),
        reason,
    };
    let bytes = if let Some(path) = uri.strip_prefix("file://") {
        let meta = tokio::fs::metadata(path)
            .await
            .map_err(|e| err(e.to_string()))?;
        if meta.len() > limit as u64 {
            return Err(err(format!("larger than {limit} bytes")));
        }
        Zeroizing::new(
            tokio::fs::read(path)
                .await
                .map_err(|e| err(e.to_string()))?,
        )
    } else if uri.starts_with("kbs://") {
        resources.resource(uri).await.map_err(err)?
    } else {
        return Err(err("expected kbs:///… or file:///…".to_string()));
    };
    if bytes.len() > limit {
        return Err(err(format!("larger than {limit} bytes")));
    }
    Ok(bytes)
}
