//! Attachments for [`super::convert`]: every MIME part mail-parser classifies as an attachment,
//! as a Graph fileAttachment with a decoded filename and the exact decoded bytes. Inline parts
//! with a Content-ID keep it (`isInline`, `contentId`) so `cid:` images in the HTML body render;
//! attached messages become `.eml` files and calendar parts `.ics` files.

use std::borrow::Cow;

use base64::{Engine, engine::general_purpose::STANDARD};
use mail_parser::{
    Encoding, Message as MimeMessage, MessagePart, MessagePartId, MimeHeaders, PartType,
    parsers::MessageStream,
};

use crate::graph::model::FileAttachment;

const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// One attachment before base64: its Graph description and its decoded bytes.
pub(super) struct Part<'a> {
    /// The fileAttachment with empty `contentBytes`.
    pub file: FileAttachment,
    pub bytes: Cow<'a, [u8]>,
    /// Where its transfer-encoded body lies in the raw message, and how it is encoded.
    pub source: (u32, u32, Encoding),
}

impl Part<'_> {
    /// The fileAttachment with its bytes, as one request carries it.
    pub fn encoded(self) -> FileAttachment {
        FileAttachment {
            content_bytes: STANDARD.encode(&self.bytes),
            ..self.file
        }
    }
}

/// All attachments in MIME order, leaving out `body_part` (the part already sent as the body).
pub(super) fn collect(
    message: &MimeMessage<'_>,
    body_part: Option<MessagePartId>,
) -> Vec<FileAttachment> {
    parts(message, body_part)
        .into_iter()
        .map(Part::encoded)
        .collect()
}

/// [`collect`] without the base64 step, for the upload path.
pub(super) fn parts<'a>(
    message: &'a MimeMessage<'a>,
    body_part: Option<MessagePartId>,
) -> Vec<Part<'a>> {
    message
        .attachments
        .iter()
        .filter(|&&id| Some(id) != body_part)
        .filter_map(|&id| message.part(id))
        .enumerate()
        .map(|(index, part)| {
            let content_type = content_type(part);
            let name = file_name(part, index + 1, &content_type);
            let mut file = FileAttachment::new(name, content_type, String::new());
            // mail-parser calls a multipart/related image with a Content-ID "Binary", not
            // inline; what makes it inline for the reader is the Content-ID without an
            // explicit `attachment` disposition.
            file.content_id = part
                .content_id()
                .map(|id| {
                    id.trim()
                        .trim_start_matches('<')
                        .trim_end_matches('>')
                        .to_owned()
                })
                .filter(|id| !id.is_empty());
            file.is_inline = file.content_id.is_some()
                && !part
                    .content_disposition()
                    .is_some_and(|d| d.ctype().eq_ignore_ascii_case("attachment"));
            Part {
                file,
                bytes: content(message.raw_message(), part),
                source: (
                    part.raw_body_offset(),
                    part.raw_end_offset(),
                    transfer_encoding(part),
                ),
            }
        })
        .collect()
}

/// `type/subtype`, lower-cased, without parameters.
fn content_type(part: &MessagePart<'_>) -> String {
    part.content_type()
        .and_then(|ct| Some(format!("{}/{}", ct.ctype(), ct.subtype()?)))
        .map(|ct| ct.trim().to_ascii_lowercase())
        .unwrap_or_else(|| DEFAULT_CONTENT_TYPE.to_owned())
}

/// The decoded filename (mail-parser handles RFC 2231 and RFC 2047); for an attached message
/// without one its subject plus `.eml`; else `attachment-N.ext`.
fn file_name(part: &MessagePart<'_>, index: usize, content_type: &str) -> String {
    if let Some(name) = part
        .attachment_name()
        .map(str::trim)
        .filter(|n| !n.is_empty())
    {
        return name.to_owned();
    }
    let extension = match content_type {
        "message/rfc822" | "message/global" => "eml",
        "text/plain" => "txt",
        "text/html" => "html",
        "text/calendar" => "ics",
        _ => "bin",
    };
    let subject = match &part.body {
        PartType::Message(inner) => inner.subject().map(safe_file_name),
        _ => None,
    };
    match subject.filter(|s| !s.is_empty()) {
        Some(subject) => format!("{subject}.{extension}"),
        None => format!("attachment-{index}.{extension}"),
    }
}

/// A subject usable as a file name: no path separators or characters Windows refuses.
fn safe_file_name(subject: &str) -> String {
    let cleaned: String = subject
        .chars()
        .map(|c| match c {
            '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|' => '_',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect();
    cleaned.trim().chars().take(100).collect()
}

/// How the part's raw body is encoded. When decoding failed (e.g. the closing boundary is
/// missing) mail-parser keeps the part as undecoded text and forgets the encoding; the header
/// still says what it was.
fn transfer_encoding(part: &MessagePart<'_>) -> Encoding {
    match part.content_transfer_encoding() {
        Some(cte) if part.is_encoding_problem && cte.eq_ignore_ascii_case("base64") => {
            Encoding::Base64
        }
        Some(cte) if part.is_encoding_problem && cte.eq_ignore_ascii_case("quoted-printable") => {
            Encoding::QuotedPrintable
        }
        _ => part.encoding,
    }
}

/// The part's bytes after transfer decoding, exactly as the sender attached them.
///
/// mail-parser's binary parts already hold exactly that. Its text parts do not: they have been
/// converted to UTF-8 from the declared charset (lossily when undeclared, e.g. a Windows-1252
/// CSV), and a nested message/rfc822 part points at the whole outer message. For those, decode
/// the part's raw body again, without any charset step.
pub(super) fn content<'a>(raw: &'a [u8], part: &'a MessagePart<'a>) -> Cow<'a, [u8]> {
    if let PartType::Binary(bytes) | PartType::InlineBinary(bytes) = &part.body {
        return Cow::Borrowed(bytes.as_ref());
    }
    let (start, end) = (
        part.raw_body_offset() as usize,
        part.raw_end_offset() as usize,
    );
    let Some(encoded) = raw.get(start..end) else {
        return Cow::Borrowed(part.contents());
    };
    let encoding = transfer_encoding(part);
    // An empty boundary makes the decoders read to the end of the slice.
    let (end, decoded) = match encoding {
        Encoding::Base64 => MessageStream::new(encoded).decode_base64_mime(b""),
        Encoding::QuotedPrintable => MessageStream::new(encoded).decode_quoted_printable_mime(b""),
        Encoding::None => return Cow::Borrowed(encoded),
    };
    // usize::MAX is the decoders' failure mark; the parser decoded the same bytes already, so
    // this cannot happen, but its own result is the right fallback.
    if end == usize::MAX {
        Cow::Borrowed(part.contents())
    } else {
        decoded
    }
}
