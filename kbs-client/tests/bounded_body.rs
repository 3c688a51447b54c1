//! A reply without a `Content-Length` (chunked, as a hostile KBS or host would send it) is
//! read only up to the cap, as it arrives; one within the cap is read whole.

use peerpod_kbs_client::{BodyError, MAX_KBS_REPLY, http_builder, read_body};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serves one chunked reply of `total` bytes on a loopback port; returns its URL.
async fn chunked_server(total: usize) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut request = [0u8; 4096];
        let _ = stream.read(&mut request).await;
        let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
        if stream.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        while sent < total {
            let n = chunk.len().min(total - sent);
            let frame = format!("{n:x}\r\n");
            let written = async {
                stream.write_all(frame.as_bytes()).await?;
                stream.write_all(&chunk[..n]).await?;
                stream.write_all(b"\r\n").await
            };
            // The client hangs up once past its cap.
            if written.await.is_err() {
                return;
            }
            sent += n;
        }
        let _ = stream.write_all(b"0\r\n\r\n").await;
    });
    format!("http://{addr}/")
}

#[tokio::test]
async fn a_chunked_reply_past_the_cap_is_refused_as_it_arrives() {
    let url = chunked_server(MAX_KBS_REPLY + 1).await;
    let client = http_builder(&url).build().expect("client");
    let resp = client.get(&url).send().await.expect("reply");
    assert!(
        resp.content_length().is_none(),
        "the reply must carry no length"
    );
    let err = read_body(resp, MAX_KBS_REPLY).await.expect_err("too large");
    assert!(
        matches!(err, BodyError::TooLarge { limit } if limit == MAX_KBS_REPLY),
        "{err}"
    );
}

#[tokio::test]
async fn a_chunked_reply_within_the_cap_is_read_whole() {
    let url = chunked_server(MAX_KBS_REPLY).await;
    let client = http_builder(&url).build().expect("client");
    let resp = client.get(&url).send().await.expect("reply");
    let body = read_body(resp, MAX_KBS_REPLY)
        .await
        .expect("within the cap");
    assert_eq!(body.len(), MAX_KBS_REPLY);
}
