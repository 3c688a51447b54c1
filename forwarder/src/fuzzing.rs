//! Entry points for the cargo-fuzz targets (feature `fuzzing`).

use crate::frame;
use crate::rewrite::{RewriteOptions, Rewriter};

/// Arbitrary bytes as a client's stream of ttrpc frames, each request through the rewriter;
/// as a connection to the in-agent dispatch (with no service: whatever gets through is
/// answered, every answer a whole response frame); and as `apf.json`. No bind-mount source is
/// ever created: the allowed prefix list is empty.
pub fn frames(data: &[u8]) {
    let rewriter = Rewriter::new(RewriteOptions {
        pod_netns: "/run/netns/podns".into(),
        bind_source_prefixes: Vec::new(),
    });
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
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
    rt.block_on(async {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let dispatcher =
            crate::dispatch::Dispatcher::new(rewriter.clone(), std::collections::HashMap::new());
        let (client, server) = tokio::io::duplex(64 << 10);
        let (mut from_server, mut to_server) = tokio::io::split(client);
        let feed = async move {
            let _ = to_server.write_all(data).await;
            let _ = to_server.shutdown().await;
        };
        let answers = async move {
            let mut out = Vec::new();
            let _ = from_server.read_to_end(&mut out).await;
            out
        };
        let (_, (), out) = tokio::join!(dispatcher.serve_connection(server), feed, answers);
        let mut reader = &out[..];
        let mut payload = Vec::new();
        while let Ok(Some(header)) = frame::read_frame(&mut reader, &mut payload).await {
            assert_eq!(header.kind, frame::TYPE_RESPONSE);
            assert!(<ttrpc::Response as protobuf::Message>::parse_from_bytes(&payload).is_ok());
        }
        assert!(reader.is_empty(), "a partial answer frame");
    });
    let _ = crate::config::ApfConfig::parse(data);
}
