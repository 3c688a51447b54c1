//! The webhook's TLS with real handshakes: `TLS_MIN_VERSION` and `TLS_CIPHER_SUITES` are
//! honoured, bad values refused at start, and a new certificate in the files is served to new
//! connections without a restart.

mod common;

use std::time::{Duration, Instant};

use common::{Certs, Conn, Server, TestResult, client_config, container, pod, review_of};
use peerpod_webhook::mutate::MutationConfig;
use peerpod_webhook::review::Handler;
use peerpod_webhook::tls::{ReloadingCert, TlsError, TlsOptions};
use rustls::crypto::ring::cipher_suite as suites;

fn mutate() -> Handler {
    Handler::Mutate(MutationConfig::default())
}

#[tokio::test]
async fn default_offers_tls13_and_tls12() -> TestResult {
    let server = Server::start(mutate(), TlsOptions::parse("", "")?, None).await;
    let ca = &server.certs.ca_pem;
    let c13 = Conn::connect(
        server.addr,
        client_config(ca, Some(&rustls::version::TLS13), None),
    )
    .await?;
    assert_eq!(c13.version, rustls::ProtocolVersion::TLSv1_3);
    let c12 = Conn::connect(
        server.addr,
        client_config(ca, Some(&rustls::version::TLS12), None),
    )
    .await?;
    assert_eq!(c12.version, rustls::ProtocolVersion::TLSv1_2);
    Ok(())
}

#[tokio::test]
async fn min_version_tls13_refuses_a_tls12_client() -> TestResult {
    let server = Server::start(mutate(), TlsOptions::parse("VersionTLS13", "")?, None).await;
    let ca = &server.certs.ca_pem;
    let refused = Conn::connect(
        server.addr,
        client_config(ca, Some(&rustls::version::TLS12), None),
    )
    .await;
    assert!(refused.is_err(), "a TLS 1.2 client got in");
    let mut ok = Conn::connect(
        server.addr,
        client_config(ca, Some(&rustls::version::TLS13), None),
    )
    .await?;
    assert_eq!(ok.version, rustls::ProtocolVersion::TLSv1_3);
    let reply = ok
        .review(&review_of(pod(
            None,
            vec![],
            vec![container("c", &[], &[])],
        )))
        .await?;
    assert_eq!(reply.status, 200);
    Ok(())
}

#[tokio::test]
async fn cipher_suites_limit_tls12() -> TestResult {
    let options = TlsOptions::parse(
        "VersionTLS12",
        " TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 , TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    )?;
    let server = Server::start(mutate(), options, None).await;
    let ca = &server.certs.ca_pem;
    let tls12 = Some(&rustls::version::TLS12);
    // A client offering only a suite not listed cannot connect over TLS 1.2.
    for unlisted in [
        suites::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        suites::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ] {
        let refused =
            Conn::connect(server.addr, client_config(ca, tls12, Some(vec![unlisted]))).await;
        assert!(
            refused.is_err(),
            "an unlisted suite was accepted: {unlisted:?}"
        );
    }
    // The listed one is negotiated.
    let ok = Conn::connect(
        server.addr,
        client_config(
            ca,
            tls12,
            Some(vec![
                suites::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                suites::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            ]),
        ),
    )
    .await?;
    assert_eq!(
        ok.suite,
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
    );
    // TLS 1.3 stays fully available, as with Go.
    let c13 = Conn::connect(
        server.addr,
        client_config(ca, Some(&rustls::version::TLS13), None),
    )
    .await?;
    assert_eq!(c13.version, rustls::ProtocolVersion::TLSv1_3);
    Ok(())
}

#[test]
fn bad_tls_settings_are_refused_with_the_fix() {
    let err = |min: &str, suites: &str| TlsOptions::parse(min, suites).expect_err("accepted");
    assert!(matches!(err("VersionTLS10", ""), TlsError::TooOld(_)));
    assert!(matches!(err("VersionTLS11", ""), TlsError::TooOld(_)));
    assert!(
        err("VersionTLS11", "")
            .to_string()
            .contains("use VersionTLS12 or VersionTLS13")
    );
    assert!(matches!(err("TLS1.2", ""), TlsError::Version(_)));
    assert!(matches!(
        err("VersionTLS13", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
        TlsError::SuitesWithTls13
    ));
    // Suites rustls does not implement (CBC, static RSA) are refused, not silently dropped.
    let e = err("", "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA");
    assert!(matches!(e, TlsError::Suite(_)));
    assert!(
        e.to_string()
            .contains("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
        "{e}"
    );
    assert!(matches!(
        err("", "TLS_RSA_WITH_AES_128_GCM_SHA256"),
        TlsError::Suite(_)
    ));
    assert!(matches!(
        err("", "TLS_AES_128_GCM_SHA256"),
        TlsError::NoTls12Suite
    ));
    // Go's older ChaCha20 names are accepted.
    let ok = TlsOptions::parse("", "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305").expect("Go alias");
    assert_eq!(
        ok.tls12_suites,
        Some(vec![suites::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256])
    );
}

#[tokio::test]
async fn a_new_certificate_is_served_without_a_restart() -> TestResult {
    let server = Server::start(
        mutate(),
        TlsOptions::default(),
        Some(Duration::from_millis(100)),
    )
    .await;
    let first = Conn::connect(server.addr, server.client_config()).await?;
    assert_eq!(first.peer_cert, server.certs.cert_der());

    // cert-manager rotates: a new CA and certificate in the same files.
    let rotated = Certs::generate("webhook-b");
    rotated.write(&server.dir.0);
    let new_client = client_config(&rotated.ca_pem, None, None);
    let deadline = Instant::now() + Duration::from_secs(10);
    let conn = loop {
        match Conn::connect(server.addr, new_client.clone()).await {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => return Err(format!("the rotated certificate was never served: {e}").into()),
        }
    };
    assert_eq!(conn.peer_cert, rotated.cert_der());
    // Clients still trusting only the old CA are now refused.
    assert!(
        Conn::connect(server.addr, server.client_config())
            .await
            .is_err()
    );
    // The connection opened before the rotation still works.
    let mut first = first;
    let reply = first
        .review(&review_of(pod(
            None,
            vec![],
            vec![container("c", &[], &[])],
        )))
        .await?;
    assert_eq!(reply.status, 200);
    Ok(())
}

#[tokio::test]
async fn a_broken_certificate_update_keeps_the_old_one() -> TestResult {
    common::install_provider();
    let server = Server::start(mutate(), TlsOptions::default(), None).await;
    let dir = &server.dir.0;
    // A half-written update: garbage in the certificate file.
    std::fs::write(dir.join("tls.crt"), b"-----BEGIN CERTIFICATE-----\nAAAA\n")?;
    let e = server.cert.reload().expect_err("garbage accepted");
    assert!(e.to_string().contains("tls.crt"), "{e}");
    // A certificate with another certificate's key.
    let other = Certs::generate("other");
    std::fs::write(dir.join("tls.crt"), &other.cert_pem)?;
    let e = server.cert.reload().expect_err("mismatched key accepted");
    assert!(e.to_string().contains("does not fit"), "{e}");
    // The original is still served.
    let c = Conn::connect(server.addr, server.client_config()).await?;
    assert_eq!(c.peer_cert, server.certs.cert_der());
    // Failed reloads changed nothing: the original files are what is loaded.
    server.certs.write(dir);
    assert!(!server.cert.reload()?);
    Ok(())
}

#[test]
fn a_missing_certificate_names_the_file() {
    common::install_provider();
    let dir = common::TempDir::new("missing");
    let e = ReloadingCert::load(&dir.0.join("tls.crt"), &dir.0.join("tls.key"))
        .expect_err("loaded nothing");
    assert!(e.to_string().contains("tls.crt"), "{e}");
}
