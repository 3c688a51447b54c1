//! `Connection::call` sends a call at most once: a call past its deadline, or one the peer may
//! have received before the connection broke, is not sent again (PullImage and CreateContainer
//! are not idempotent); a connection the peer closed before the call is remade and the call
//! sent once on it. Stand-in CDHs on real Unix sockets count what arrives.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use peerpod_protocols::cdh::api::{ImagePullRequest, ImagePullResponse};
use peerpod_protocols::cdh::api_ttrpc::{
    ImagePullService, ImagePullServiceClient, create_image_pull_service,
};
use peerpod_protocols::client::{CallError, Connection};

/// A stand-in CDH whose `PullImage` counts calls and answers after `delay`.
struct SlowCdh {
    calls: AtomicUsize,
    delay: Duration,
}

#[async_trait::async_trait]
impl ImagePullService for SlowCdh {
    async fn pull_image(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: ImagePullRequest,
    ) -> ttrpc::Result<ImagePullResponse> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        Ok(ImagePullResponse {
            manifest_digest: format!("pulled {}", req.image_url),
            ..Default::default()
        })
    }
}

/// A scratch directory for one test's socket, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("protocols-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        Self(dir)
    }

    fn socket(&self) -> PathBuf {
        self.0.join("cdh.sock")
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn serve(socket: &Path, cdh: Arc<SlowCdh>) -> ttrpc::r#async::Server {
    let _ = std::fs::remove_file(socket);
    let service: Arc<dyn ImagePullService + Send + Sync> = cdh;
    let mut server = ttrpc::r#async::Server::new()
        .bind(&format!("unix://{}", socket.display()))
        .expect("bind the stand-in CDH")
        .register_service(create_image_pull_service(service));
    server.start().await.expect("the stand-in CDH serves");
    server
}

fn connection(socket: &Path, timeout: Duration) -> Connection {
    Connection::new(
        "the confidential data hub",
        "cdh_socket",
        format!("unix://{}", socket.display()),
        timeout,
    )
}

async fn pull(conn: &Connection, image: &str) -> Result<String, CallError> {
    let req = ImagePullRequest {
        image_url: image.to_owned(),
        bundle_path: "/run/kata-containers/c1".to_owned(),
        ..Default::default()
    };
    conn.call(|c, ctx| {
        let req = req.clone();
        async move {
            ImagePullServiceClient::new(c)
                .pull_image(ctx, &req)
                .await
                .map(|r| r.manifest_digest)
        }
    })
    .await
}

/// ttrpc's local deadline is not a broken connection: the pull is not sent a second time.
#[tokio::test]
async fn a_call_past_its_deadline_is_sent_once() {
    let dir = Dir::new("deadline");
    let cdh = Arc::new(SlowCdh {
        calls: AtomicUsize::new(0),
        delay: Duration::from_millis(1500),
    });
    let _server = serve(&dir.socket(), cdh.clone()).await;
    let conn = connection(&dir.socket(), Duration::from_millis(300));
    let e = pull(&conn, "registry.example/app:v1")
        .await
        .expect_err("the stand-in answers after the deadline");
    // Long enough for a second call to arrive and be counted, were one sent.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(cdh.calls.load(Ordering::SeqCst), 1, "PullImage sent twice");
    let text = e.to_string();
    assert!(matches!(e, CallError::Transport(_)), "{e:?}");
    for needle in ["the confidential data hub", "300ms", "not sent again"] {
        assert!(text.contains(needle), "{needle} in {text}");
    }
}

/// A peer that reads the request and then drops the connection may have acted on it: the
/// call fails and is not sent again; the next call reconnects.
#[tokio::test]
async fn a_call_the_peer_may_have_received_is_not_sent_again() {
    let dir = Dir::new("received");
    let socket = dir.socket();
    let listener = tokio::net::UnixListener::bind(&socket).expect("bind the stand-in");
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    let stand_in = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            // A ttrpc frame header is 10 bytes: the request arrived; then hang up.
            let mut header = [0u8; 10];
            if stream.read_exact(&mut header).await.is_ok() {
                counter.fetch_add(1, Ordering::SeqCst);
            }
            drop(stream);
        }
    });
    let conn = connection(&socket, Duration::from_secs(5));
    let e = pull(&conn, "registry.example/app:v1")
        .await
        .expect_err("the stand-in hangs up");
    assert!(matches!(e, CallError::Transport(_)), "{e:?}");
    assert!(e.to_string().contains("not sent again"), "{e}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        received.load(Ordering::SeqCst),
        1,
        "the request was sent again"
    );
    // The broken connection is not kept: the next call is a new request on a new connection.
    let _ = pull(&conn, "registry.example/app:v2").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(received.load(Ordering::SeqCst), 2);
    stand_in.abort();
}

/// The peer restarted between calls (its end of the cached connection closed before this call
/// was queued): the call is sent once, on a new connection, and succeeds.
#[tokio::test]
async fn a_connection_closed_before_the_call_is_remade_and_the_call_sent_once() {
    let dir = Dir::new("restart");
    let socket = dir.socket();
    let first = Arc::new(SlowCdh {
        calls: AtomicUsize::new(0),
        delay: Duration::ZERO,
    });
    let mut server = serve(&socket, first.clone()).await;
    let conn = connection(&socket, Duration::from_secs(5));
    assert_eq!(
        pull(&conn, "a").await.expect("the first server answers"),
        "pulled a"
    );
    server.shutdown().await.expect("stop the first server");
    // The client sees its connection end.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = Arc::new(SlowCdh {
        calls: AtomicUsize::new(0),
        delay: Duration::ZERO,
    });
    let _server = serve(&socket, second.clone()).await;
    assert_eq!(
        pull(&conn, "b").await.expect("sent on a new connection"),
        "pulled b"
    );
    assert_eq!(first.calls.load(Ordering::SeqCst), 1);
    assert_eq!(second.calls.load(Ordering::SeqCst), 1);
}

/// Nobody listens: the error names the peer and where its address is configured.
#[tokio::test]
async fn an_absent_peer_is_unreachable() {
    let dir = Dir::new("absent");
    let conn = connection(&dir.socket(), Duration::from_secs(2));
    let e = pull(&conn, "a").await.expect_err("no server");
    assert!(matches!(e, CallError::Unreachable(_)), "{e:?}");
    assert!(e.to_string().contains("cdh_socket"), "{e}");
}
