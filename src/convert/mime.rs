//! MIME format for [`super::convert`]: the original message with only what Graph needs changed.
//!
//! MIME `sendMail` has no envelope: Exchange takes the recipients from the To/Cc/Bcc headers.
//! So the header section is made envelope-exact (header addresses outside the envelope dropped,
//! a `Bcc:` header for envelope-only recipients), the sender rewritten when `graph.sender` says
//! so, Date/Message-ID added when missing, a `Received:` header prepended, and every
//! quoted-printable or 8-bit leaf part re-encoded as base64 (Graph re-wraps quoted-printable
//! badly, smtp-oauth-relay#94). Everything else is byte-for-byte the sender's.

use base64::{Engine, engine::general_purpose::STANDARD};
use mail_parser::{Encoding, Message as MimeMessage, MimeHeaders, PartType};

use super::{Arrival, Options, address, attachment, repair};
use crate::graph::model::Recipient;

/// What [`rewrite`] needs besides the parsed message.
pub(super) struct Rewrite<'a> {
    pub sender: &'a str,
    /// The original From when the message goes out as another mailbox.
    pub rewritten_from: Option<&'a Recipient>,
    pub rcpt_to: &'a [String],
    pub arrival: Arrival<'a>,
    pub options: &'a Options,
    /// Re-encode quoted-printable and 8-bit parts; off for signed messages, whose signature
    /// covers the body bytes.
    pub transcode: bool,
}

/// One header field: its lower-cased name and its raw bytes, folding and CRLF included.
struct Field<'a> {
    name: String,
    raw: &'a [u8],
}

/// The whole rewritten message.
pub(super) fn rewrite(parsed: &MimeMessage<'_>, how: &Rewrite<'_>) -> Vec<u8> {
    let raw = parsed.raw_message();
    let root = parsed.root_part();
    let header_end = (root.raw_body_offset() as usize).min(raw.len());
    let fields = split_fields(&raw[..header_end]);
    let recipients = address::envelope_recipients(parsed, how.rcpt_to);
    let root_transcoded = how.transcode && needs_base64(raw, root);

    // Keep the sender's To/Cc lines when they already name only envelope recipients.
    let header_addresses: Vec<String> = parsed
        .all_to()
        .chain(parsed.all_cc())
        .flat_map(mail_parser::Address::iter)
        .filter_map(address::recipient)
        .map(|r| r.email_address.address)
        .collect();
    let keep_to_cc = header_addresses.len() == recipients.to.len() + recipients.cc.len();

    let header_from = address::from_header(parsed);
    let from_line = match (how.rewritten_from, &header_from) {
        (Some(_), _) => Some(format!(
            "From: {}\r\n",
            format_address(&Recipient::new(None, how.sender.to_owned()))
        )),
        (None, Some(from))
            if from
                .email_address
                .name
                .as_deref()
                .is_some_and(|n| n.contains('@')) =>
        {
            Some(format!(
                "From: {}\r\n",
                format_address(&repair::clean_display_name(from.clone()))
            ))
        }
        _ => None,
    };

    let mut out = Vec::with_capacity(raw.len() + raw.len() / 3 + 1024);
    out.extend_from_slice(
        format!(
            "Received: from graph-relay by {} with SMTP id {}; {}\r\n",
            how.options.hostname,
            how.arrival.queue_id,
            date(how.arrival)
        )
        .as_bytes(),
    );
    let mut recipients_written = false;
    let write_recipients = |out: &mut Vec<u8>| {
        if !keep_to_cc {
            if !recipients.to.is_empty() {
                out.extend_from_slice(address_field("To", &recipients.to).as_bytes());
            }
            if !recipients.cc.is_empty() {
                out.extend_from_slice(address_field("Cc", &recipients.cc).as_bytes());
            }
        }
        if !recipients.bcc.is_empty() {
            out.extend_from_slice(address_field("Bcc", &recipients.bcc).as_bytes());
        }
    };
    let has = |name: &str| fields.iter().any(|f| f.name == name);
    for field in &fields {
        match field.name.as_str() {
            "to" | "cc" if !keep_to_cc => {}
            "bcc" => {}
            "from" if from_line.is_some() => {
                out.extend_from_slice(from_line.as_deref().unwrap_or_default().as_bytes());
            }
            "content-transfer-encoding" if root_transcoded => {}
            "" => {
                // The empty line ending the header section: additions go before it.
                if !recipients_written {
                    write_recipients(&mut out);
                    recipients_written = true;
                }
                if !has("reply-to")
                    && let Some(original) = how.rewritten_from
                {
                    let original = repair::clean_display_name(original.clone());
                    out.extend_from_slice(address_field("Reply-To", &[original]).as_bytes());
                }
                if !has("date") {
                    out.extend_from_slice(format!("Date: {}\r\n", date(how.arrival)).as_bytes());
                }
                if !has("message-id") {
                    out.extend_from_slice(message_id(how).as_bytes());
                }
                if root_transcoded {
                    out.extend_from_slice(b"Content-Transfer-Encoding: base64\r\n");
                }
                out.extend_from_slice(field.raw);
            }
            _ => out.extend_from_slice(field.raw),
        }
    }

    if root_transcoded {
        out.extend_from_slice(&base64_lines(&attachment::content(raw, root), true));
        return out;
    }
    let mut at = header_end;
    if how.transcode {
        for part in parsed.parts.iter().skip(1) {
            if !needs_base64(raw, part) {
                continue;
            }
            let (start, body, end) = (
                part.raw_header_offset() as usize,
                part.raw_body_offset() as usize,
                part.raw_end_offset() as usize,
            );
            if start < at || end > raw.len() || body > end {
                continue;
            }
            out.extend_from_slice(&raw[at..start]);
            for field in split_fields(&raw[start..body]) {
                match field.name.as_str() {
                    "content-transfer-encoding" => {}
                    "" => {
                        out.extend_from_slice(b"Content-Transfer-Encoding: base64\r\n");
                        out.extend_from_slice(field.raw);
                    }
                    _ => out.extend_from_slice(field.raw),
                }
            }
            let ends_with_crlf = raw[body..end].ends_with(b"\r\n");
            out.extend_from_slice(&base64_lines(
                &attachment::content(raw, part),
                ends_with_crlf,
            ));
            at = end;
        }
    }
    out.extend_from_slice(&raw[at..]);
    out
}

/// Data without a header section, wrapped so it is still delivered: the envelope as headers,
/// the data as a base64 text part.
pub(super) fn wrap_unparseable(
    raw: &[u8],
    sender: &str,
    rcpt_to: &[String],
    arrival: Arrival<'_>,
    options: &Options,
) -> Vec<u8> {
    let to: Vec<Recipient> = rcpt_to
        .iter()
        .map(|r| Recipient::new(None, r.clone()))
        .collect();
    let charset = if std::str::from_utf8(raw).is_ok() {
        "utf-8"
    } else {
        "iso-8859-1"
    };
    let mut out = format!(
        "Received: from graph-relay by {host} with SMTP id {id}; {date}\r\n\
         From: {from}\r\n{to}Subject: \r\nDate: {date}\r\nMessage-ID: <{id}@{host}>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset={charset}\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n",
        host = options.hostname,
        id = arrival.queue_id,
        date = date(arrival),
        from = format_address(&Recipient::new(None, sender.to_owned())),
        to = address_field("To", &to),
    )
    .into_bytes();
    out.extend_from_slice(&base64_lines(raw, true));
    out
}

/// Leaf parts whose transfer encoding Graph may mangle: quoted-printable, and unencoded parts
/// with 8-bit bytes.
fn needs_base64(raw: &[u8], part: &mail_parser::MessagePart<'_>) -> bool {
    let leaf = matches!(
        part.body,
        PartType::Text(_) | PartType::Html(_) | PartType::Binary(_) | PartType::InlineBinary(_)
    );
    // message/* parts may not be base64 (RFC 2046 §5.2.1).
    let message = part
        .content_type()
        .is_some_and(|ct| ct.ctype().eq_ignore_ascii_case("message"));
    if !leaf || message {
        return false;
    }
    match part.encoding {
        Encoding::QuotedPrintable => true,
        Encoding::Base64 => false,
        Encoding::None => raw
            .get(part.raw_body_offset() as usize..part.raw_end_offset() as usize)
            .is_some_and(|body| body.iter().any(|&b| b >= 0x80)),
    }
}

/// Splits a header section into fields; the terminating empty line is a field named `""`.
fn split_fields(section: &[u8]) -> Vec<Field<'_>> {
    let mut fields: Vec<Field<'_>> = Vec::new();
    let mut start = 0;
    while start < section.len() {
        let end = section[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(section.len(), |i| start + i + 1);
        let line = &section[start..end];
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        match fields.last_mut() {
            Some(last) if continuation && !last.name.is_empty() => {
                // Extend the previous field over its folded line.
                let begin = last.raw.as_ptr() as usize - section.as_ptr() as usize;
                last.raw = &section[begin..end];
            }
            _ => {
                let trimmed = line.strip_suffix(b"\n").unwrap_or(line);
                let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
                let name = if trimmed.is_empty() {
                    String::new()
                } else {
                    let colon = trimmed
                        .iter()
                        .position(|&b| b == b':')
                        .unwrap_or(trimmed.len());
                    String::from_utf8_lossy(&trimmed[..colon])
                        .trim()
                        .to_ascii_lowercase()
                };
                // A line without a colon keeps its own (junk) name so it is copied unchanged.
                let name = if name.is_empty() && !trimmed.is_empty() {
                    "?".into()
                } else {
                    name
                };
                fields.push(Field { name, raw: line });
            }
        }
        start = end;
    }
    if fields.last().is_none_or(|f| !f.name.is_empty()) {
        // A message without a body has no empty line; the additions still need a place.
        fields.push(Field {
            name: String::new(),
            raw: b"\r\n",
        });
    }
    fields
}

fn date(arrival: Arrival<'_>) -> String {
    mail_parser::DateTime::from_timestamp(arrival.received_at).to_rfc822()
}

fn message_id(how: &Rewrite<'_>) -> String {
    format!(
        "Message-ID: <{}@{}>\r\n",
        how.arrival.queue_id, how.options.hostname
    )
}

/// `Name: a, b` folded one address per line.
fn address_field(name: &str, recipients: &[Recipient]) -> String {
    let list: Vec<String> = recipients.iter().map(format_address).collect();
    format!("{name}: {}\r\n", list.join(",\r\n "))
}

/// `"Display Name" <address>`, the name RFC 2047 encoded when it is not ASCII.
pub(super) fn format_address(recipient: &Recipient) -> String {
    let address = address::header_addr_spec(&recipient.email_address.address);
    match recipient.email_address.name.as_deref() {
        None | Some("") => format!("<{address}>"),
        Some(name) if name.is_ascii() && !name.chars().any(|c| c.is_ascii_control()) => {
            let escaped = name.replace('\\', "\\\\").replace('"', "\\\"");
            format!("\"{escaped}\" <{address}>")
        }
        Some(name) => format!("{} <{address}>", encoded_words(name)),
    }
}

/// RFC 2047 `B` encoded words of at most 75 characters, split between characters.
fn encoded_words(text: &str) -> String {
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in text.chars() {
        // 45 bytes of UTF-8 become 60 base64 characters: with `=?UTF-8?B?` and `?=`, 72.
        if chunk.len() + c.len_utf8() > 45 {
            words.push(format!("=?UTF-8?B?{}?=", STANDARD.encode(&chunk)));
            chunk.clear();
        }
        chunk.push(c);
    }
    if !chunk.is_empty() {
        words.push(format!("=?UTF-8?B?{}?=", STANDARD.encode(&chunk)));
    }
    words.join("\r\n ")
}

/// Base64 in lines of 76 characters (RFC 2045), CRLF after each line but, unless
/// `final_crlf`, the last.
fn base64_lines(bytes: &[u8], final_crlf: bool) -> Vec<u8> {
    let encoded = STANDARD.encode(bytes);
    let mut out = Vec::with_capacity(encoded.len() + encoded.len() / 38 + 2);
    for (i, line) in encoded.as_bytes().chunks(76).enumerate() {
        if i > 0 {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(line);
    }
    if final_crlf {
        out.extend_from_slice(b"\r\n");
    }
    out
}
