//! The sending mailbox chosen at DATA by the user's, the listener's or `[graph]`'s sender
//! setting, and kept in the spooled envelope's origin with the listener and the user.

use super::policy::{plain, users};
use super::*;
use crate::config::{ListenerConfig, SenderKind, SenderOverride};

const NO_FROM: &str = "To: alice@example.com\r\nSubject: scan\r\n\r\npage 1\r\n.\r\n";

/// Listener `scan` sends as scan@contoso.com; user `scanner` as copier@contoso.com.
fn configured() -> Config {
    let mut config = with_smtp(super::config());
    config.smtp.listeners.insert(
        "scan".into(),
        ListenerConfig {
            address: Some("127.0.0.1:0".parse().unwrap()),
            plaintext_auth: true,
            sender: Some(SenderKind::Fixed),
            fixed_sender: Some("scan@contoso.com".into()),
            ..ListenerConfig::default()
        },
    );
    config.graph.user_senders.insert(
        "scanner".into(),
        SenderOverride {
            sender: Some(SenderKind::Fixed),
            fixed_sender: Some("copier@contoso.com".into()),
        },
    );
    config
}

async fn session(listener: &str) -> Harness {
    let mut s = open_configured(configured(), users(), "127.0.0.1:1", listener).await;
    s.reply().await;
    s.expect("EHLO device", "250").await;
    s
}

#[tokio::test]
async fn a_fixed_sender_listener_takes_a_message_with_no_from_and_a_null_reverse_path() {
    let mut s = session("scan").await;
    let reply = s.transaction("", &["alice@example.com"], NO_FROM).await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    let origin = s.next_queued().await.envelope.origin.unwrap();
    assert_eq!(origin.sender, "scan@contoso.com");
    assert_eq!(origin.listener, "scan");
    assert_eq!(origin.user, None);
}

#[tokio::test]
async fn the_same_message_on_a_header_listener_is_refused_naming_the_from_header() {
    let mut s = session(MAIN_LISTENER).await;
    let reply = s.transaction("", &["alice@example.com"], NO_FROM).await;
    assert!(reply.starts_with("550 5.7.1"), "{reply}");
    assert!(reply.contains("From header"), "{reply}");
    // With a From it goes, as that mailbox.
    let reply = s
        .transaction(
            "",
            &["alice@example.com"],
            "From: App <app@contoso.com>\r\n\r\nx\r\n.\r\n",
        )
        .await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    let origin = s.next_queued().await.envelope.origin.unwrap();
    assert_eq!(origin.sender, "app@contoso.com");
    assert_eq!(origin.listener, MAIN_LISTENER);
}

#[tokio::test]
async fn an_authenticated_users_setting_wins_over_the_listeners() {
    let mut s = session("scan").await;
    s.expect(&format!("AUTH PLAIN {}", plain("scanner", "s3cret")), "235")
        .await;
    let reply = s
        .transaction(
            "device@contoso.com",
            &["alice@example.com"],
            "From: Device <device@contoso.com>\r\n\r\nx\r\n.\r\n",
        )
        .await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    let origin = s.next_queued().await.envelope.origin.unwrap();
    assert_eq!(origin.sender, "copier@contoso.com");
    assert_eq!(origin.user.as_deref(), Some("scanner"));
    assert_eq!(origin.listener, "scan");
}
