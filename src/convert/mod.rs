//! Conversion of a raw MIME message and its SMTP envelope into a Graph `sendMail` request.
//!
//! Pure: no I/O, no clock, no configuration. [`crate::delivery`] calls [`convert`] on the
//! spooled bytes before handing the request to the Graph client, so the same bytes always give
//! the same request (or the same permanent [`ConvertError`]). MIME parsing is mail-parser's; this
//! module decides what Graph gets: subject, body ([`body`]), sender and envelope-exact recipients
//! ([`address`]) and file attachments ([`attachment`]).

mod address;
mod attachment;
mod body;
#[cfg(test)]
mod tests;

use mail_parser::MessageParser;

use crate::graph::model::{Message, SendMailRequest};

/// A message ready for Graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Converted {
    /// The mailbox to send as (`/users/{sender}/sendMail`): the From address, else the
    /// SMTP reverse-path.
    pub sender: String,
    pub request: SendMailRequest,
    /// The Message-ID header without angle brackets, for logs and message trace.
    pub message_id: Option<String>,
}

/// Why a message cannot be converted. Every variant is permanent: the bytes are spooled as
/// received, so retrying can never succeed.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error(
        "the message data has no RFC 5322 header section and cannot be parsed as mail; \
         the sending application must submit a complete message (headers, blank line, body)"
    )]
    Unparseable,
    #[error(
        "the message has no usable From header and the SMTP reverse-path is empty (MAIL FROM:<>), \
         so there is no mailbox to send as; add a From header or use a non-empty MAIL FROM"
    )]
    NoSender,
    #[error(
        "the SMTP envelope has no recipients (no RCPT TO was accepted), so Graph has nobody to \
         deliver to; the SMTP session must name at least one recipient"
    )]
    NoRecipients,
}

impl ConvertError {
    /// Always `false`: conversion depends only on the stored bytes and envelope.
    pub fn is_retryable(&self) -> bool {
        match self {
            ConvertError::Unparseable | ConvertError::NoSender | ConvertError::NoRecipients => {
                false
            }
        }
    }
}

/// Converts `raw` (the message as received after DATA) with its envelope into a Graph
/// `sendMail` request.
///
/// `mail_from` is the reverse-path (`""` for `<>`); `rcpt_to` are the envelope recipients,
/// already de-duplicated case-insensitively. Recipients in the result are exactly `rcpt_to`:
/// header To/Cc keep their display names but are limited to the envelope, and envelope-only
/// recipients become Bcc.
///
/// # Errors
///
/// [`ConvertError`] when the bytes are not a message, when there is neither a From address nor
/// a reverse-path, or when the envelope is empty.
pub fn convert(raw: &[u8], mail_from: &str, rcpt_to: &[String]) -> Result<Converted, ConvertError> {
    if rcpt_to.is_empty() {
        return Err(ConvertError::NoRecipients);
    }
    // mail-parser accepts almost any bytes as a body-only message; without a single header
    // field there is nothing to tell mail from line noise.
    let parsed = MessageParser::default()
        .parse(raw)
        .filter(|parsed| !parsed.root_part().headers().is_empty())
        .ok_or(ConvertError::Unparseable)?;

    let from = address::from_header(&parsed);
    let sender = match &from {
        Some(from) => from.email_address.address.clone(),
        None if !mail_from.trim().is_empty() => mail_from.trim().to_owned(),
        None => return Err(ConvertError::NoSender),
    };
    let recipients = address::envelope_recipients(&parsed, rcpt_to);
    let body = body::select(&parsed);
    let attachments = attachment::collect(&parsed, body.part_id);

    Ok(Converted {
        sender,
        request: SendMailRequest {
            message: Message {
                subject: parsed.subject().unwrap_or_default().to_owned(),
                body: body.item,
                from,
                to_recipients: recipients.to,
                cc_recipients: recipients.cc,
                bcc_recipients: recipients.bcc,
                attachments,
            },
            save_to_sent_items: None,
        },
        message_id: parsed.message_id().map(str::to_owned),
    })
}
