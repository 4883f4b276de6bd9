//! Table tests for [`super::convert`] over the `.eml` fixtures in `tests/fixtures/`, asserting on
//! the serialised JSON because Graph is strict about property names.

use base64::{Engine, engine::general_purpose::STANDARD};
use serde_json::{Value, json};

use super::{Arrival, ConvertError, Converted, Options, Outgoing, convert};
use crate::graph::model::SendMailRequest;

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!("../../tests/fixtures/", $name)).as_slice()
    };
}

/// Fixed arrival facts: 2023-11-14T22:13:20Z.
pub(super) const ARRIVAL: Arrival<'static> = Arrival {
    queue_id: "01HF7YAT00TESTQUEUEID00000",
    received_at: 1_700_000_000,
};

fn run(raw: &[u8], mail_from: &str, rcpt_to: &[&str]) -> Result<Converted, ConvertError> {
    run_with(raw, mail_from, rcpt_to, &Options::default())
}

pub(super) fn run_with(
    raw: &[u8],
    mail_from: &str,
    rcpt_to: &[&str],
    options: &Options,
) -> Result<Converted, ConvertError> {
    let rcpt_to: Vec<String> = rcpt_to.iter().map(|r| r.to_string()).collect();
    convert(raw, mail_from, &rcpt_to, ARRIVAL, options)
}

impl Converted {
    /// The JSON request; panics for MIME.
    pub(super) fn request(&self) -> &SendMailRequest {
        match &self.outgoing {
            Outgoing::Json(request) => request,
            Outgoing::Mime(_) => panic!("expected JSON, got MIME"),
        }
    }
}

pub(super) fn to_json(converted: &Converted) -> Value {
    serde_json::to_value(converted.request()).expect("request serialises")
}

/// One whole conversion: input, expected sender and the exact JSON Graph receives.
struct Case {
    name: &'static str,
    raw: &'static [u8],
    mail_from: &'static str,
    rcpt_to: &'static [&'static str],
    sender: &'static str,
    request: Value,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "plain text, 8bit UTF-8",
            raw: fixture!("plain-text.eml"),
            mail_from: "bounce@example.com",
            rcpt_to: &["bob@example.net"],
            sender: "alice@example.com",
            request: json!({"message": {
                "subject": "Plain text",
                "body": {"contentType": "Text",
                         "content": "Grüße aus Köln, café included.\r\nSecond line.\r\n"},
                "from": {"emailAddress": {"name": "Alice Example", "address": "alice@example.com"}},
                "toRecipients": [{"emailAddress": {"name": "Bob", "address": "bob@example.net"}}],
            }}),
        },
        Case {
            name: "ISO-8859-1 quoted-printable body and RFC 2047 From name",
            raw: fixture!("latin1-body.eml"),
            mail_from: "",
            rcpt_to: &["bob@example.net"],
            sender: "juergen@example.com",
            request: json!({"message": {
                "subject": "Latin-1 body",
                "body": {"contentType": "Text", "content": "Grüße, Café und Brötchen\r\n"},
                "from": {"emailAddress": {"name": "Jürgen Bäcker", "address": "juergen@example.com"}},
                "toRecipients": [{"emailAddress": {"address": "bob@example.net"}}],
            }}),
        },
        Case {
            name: "HTML only",
            raw: fixture!("html-only.eml"),
            mail_from: "alice@example.com",
            rcpt_to: &["bob@example.net"],
            sender: "alice@example.com",
            request: json!({"message": {
                "subject": "HTML only",
                "body": {"contentType": "HTML",
                         "content": "<html><body><p>Only <b>HTML</b></p></body></html>\r\n"},
                "from": {"emailAddress": {"address": "alice@example.com"}},
                "toRecipients": [{"emailAddress": {"address": "bob@example.net"}}],
            }}),
        },
        Case {
            name: "multipart/alternative chooses HTML",
            raw: fixture!("alternative.eml"),
            mail_from: "alice@example.com",
            rcpt_to: &["bob@example.net"],
            sender: "alice@example.com",
            request: json!({"message": {
                "subject": "Alternative",
                "body": {"contentType": "HTML", "content": "<p>HTML café version</p>"},
                "from": {"emailAddress": {"name": "Alice Example", "address": "alice@example.com"}},
                "toRecipients": [{"emailAddress": {"address": "bob@example.net"}}],
            }}),
        },
        Case {
            name: "display names with commas, quotes and RFC 2047",
            raw: fixture!("display-names.eml"),
            mail_from: "ann@example.com",
            rcpt_to: &["john@example.net", "jane@example.net", "renee@example.net"],
            sender: "ann@example.com",
            request: json!({"message": {
                "subject": "Display names",
                "body": {"contentType": "Text", "content": "body\r\n"},
                "from": {"emailAddress": {"name": "Smith, Ann", "address": "ann@example.com"}},
                "toRecipients": [
                    {"emailAddress": {"name": "Doe, John", "address": "john@example.net"}},
                    {"emailAddress": {"name": "Jane \"JJ\" Roe", "address": "jane@example.net"}},
                    {"emailAddress": {"name": "Renée Müller", "address": "renee@example.net"}},
                ],
            }}),
        },
        Case {
            // To: anna, header-only; Cc: carl, ANNA (duplicate of To).
            name: "To/Cc limited to envelope, envelope-only to Bcc, duplicates once",
            raw: fixture!("recipients.eml"),
            mail_from: "alice@example.com",
            rcpt_to: &["anna@example.net", "Carl@Example.NET", "dave@example.net"],
            sender: "alice@example.com",
            request: json!({"message": {
                "subject": "Envelope exact",
                "body": {"contentType": "Text", "content": "body\r\n"},
                "from": {"emailAddress": {"address": "alice@example.com"}},
                "toRecipients": [{"emailAddress": {"name": "Anna", "address": "anna@example.net"}}],
                "ccRecipients": [{"emailAddress": {"name": "Carl", "address": "carl@example.net"}}],
                "bccRecipients": [{"emailAddress": {"address": "dave@example.net"}}],
            }}),
        },
        Case {
            name: "BCC-only mail (no To/Cc header)",
            raw: fixture!("bcc-only.eml"),
            mail_from: "alice@example.com",
            rcpt_to: &["x@example.net", "y@example.net"],
            sender: "alice@example.com",
            request: json!({"message": {
                "subject": "Nobody in the headers",
                "body": {"contentType": "Text", "content": "body\r\n"},
                "from": {"emailAddress": {"address": "alice@example.com"}},
                "bccRecipients": [
                    {"emailAddress": {"address": "x@example.net"}},
                    {"emailAddress": {"address": "y@example.net"}},
                ],
            }}),
        },
        Case {
            name: "Undisclosed recipients:; contributes nothing",
            raw: fixture!("undisclosed.eml"),
            mail_from: "alice@example.com",
            rcpt_to: &["x@example.net"],
            sender: "alice@example.com",
            request: json!({"message": {
                "subject": "Undisclosed",
                "body": {"contentType": "Text", "content": "body\r\n"},
                "from": {"emailAddress": {"address": "alice@example.com"}},
                "bccRecipients": [{"emailAddress": {"address": "x@example.net"}}],
            }}),
        },
        Case {
            name: "addresses inside a group count as header addresses",
            raw: fixture!("group-members.eml"),
            mail_from: "alice@example.com",
            rcpt_to: &["erik@example.net", "dora@example.net", "frank@example.net"],
            sender: "alice@example.com",
            request: json!({"message": {
                "subject": "Group",
                "body": {"contentType": "Text", "content": "body\r\n"},
                "from": {"emailAddress": {"address": "alice@example.com"}},
                "toRecipients": [
                    {"emailAddress": {"name": "Dora", "address": "dora@example.net"}},
                    {"emailAddress": {"address": "erik@example.net"}},
                    {"emailAddress": {"address": "frank@example.net"}},
                ],
            }}),
        },
        Case {
            name: "missing From: sender from reverse-path, no from property",
            raw: fixture!("no-from.eml"),
            mail_from: "app@example.com",
            rcpt_to: &["bob@example.net"],
            sender: "app@example.com",
            request: json!({"message": {
                "subject": "No From header",
                "body": {"contentType": "Text", "content": "body\r\n"},
                "toRecipients": [{"emailAddress": {"address": "bob@example.net"}}],
            }}),
        },
    ]
}

#[test]
fn converts_fixtures_to_exact_json() {
    for case in cases() {
        let converted = run(case.raw, case.mail_from, case.rcpt_to)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_eq!(converted.sender, case.sender, "{}: sender", case.name);
        assert_eq!(to_json(&converted), case.request, "{}: request", case.name);
    }
}

#[test]
fn every_envelope_recipient_appears_exactly_once() {
    for case in cases() {
        let message = run(case.raw, case.mail_from, case.rcpt_to)
            .unwrap()
            .request()
            .message
            .clone();
        let mut sent: Vec<String> = [
            message.to_recipients,
            message.cc_recipients,
            message.bcc_recipients,
        ]
        .concat()
        .into_iter()
        .map(|r| r.email_address.address.to_lowercase())
        .collect();
        sent.sort();
        let mut expected: Vec<String> = case.rcpt_to.iter().map(|r| r.to_lowercase()).collect();
        expected.sort();
        assert_eq!(sent, expected, "{}", case.name);
    }
}

#[test]
fn decodes_rfc2047_subjects() {
    let cases = [
        ("UTF-8 Q", fixture!("subject-utf8-q.eml")),
        ("UTF-8 B", fixture!("subject-utf8-b.eml")),
        (
            "ISO-8859-1 Q, two adjacent words",
            fixture!("subject-latin1.eml"),
        ),
    ];
    for (name, raw) in cases {
        let converted = run(raw, "", &["bob@example.net"]).unwrap();
        assert_eq!(
            to_json(&converted)["message"]["subject"],
            "Café Résumé",
            "{name}"
        );
    }
}

#[test]
fn missing_subject_is_empty_string() {
    let converted = run(
        b"From: a@example.com\r\n\r\nbody\r\n",
        "",
        &["b@example.net"],
    )
    .unwrap();
    assert_eq!(to_json(&converted)["message"]["subject"], "");
}

#[test]
fn message_id_without_brackets() {
    let converted = run(fixture!("plain-text.eml"), "", &["bob@example.net"]).unwrap();
    assert_eq!(converted.message_id.as_deref(), Some("plain-1@example.com"));
    let converted = run(fixture!("html-only.eml"), "", &["bob@example.net"]).unwrap();
    assert_eq!(converted.message_id, None);
}

#[test]
fn binary_attachment_with_rfc2231_name_round_trips() {
    let converted = run(fixture!("attachment-rfc2231.eml"), "", &["bob@example.net"]).unwrap();
    let json = to_json(&converted);
    assert_eq!(
        json["message"]["body"],
        json!({"contentType": "Text", "content": "See attachment."})
    );
    let attachments = json["message"]["attachments"].as_array().unwrap();
    assert_eq!(attachments.len(), 1);
    let attachment = &attachments[0];
    assert_eq!(attachment["@odata.type"], "#microsoft.graph.fileAttachment");
    assert_eq!(attachment["name"], "Rechnung März €.bin");
    assert_eq!(attachment["contentType"], "application/octet-stream");

    let expected: Vec<u8> = (0..=255u8)
        .chain(*b"\r\n\0\xff\0")
        .chain((0..=255u8).rev())
        .collect();
    let content_bytes = attachment["contentBytes"].as_str().unwrap();
    assert_eq!(STANDARD.decode(content_bytes).unwrap(), expected);
}

#[test]
fn attachments_keep_names_types_and_exact_bytes() {
    let converted = run(fixture!("attachments-misc.eml"), "", &["bob@example.net"]).unwrap();
    let message = converted.request().message.clone();
    assert_eq!(message.body.content, "<p>Report</p>");

    let got: Vec<(&str, &str, Vec<u8>)> = message
        .attachments
        .iter()
        .map(|a| {
            let bytes = STANDARD.decode(&a.content_bytes).unwrap();
            (a.name.as_str(), a.content_type.as_str(), bytes)
        })
        .collect();
    let expected: Vec<(&str, &str, Vec<u8>)> = vec![
        // Windows-1252 without a charset: mail-parser's text view would replace ü and ö.
        (
            "Übersicht.csv",
            "text/csv",
            b"Name;Stadt\r\nJ\xfcrgen;K\xf6ln\r\n".to_vec(),
        ),
        (
            "attachment-2.bin",
            "application/pdf",
            b"%PDF-1.4 fake".to_vec(),
        ),
        (
            // No filename: the attached message's Subject, as an .eml file.
            "Forwarded.eml",
            "message/rfc822",
            b"From: carol@example.com\r\nSubject: Forwarded\r\n\r\nInner body".to_vec(),
        ),
    ];
    assert_eq!(got, expected);
}

#[test]
fn serialised_names_are_graphs() {
    let converted = run(
        fixture!("attachment-rfc2231.eml"),
        "",
        &["bob@example.net", "hidden@example.net"],
    )
    .unwrap();
    let text = serde_json::to_string(converted.request()).unwrap();
    for needle in [
        r#"{"message":{"subject":"Attachment","body":{"contentType":"Text","#,
        r#""toRecipients":[{"emailAddress":{"address":"bob@example.net"}}]"#,
        r#""bccRecipients":[{"emailAddress":{"address":"hidden@example.net"}}]"#,
        r##""attachments":[{"@odata.type":"#microsoft.graph.fileAttachment","name":"##,
        r#""contentType":"application/octet-stream","contentBytes":""#,
    ] {
        assert!(text.contains(needle), "{needle} not in {text}");
    }
    for absent in [r#""ccRecipients""#, "saveToSentItems", "null"] {
        assert!(!text.contains(absent), "{absent} in {text}");
    }
    let html = run(fixture!("alternative.eml"), "", &["bob@example.net"]).unwrap();
    let text = serde_json::to_string(html.request()).unwrap();
    assert!(text.contains(r#""contentType":"HTML""#), "{text}");
}

#[test]
fn save_to_sent_items_serialises_as_boolean() {
    let options = Options {
        save_to_sent_items: false,
        ..Options::default()
    };
    let converted = run_with(
        fixture!("html-only.eml"),
        "",
        &["bob@example.net"],
        &options,
    )
    .unwrap();
    assert_eq!(to_json(&converted)["saveToSentItems"], json!(false));
}

/// Input that can never convert, and the `ConvertError` variant it must give.
struct ErrorCase {
    name: &'static str,
    raw: &'static [u8],
    mail_from: &'static str,
    rcpt_to: &'static [&'static str],
    variant: &'static str,
}

#[test]
fn permanent_errors() {
    let cases = [
        ErrorCase {
            name: "missing From and empty reverse-path",
            raw: fixture!("no-from.eml"),
            mail_from: "",
            rcpt_to: &["bob@example.net"],
            variant: "NoSender",
        },
        ErrorCase {
            name: "From without an address, blank reverse-path",
            raw: b"From: Printer\r\n\r\nscan\r\n",
            mail_from: " ",
            rcpt_to: &["bob@example.net"],
            variant: "NoSender",
        },
        ErrorCase {
            name: "empty input",
            raw: b"",
            mail_from: "a@example.com",
            rcpt_to: &["bob@example.net"],
            variant: "Unparseable",
        },
        ErrorCase {
            name: "binary garbage",
            raw: b"\x00\x01\x02\xff\xfe\r\n\r\n\x00",
            mail_from: "a@example.com",
            rcpt_to: &["bob@example.net"],
            variant: "Unparseable",
        },
        ErrorCase {
            name: "text without any header",
            raw: b"just some text\r\nno headers here\r\n",
            mail_from: "a@example.com",
            rcpt_to: &["bob@example.net"],
            variant: "Unparseable",
        },
        ErrorCase {
            name: "no envelope recipients",
            raw: fixture!("plain-text.eml"),
            mail_from: "a@example.com",
            rcpt_to: &[],
            variant: "NoRecipients",
        },
    ];
    let refuse = Options {
        unparseable: super::Unparseable::Refuse,
        ..Options::default()
    };
    for case in cases {
        let error = run_with(case.raw, case.mail_from, case.rcpt_to, &refuse).expect_err(case.name);
        assert_eq!(format!("{error:?}"), case.variant, "{}", case.name);
        assert!(!error.is_retryable(), "{}", case.name);
    }
}

#[test]
fn error_messages_say_what_and_how() {
    let text = ConvertError::NoSender.to_string();
    assert!(text.contains("no usable From header"), "{text}");
    assert!(text.contains("reverse-path is empty"), "{text}");
    assert!(text.contains("add a From header"), "{text}");
}
