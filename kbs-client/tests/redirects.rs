//! A KBS stand-in (plain HTTP, and TLS with a pinned self-signed certificate) that answers with
//! a redirect to another origin, where a second listener redirects to itself and records every
//! request head. The KBS client must follow nothing: the bearer token and the session cookie
//! never reach the other origin, and the error names where the redirect pointed.

use std::io::Write as _;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use peerpod_kbs_client::rcar::{Handshake, RcarError};
use peerpod_kbs_client::{ResourceError, http_client};
use peerpod_kbs_protocol::keys::TeeKeyPair;
use peerpod_kbs_protocol::messages::ResourcePath;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const TOKEN: &str = "eyJhbGciOiJub25lIn0.eyJleHAiOjk5OTk5OTk5OTl9.TOKEN-SECRET";
const COOKIE: &str = "kbs-session-id=SESSION-SECRET";

/// Request heads a listener received.
type Heads = Arc<Mutex<Vec<String>>>;

/// A listener on 127.0.0.1 answering each request (one per connection) with `reply(head)`,
/// over TLS when `tls` is given. Returns its port and the heads it received.
async fn serve(
    tls: Option<tokio_rustls::TlsAcceptor>,
    reply: impl Fn(&str, u16) -> String + Send + Sync + 'static,
) -> (u16, Heads) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let port = listener.local_addr().expect("bound address").port();
    let heads = Heads::default();
    let seen = heads.clone();
    let reply = Arc::new(reply);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (seen, reply, tls) = (seen.clone(), reply.clone(), tls.clone());
            tokio::spawn(async move {
                match tls {
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(tcp).await {
                            answer(stream, &seen, reply.as_ref(), port).await;
                        }
                    }
                    None => answer(tcp, &seen, reply.as_ref(), port).await,
                }
            });
        }
    });
    (port, heads)
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    seen: &Mutex<Vec<String>>,
    reply: &(dyn Fn(&str, u16) -> String + Send + Sync),
    port: u16,
) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 << 10 {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    // A body (the handshake's JSON) is not needed: the connection closes after the reply.
    seen.lock().expect("heads lock").push(head.clone());
    let _ = stream.write_all(reply(&head, port).as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn response(status: &str, extra: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The other origin: every request is sent back to itself.
async fn thief() -> (u16, Heads) {
    serve(None, |head, port| {
        let n = head.matches("hop").count();
        response(
            "302 Found",
            &format!("Location: http://127.0.0.1:{port}/hop{n}\r\n"),
            "",
        )
    })
    .await
}

/// The KBS stand-in: sets the session cookie on `/set` and `/kbs/v0/auth` (with a challenge);
/// redirects a resource request or `/kbs/v0/attest` to `target`.
fn kbs_reply(target: String) -> impl Fn(&str, u16) -> String + Send + Sync + 'static {
    move |head, _| {
        let line = head.lines().next().unwrap_or_default();
        if line.contains(" /set ") {
            response("200 OK", &format!("Set-Cookie: {COOKIE}; Path=/\r\n"), "")
        } else if line.contains(" /kbs/v0/auth ") {
            response(
                "200 OK",
                &format!("Set-Cookie: {COOKIE}; Path=/\r\nContent-Type: application/json\r\n"),
                r#"{"nonce":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","extra-params":""}"#,
            )
        } else {
            response(
                "307 Temporary Redirect",
                &format!("Location: {target}\r\n"),
                "",
            )
        }
    }
}

fn leaked(heads: &Heads) -> Vec<String> {
    heads
        .lock()
        .expect("heads lock")
        .iter()
        .filter(|h| h.contains("TOKEN-SECRET") || h.contains("SESSION-SECRET"))
        .cloned()
        .collect()
}

fn resource() -> ResourcePath {
    ResourcePath::parse("default/key/one").expect("a valid resource path")
}

#[tokio::test]
async fn a_resource_redirect_to_another_origin_is_refused_and_no_secret_follows_it() {
    let (thief_port, thief_heads) = thief().await;
    let target = format!("http://127.0.0.1:{thief_port}/hop");
    let (kbs_port, kbs_heads) = serve(None, kbs_reply(target.clone())).await;
    let base = format!("http://127.0.0.1:{kbs_port}");
    let key = TeeKeyPair::generate();

    // The control: reqwest's default redirect handling with a cookie store, as upstream's
    // kbs_protocol builds its client, hands the other origin the session cookie (cookies are
    // not scoped by port) and, on its second hop, the bearer token.
    let default = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .expect("a plain client");
    default
        .get(format!("{base}/set"))
        .send()
        .await
        .expect("cookie set");
    let _ = peerpod_kbs_client::get_resource(&default, &base, &resource(), TOKEN, &key).await;
    let control = leaked(&thief_heads);
    eprintln!(
        "control: a following client sent the token or cookie to the other origin {} time(s)",
        control.len()
    );
    assert!(
        !control.is_empty(),
        "the stand-in must show the leak a following client has: {:?}",
        thief_heads.lock().expect("heads lock")
    );
    thief_heads.lock().expect("heads lock").clear();

    let client = http_client(&base, None, Duration::from_secs(5), "test", true).expect("client");
    client
        .get(format!("{base}/set"))
        .send()
        .await
        .expect("cookie set");
    let e = peerpod_kbs_client::get_resource(&client, &base, &resource(), TOKEN, &key)
        .await
        .expect_err("a redirect is refused");
    assert!(matches!(e, ResourceError::Status { .. }), "{e:?}");
    assert_eq!(e.status(), Some(307));
    assert!(!e.is_transient(), "a redirect is not retried");
    let text = peerpod_kbs_client::error_chain(&e);
    assert!(
        text.contains(&format!(
            "a redirect to http://127.0.0.1:{thief_port}, not followed"
        )),
        "{text}"
    );
    assert!(text.contains(&base), "the error names the KBS: {text}");
    assert!(!text.contains("/hop"), "the path is not quoted: {text}");
    assert!(!text.contains("SECRET"), "{text}");
    assert!(
        thief_heads.lock().expect("heads lock").is_empty(),
        "the other origin got a request"
    );
    // The KBS did get the token: the stand-in sees what a request carries.
    assert!(
        kbs_heads
            .lock()
            .expect("heads lock")
            .iter()
            .any(|h| h.contains(&format!("Bearer {TOKEN}")) && h.contains("SESSION-SECRET")),
        "the KBS saw the token and cookie"
    );
}

/// A self-signed certificate for 127.0.0.1 made with openssl, or `None` (skipped loudly; a
/// failure under `CI=true`).
fn self_signed(dir: &std::path::Path) -> Option<(String, String)> {
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output();
    if !made.as_ref().is_ok_and(|o| o.status.success()) {
        let message = format!(
            "openssl cannot make a certificate ({made:?}): run scripts/install-test-deps.sh"
        );
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{message} (CI=true: a missing tool fails)");
        }
        let _ = std::io::stderr().write_all(format!("\n*** SKIPPED: {message} ***\n").as_bytes());
        return None;
    }
    Some((
        std::fs::read_to_string(dir.join("cert.pem")).expect("cert written"),
        std::fs::read_to_string(dir.join("key.pem")).expect("key written"),
    ))
}

#[tokio::test]
async fn a_tls_kbs_redirecting_the_attestation_elsewhere_is_refused_with_its_origin() {
    let dir = std::env::temp_dir().join(format!("kbs-redirects-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    let Some((cert_pem, key_pem)) = self_signed(&dir) else {
        return;
    };
    let _ = std::fs::remove_dir_all(&dir);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("certificate PEM");
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key PEM");
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server certificate");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));

    // From TLS to plain HTTP on another port of the same host: the cookie's host.
    let (thief_port, thief_heads) = thief().await;
    let (kbs_port, kbs_heads) = serve(
        Some(acceptor),
        kbs_reply(format!("http://127.0.0.1:{thief_port}/hop")),
    )
    .await;
    let base = format!("https://127.0.0.1:{kbs_port}");
    let client =
        http_client(&base, Some(&cert_pem), Duration::from_secs(5), "test", true).expect("client");
    let tee_key = TeeKeyPair::generate();

    // The handshake: /auth sets the session cookie, /attest is redirected.
    let handshake = Handshake {
        http: &client,
        base: &base,
        tee: "sample",
        key: &tee_key,
        init_data: None,
    };
    let e = handshake
        .run(|_| async { Ok::<_, std::io::Error>(serde_json::json!({"svn": "1"})) })
        .await
        .expect_err("a redirected attestation is refused");
    assert!(
        matches!(e, RcarError::Status { what: "attest", .. }),
        "{e:?}"
    );
    assert!(!e.is_transient());
    let text = peerpod_kbs_client::error_chain(&e);
    assert!(
        text.contains(&format!(
            "a redirect to http://127.0.0.1:{thief_port}, not followed"
        )),
        "{text}"
    );

    // A resource with the token: refused the same way.
    let e = peerpod_kbs_client::get_resource(&client, &base, &resource(), TOKEN, &tee_key)
        .await
        .expect_err("a redirect is refused");
    assert_eq!(e.status(), Some(307), "{e}");
    assert!(
        peerpod_kbs_client::error_chain(&e).contains(&format!("http://127.0.0.1:{thief_port}")),
        "{e}"
    );

    assert!(
        thief_heads.lock().expect("heads lock").is_empty(),
        "the other origin got a request: {:?}",
        leaked(&thief_heads)
    );
    let kbs = kbs_heads.lock().expect("heads lock");
    assert_eq!(kbs.len(), 3, "auth, attest, resource: {kbs:?}");
    assert!(
        kbs[1].contains("SESSION-SECRET"),
        "the KBS got its cookie back"
    );
}

#[tokio::test]
async fn a_redirect_without_a_location_or_to_another_scheme_is_refused_plainly() {
    for (location, expected) in [
        (
            "",
            "a redirect without a usable Location from http://127.0.0.1:",
        ),
        (
            "Location: data:text/plain,x\r\n",
            "a redirect to a data: URL, not followed",
        ),
        (
            "Location: //evil.example:8443/x?token=1\r\n",
            "a redirect to http://evil.example:8443, not followed",
        ),
    ] {
        let location = location.to_string();
        let (port, _) = serve(None, move |_, _| response("302 Found", &location, "")).await;
        let base = format!("http://127.0.0.1:{port}");
        let client =
            http_client(&base, None, Duration::from_secs(5), "test", false).expect("client");
        let e = peerpod_kbs_client::get_resource(
            &client,
            &base,
            &resource(),
            TOKEN,
            &TeeKeyPair::generate(),
        )
        .await
        .expect_err("refused");
        let text = peerpod_kbs_client::error_chain(&e);
        assert!(text.contains(expected), "{expected}: {text}");
        assert!(!text.contains("token=1"), "{text}");
    }
}

/// A refusal's reason reaches the shim once: the resource error names the resource and the
/// KBS's answer follows it in the chain, not repeated in the message as well.
#[tokio::test]
async fn a_kbs_refusal_is_rendered_with_its_reason_once() {
    let (port, _) = serve(None, |_, _| {
        response(
            "403 Forbidden",
            "Content-Type: application/json\r\n",
            r#"{"type":"https://github.com/confidential-containers/kbs/errors/PolicyDeny","detail":"Resource policy denied-the-reason"}"#,
        )
    })
    .await;
    let base = format!("http://127.0.0.1:{port}");
    let client = http_client(&base, None, Duration::from_secs(5), "test", true).expect("client");
    let key = TeeKeyPair::generate();
    let e = peerpod_kbs_client::get_resource(&client, &base, &resource(), TOKEN, &key)
        .await
        .expect_err("a 403 is refused");
    assert_eq!(e.status(), Some(403));
    let text = peerpod_kbs_client::error_chain(&e);
    assert_eq!(text.matches("denied-the-reason").count(), 1, "{text}");
    assert_eq!(text.matches("403").count(), 1, "{text}");
    assert!(text.starts_with("KBS resource default/key/one: "), "{text}");
}
