//! Conversion of a raw MIME message and its SMTP envelope into what Graph receives: a JSON
//! `sendMail` request or the whole (repaired) message for MIME `sendMail`.
//!
//! Pure: no I/O, no clock, no configuration file. [`crate::delivery`] calls [`convert`] on the
//! spooled bytes with the [`Options`] built from `[graph]`, so the same bytes always give the same
//! request (or the same permanent [`ConvertError`]). MIME parsing is mail-parser's; this module
//! decides what Graph gets: subject, body ([`body`]), sender and envelope-exact recipients
//! ([`address`]), attachments ([`attachment`]), the other headers Graph can carry ([`headers`]),
//! and for MIME the rewritten message ([`mime`], [`repair`]). [`check_at_data`] is the part the
//! SMTP session runs before it answers DATA.

mod address;
mod attachment;
mod body;
mod headers;
pub use address::is_plain_address;
pub use headers::MAX_X_HEADERS;
#[cfg(test)]
mod fidelity_tests;
mod mime;
#[cfg(test)]
mod oracle_tests;
#[cfg(test)]
mod proptests;
mod repair;
mod stream;
pub use stream::{Content, PartSource};
#[cfg(test)]
mod tests;

use std::borrow::Cow;

use base64::{Engine, engine::general_purpose::STANDARD};
use mail_parser::{MessageParser, MimeHeaders};

use crate::graph::model::{Message, Recipient, SendMailRequest};

/// `graph.format`: how a message is handed to Graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Converted to Graph's `message` resource (`application/json`).
    #[default]
    Json,
    /// The whole message, base64, as MIME `sendMail` (`text/plain`).
    Mime,
}

/// `graph.sender`: which mailbox a message is sent as.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SenderMode {
    /// The From header's address, else the reverse-path.
    #[default]
    Header,
    /// The SMTP reverse-path (MAIL FROM), else the From header's address.
    Envelope,
    /// Always this mailbox; the original From is kept as Reply-To.
    Fixed(String),
}

/// `graph.unparseable`: what becomes of data without a header section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unparseable {
    /// Wrapped in a minimal MIME message (From, To/Bcc, Date, Message-ID added) and sent.
    #[default]
    Mime,
    /// Refused at DATA with `554 5.6.0`.
    Refuse,
}

/// What the conversion needs from `[graph]`.
#[derive(Debug, Clone)]
pub struct Options {
    pub format: Format,
    /// Graph's `saveToSentItems`; only sent (as `false`) when not the default `true`.
    pub save_to_sent_items: bool,
    pub sender: SenderMode,
    /// `X-` header names to carry, in this order; empty = the message's first five.
    pub x_headers: Vec<String>,
    pub unparseable: Unparseable,
    /// Host name for the added `Received:` header and Message-IDs.
    pub hostname: String,
}

impl Default for Options {
    /// `[graph]`'s defaults.
    fn default() -> Self {
        Self {
            format: Format::Json,
            save_to_sent_items: true,
            sender: SenderMode::Header,
            x_headers: Vec::new(),
            unparseable: Unparseable::Mime,
            hostname: "localhost".to_owned(),
        }
    }
}

/// Facts about the spooled message that are not in its bytes: what the repairs use instead
/// of a clock, so a retry produces the same Date and Message-ID.
#[derive(Debug, Clone, Copy)]
pub struct Arrival<'a> {
    /// The spool's queue id.
    pub queue_id: &'a str,
    /// When the message was received, seconds since the Unix epoch.
    pub received_at: i64,
}

/// What Graph gets.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// A JSON `sendMail` request (boxed: it is much larger than the MIME variant).
    Json(Box<SendMailRequest>),
    /// The repaired RFC 5322 message, not yet base64 encoded.
    Mime(Vec<u8>),
}

/// A message ready for Graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Converted {
    /// The mailbox to send as (`/users/{sender}/sendMail`).
    pub sender: String,
    pub outgoing: Outgoing,
    /// The Message-ID header without angle brackets, for logs and message trace.
    pub message_id: Option<String>,
    /// Why the message went as MIME although `graph.format = "json"`, for the log.
    pub forced_mime: Option<&'static str>,
}

impl Converted {
    /// The HTTP body and its media type for `sendMail` or a draft.
    pub fn http_body(&self) -> (&'static str, Vec<u8>) {
        match &self.outgoing {
            Outgoing::Json(request) => (
                "application/json",
                serde_json::to_vec(request).expect("sendMail request always serialises"),
            ),
            Outgoing::Mime(mime) => ("text/plain", STANDARD.encode(mime).into_bytes()),
        }
    }
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
        "the message is signed or encrypted and too large for one Graph request; the upload \
         path would have to convert it and break the signature, so it cannot be sent"
    )]
    SignedTooLarge,
    #[error(
        "the SMTP envelope has no recipients (no RCPT TO was accepted), so Graph has nobody to \
         deliver to; the SMTP session must name at least one recipient"
    )]
    NoRecipients,
    #[error(
        "the address {0:?} cannot stand in a MIME header (a quoted local part, a special or a \
         control character), and MIME sendMail takes its recipients and sender from the headers; \
         the client must use plain local@domain addresses (the SMTP door refuses other envelope \
         addresses at MAIL FROM and RCPT TO)"
    )]
    UnsafeAddress(String),
}

impl ConvertError {
    /// Always `false`: conversion depends only on the stored bytes and envelope.
    pub fn is_retryable(&self) -> bool {
        match self {
            ConvertError::Unparseable
            | ConvertError::NoSender
            | ConvertError::NoRecipients
            | ConvertError::SignedTooLarge
            | ConvertError::UnsafeAddress(_) => false,
        }
    }
}

/// An SMTP refusal at end of DATA: the session writes `{code} {enhanced} {text}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataRefusal {
    pub code: u16,
    pub enhanced: &'static str,
    pub text: String,
}

/// The checks that must answer DATA rather than fail later in the queue: no mailbox to send as
/// (`550 5.7.1`), and data without headers when `graph.unparseable = "refuse"` (`554 5.6.0`).
/// Passed, they give the mailbox the message will be sent as, for the spool to keep.
///
/// Reads only the header section of `raw` (the spooled message, or at least its beginning), so
/// the session can call it without loading a large body.
///
/// # Errors
/// The refusal the session answers with.
pub fn check_at_data(
    raw: &[u8],
    mail_from: &str,
    options: &Options,
) -> Result<String, DataRefusal> {
    let head = repair::header_section(raw);
    let header_from = match parse(head) {
        Some(parsed) => address::from_header(&parsed),
        None if options.unparseable == Unparseable::Refuse => {
            return Err(DataRefusal {
                code: 554,
                enhanced: "5.6.0",
                text: "message has no header section and cannot be parsed as mail (graph.unparseable = \"refuse\")".into(),
            });
        }
        None => None,
    };
    pick_sender(header_from.as_ref(), mail_from, options).map_err(|_| no_from_refusal())
}

fn no_from_refusal() -> DataRefusal {
    DataRefusal {
        code: 550,
        enhanced: "5.7.1",
        text: "no From header with an address and an empty MAIL FROM:<>: no mailbox to send as; add a From header".into(),
    }
}

/// mail-parser accepts almost any bytes as a body-only message; without a single header field
/// there is nothing to tell mail from line noise.
///
/// mail-parser 0.11 can panic on some malformed multiparts ("Invalid part ID, could not find
/// multipart", found by the fuzz target): such a message counts as unparseable rather than
/// taking the delivery worker down.
fn parse(raw: &[u8]) -> Option<mail_parser::Message<'_>> {
    std::panic::catch_unwind(|| MessageParser::default().parse(raw))
        .ok()
        .flatten()
        .filter(|parsed| !parsed.root_part().headers().is_empty())
}

/// The mailbox a message is sent as, from its header section only: the scheduler needs it to
/// find the message's lane before the full conversion of its attempt.
///
/// # Errors
/// As [`convert`] for the sender: no header section, or no usable sender.
pub fn sender(raw: &[u8], mail_from: &str, options: &Options) -> Result<String, ConvertError> {
    let parsed = std::panic::catch_unwind(|| MessageParser::default().parse_headers(raw))
        .ok()
        .flatten()
        .ok_or(ConvertError::Unparseable)?;
    Ok(Sending::new(&parsed, mail_from, options)?.sender)
}

/// Converts `raw` (the message as received after DATA) with its envelope.
///
/// `mail_from` is the reverse-path (`""` for `<>`); `rcpt_to` are the envelope recipients,
/// already de-duplicated case-insensitively. Recipients in the result are exactly `rcpt_to`:
/// header To/Cc keep their display names but are limited to the envelope, and envelope-only
/// recipients become Bcc (in MIME: a `Bcc:` header).
///
/// # Errors
///
/// [`ConvertError`] when the bytes are not a message (and `graph.unparseable = "refuse"`), when
/// there is no mailbox to send as, or when the envelope is empty.
pub fn convert(
    raw: &[u8],
    mail_from: &str,
    rcpt_to: &[String],
    arrival: Arrival<'_>,
    options: &Options,
) -> Result<Converted, ConvertError> {
    if rcpt_to.is_empty() {
        return Err(ConvertError::NoRecipients);
    }
    let raw: Cow<'_, [u8]> = repair::normalise_line_ends(raw);
    let Some(parsed) = parse(&raw) else {
        return match options.unparseable {
            Unparseable::Refuse => Err(ConvertError::Unparseable),
            Unparseable::Mime => {
                let sender = pick_sender(None, mail_from, options)?;
                header_safe(&sender, rcpt_to)?;
                let mime = mime::wrap_unparseable(&raw, &sender, rcpt_to, arrival, options);
                Ok(Converted {
                    sender,
                    outgoing: Outgoing::Mime(mime),
                    message_id: None,
                    forced_mime: Some("the data cannot be parsed as mail"),
                })
            }
        };
    };

    let sending = Sending::new(&parsed, mail_from, options)?;
    let (sender, rewritten_from) = (sending.sender.clone(), sending.rewritten_from());
    let message_id = parsed.message_id().map(str::to_owned);

    let forced_mime = is_signed_or_encrypted(&parsed)
        .then_some("signed or encrypted: converting would break the signature");
    if options.format == Format::Mime || forced_mime.is_some() {
        header_safe(&sender, rcpt_to)?;
        let mime = mime::rewrite(
            &parsed,
            &mime::Rewrite {
                sender: &sender,
                rewritten_from,
                rcpt_to,
                arrival,
                options,
                transcode: forced_mime.is_none(),
            },
        );
        return Ok(Converted {
            sender,
            outgoing: Outgoing::Mime(mime),
            message_id,
            forced_mime,
        });
    }

    let body = body::select(&parsed);
    let attachments = attachment::collect(&parsed, body.part_id);
    let request = json_request(&parsed, &sending, rcpt_to, options, body.item, attachments);
    Ok(Converted {
        sender,
        outgoing: Outgoing::Json(Box::new(request)),
        message_id,
        forced_mime: None,
    })
}

/// MIME carries the sender and recipients in headers the relay writes: each must be a plain
/// address, or it could add an address or a header there.
fn header_safe(sender: &str, rcpt_to: &[String]) -> Result<(), ConvertError> {
    match std::iter::once(sender)
        .chain(rcpt_to.iter().map(String::as_str))
        .find(|address| !is_plain_address(address))
    {
        Some(address) => Err(ConvertError::UnsafeAddress(address.to_owned())),
        None => Ok(()),
    }
}

/// Who a message is sent as, and its From header.
struct Sending {
    sender: String,
    header_from: Option<Recipient>,
}

impl Sending {
    fn new(
        parsed: &mail_parser::Message<'_>,
        mail_from: &str,
        options: &Options,
    ) -> Result<Self, ConvertError> {
        let header_from = address::from_header(parsed);
        let sender = pick_sender(header_from.as_ref(), mail_from, options)?;
        Ok(Self {
            sender,
            header_from,
        })
    }

    /// The original From when the message goes out as another mailbox: it survives as Reply-To.
    fn rewritten_from(&self) -> Option<&Recipient> {
        self.header_from.as_ref().filter(|from| {
            !from
                .email_address
                .address
                .eq_ignore_ascii_case(&self.sender)
        })
    }
}

/// Everything of the JSON request except choosing the body and attachments.
fn json_request(
    parsed: &mail_parser::Message<'_>,
    sending: &Sending,
    rcpt_to: &[String],
    options: &Options,
    body: crate::graph::model::ItemBody,
    attachments: Vec<crate::graph::model::FileAttachment>,
) -> SendMailRequest {
    let recipients = address::envelope_recipients(parsed, rcpt_to);
    let extras = headers::extras(parsed, &options.x_headers);
    let sender = sending.sender.as_str();
    let (from, reply_to) = match sending.rewritten_from() {
        Some(original) if extras.reply_to.is_empty() => (
            Some(Recipient::new(None, sender.to_owned())),
            vec![repair::clean_display_name(original.clone())],
        ),
        Some(_) => (
            Some(Recipient::new(None, sender.to_owned())),
            extras.reply_to,
        ),
        None => (
            sending.header_from.clone().map(repair::clean_display_name),
            extras.reply_to,
        ),
    };
    SendMailRequest {
        message: Message {
            subject: parsed.subject().unwrap_or_default().to_owned(),
            body,
            from,
            to_recipients: recipients.to,
            cc_recipients: recipients.cc,
            bcc_recipients: recipients.bcc,
            reply_to,
            importance: extras.importance,
            is_delivery_receipt_requested: extras.delivery_receipt,
            is_read_receipt_requested: extras.read_receipt,
            internet_message_headers: extras.x_headers,
            attachments,
        },
        save_to_sent_items: (!options.save_to_sent_items).then_some(false),
    }
}

/// Attachments of at least this many decoded bytes go through an upload session; Graph takes
/// smaller ones in one request ("3 MB", read as decimal so base64 of a smaller one fits 4 MiB).
pub const UPLOAD_SESSION_MIN: usize = 3_000_000;
/// How large the draft request may grow with small attachments before the rest are posted one
/// by one: 4 MiB less room for JSON framing.
const DRAFT_BUDGET: usize = 4 * 1024 * 1024 - 64 * 1024;

/// A message for the draft path (`graph.large_messages = "upload"`).
#[derive(Debug)]
pub struct UploadPlan {
    pub sender: String,
    /// The draft: the message with the small attachments that fit one request.
    pub draft: Message,
    /// Small attachments that did not fit the draft, each posted in its own request.
    pub separate: Vec<crate::graph::model::FileAttachment>,
    /// Attachments of [`UPLOAD_SESSION_MIN`] bytes or more, for upload sessions.
    pub large: Vec<LargeAttachment>,
    pub message_id: Option<String>,
}

/// One attachment for an upload session: its description, and where its content is in the
/// message, read from the spool while it is uploaded.
#[derive(Debug)]
pub struct LargeAttachment {
    pub name: String,
    pub content_type: String,
    pub content_id: Option<String>,
    pub is_inline: bool,
    /// Decoded size in bytes, as the upload session needs it up front.
    pub size: u64,
    pub source: PartSource,
}

/// Converts for the draft path: the JSON message, whatever `graph.format` says (a MIME draft
/// is one request too), with its attachments split so no request exceeds 4 MiB.
///
/// # Errors
/// As [`convert`]; and [`ConvertError::SignedTooLarge`] for a signed or encrypted message,
/// which only MIME keeps intact.
pub fn plan_upload(
    raw: &[u8],
    mail_from: &str,
    rcpt_to: &[String],
    options: &Options,
) -> Result<UploadPlan, ConvertError> {
    if rcpt_to.is_empty() {
        return Err(ConvertError::NoRecipients);
    }
    let raw: Cow<'_, [u8]> = repair::normalise_line_ends(raw);
    let normalised = matches!(raw, Cow::Owned(_));
    let parsed = parse(&raw).ok_or(ConvertError::Unparseable)?;
    if is_signed_or_encrypted(&parsed) {
        return Err(ConvertError::SignedTooLarge);
    }
    let sending = Sending::new(&parsed, mail_from, options)?;
    let body = body::select(&parsed);
    let parts = attachment::parts(&parsed, body.part_id);
    let request = json_request(&parsed, &sending, rcpt_to, options, body.item, Vec::new());
    let mut draft = request.message;
    let mut size = serde_json::to_vec(&draft).map_or(0, |v| v.len());
    let (mut separate, mut large) = (Vec::new(), Vec::new());
    for part in parts {
        if part.bytes.len() >= UPLOAD_SESSION_MIN {
            let (start, end, encoding) = part.source;
            large.push(LargeAttachment {
                name: part.file.name,
                content_type: part.file.content_type,
                content_id: part.file.content_id,
                is_inline: part.file.is_inline,
                size: part.bytes.len() as u64,
                source: PartSource {
                    start: start.into(),
                    end: end.into(),
                    normalised,
                    encoding,
                },
            });
            continue;
        }
        let file = part.encoded();
        let grows = file.content_bytes.len() + file.name.len() + 256;
        if size + grows <= DRAFT_BUDGET {
            size += grows;
            draft.attachments.push(file);
        } else {
            separate.push(file);
        }
    }
    Ok(UploadPlan {
        sender: sending.sender,
        draft,
        separate,
        large,
        message_id: parsed.message_id().map(str::to_owned),
    })
}

/// The mailbox to send as, by `graph.sender`.
fn pick_sender(
    header_from: Option<&Recipient>,
    mail_from: &str,
    options: &Options,
) -> Result<String, ConvertError> {
    let envelope = Some(mail_from.trim())
        .filter(|m| !m.is_empty())
        .map(str::to_owned);
    let header = || header_from.map(|from| from.email_address.address.clone());
    let chosen = match &options.sender {
        SenderMode::Header => header().or(envelope),
        SenderMode::Envelope => envelope.or_else(header),
        SenderMode::Fixed(mailbox) => Some(mailbox.clone()),
    };
    chosen.ok_or(ConvertError::NoSender)
}

/// `multipart/signed` or `application/pkcs7-mime` at the top: S/MIME or PGP/MIME.
fn is_signed_or_encrypted(parsed: &mail_parser::Message<'_>) -> bool {
    parsed.root_part().content_type().is_some_and(|ct| {
        let subtype = ct.subtype().unwrap_or_default();
        (ct.ctype().eq_ignore_ascii_case("multipart")
            && (subtype.eq_ignore_ascii_case("signed")
                || subtype.eq_ignore_ascii_case("encrypted")))
            || (ct.ctype().eq_ignore_ascii_case("application")
                && (subtype.eq_ignore_ascii_case("pkcs7-mime")
                    || subtype.eq_ignore_ascii_case("x-pkcs7-mime")))
    })
}
