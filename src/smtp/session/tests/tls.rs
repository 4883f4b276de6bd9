//! STARTTLS and implicit TLS in memory, with a certificate made by rcgen for the test.

use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::*;
use crate::config::{ListenerConfig, ListenerMode, TlsConfig};

/// A self-signed certificate for `relay.test`, its PEM files, and a client that trusts it.
pub(crate) struct TestCert {
    pub dir: tempfile::TempDir,
    pub config: TlsConfig,
    pub connector: TlsConnector,
}

pub(crate) fn test_cert() -> TestCert {
    let certified = rcgen::generate_simple_self_signed(vec!["relay.test".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_file = dir.path().join("cert.pem");
    let key_file = dir.path().join("key.pem");
    std::fs::write(&cert_file, certified.cert.pem()).unwrap();
    std::fs::write(&key_file, certified.signing_key.serialize_pem()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TestCert {
        dir,
        config: TlsConfig {
            cert_file: Some(cert_file),
            key_file: Some(key_file),
            ..TlsConfig::default()
        },
        connector: TlsConnector::from(Arc::new(client)),
    }
}

fn with_users(tls: &TlsConfig) -> Security {
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    Security {
        tls: crate::smtp::tls::acceptor(tls).unwrap(),
        users: auth::Users::parse(&format!("scanner:{hash}\n")).unwrap(),
    }
}

impl Harness {
    async fn handshake(&mut self, connector: &TlsConnector) {
        let plain = std::mem::replace(&mut self.client, Box::new(tokio::io::empty()));
        let name = ServerName::try_from("relay.test").unwrap();
        let tls = connector.connect(name, plain).await.expect("TLS handshake");
        self.client = Box::new(tls);
    }
}

#[tokio::test]
async fn starttls_upgrades_then_offers_auth_and_forgets_the_plaintext_state() {
    let cert = test_cert();
    let mut s = start_with(config(), with_users(&cert.config), "127.0.0.1:1").await;
    let ehlo = s.expect("EHLO c", "250").await;
    assert!(
        ehlo.contains("250-STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    // Pipelined after STARTTLS: must be discarded, not run inside TLS.
    s.send("STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n")
        .await;
    assert_eq!(s.reply().await, "220 2.0.0 Ready to start TLS");
    s.handshake(&cert.connector).await;
    s.expect("MAIL FROM:<a@example.com>", "503 5.5.1").await;
    let ehlo = s.expect("EHLO c", "250").await;
    assert!(
        ehlo.contains("250-AUTH PLAIN LOGIN") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    s.expect("STARTTLS", "503 5.5.1").await;
    let plain = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        "\0scanner\0s3cret",
    );
    s.expect(&format!("AUTH PLAIN {plain}"), "235 2.7.0").await;
    let reply = s
        .transaction("a@example.com", &["b@example.com"], "over tls\r\n.\r\n")
        .await;
    Harness::queued_id(&reply);
    drop(cert.dir);
}

fn listener(mode: ListenerMode) -> SmtpConfig {
    let mut smtp = config();
    smtp.listeners.insert(
        "secure".into(),
        ListenerConfig {
            address: Some("127.0.0.1:0".parse().unwrap()),
            mode,
            ..ListenerConfig::default()
        },
    );
    smtp
}

/// A session on the `secure` listener (not `smtp.listen`).
async fn open_secure(smtp: SmtpConfig, security: Security) -> Harness {
    open_on(smtp, security, "127.0.0.1:1", "secure").await
}

#[tokio::test]
async fn an_implicit_tls_listener_greets_only_after_the_handshake() {
    let cert = test_cert();
    let mut smtp = listener(ListenerMode::Tls);
    smtp.tls = cert.config.clone();
    let mut s = open_secure(smtp, with_users(&cert.config)).await;
    s.handshake(&cert.connector).await;
    assert_eq!(s.reply().await, "220 relay.test ESMTP graph-relay ready");
    let ehlo = s.expect("EHLO c", "250").await;
    assert!(
        ehlo.contains("AUTH PLAIN LOGIN") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    let reply = s
        .transaction("a@example.com", &["b@example.com"], "x\r\n.\r\n")
        .await;
    Harness::queued_id(&reply);
}

#[tokio::test]
async fn a_starttls_listener_insists_on_tls_before_mail() {
    let cert = test_cert();
    let mut smtp = listener(ListenerMode::Starttls);
    smtp.tls = cert.config.clone();
    let mut s = open_secure(smtp, with_users(&cert.config)).await;
    assert!(s.reply().await.starts_with("220 "));
    s.expect("EHLO c", "250").await;
    s.expect("MAIL FROM:<a@example.com>", "530 5.7.0").await;
    s.expect("STARTTLS", "220").await;
    s.handshake(&cert.connector).await;
    s.expect("EHLO c", "250").await;
    s.expect("MAIL FROM:<a@example.com>", "250").await;
}

#[tokio::test]
async fn tls_min_version_1_3_refuses_a_tls_1_2_client() {
    let cert = test_cert();
    let mut only13 = cert.config.clone();
    only13.min_version = "1.3".into();
    let security = Security {
        tls: crate::smtp::tls::acceptor(&only13).unwrap(),
        users: auth::Users::default(),
    };
    let mut s = start_with(config(), security, "127.0.0.1:1").await;
    s.expect("EHLO c", "250").await;
    s.expect("STARTTLS", "220").await;
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(cert.config.cert_file.as_ref().unwrap()).unwrap();
    for der in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
        roots.add(der.unwrap()).unwrap();
    }
    let tls12 = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let plain = std::mem::replace(&mut s.client, Box::new(tokio::io::empty()));
    let result = TlsConnector::from(Arc::new(tls12))
        .connect(ServerName::try_from("relay.test").unwrap(), plain)
        .await;
    assert!(result.is_err(), "a TLS 1.2 client must be refused");
}

#[test]
fn bad_pem_files_are_named_without_their_contents() {
    let cert = test_cert();
    let key = cert.config.key_file.clone().unwrap();
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let err = crate::smtp::tls::acceptor(&cert.config)
        .err()
        .unwrap()
        .to_string();
    assert!(err.starts_with("smtp.tls.key_file"), "{err}");
    assert!(!err.contains("c2VjcmV0"), "{err}");
    let missing = TlsConfig {
        cert_file: Some(cert.dir.path().join("missing.pem")),
        ..cert.config.clone()
    };
    let err = crate::smtp::tls::acceptor(&missing)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.starts_with("smtp.tls.cert_file") && err.contains("missing.pem"),
        "{err}"
    );
}
