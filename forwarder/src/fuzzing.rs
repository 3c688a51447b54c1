//! Entry points for the cargo-fuzz targets (feature `fuzzing`).

use crate::frame;
use crate::rewrite::{RewriteOptions, Rewriter};

/// Arbitrary bytes as a client's stream of ttrpc frames, each request through the rewriter,
/// and as `apf.json`. No bind-mount source is ever created: the allowed prefix list is empty.
pub fn frames(data: &[u8]) {
    let rewriter = Rewriter::new(RewriteOptions {
        pod_netns: "/run/netns/podns".into(),
        bind_source_prefixes: Vec::new(),
    });
    let rt = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(_) => return,
    };
    rt.block_on(async {
        let mut reader = data;
        let mut payload = Vec::new();
        while let Ok(Some(header)) = frame::read_frame(&mut reader, &mut payload).await {
            if header.kind == frame::TYPE_REQUEST {
                let _ = frame::request_method(&payload);
                if let Ok(Some(out)) = rewriter.rewrite(&payload) {
                    // A rewritten request still names its method.
                    assert!(frame::request_method(&out).is_ok());
                }
            }
        }
    });
    let _ = crate::config::ApfConfig::parse(data);
}
