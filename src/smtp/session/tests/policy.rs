//! Who may relay and the per-session limits, driven in memory: networks, AUTH and its lockout,
//! recipient domains, sender policy, message and error limits, deadlines, shutdown.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::*;
use crate::config::SenderRule;

/// Users `scanner` / `s3cret` (bcrypt) in a security bundle without TLS.
pub(super) fn users() -> Security {
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    Security {
        tls: None,
        users: auth::Users::parse(&format!("scanner:{hash}\n")).unwrap(),
    }
}

pub(super) fn plain(user: &str, password: &str) -> String {
    STANDARD.encode(format!("\0{user}\0{password}"))
}

#[tokio::test]
async fn clients_outside_allowed_networks_get_554_and_nothing_else() {
    let mut s = open(config(), no_security(), "192.0.2.10:5000").await;
    assert_eq!(
        s.reply().await,
        "554 5.7.1 Connections from your address are not accepted"
    );
    let mut rest = Vec::new();
    s.client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    let lan = SmtpConfig {
        allowed_networks: vec!["192.0.2.0/24".parse().unwrap()],
        ..config()
    };
    let mut s = start_with(lan, no_security(), "192.0.2.10:5000").await;
    s.expect("EHLO c", "250").await;
}

#[tokio::test]
async fn auth_is_offered_only_with_tls_unless_plaintext_auth() {
    let mut s = start_with(config(), users(), "127.0.0.1:1").await;
    let ehlo = s.expect("EHLO c", "250").await;
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    s.expect(
        &format!("AUTH PLAIN {}", plain("scanner", "s3cret")),
        "538 5.7.11",
    )
    .await;

    let legacy = SmtpConfig {
        plaintext_auth: true,
        ..config()
    };
    let mut s = start_with(legacy, users(), "127.0.0.1:1").await;
    let ehlo = s.expect("EHLO c", "250").await;
    assert!(ehlo.contains("250-AUTH PLAIN LOGIN"), "{ehlo}");
    s.expect(
        &format!("AUTH PLAIN {}", plain("scanner", "s3cret")),
        "235 2.7.0",
    )
    .await;
    s.expect("AUTH LOGIN", "503 5.5.1").await;
}

#[tokio::test]
async fn auth_plain_and_login_exchanges_and_their_refusals() {
    let legacy = SmtpConfig {
        plaintext_auth: true,
        ..config()
    };
    let mut s = start_with(legacy, users(), "127.0.0.1:1").await;
    s.expect("AUTH PLAIN", "503 5.5.1").await;
    s.expect("EHLO c", "250").await;
    s.expect("AUTH CRAM-MD5", "504 5.5.4").await;
    s.expect("AUTH PLAIN", "334").await;
    s.expect("*", "501 5.0.0").await;
    s.expect("AUTH PLAIN", "334").await;
    s.expect("not base64!", "501 5.5.2").await;
    s.expect("AUTH LOGIN", "334 VXNlcm5hbWU6").await;
    s.expect(&STANDARD.encode("scanner"), "334 UGFzc3dvcmQ6")
        .await;
    s.expect(&STANDARD.encode("wrong"), "535 5.7.8").await;
    s.expect(
        &format!("AUTH LOGIN {}", STANDARD.encode("scanner")),
        "334 UGFzc3dvcmQ6",
    )
    .await;
    s.expect(&STANDARD.encode("s3cret"), "235 2.7.0").await;
    s.expect("MAIL FROM:<a@example.com>", "250").await;
}

#[tokio::test]
async fn repeated_auth_failures_lock_the_address_out() {
    let legacy = SmtpConfig {
        plaintext_auth: true,
        auth: crate::config::SmtpAuthConfig {
            max_failures: 2,
            ..Default::default()
        },
        ..config()
    };
    let mut s = start_with(legacy, users(), "127.0.0.1:1").await;
    s.expect("EHLO c", "250").await;
    for _ in 0..2 {
        s.expect(
            &format!("AUTH PLAIN {}", plain("scanner", "guess")),
            "535 5.7.8",
        )
        .await;
    }
    // Even the right password is refused while locked out.
    s.expect(
        &format!("AUTH PLAIN {}", plain("scanner", "s3cret")),
        "454 4.7.0",
    )
    .await;
}

#[tokio::test]
async fn require_auth_refuses_mail_until_authenticated() {
    let strict = SmtpConfig {
        require_auth: true,
        plaintext_auth: true,
        ..config()
    };
    let mut s = start_with(strict, users(), "127.0.0.1:1").await;
    s.expect("EHLO c", "250").await;
    s.expect("MAIL FROM:<a@example.com>", "530 5.7.0").await;
    s.expect(&format!("AUTH PLAIN {}", plain("scanner", "s3cret")), "235")
        .await;
    s.expect("MAIL FROM:<a@example.com>", "250").await;
}

#[tokio::test]
async fn recipients_outside_allowed_domains_or_unusable_by_graph_are_refused_at_rcpt() {
    let limited = SmtpConfig {
        allowed_recipient_domains: vec!["contoso.com".parse().unwrap()],
        ..config()
    };
    let mut s = start(limited).await;
    s.expect("EHLO c", "250").await;
    s.expect("MAIL FROM:<a@contoso.com>", "250").await;
    s.expect("RCPT TO:<bob@fabrikam.com>", "550 5.7.1").await;
    s.expect("RCPT TO:<a@[192.0.2.1]>", "553 5.1.3").await;
    s.expect("RCPT TO:<\"a b\"@contoso.com>", "553 5.1.3").await;
    // Unquoted by the parser, this would put <evil@attacker.example> in a MIME Bcc header.
    s.expect(
        "RCPT TO:<\"evil@attacker.example>, x\"@contoso.com>",
        "553 5.1.3",
    )
    .await;
    s.expect("RCPT TO:<\"a\tBcc: b\"@contoso.com>", "553 5.1.3")
        .await;
    s.expect("RCPT TO:<postmaster>", "553 5.1.3").await;
    s.expect("RCPT TO:<nodomain>", "553 5.1.3").await;
    s.expect("RCPT TO:<Bob@Contoso.com>", "250 2.1.5").await;
    s.expect("DATA", "354").await;
    s.send("x\r\n.\r\n").await;
    Harness::queued_id(&s.reply().await);
    assert_eq!(s.next_queued().await.envelope.rcpt_to, ["Bob@Contoso.com"]);
}

#[tokio::test]
async fn senders_that_could_not_be_a_header_address_are_refused_at_mail() {
    let mut s = start(config()).await;
    s.expect("EHLO c", "250").await;
    for hostile in [
        "\"a>, evil@attacker.example\"@contoso.com",
        "\"a\u{b}Bcc: evil@attacker.example\"@contoso.com",
        "\"a b\"@contoso.com",
        "\"a\\\"b\"@contoso.com",
    ] {
        s.expect(&format!("MAIL FROM:<{hostile}>"), "501 5.1.7")
            .await;
    }
    s.expect("MAIL FROM:<\"printer\"@contoso.com>", "250").await;
    s.expect("RSET", "250").await;
    s.expect("MAIL FROM:<>", "250").await;
}

fn sender_policy() -> SmtpConfig {
    let rule = SenderRule {
        clients: vec!["127.0.0.0/8".parse().unwrap()],
        allow: vec!["@contoso.com".parse().unwrap()],
        deny: vec!["ceo@contoso.com".parse().unwrap()],
    };
    SmtpConfig {
        sender_policy: BTreeMap::from([("local".to_string(), rule)]),
        ..config()
    }
}

#[tokio::test]
async fn sender_policy_applies_to_mail_from_and_to_the_from_header() {
    let mut s = start(sender_policy()).await;
    s.expect("EHLO c", "250").await;
    s.expect("MAIL FROM:<ceo@contoso.com>", "550 5.7.1").await;
    s.expect("MAIL FROM:<x@fabrikam.com>", "550 5.7.1").await;
    let reply = s
        .transaction(
            "scanner@contoso.com",
            &["b@example.com"],
            "From: The CEO <ceo@contoso.com>\r\nSubject: pay\r\n\r\nnow\r\n.\r\n",
        )
        .await;
    assert!(reply.starts_with("550 5.7.1 From"), "{reply}");
    let reply = s
        .transaction(
            "scanner@contoso.com",
            &["b@example.com"],
            "From: Scanner <scanner@contoso.com>\r\nSubject: scan\r\n\r\nok\r\n.\r\n",
        )
        .await;
    Harness::queued_id(&reply);
    assert_eq!(
        s.next_queued().await.envelope.mail_from,
        "scanner@contoso.com"
    );
    assert!(
        s.queued.try_recv().is_err(),
        "the refused message was not queued"
    );
}

#[tokio::test]
async fn a_connection_carries_at_most_max_messages() {
    let mut s = start(SmtpConfig {
        max_messages_per_connection: 1,
        ..config()
    })
    .await;
    s.expect("EHLO c", "250").await;
    let reply = s
        .transaction("a@example.com", &["b@example.com"], "x\r\n.\r\n")
        .await;
    Harness::queued_id(&reply);
    s.expect("MAIL FROM:<a@example.com>", "421 4.7.0").await;
    let mut rest = Vec::new();
    s.client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "closed after 421");
}

#[tokio::test]
async fn too_many_errors_close_the_session() {
    let mut s = start(SmtpConfig {
        max_errors: 3,
        ..config()
    })
    .await;
    s.expect("FOO", "500").await;
    s.expect("BAR", "500").await;
    s.send("BAZ\r\n").await;
    assert!(s.reply().await.starts_with("500"));
    assert_eq!(
        s.reply().await,
        "421 4.7.0 Too many errors, closing connection"
    );
}

/// Reads until the session closes, without the harness's wall-clock limit (time is paused).
async fn read_rest(s: &mut Harness) -> String {
    let mut rest = Vec::new();
    s.client.read_to_end(&mut rest).await.unwrap();
    String::from_utf8(rest).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_command_line_trickled_a_byte_at_a_time_hits_the_deadline() {
    let mut s = open(
        SmtpConfig {
            idle_timeout: Duration::from_secs(10),
            ..config()
        },
        no_security(),
        "127.0.0.1:1",
    )
    .await;
    for byte in "EHLO slow-client".bytes() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if s.client.write_all(&[byte]).await.is_err() {
            break;
        }
    }
    let text = read_rest(&mut s).await;
    assert!(
        text.ends_with("421 4.4.2 Idle too long, closing connection\r\n"),
        "{text}"
    );
    assert!(!text.contains("250"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn a_data_transfer_trickled_slowly_hits_the_data_deadline() {
    let mut s = open(
        SmtpConfig {
            idle_timeout: Duration::from_secs(10),
            data_timeout: Duration::from_secs(30),
            ..config()
        },
        no_security(),
        "127.0.0.1:1",
    )
    .await;
    s.send("EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        .await;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        if s.client.write_all(b"x").await.is_err() {
            break;
        }
    }
    let text = read_rest(&mut s).await;
    assert!(text.contains("354"), "{text}");
    assert!(
        text.ends_with("421 4.4.2 Data transfer too slow, closing connection\r\n"),
        "{text}"
    );
    assert!(s.queued.try_recv().is_err());
}

#[tokio::test]
async fn shutdown_waits_for_the_open_transaction_then_answers_421() {
    let mut s = start(config()).await;
    s.expect("EHLO c", "250").await;
    s.expect("MAIL FROM:<a@example.com>", "250").await;
    s.expect("RCPT TO:<b@example.com>", "250").await;
    s.stop.cancel();
    s.expect("DATA", "354").await;
    s.send("body\r\n.\r\n").await;
    Harness::queued_id(&s.reply().await);
    assert_eq!(
        s.reply().await,
        "421 4.3.0 Service shutting down, try again later"
    );
    assert!(s.next_queued().await.envelope.rcpt_to == ["b@example.com"]);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_is_cut_off() {
    // A small pipe: the replies to the pipelined NOOPs fill it, and nobody reads them.
    let (client, task, _dir) = spawn_session(1024, CancellationToken::new());
    let (_reader, mut writer) = tokio::io::split(client);
    tokio::spawn(async move {
        let noops = "NOOP\r\n".repeat(10_000);
        let _ = writer.write_all(noops.as_bytes()).await;
    });
    let result = task.await.unwrap();
    assert_eq!(
        result.unwrap_err().kind(),
        std::io::ErrorKind::TimedOut,
        "the session ends once its replies cannot be delivered"
    );
}
