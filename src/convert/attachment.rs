//! Attachments for [`super::convert`]: every MIME part mail-parser classifies as an attachment,
//! as a Graph fileAttachment with a decoded filename and the exact decoded bytes.

use std::borrow::Cow;

use base64::{Engine, engine::general_purpose::STANDARD};
use mail_parser::{
    Encoding, Message as MimeMessage, MessagePart, MessagePartId, MimeHeaders, PartType,
    parsers::MessageStream,
};

use crate::graph::model::FileAttachment;

const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// All attachments in MIME order, leaving out `body_part` (the part already sent as the body).
pub(super) fn collect(
    message: &MimeMessage<'_>,
    body_part: Option<MessagePartId>,
) -> Vec<FileAttachment> {
    message
        .attachments
        .iter()
        .filter(|&&id| Some(id) != body_part)
        .filter_map(|&id| message.part(id))
        .enumerate()
        .map(|(index, part)| {
            let content_type = content_type(part);
            let name = file_name(part, index + 1, &content_type);
            let bytes = STANDARD.encode(content(message.raw_message(), part));
            FileAttachment::new(name, content_type, bytes)
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

/// The decoded filename (mail-parser handles RFC 2231 and RFC 2047), else `attachment-N.ext`.
fn file_name(part: &MessagePart<'_>, index: usize, content_type: &str) -> String {
    match part.attachment_name().map(str::trim) {
        Some(name) if !name.is_empty() => name.to_owned(),
        _ => {
            let extension = match content_type {
                "message/rfc822" | "message/global" => "eml",
                "text/plain" => "txt",
                "text/html" => "html",
                _ => "bin",
            };
            format!("attachment-{index}.{extension}")
        }
    }
}

/// The part's bytes after transfer decoding, exactly as the sender attached them.
///
/// mail-parser's binary parts already hold exactly that. Its text parts do not: they have been
/// converted to UTF-8 from the declared charset (lossily when undeclared, e.g. a Windows-1252
/// CSV), and a nested message/rfc822 part points at the whole outer message. For those, decode
/// the part's raw body again, without any charset step.
fn content<'a>(raw: &'a [u8], part: &'a MessagePart<'a>) -> Cow<'a, [u8]> {
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
    // An empty boundary makes the decoders read to the end of the slice.
    let (end, decoded) = match part.encoding {
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
