//! IMDS and the WireServer never redirect, so provisioning follows no redirect: a stand-in
//! answering 307 to another origin (a second listener counting every connection) fails the
//! fetch and the Ready report with the redirect named, and nothing reaches the other origin.

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use peerpod_provision::{azure_ready, source};

/// A listener counting the connections it gets; it answers nothing useful.
fn other_origin() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let port = listener.local_addr().expect("bound address").port();
    let hits = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&hits);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            count.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (port, hits)
}

/// A stand-in answering every request with `307` to `location`.
fn redirecting(location: String) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let port = listener.local_addr().expect("bound address").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && head.len() < 64 << 10 {
                match stream.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            let _ = write!(
                stream,
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    port
}

fn quick<T>(make: impl FnOnce(Duration) -> T) -> T {
    make(Duration::from_secs(1))
}

#[tokio::test]
async fn an_imds_redirect_is_not_followed() {
    let (other, hits) = other_origin();
    let port = redirecting(format!("http://127.0.0.1:{other}/metadata"));
    let url = format!("http://127.0.0.1:{port}/metadata/instance/compute/userData");
    let retry = quick(source::Retry::with_deadline);
    let err = source::fetch(&source::Source::Imds(url), retry)
        .await
        .expect_err("a redirect is refused");
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "IMDS at http://127.0.0.1:{port} answered 307 with a redirect to http://127.0.0.1:{other}, not followed"
        )),
        "{text}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the other origin was asked");
}

#[tokio::test]
async fn a_wireserver_redirect_is_not_followed() {
    let (other, hits) = other_origin();
    let port = redirecting(format!("http://127.0.0.1:{other}/machine"));
    let retry = quick(azure_ready::Retry::with_deadline);
    let err = azure_ready::report_ready(&format!("http://127.0.0.1:{port}"), retry)
        .await
        .expect_err("a redirect is refused");
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "the WireServer at http://127.0.0.1:{port} answered 307 with a redirect to http://127.0.0.1:{other}, not followed"
        )),
        "{text}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the other origin was asked");
}
