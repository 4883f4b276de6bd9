//! Delivery status notifications (RFC 3464). When a message moves to `failed/` and
//! `queue.dsn_from` is set, its envelope sender gets a `multipart/report`: a human part, the
//! `message/delivery-status` part and the original headers. The notice is spooled as a new entry
//! with the null reverse-path (so a notice never gets a notice) and delivered through Graph from
//! `queue.dsn_from` like any message. Building is pure; [`Reporter::spool`] does the I/O.

use std::fmt::Write as _;

use mail_builder::MessageBuilder;
use mail_builder::headers::address::Address;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::date::Date;
use mail_builder::headers::raw::Raw;
use mail_builder::mime::{BodyPart, MimePart};

use super::spool::{EntryMeta, Envelope, Spool, SpoolError};

/// Most bytes of the original header block returned in the notice.
const MAX_HEADERS: usize = 64 * 1024;

/// Why a message failed, as its notice's status code says (RFC 3463).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Graph refused it.
    Refused,
    /// Too large for one request.
    TooLarge,
    /// Not delivered within `queue.max_age`.
    Expired,
}

impl Cause {
    fn status(self) -> &'static str {
        match self {
            Self::Refused => "5.0.0",
            Self::TooLarge => "5.3.4",
            Self::Expired => "5.4.7",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DsnError {
    #[error("{0:?} cannot be used in a notice's address header")]
    Address(String),
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

impl DsnError {
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Address(_) => false,
            Self::Spool(err) => err.is_retryable(),
        }
    }
}

/// Writes and spools notices for failed messages.
#[derive(Debug, Clone)]
pub struct Reporter {
    /// `queue.dsn_from`: the mailbox the notices are sent from.
    from: String,
    /// `smtp.hostname`, named as the Reporting-MTA.
    hostname: String,
}

impl Reporter {
    pub fn new(from: &str, hostname: &str) -> Self {
        Self {
            from: from.to_string(),
            hostname: hostname.to_string(),
        }
    }

    /// Whether a failed message gets a notice: never for the null reverse-path, which every
    /// notice itself has.
    pub fn wants(meta: &EntryMeta) -> bool {
        !meta.envelope.mail_from.is_empty()
    }

    /// The notice for `meta`, whose message was `original`, written at `now_ms`.
    ///
    /// # Errors
    /// The sender or `queue.dsn_from` is not a plain address (it would break the headers).
    pub fn build(
        &self,
        meta: &EntryMeta,
        cause: Cause,
        original: &[u8],
        now_ms: u64,
    ) -> Result<Vec<u8>, DsnError> {
        let from = plain_address(&self.from)?;
        let to = plain_address(&meta.envelope.mail_from)?;
        let reason = one_line(meta.last_error.as_deref().unwrap_or("not delivered"));
        let recipients: Vec<String> = meta.envelope.rcpt_to.iter().map(|r| one_line(r)).collect();

        let mut human =
            String::from("This is the mail relay. Your message could not be delivered to:\r\n\r\n");
        for rcpt in &recipients {
            let _ = write!(human, "  {rcpt}\r\n");
        }
        let _ = write!(
            human,
            "\r\nReason: {reason}\r\n\r\nThe headers of your message are attached.\r\n"
        );

        let mut status = format!(
            "Reporting-MTA: dns; {}\r\nArrival-Date: {}\r\n",
            one_line(&self.hostname),
            Date::new((meta.envelope.received_at_ms / 1000) as i64).to_rfc822()
        );
        for rcpt in &recipients {
            let _ = write!(
                status,
                "\r\nOriginal-Recipient: rfc822; {rcpt}\r\nFinal-Recipient: rfc822; {rcpt}\r\n\
                 Action: failed\r\nStatus: {}\r\nDiagnostic-Code: x-graph; {reason}\r\n",
                cause.status()
            );
        }

        let headers = header_block(original);
        let report = MimePart::new(
            ContentType::new("multipart/report").attribute("report-type", "delivery-status"),
            BodyPart::Multipart(vec![
                MimePart::new(ContentType::new("text/plain"), human),
                leaf("message/delivery-status", status.into_bytes()),
                leaf("text/rfc822-headers", headers.to_vec()),
            ]),
        );
        let subject = format!("Undelivered mail: {}", original_subject(headers));
        let message = MessageBuilder::new()
            // Unique per failed message, and in the relay's own name rather than "localhost".
            .message_id(format!("dsn.{}@{}", meta.id, one_line(&self.hostname)))
            .from(Address::new_address(Some("Mail Delivery System"), from))
            .to(Address::new_address(None::<&str>, to))
            .subject(subject)
            .date(Date::new((now_ms / 1000) as i64))
            .header("Auto-Submitted", Raw::new("auto-replied"))
            .body(report);
        Ok(message
            .write_to_vec()
            .expect("writing to a Vec does not fail"))
    }

    /// Builds the notice and commits it to the spool; returns the new entry to enqueue.
    ///
    /// # Errors
    /// As [`Reporter::build`], or the spool cannot take it.
    pub fn spool(
        &self,
        spool: &Spool,
        meta: &EntryMeta,
        cause: Cause,
        original: &[u8],
        now_ms: u64,
    ) -> Result<EntryMeta, DsnError> {
        let notice = self.build(meta, cause, original, now_ms)?;
        let mut incoming = spool.receive();
        if let Err(err) = spool.append(&mut incoming, &notice) {
            spool.abort(incoming);
            return Err(err.into());
        }
        let envelope = Envelope {
            mail_from: String::new(),
            rcpt_to: vec![meta.envelope.mail_from.clone()],
            client: "graph-relay (delivery status notification)".into(),
            received_at_ms: now_ms,
            origin: None,
        };
        Ok(spool.commit(incoming, envelope)?)
    }
}

/// A part whose content is written as it is (ASCII or 8-bit text, never re-encoded: RFC 3464
/// readers parse these fields directly).
fn leaf(content_type: &'static str, contents: Vec<u8>) -> MimePart<'static> {
    let encoding = if contents.is_ascii() { "7bit" } else { "8bit" };
    MimePart::new(
        ContentType::new(content_type),
        BodyPart::Binary(contents.into()),
    )
    .header("Content-Transfer-Encoding", Raw::new(encoding))
}

/// Whether an address can go into a header as it is: `local@domain` without spaces, controls,
/// or characters that end or quote an address.
pub fn is_plain_address(address: &str) -> bool {
    let (local, domain) = address.split_once('@').unwrap_or_default();
    !local.is_empty()
        && !domain.is_empty()
        && !address
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || "<>()[],;:\"\\".contains(c))
}

fn plain_address(address: &str) -> Result<&str, DsnError> {
    if is_plain_address(address) {
        Ok(address)
    } else {
        Err(DsnError::Address(address.to_string()))
    }
}

/// A value on one line: controls (CR and LF among them) become spaces, so nothing read from Graph
/// or the message can start a field of its own.
fn one_line(value: &str) -> String {
    value
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The original message's header block (without the blank line), at most [`MAX_HEADERS`] bytes.
fn header_block(message: &[u8]) -> &[u8] {
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(message.len(), |at| at + 2);
    &message[..end.min(MAX_HEADERS)]
}

/// The original Subject, decoded, for the notice's subject.
fn original_subject(headers: &[u8]) -> String {
    mail_parser::MessageParser::new()
        .parse_headers(headers)
        .and_then(|message| message.subject().map(one_line))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
