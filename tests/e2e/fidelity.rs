//! Message fidelity end to end: the prior-art failures (accents, encoded subjects and filenames,
//! Bcc dropped, Reply-To lost, inline images, quoted-printable mangled) through SMTP, the relay
//! and the emulator, in both formats.

use std::time::Duration;

use graph_relay_emulator::MailContent;
use mail_parser::{MessageParser, MimeHeaders};
use serde_json::json;

use crate::support::*;

fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fidelity")
        .join(name);
    String::from_utf8(std::fs::read(path).unwrap()).expect("UTF-8 fixture")
}

/// A fixture's From replaced by the emulator's mailbox, so Graph's Send As check passes.
fn from_mailbox(data: &str, from: &str) -> String {
    data.replacen(from, MAILBOX, 1)
}

#[tokio::test]
async fn json_keeps_accents_names_inline_images_reply_to_and_bcc() {
    let emulator = emulator().await;
    let spool = tempfile::tempdir().unwrap();
    let relay = Relay::start(&["serve"], &graph_env(&emulator, spool.path()));
    let mut smtp = SmtpClient::connect(relay.smtp).await;
    smtp.command("EHLO device", "250").await;
    let nested = from_mailbox(&fixture("nested.eml"), "juergen@example.com");
    smtp.submit(
        MAILBOX,
        &["john@example.net", "bcc-only@example.org"],
        &nested,
    )
    .await;
    let extra = from_mailbox(&fixture("headers-extra.eml"), "erp@example.com");
    smtp.submit(MAILBOX, &["bob@example.net"], &extra).await;
    assert!(
        emulator.wait_for_accepted(2, Duration::from_secs(15)).await,
        "relay log:\n{}",
        relay.logs()
    );
    let accepted = accepted_messages(&emulator);
    let nested = &accepted[0].1;
    assert_eq!(nested["subject"], "Quartalsbericht – Q3");
    assert_eq!(
        nested["toRecipients"],
        json!([{"emailAddress": {"name": "Doe, John", "address": "john@example.net"}}])
    );
    assert_eq!(
        nested["bccRecipients"],
        json!([{"emailAddress": {"address": "bcc-only@example.org"}}])
    );
    assert_eq!(
        nested["body"]["content"],
        "<p>Bericht im Anhang, Grüße.</p><img src=\"cid:chart\">"
    );
    let attachments = nested["attachments"].as_array().unwrap();
    assert_eq!(attachments[0]["contentId"], "chart");
    assert_eq!(attachments[0]["isInline"], true);
    assert_eq!(attachments[1]["name"], "Übersicht Q3 – final.xls");
    assert_eq!(attachments[3]["name"], "Grüße an Köln.pdf");

    let extra = &accepted[1].1;
    assert_eq!(
        extra["replyTo"][0]["emailAddress"]["address"],
        "ar@example.com"
    );
    assert_eq!(extra["importance"], "High");
    assert_eq!(extra["internetMessageHeaders"].as_array().unwrap().len(), 5);
    assert!(
        relay.logs().contains("message_id"),
        "Message-ID is logged with the send"
    );
}

#[tokio::test]
async fn mime_format_is_envelope_exact_and_free_of_quoted_printable() {
    let emulator = emulator().await;
    let spool = tempfile::tempdir().unwrap();
    let mut env = graph_env(&emulator, spool.path());
    env.push(("GRAPH_RELAY_GRAPH__FORMAT".into(), "mime".into()));
    let relay = Relay::start(&["serve"], &env);
    assert!(
        relay.logs().contains("Bcc"),
        "MIME mode warns about Bcc once at start"
    );
    let mut smtp = SmtpClient::connect(relay.smtp).await;
    smtp.command("EHLO device", "250").await;
    let data = fixture("qp-html.eml")
        .replacen("From: web@example.com", &format!("From: {MAILBOX}"), 1)
        .replacen(
            "To: bob@example.net",
            "To: bob@example.net, header-only@example.net",
            1,
        );
    smtp.submit(MAILBOX, &["bob@example.net", "hidden@example.org"], &data)
        .await;
    assert!(
        emulator.wait_for_accepted(1, Duration::from_secs(15)).await,
        "relay log:\n{}",
        relay.logs()
    );
    let mail = emulator.accepted().remove(0);
    let MailContent::Mime(mime) = mail.content else {
        panic!("expected MIME sendMail")
    };
    let parsed = MessageParser::default().parse(&mime).unwrap();
    let addresses = |list: Option<&mail_parser::Address<'_>>| -> Vec<String> {
        list.into_iter()
            .flat_map(|a| a.iter())
            .filter_map(|a| a.address().map(str::to_owned))
            .collect()
    };
    assert_eq!(addresses(parsed.to()), ["bob@example.net"]);
    assert_eq!(addresses(parsed.bcc()), ["hidden@example.org"]);
    assert_eq!(parsed.content_transfer_encoding(), Some("base64"));
    let html = parsed.body_html(0).unwrap();
    assert!(
        html.contains("bgcolor=\"#FF00AA\">Grüße = E2 80 93 AB</td>"),
        "{html}"
    );
    assert!(html.contains("€ 42"), "{html}");
    assert!(parsed.message_id().is_some() && parsed.date().is_some());
}
