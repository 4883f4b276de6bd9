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

    /// `250` to HELO.
    pub fn helo(hostname: &str) -> Self {
        Self {
            code: 250,
            enhanced: None,
            text: format!("{hostname} Hello").into(),
        }
    }

    /// The multi-line `250` to EHLO listing the extensions the relay really supports.
    pub fn write_ehlo(out: &mut Vec<u8>, hostname: &str, max_message_size: u64) {
        let _ = write!(
            VecWriter(out),
            "250-{hostname} Hello\r\n250-PIPELINING\r\n250-SIZE {max_message_size}\r\n\
             250-8BITMIME\r\n250-CHUNKING\r\n250 ENHANCEDSTATUSCODES\r\n"
        );
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

    /// `250` to a BDAT chunk that is not the last.
    pub fn chunk_received(size: usize) -> Self {
        Self {
            code: 250,
            enhanced: Some((2, 0, 0)),
            text: format!("{size} bytes received").into(),
        }
    }

    // === Refusals ===

    pub const COMMAND_UNRECOGNIZED: Reply = reply(500, (5, 5, 1), "Command unrecognized");
    pub const LINE_TOO_LONG: Reply = reply(500, (5, 5, 2), "Line too long");
    pub const BAD_SENDER_ADDRESS: Reply = reply(501, (5, 1, 7), "Bad sender address syntax");
    pub const BAD_RECIPIENT_ADDRESS: Reply = reply(501, (5, 1, 3), "Bad recipient address syntax");
    pub const EMPTY_RECIPIENT: Reply = reply(501, (5, 1, 3), "A recipient address is required");
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

    /// The disk is full or the spool is over `queue.max_size`: the client should try later.
    pub const SPOOL_FULL: Reply = reply(452, (4, 3, 1), "Queue full, try again later");

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
        Reply::write_ehlo(&mut out, "relay.local", 1000);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<_> = text.split_terminator("\r\n").collect();
        assert_eq!(lines.first(), Some(&"250-relay.local Hello"));
        assert!(lines.contains(&"250-SIZE 1000"));
        assert!(
            lines[..lines.len() - 1]
                .iter()
                .all(|l| l.starts_with("250-"))
        );
        assert!(lines.last().unwrap().starts_with("250 "));
    }
}
