//! The notice's content, its status codes, and that nothing from the failed message, Graph's
//! answer or the configuration can add a header.

use mail_parser::{MessageParser, MimeHeaders};

use super::*;
use crate::queue::spool::QueueId;

const ORIGINAL: &[u8] = b"From: scanner@contoso.com\r\nTo: b@example.com\r\n\
    Subject: Scan 42\r\nMessage-ID: <scan42@contoso.com>\r\n\r\nbody\r\n";

fn failed(mail_from: &str, reason: &str) -> EntryMeta {
    EntryMeta {
        id: QueueId::generate(),
        envelope: Envelope {
            mail_from: mail_from.into(),
            rcpt_to: vec!["b@example.com".into(), "c@example.com".into()],
            client: "127.0.0.1:1".into(),
            received_at_ms: 1_700_000_000_000,
            origin: None,
        },
        attempts: 1,
        next_attempt_at_ms: 0,
        last_error: Some(reason.into()),
        draft_id: None,
    }
}

fn reporter() -> Reporter {
    Reporter::new("postmaster@contoso.com", "relay.test")
}

fn header_lines(raw: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(raw);
    let head = text
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string();
    head.split("\r\n").map(str::to_string).collect()
}

#[test]
fn a_notice_is_a_delivery_status_report_to_the_envelope_sender() {
    let meta = failed(
        "scanner@contoso.com",
        "refused: HTTP 400 ErrorInvalidRecipients",
    );
    let raw = reporter()
        .build(&meta, Cause::Refused, ORIGINAL, 1_700_000_100_000)
        .unwrap();
    let message = MessageParser::new().parse(&raw).unwrap();
    assert_eq!(
        message.from().unwrap().first().unwrap().address(),
        Some("postmaster@contoso.com")
    );
    assert_eq!(
        message.to().unwrap().first().unwrap().address(),
        Some("scanner@contoso.com")
    );
    assert_eq!(message.subject(), Some("Undelivered mail: Scan 42"));
    assert_eq!(
        message.message_id(),
        Some(format!("dsn.{}@relay.test", meta.id).as_str())
    );
    assert_eq!(
        message.header_raw("Auto-Submitted").map(str::trim),
        Some("auto-replied")
    );
    let report = message.content_type().unwrap();
    assert_eq!(
        (report.ctype(), report.subtype()),
        ("multipart", Some("report"))
    );
    assert_eq!(report.attribute("report-type"), Some("delivery-status"));

    let parts: Vec<_> = message.parts.iter().skip(1).collect();
    let kinds: Vec<String> = parts
        .iter()
        .map(|part| {
            let ct = part.content_type().unwrap();
            format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or(""))
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "text/plain",
            "message/delivery-status",
            "text/rfc822-headers"
        ]
    );
    let human = String::from_utf8_lossy(parts[0].contents());
    assert!(human.contains("b@example.com") && human.contains("ErrorInvalidRecipients"));
    let status = String::from_utf8_lossy(parts[1].contents());
    for field in [
        "Reporting-MTA: dns; relay.test",
        "Arrival-Date: ",
        "Original-Recipient: rfc822; b@example.com",
        "Final-Recipient: rfc822; b@example.com",
        "Final-Recipient: rfc822; c@example.com",
        "Action: failed",
        "Status: 5.0.0",
        "Diagnostic-Code: x-graph; refused: HTTP 400 ErrorInvalidRecipients",
    ] {
        assert!(status.contains(field), "{field} missing in\n{status}");
    }
    assert_eq!(
        status.matches("Action: failed").count(),
        2,
        "one block per recipient"
    );
    let headers = parts[2].contents();
    assert!(headers.starts_with(b"From: scanner@contoso.com\r\n"));
    assert!(headers.ends_with(b"Message-ID: <scan42@contoso.com>\r\n"));
    assert!(!String::from_utf8_lossy(headers).contains("body"));
}

#[test]
fn the_status_code_follows_the_cause() {
    let cases = [
        (Cause::Refused, "Status: 5.0.0"),
        (Cause::TooLarge, "Status: 5.3.4"),
        (Cause::Expired, "Status: 5.4.7"),
    ];
    for (cause, status) in cases {
        let raw = reporter()
            .build(&failed("a@contoso.com", "x"), cause, ORIGINAL, 0)
            .unwrap();
        assert!(String::from_utf8_lossy(&raw).contains(status), "{cause:?}");
    }
}

#[test]
fn no_notice_for_the_null_reverse_path() {
    assert!(Reporter::wants(&failed("a@contoso.com", "x")));
    assert!(!Reporter::wants(&failed("", "x")));
}

#[test]
fn nothing_can_inject_a_header() {
    // A subject whose encoded words decode to CRLF, and a reason with CRLF from Graph.
    let original = b"From: a@contoso.com\r\n\
        Subject: =?utf-8?q?Hi=0D=0ABcc:_evil@example.com?=\r\n\r\nx\r\n";
    let meta = failed("a@contoso.com", "refused\r\nBcc: evil@example.com");
    let raw = reporter()
        .build(&meta, Cause::Refused, original, 0)
        .unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(
        !header_lines(&raw)
            .iter()
            .any(|l| l.to_ascii_lowercase().starts_with("bcc:")),
        "{text}"
    );
    assert!(
        !text.lines().any(|l| l.starts_with("Bcc:")),
        "a field of its own: {text}"
    );
    let message = MessageParser::new().parse(&raw).unwrap();
    assert!(message.bcc().is_none());

    // Addresses that would end the header are refused outright.
    for bad in [
        "a@contoso.com>\r\nBcc: evil@example.com",
        "a@contoso.com, evil@example.com",
        "a@contoso.com\nBcc:evil@example.com",
        "Evil <a@contoso.com>",
        "nobody",
    ] {
        let err = reporter()
            .build(&failed(bad, "x"), Cause::Refused, ORIGINAL, 0)
            .unwrap_err();
        assert!(matches!(err, DsnError::Address(_)), "{bad:?}");
        let err = Reporter::new(bad, "relay.test")
            .build(&failed("a@contoso.com", "x"), Cause::Refused, ORIGINAL, 0)
            .unwrap_err();
        assert!(matches!(err, DsnError::Address(_)), "dsn_from {bad:?}");
    }
}

#[test]
fn a_spooled_notice_has_the_null_reverse_path_and_goes_to_the_sender() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(tmp.path()).unwrap();
    let meta = failed("scanner@contoso.com", "refused: HTTP 400");
    let notice = reporter()
        .spool(&spool, &meta, Cause::Refused, ORIGINAL, 5)
        .unwrap();
    assert_eq!(notice.envelope.mail_from, "");
    assert_eq!(notice.envelope.rcpt_to, ["scanner@contoso.com"]);
    assert!(!Reporter::wants(&notice), "a notice never gets a notice");
    let body = spool.read_body(notice.id).unwrap();
    assert!(String::from_utf8_lossy(&body).contains("multipart/report"));
}
