//! Every SMTP reply the relay sends, typed in one place (RFC 5321 codes, RFC 3463 enhanced codes).
//! Client-facing text stays short and generic; details go to the logs.

use std::borrow::Cow;
use std::fmt::Write as _;

/// One SMTP reply: basic code, optional enhanced status code, text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    enhanced: Option<(u8, u8, u8)>,
    text: Cow<'static, str>,
}

const fn reply(code: u16, enhanced: (u8, u8, u8), text: &'static str) -> Reply {
    Reply {
        code,
        enhanced: Some(enhanced),
        text: Cow::Borrowed(text),
    }
}

impl Reply {
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Appends the reply, CRLF-terminated, to an output buffer.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut line = String::with_capacity(16 + self.text.len());
        let _ = write!(line, "{}", self.code);
        if let Some((class, subject, detail)) = self.enhanced {
            let _ = write!(line, " {class}.{subject}.{detail}");
        }
        let _ = write!(line, " {}\r\n", self.text);
        out.extend_from_slice(line.as_bytes());
    }

    // === Connection ===

    /// `220`: the greeting (no enhanced code before EHLO, RFC 2034).
    pub fn greeting(hostname: &str) -> Self {
        Self {
            code: 220,
            enhanced: None,
            text: format!("{hostname} ESMTP graph-relay ready").into(),
        }
    }
    pub const CLOSING: Reply = reply(221, (2, 0, 0), "Bye");
    pub const SHUTTING_DOWN: Reply =
        reply(421, (4, 3, 0), "Service shutting down, try again later");
    pub const IDLE_TIMEOUT: Reply = reply(421, (4, 4, 2), "Idle too long, closing connection");
    pub const DATA_TIMEOUT: Reply =
        reply(421, (4, 4, 2), "Data transfer too slow, closing connection");
    /// A client outside the listener's `allowed_networks` (RFC 5321 §3.1: 554 instead of 220).
    pub const NETWORK_REFUSED: Reply = reply(
        554,
        (5, 7, 1),
        "Connections from your address are not accepted",
    );
    pub const TOO_MANY_CONNECTIONS: Reply =
        reply(421, (4, 7, 0), "Too many connections, try again later");
    pub const TOO_MANY_MESSAGES: Reply = reply(
        421,
        (4, 7, 0),
        "Too many messages on one connection, reconnect to go on",
    );
    pub const TOO_MANY_ERRORS: Reply = reply(421, (4, 7, 0), "Too many errors, closing connection");

    /// `250` to HELO.
    pub fn helo(hostname: &str) -> Self {
        Self {
            code: 250,
            enhanced: None,
            text: format!("{hostname} Hello").into(),
        }
    }

    /// The multi-line `250` to EHLO listing the extensions the relay really supports; STARTTLS
    /// and AUTH only where this session may use them.
    pub fn write_ehlo(out: &mut Vec<u8>, hostname: &str, max_message_size: u64, offer: Offer) {
        let mut w = VecWriter(out);
        let _ = write!(
            w,
            "250-{hostname} Hello\r\n250-PIPELINING\r\n250-SIZE {max_message_size}\r\n\
             250-8BITMIME\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n"
        );
        if offer.starttls {
            let _ = write!(w, "250-STARTTLS\r\n");
        }
        if offer.auth {
            let _ = write!(w, "250-AUTH PLAIN LOGIN\r\n");
        }
        let _ = write!(w, "250 ENHANCEDSTATUSCODES\r\n");
    }

    // === STARTTLS and AUTH ===

    pub const READY_TO_START_TLS: Reply = reply(220, (2, 0, 0), "Ready to start TLS");
    pub const TLS_ALREADY_ACTIVE: Reply = reply(503, (5, 5, 1), "TLS already active");
    pub const STARTTLS_FIRST: Reply = reply(530, (5, 7, 0), "Must issue a STARTTLS command first");
    pub const AUTH_REQUIRED: Reply = reply(530, (5, 7, 0), "Authentication required");
    pub const AUTH_SUCCEEDED: Reply = reply(235, (2, 7, 0), "Authentication succeeded");
    pub const AUTH_FAILED: Reply = reply(535, (5, 7, 8), "Authentication credentials invalid");
    pub const AUTH_CANCELLED: Reply = reply(501, (5, 0, 0), "Authentication cancelled");
    pub const AUTH_BAD_BASE64: Reply = reply(501, (5, 5, 2), "Invalid base64 data");
    pub const AUTH_MECHANISM: Reply = reply(504, (5, 5, 4), "Unrecognized authentication type");
    pub const AUTH_ALREADY: Reply = reply(503, (5, 5, 1), "Already authenticated");
    pub const AUTH_IN_TRANSACTION: Reply =
        reply(503, (5, 5, 1), "AUTH not allowed during a mail transaction");
    /// RFC 4954: AUTH without TLS on a listener that does not allow plaintext passwords.
    pub const AUTH_NEEDS_TLS: Reply = reply(
        538,
        (5, 7, 11),
        "Encryption required for requested authentication mechanism",
    );
    pub const AUTH_LOCKED: Reply = reply(
        454,
        (4, 7, 0),
        "Too many failed authentication attempts, try again later",
    );

    /// `334`: a SASL challenge, already base64 (empty for PLAIN's "send your response").
    pub fn challenge(base64: &'static str) -> Self {
        Self {
            code: 334,
            enhanced: None,
            text: Cow::Borrowed(base64),
        }
    }

    // === Transaction ===

    pub const OK: Reply = reply(250, (2, 0, 0), "OK");
    pub const RESET: Reply = reply(250, (2, 0, 0), "Reset");
    pub const SENDER_OK: Reply = reply(250, (2, 1, 0), "Sender OK");
    pub const RECIPIENT_OK: Reply = reply(250, (2, 1, 5), "Recipient OK");
    pub const RECIPIENT_DUPLICATE: Reply =
        reply(250, (2, 1, 5), "Recipient OK (duplicate ignored)");
    pub const VRFY_REFUSED: Reply = reply(
        252,
        (2, 5, 2),
        "Cannot VRFY user; send the message and it will be delivered",
    );
    pub const START_DATA: Reply = Reply {
        code: 354,
        enhanced: None,
        text: Cow::Borrowed("Start mail input; end with <CRLF>.<CRLF>"),
    };

    /// `250` after the message is durably spooled.
    pub fn queued(id: impl std::fmt::Display) -> Self {
        Self {
            code: 250,
            enhanced: Some((2, 0, 0)),
            text: format!("Queued as {id}").into(),
        }
    }

    /// `250` after Graph accepted the message (acknowledgement modes `synchronous`, `hybrid`).
    pub fn delivered(id: impl std::fmt::Display) -> Self {
        Self {
            code: 250,
            enhanced: Some((2, 0, 0)),
            text: format!("Delivered as {id}").into(),
        }
    }

    /// `250` to a BDAT chunk that is not the last.
    pub fn chunk_received(size: usize) -> Self {
        Self {
            code: 250,
            enhanced: Some((2, 0, 0)),
            text: format!("{size} bytes received").into(),
        }
    }

    // === Refusals ===

    /// Addresses Graph cannot take: no domain, a domain literal, a quoted local part.
    pub const RECIPIENT_UNUSABLE: Reply = reply(
        553,
        (5, 1, 3),
        "Address not deliverable through Microsoft Graph",
    );
    pub const RECIPIENT_DOMAIN_REFUSED: Reply =
        reply(550, (5, 7, 1), "Relaying to this domain is not allowed");
    pub const SENDER_REFUSED: Reply =
        reply(550, (5, 7, 1), "Sender address not allowed for this client");
    pub const FROM_REFUSED: Reply =
        reply(550, (5, 7, 1), "From address not allowed for this client");
    /// RFC 6531: a non-ASCII address in a transaction that did not ask for SMTPUTF8.
    pub const NEEDS_SMTPUTF8: Reply = reply(553, (5, 6, 7), "Non-ASCII address requires SMTPUTF8");
    pub const COMMAND_UNRECOGNIZED: Reply = reply(500, (5, 5, 1), "Command unrecognized");
    pub const LINE_TOO_LONG: Reply = reply(500, (5, 5, 2), "Line too long");
    pub const BAD_SENDER_ADDRESS: Reply = reply(501, (5, 1, 7), "Bad sender address syntax");
    pub const BAD_RECIPIENT_ADDRESS: Reply = reply(553, (5, 1, 3), "Bad recipient address syntax");
    pub const EMPTY_RECIPIENT: Reply = reply(553, (5, 1, 3), "A recipient address is required");
    pub const NOT_IMPLEMENTED: Reply = reply(502, (5, 5, 1), "Command not implemented");
    pub const HELLO_FIRST: Reply = reply(503, (5, 5, 1), "Send HELO or EHLO first");
    pub const NESTED_MAIL: Reply = reply(503, (5, 5, 1), "Sender already specified");
    pub const MAIL_FIRST: Reply = reply(503, (5, 5, 1), "Send MAIL FROM first");
    pub const RCPT_FIRST: Reply = reply(503, (5, 5, 1), "Send RCPT TO first");
    pub const TOO_MANY_RECIPIENTS: Reply = reply(452, (4, 5, 3), "Too many recipients");
    pub const MESSAGE_TOO_BIG: Reply = reply(552, (5, 3, 4), "Message too big for this relay");
    pub const LOCAL_ERROR: Reply = reply(
        451,
        (4, 3, 0),
        "Cannot queue the message now, try again later",
    );

    /// `synchronous`: Graph refused the message for now; it was not kept.
    pub const DELIVERY_DEFERRED: Reply =
        reply(451, (4, 4, 0), "Message not delivered now, try again later");
    /// `synchronous`: no answer from Graph in time; the message was not kept.
    pub const DELIVERY_TIMED_OUT: Reply = reply(
        451,
        (4, 4, 1),
        "No answer from the mail service in time, try again later",
    );
    /// `synchronous`, `hybrid`: Graph refused the message for good.
    pub const DELIVERY_REFUSED: Reply =
        reply(554, (5, 0, 0), "Message refused by the mail service");

    /// The disk is full or the spool is over `queue.max_size`: the client should try later.
    pub const SPOOL_FULL: Reply = reply(452, (4, 3, 1), "Queue full, try again later");

    /// A refusal the converter decided at the end of DATA (no mailbox to send as, data without
    /// headers): its code, enhanced code and text.
    pub fn refused_at_data(refusal: &crate::convert::DataRefusal) -> Self {
        let mut digits = refusal
            .enhanced
            .split('.')
            .map(|d| d.parse::<u8>().unwrap_or(0));
        let mut next = || digits.next().unwrap_or(0);
        Self {
            code: refusal.code,
            enhanced: Some((next(), next(), next())),
            text: refusal.text.clone().into(),
        }
    }

    /// `501` for a syntax error, naming the expected syntax.
    pub fn syntax(expected: &str) -> Self {
        Self {
            code: 501,
            enhanced: Some((5, 5, 4)),
            text: format!("Syntax: {expected}").into(),
        }
    }

    /// `555`: a MAIL or RCPT parameter the relay does not support.
    pub fn unsupported_parameter(param: &str) -> Self {
        Self {
            code: 555,
            enhanced: Some((5, 5, 4)),
            text: format!("Parameter {param} not supported").into(),
        }
    }
}

/// The extensions a session may use right now, beyond those every session has.
#[derive(Debug, Clone, Copy, Default)]
pub struct Offer {
    pub starttls: bool,
    pub auth: bool,
}

struct VecWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for VecWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_render_with_enhanced_codes_and_crlf() {
        let cases = [
            (
                Reply::greeting("relay.local"),
                "220 relay.local ESMTP graph-relay ready\r\n",
            ),
            (Reply::queued("01J0"), "250 2.0.0 Queued as 01J0\r\n"),
            (Reply::delivered("01J0"), "250 2.0.0 Delivered as 01J0\r\n"),
            (
                Reply::DELIVERY_REFUSED,
                "554 5.0.0 Message refused by the mail service\r\n",
            ),
            (
                Reply::MESSAGE_TOO_BIG,
                "552 5.3.4 Message too big for this relay\r\n",
            ),
            (
                Reply::START_DATA,
                "354 Start mail input; end with <CRLF>.<CRLF>\r\n",
            ),
        ];
        for (reply, expected) in cases {
            let mut out = Vec::new();
            reply.write_to(&mut out);
            assert_eq!(String::from_utf8(out).unwrap(), expected);
        }
    }

    #[test]
    fn ehlo_lists_each_extension_and_ends_with_a_space_line() {
        let mut out = Vec::new();
        Reply::write_ehlo(
            &mut out,
            "relay.local",
            1000,
            Offer {
                starttls: true,
                auth: false,
            },
        );
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<_> = text.split_terminator("\r\n").collect();
        assert_eq!(lines.first(), Some(&"250-relay.local Hello"));
        for extension in ["SIZE 1000", "8BITMIME", "SMTPUTF8", "CHUNKING", "STARTTLS"] {
            assert!(
                lines.contains(&format!("250-{extension}").as_str()),
                "{extension}"
            );
        }
        assert!(!text.contains("AUTH"));
        assert!(
            lines[..lines.len() - 1]
                .iter()
                .all(|l| l.starts_with("250-"))
        );
        assert!(lines.last().unwrap().starts_with("250 "));
    }
}
