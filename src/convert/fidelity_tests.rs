//! Tests of the fidelity features with hand-stated expectations from the RFCs and Graph's
//! docs: headers Graph carries, sender modes, the MIME rewrite and its repairs, and the
//! DATA-time check.

use mail_parser::{MessageParser, MimeHeaders};
use serde_json::json;

use super::tests::{run_with, to_json};
use super::{
    ConvertError, Converted, Format, Options, Outgoing, SenderMode, Unparseable, check_at_data,
    repair,
};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/fidelity")
            .join(name),
    )
    .unwrap()
}

fn mime(converted: &Converted) -> &[u8] {
    match &converted.outgoing {
        Outgoing::Mime(bytes) => bytes,
        Outgoing::Json(_) => panic!("expected MIME"),
    }
}

fn mime_options() -> Options {
    Options {
        format: Format::Mime,
        hostname: "relay.example".into(),
        ..Options::default()
    }
}

/// The addresses of every `name:` header of `raw`, lower-cased, via mail-parser.
fn header_addresses(raw: &[u8], name: &str) -> Vec<String> {
    let parsed = MessageParser::default().parse(raw).unwrap();
    parsed
        .headers()
        .iter()
        .filter(|h| h.name().eq_ignore_ascii_case(name))
        .filter_map(|h| h.value().as_address())
        .flat_map(|a| a.iter())
        .filter_map(|a| a.address().map(str::to_lowercase))
        .collect()
}

#[test]
fn reply_to_importance_receipts_and_five_x_headers() {
    let converted = run_with(
        &fixture("headers-extra.eml"),
        "",
        &["bob@example.net"],
        &Options::default(),
    )
    .unwrap();
    let message = &to_json(&converted)["message"];
    assert_eq!(
        message["replyTo"],
        json!([
            {"emailAddress": {"name": "Accounts, Receivable", "address": "ar@example.com"}},
            {"emailAddress": {"address": "helpdesk@example.com"}},
        ])
    );
    // Importance (RFC 2156) wins over X-Priority: 5.
    assert_eq!(message["importance"], "High");
    assert_eq!(message["isReadReceiptRequested"], true);
    assert_eq!(message["isDeliveryReceiptRequested"], true);
    // The first five distinct X- names, first value of a repeated one, folding undone.
    assert_eq!(
        message["internetMessageHeaders"],
        json!([
            {"name": "X-Priority", "value": "5 (Lowest)"},
            {"name": "X-Mailer", "value": "LegacyERP 4.2"},
            {"name": "X-Legacy-App", "value": "billing-v3"},
            {"name": "X-Job-Id", "value": "4711"},
            {"name": "X-Printer", "value": "HP LaserJet 4000"},
        ])
    );

    let chosen = Options {
        x_headers: vec!["x-tenant".into(), "X-Missing".into(), "X-Job-Id".into()],
        ..Options::default()
    };
    let converted = run_with(
        &fixture("headers-extra.eml"),
        "",
        &["bob@example.net"],
        &chosen,
    )
    .unwrap();
    assert_eq!(
        to_json(&converted)["message"]["internetMessageHeaders"],
        json!([
            {"name": "X-Tenant", "value": "contoso"},
            {"name": "X-Job-Id", "value": "4711"},
        ])
    );
}

#[test]
fn x_priority_alone_sets_importance_and_no_receipts() {
    let converted = run_with(
        &fixture("x-priority.eml"),
        "",
        &["bob@example.net"],
        &Options::default(),
    )
    .unwrap();
    let message = &to_json(&converted)["message"];
    assert_eq!(message["importance"], "Low");
    assert!(message.get("isReadReceiptRequested").is_none());
    assert!(message.get("isDeliveryReceiptRequested").is_none());
}

#[test]
fn legacy_device_display_name_with_at_is_dropped_and_bare_lf_is_read() {
    let converted = run_with(
        &fixture("legacy-device.eml"),
        "",
        &["bob@example.net"],
        &Options::default(),
    )
    .unwrap();
    let message = &to_json(&converted)["message"];
    assert_eq!(
        message["from"],
        json!({"emailAddress": {"address": "scanner@example.com"}})
    );
    assert_eq!(message["body"]["content"], "Gescannt in Köln.\r\n");
}

#[test]
fn sender_modes() {
    let raw = fixture("headers-extra.eml");
    let rcpt = ["bob@example.net"];
    let with = |sender| Options {
        sender,
        ..Options::default()
    };
    let header = run_with(&raw, "bounce@example.com", &rcpt, &with(SenderMode::Header)).unwrap();
    assert_eq!(header.sender, "erp@example.com");

    let envelope = run_with(
        &raw,
        "bounce@example.com",
        &rcpt,
        &with(SenderMode::Envelope),
    )
    .unwrap();
    assert_eq!(envelope.sender, "bounce@example.com");
    let message = &to_json(&envelope)["message"];
    assert_eq!(
        message["from"]["emailAddress"]["address"],
        "bounce@example.com"
    );
    // The message has its own Reply-To, which stays.
    assert_eq!(
        message["replyTo"][0]["emailAddress"]["address"],
        "ar@example.com"
    );

    let fixed = with(SenderMode::Fixed("scanner@contoso.com".into()));
    let converted = run_with(&fixture("legacy-device.eml"), "", &rcpt, &fixed).unwrap();
    assert_eq!(converted.sender, "scanner@contoso.com");
    let message = &to_json(&converted)["message"];
    assert_eq!(
        message["from"]["emailAddress"]["address"],
        "scanner@contoso.com"
    );
    assert_eq!(
        message["replyTo"],
        json!([{"emailAddress": {"address": "scanner@example.com"}}]),
        "the original From is kept as Reply-To"
    );
    // Envelope mode without MAIL FROM falls back to the header.
    let converted = run_with(&raw, "", &rcpt, &with(SenderMode::Envelope)).unwrap();
    assert_eq!(converted.sender, "erp@example.com");
}

#[test]
fn mime_recipients_are_exactly_the_envelope() {
    // nested.eml: To john and bob; Cc is the empty group "Undisclosed recipients:;".
    let converted = run_with(
        &fixture("nested.eml"),
        "",
        &["bob@example.net", "only-envelope@example.org"],
        &mime_options(),
    )
    .unwrap();
    let out = mime(&converted);
    assert_eq!(header_addresses(out, "To"), ["bob@example.net"]);
    assert!(header_addresses(out, "Cc").is_empty());
    assert_eq!(header_addresses(out, "Bcc"), ["only-envelope@example.org"]);
    let text = String::from_utf8_lossy(out);
    // The display names survive the rewrite, quoted.
    assert!(
        text.contains("To: \"O'Brien \\\"Bob\\\"\" <bob@example.net>"),
        "{text}"
    );

    // All header addresses in the envelope: the sender's own lines stay byte for byte.
    let converted = run_with(
        &fixture("nested.eml"),
        "",
        &["john@example.net", "bob@example.net"],
        &mime_options(),
    )
    .unwrap();
    let text = String::from_utf8_lossy(mime(&converted)).into_owned();
    assert!(
        text.contains(
            "To: \"Doe, John\" <john@example.net>, \"O'Brien \\\"Bob\\\"\" <bob@example.net>\r\n"
        ),
        "{text}"
    );
    assert!(text.contains("Cc: Undisclosed recipients:;\r\n"));
    assert!(!text.contains("Bcc:"));
}

#[test]
fn mime_repairs_legacy_messages() {
    let converted = run_with(
        &fixture("legacy-device.eml"),
        "",
        &["bob@example.net"],
        &mime_options(),
    )
    .unwrap();
    let out = mime(&converted);
    let text = String::from_utf8_lossy(out);
    assert!(
        !text.replace("\r\n", "").contains('\n'),
        "bare LF left: {text:?}"
    );
    assert!(text.starts_with(
        "Received: from graph-relay by relay.example with SMTP id 01HF7YAT00TESTQUEUEID00000; Tue, 14 Nov 2023 22:13:20 +0000\r\n"
    ), "{text}");
    assert!(
        text.contains("Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n"),
        "{text}"
    );
    assert!(text.contains("Message-ID: <01HF7YAT00TESTQUEUEID00000@relay.example>\r\n"));
    assert!(text.contains("From: <scanner@example.com>\r\n"), "{text}");
    // 8-bit body re-encoded: only ASCII left, and the same bytes when decoded.
    assert!(out.is_ascii(), "{text}");
    let parsed = MessageParser::default().parse(out).unwrap();
    assert_eq!(parsed.content_transfer_encoding(), Some("base64"));
    assert_eq!(parsed.body_text(0).unwrap(), "Gescannt in Köln.\r\n");
}

#[test]
fn mime_reencodes_quoted_printable_parts_as_base64() {
    for name in ["qp-html.eml", "nested.eml", "charset-iso-8859-2.eml"] {
        let raw = fixture(name);
        let rcpt = ["bob@example.net", "john@example.net"];
        let converted = run_with(&raw, "", &rcpt, &mime_options()).unwrap();
        let out = mime(&converted);
        let text = String::from_utf8_lossy(out);
        assert!(
            !text.to_ascii_lowercase().contains("quoted-printable"),
            "{name}: {text}"
        );
        // Same decoded content before and after.
        let before = MessageParser::default().parse(&raw).unwrap();
        let after = MessageParser::default().parse(out).unwrap();
        assert_eq!(before.body_html(0), after.body_html(0), "{name}");
        assert_eq!(before.body_text(0), after.body_text(0), "{name}");
        assert_eq!(
            before.attachment_count(),
            after.attachment_count(),
            "{name}"
        );
        for (a, b) in before.attachments().zip(after.attachments()) {
            assert_eq!(a.contents(), b.contents(), "{name}");
        }
    }
}

#[test]
fn signed_messages_always_go_as_mime_untouched_below_the_headers() {
    let raw = b"From: a@example.com\r\nTo: b@example.net\r\nSubject: signed\r\n\
        MIME-Version: 1.0\r\nContent-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; \
        micalg=sha-256; boundary=\"s\"\r\n\r\n--s\r\nContent-Type: text/plain; charset=utf-8\r\n\
        Content-Transfer-Encoding: quoted-printable\r\n\r\nK=C3=B6ln\r\n--s\r\n\
        Content-Type: application/pkcs7-signature; name=smime.p7s\r\nContent-Transfer-Encoding: base64\r\n\r\n\
        AAAA\r\n--s--\r\n";
    let converted = run_with(raw, "", &["b@example.net"], &Options::default()).unwrap();
    assert!(converted.forced_mime.is_some());
    let out = mime(&converted);
    let body_start = |m: &[u8]| m.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    assert_eq!(
        &out[body_start(out)..],
        &raw[body_start(raw)..],
        "signed body changed"
    );
}

#[test]
fn unparseable_data_is_wrapped_or_refused() {
    let garbage = b"just some text\r\nno headers here\r\n";
    let converted = run_with(
        garbage,
        "app@example.com",
        &["bob@example.net"],
        &Options::default(),
    )
    .unwrap();
    assert_eq!(converted.sender, "app@example.com");
    let out = mime(&converted);
    let parsed = MessageParser::default().parse(out).unwrap();
    assert_eq!(
        parsed.body_text(0).unwrap(),
        "just some text\r\nno headers here\r\n"
    );
    assert_eq!(header_addresses(out, "To"), ["bob@example.net"]);

    let refuse = Options {
        unparseable: Unparseable::Refuse,
        ..Options::default()
    };
    let refusal = check_at_data(garbage, "app@example.com", &refuse).unwrap_err();
    assert_eq!((refusal.code, refusal.enhanced), (554, "5.6.0"));
    assert_eq!(
        check_at_data(garbage, "app@example.com", &Options::default()),
        Ok("app@example.com".to_owned())
    );
}

#[test]
fn data_time_check_refuses_only_a_message_without_any_sender() {
    let no_from = b"To: b@example.net\r\nSubject: x\r\n\r\nbody\r\n";
    let refusal = check_at_data(no_from, "", &Options::default()).unwrap_err();
    assert_eq!((refusal.code, refusal.enhanced), (550, "5.7.1"));
    assert!(refusal.text.contains("From"), "{}", refusal.text);
    assert_eq!(
        check_at_data(no_from, "app@example.com", &Options::default()),
        Ok("app@example.com".to_owned())
    );
    let fixed = Options {
        sender: SenderMode::Fixed("scanner@contoso.com".into()),
        ..Options::default()
    };
    assert_eq!(
        check_at_data(no_from, "", &fixed),
        Ok("scanner@contoso.com".to_owned())
    );
    // Without headers the envelope is all there is; a fixed sender needs neither.
    assert_eq!(
        check_at_data(b"just text\r\n", "", &fixed),
        Ok("scanner@contoso.com".to_owned())
    );
    let with_from = b"From: A <a@example.com>\r\n\r\nbody\r\n";
    assert_eq!(
        check_at_data(with_from, "", &Options::default()),
        Ok("a@example.com".to_owned())
    );
    let envelope = Options {
        sender: SenderMode::Envelope,
        ..Options::default()
    };
    assert_eq!(
        check_at_data(with_from, "bounce@example.com", &envelope),
        Ok("bounce@example.com".to_owned())
    );
}

/// A multipart message with one base64 attachment per `(name, bytes)`.
fn with_attachments(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    use base64::{Engine, engine::general_purpose::STANDARD};
    let mut out = String::from(
        "From: a@example.com\r\nTo: b@example.net\r\nSubject: sizes\r\n\
         Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain\r\n\r\nbody\r\n",
    );
    for (name, bytes) in files {
        out.push_str(&format!(
            "--b\r\nContent-Type: application/octet-stream; name=\"{name}\"\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n"
        ));
        for line in STANDARD.encode(bytes).as_bytes().chunks(76) {
            out.push_str(std::str::from_utf8(line).unwrap());
            out.push_str("\r\n");
        }
    }
    out.push_str("--b--\r\n");
    out.into_bytes()
}

#[test]
fn upload_plan_keeps_every_request_under_4_mib() {
    let bytes = |n: usize, seed: u8| -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
    };
    let files = vec![
        ("small.bin", bytes(100_000, 1)),
        ("just-below.bin", bytes(super::UPLOAD_SESSION_MIN - 1, 2)),
        ("three-mb.bin", bytes(super::UPLOAD_SESSION_MIN, 3)),
        ("twenty-mb.bin", bytes(20 * 1024 * 1024, 4)),
        ("second-below.bin", bytes(2_500_000, 5)),
    ];
    let raw = with_attachments(&files);
    let rcpt = vec!["b@example.net".to_owned(), "c@example.org".to_owned()];
    let plan = super::plan_upload(&raw, "", &rcpt, &Options::default()).unwrap();
    assert_eq!(plan.sender, "a@example.com");
    // The large ones stay in the message: read back from it, they are the attached bytes.
    let large: Vec<(&str, u64, Vec<u8>)> = plan
        .large
        .iter()
        .map(|a| {
            let mut content = super::Content::open(std::io::Cursor::new(&raw), &a.source).unwrap();
            (
                a.name.as_str(),
                a.size,
                content.next_chunk(usize::MAX).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        large,
        [
            ("three-mb.bin", files[2].1.len() as u64, files[2].1.clone()),
            ("twenty-mb.bin", files[3].1.len() as u64, files[3].1.clone())
        ]
    );
    let draft_size = serde_json::to_vec(&plan.draft).unwrap().len();
    assert!(draft_size < 4 * 1024 * 1024, "{draft_size}");
    for attachment in &plan.separate {
        let size = serde_json::to_vec(attachment).unwrap().len();
        assert!(size < 4 * 1024 * 1024, "{}: {size}", attachment.name);
    }
    let mut small: Vec<&str> = plan
        .draft
        .attachments
        .iter()
        .chain(&plan.separate)
        .map(|a| a.name.as_str())
        .collect();
    small.sort();
    assert_eq!(small, ["just-below.bin", "second-below.bin", "small.bin"]);
    assert_eq!(plan.draft.bcc_recipients.len(), 1);

    let signed =
        b"From: a@example.com\r\nContent-Type: multipart/signed; boundary=s\r\n\r\n--s--\r\n";
    let err = super::plan_upload(signed, "", &rcpt, &Options::default()).unwrap_err();
    assert!(matches!(err, super::ConvertError::SignedTooLarge));
}

#[test]
fn input_that_panics_mail_parser_is_still_delivered() {
    // Found by fuzz/fuzz_targets/convert.rs.
    let raw = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/fuzz/mail-parser-invalid-part-id.eml"),
    )
    .unwrap();
    let converted = run_with(
        &raw,
        "app@example.com",
        &["bob@example.net"],
        &Options::default(),
    )
    .unwrap();
    assert_eq!(
        converted.forced_mime,
        Some("the data cannot be parsed as mail")
    );
    let refuse = Options {
        unparseable: Unparseable::Refuse,
        ..Options::default()
    };
    assert!(run_with(&raw, "app@example.com", &["bob@example.net"], &refuse).is_err());
    assert!(super::plan_upload(&raw, "", &["bob@example.net".to_owned()], &refuse).is_err());
}

/// The header names of a MIME message, in order, after checking that its header section has
/// no bare CR or LF (which could end a field early).
fn header_names(out: &[u8]) -> Vec<String> {
    let section = repair::header_section(out);
    let text = String::from_utf8_lossy(section);
    assert!(
        !text.replace("\r\n", "").contains(['\r', '\n']),
        "bare CR or LF in {text:?}"
    );
    let parsed = MessageParser::default().parse(out).unwrap();
    parsed
        .headers()
        .iter()
        .map(|h| h.name().to_owned())
        .collect()
}

#[test]
fn addresses_cannot_inject_into_the_headers_the_relay_adds() {
    // What smtp-proto leaves of quoted local parts (the SMTP door refuses them now, a spool
    // written before may hold them), and worse: specials, CR/LF, Unicode line separators.
    let hostile = [
        "evil@attacker.example>, x@contoso.com",
        "a\r\nBcc: evil@attacker.example\r\nX-Injected: 1@contoso.com",
        "a\rX-Injected: 2@contoso.com",
        "a\nX-Injected: 3@contoso.com",
        "a\u{2028}X-Injected: 4@contoso.com",
        "a\u{85}X-Injected: 5@contoso.com",
        "q\"uo\\te;x:y@contoso.com",
        "x@con>toso.com\r\nX-Injected: 6",
    ];
    let rcpt_to = [
        "bob@example.net",
        "jörg@bücher.example",
        "o'brien+x@example.org",
    ];
    let raw = b"From: \"printer@contoso.com\" <printer@contoso.com>\r\nTo: bob@example.net\r\n\
        Subject: s\r\n\r\nbody\r\n";
    let options = Options {
        sender: SenderMode::Envelope,
        ..mime_options()
    };
    // A hostile envelope sender (written as From) or recipient (written as Bcc) is never
    // written: the message fails with the address named, its control characters escaped.
    for address in hostile {
        let mut with_hostile = rcpt_to.to_vec();
        with_hostile.push(address);
        for (mail_from, rcpts) in [
            (address, &rcpt_to[..]),
            ("app@contoso.com", &with_hostile[..]),
        ] {
            for data in [&raw[..], b"no headers\r\n"] {
                let err = run_with(data, mail_from, rcpts, &options).unwrap_err();
                assert!(matches!(err, ConvertError::UnsafeAddress(ref a) if a == address));
                assert!(!err.to_string().contains(['\r', '\n']), "{err}");
            }
        }
    }

    // Plain addresses, SMTPUTF8 ones included: each added header is one well-formed field.
    let converted = run_with(raw, "app@contoso.com", &rcpt_to, &options).unwrap();
    let out = mime(&converted);
    let mut names = header_names(out);
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "Bcc",
            "Date",
            "From",
            "Message-ID",
            "Received",
            "Reply-To",
            "Subject",
            "To"
        ],
        "{}",
        String::from_utf8_lossy(out)
    );
    assert_eq!(
        header_addresses(out, "Bcc"),
        ["jörg@bücher.example", "o'brien+x@example.org"]
    );
    assert_eq!(header_addresses(out, "From"), ["app@contoso.com"]);
    let wrapped = run_with(b"no headers\r\n", "app@contoso.com", &rcpt_to, &options).unwrap();
    let out = mime(&wrapped);
    let names = header_names(out);
    assert_eq!(
        names,
        [
            "Received",
            "From",
            "To",
            "Subject",
            "Date",
            "Message-ID",
            "MIME-Version",
            "Content-Type",
            "Content-Transfer-Encoding"
        ]
    );
    assert_eq!(header_addresses(out, "To").len(), rcpt_to.len());
}

#[test]
fn a_header_from_address_stays_one_quoted_address_when_its_name_is_cleaned() {
    // The sender's own From header, rewritten only to drop the '@' from its display name: an
    // odd address in it stays one quoted address on one line.
    let raw = b"From: \"printer@contoso.com\" <\"odd, name\"@contoso.com>\r\n\
        To: bob@example.net\r\nSubject: s\r\n\r\nbody\r\n";
    let options = Options {
        sender: SenderMode::Fixed("scanner@contoso.com".into()),
        ..mime_options()
    };
    let converted = run_with(raw, "", &["bob@example.net"], &options).unwrap();
    let out = mime(&converted);
    assert_eq!(
        header_names(out)
            .iter()
            .filter(|n| *n == "Reply-To")
            .count(),
        1
    );
    let reply_to = String::from_utf8_lossy(out)
        .lines()
        .find_map(|l| l.strip_prefix("Reply-To: ").map(str::to_owned))
        .unwrap();
    assert_eq!(reply_to, "<\"odd, name\"@contoso.com>");
}

#[test]
fn header_addr_spec_keeps_plain_addresses_and_quotes_the_rest() {
    use super::address::header_addr_spec;
    assert_eq!(
        header_addr_spec("jörg@bücher.example"),
        "jörg@bücher.example"
    );
    assert_eq!(header_addr_spec("a b@contoso.com"), "\"a b\"@contoso.com");
    assert_eq!(
        header_addr_spec("\"a \\\"b\"@contoso.com"),
        "\"a \\\"b\"@contoso.com"
    );
    assert_eq!(
        header_addr_spec("q\"u\\o\r\nBcc: x@con>toso.com\u{2028}"),
        "\"q\\\"u\\\\oBcc: x\"@contoso.com"
    );
}

/// The upload plan's ranges hold for a message stored with bare LF line ends and for a
/// quoted-printable attachment: read back, each large attachment is what was attached.
#[test]
fn upload_plan_ranges_hold_for_bare_line_ends_and_quoted_printable() {
    let csv: String = (0..120_000)
        .map(|i| format!("{i};Müller;Straße {i}\r\n"))
        .collect();
    let qp: String = csv
        .replace("ü", "=C3=BC")
        .replace("ß", "=C3=9F")
        .replace("\r\n", "\n");
    let raw = format!(
        "From: a@example.com\nTo: b@example.net\nSubject: export\nMIME-Version: 1.0\n\
         Content-Type: multipart/mixed; boundary=\"b\"\n\n--b\nContent-Type: text/plain\n\nsee csv\n\
         --b\nContent-Type: text/csv; charset=utf-8\nContent-Disposition: attachment; filename=\"export.csv\"\n\
         Content-Transfer-Encoding: quoted-printable\n\n{qp}--b--\n"
    );
    let rcpt = vec!["b@example.net".to_owned()];
    let plan = super::plan_upload(raw.as_bytes(), "", &rcpt, &Options::default()).unwrap();
    assert_eq!(plan.large.len(), 1);
    let attachment = &plan.large[0];
    assert!(attachment.source.normalised);
    let mut content =
        super::Content::open(std::io::Cursor::new(raw.as_bytes()), &attachment.source).unwrap();
    let read = content.next_chunk(usize::MAX).unwrap();
    assert_eq!(read.len() as u64, attachment.size);
    // The line end before the boundary belongs to the boundary.
    let expected = csv.strip_suffix("\r\n").unwrap();
    assert!(
        read == expected.as_bytes(),
        "the CSV comes back with CRLF line ends"
    );
}
