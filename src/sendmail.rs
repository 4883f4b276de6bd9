//! The sendmail interface (`graph-relay sendmail …`, or the binary invoked as `sendmail`) for cron,
//! PHP's `mail()` and scripts: reads a message on standard input and hands it to the running
//! daemon over SMTP on `smtp.listen`. It never writes the spool itself (the spool belongs to the
//! service user); when the daemon cannot be reached it exits 75 (EX_TEMPFAIL) so callers retry.

use std::net::SocketAddr;
use std::time::Duration;

use lettre::address::{Address, Envelope};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

/// sysexits.h codes, which sendmail callers understand.
pub const EX_USAGE: u8 = 64;
pub const EX_DATAERR: u8 = 65;
pub const EX_UNAVAILABLE: u8 = 69;
pub const EX_TEMPFAIL: u8 = 75;

/// What the command line asked for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SendmailArgs {
    /// `-t`: recipients from the To, Cc and Bcc headers (Bcc is then removed).
    pub recipients_from_headers: bool,
    /// `-f ADDR` / `-r ADDR`: the envelope sender.
    pub sender: Option<String>,
    /// `-i` / `-oi`: a line with a single dot does not end the message.
    pub ignore_dots: bool,
    /// Recipients given as arguments (comma-separated lists allowed).
    pub recipients: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SendmailError {
    #[error("{0}")]
    Usage(String),
    #[error("sendmail: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Message(String),
    #[error(
        "cannot reach graph-relay at {addr}: {reason}; is the service running? \
         (the address is smtp.listen in the configuration)"
    )]
    Unreachable { addr: SocketAddr, reason: String },
    #[error("graph-relay at {addr} refused the message: {reply}")]
    Refused {
        addr: SocketAddr,
        reply: String,
        transient: bool,
    },
}

impl SendmailError {
    /// The sendmail exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => EX_USAGE,
            Self::Config(_) => crate::cli::EXIT_CONFIG,
            Self::Message(_) => EX_DATAERR,
            Self::Unreachable { .. } => EX_TEMPFAIL,
            Self::Refused {
                transient: true, ..
            } => EX_TEMPFAIL,
            Self::Refused {
                transient: false, ..
            } => EX_UNAVAILABLE,
        }
    }

    /// Whether trying again later can succeed.
    pub fn is_retryable(&self) -> bool {
        self.exit_code() == EX_TEMPFAIL
    }
}

/// Parses sendmail's traditional options. Options that only matter to a real MTA (`-oXXX`,
/// `-BXXX`, `-bm`, `-odX`, `-v`, `-F NAME`) are accepted and have no effect.
///
/// # Errors
/// An option this interface cannot honour (another mode such as `-bs` or `-bp`).
pub fn parse_args(args: &[String]) -> Result<SendmailArgs, SendmailError> {
    let mut parsed = SendmailArgs::default();
    let mut args = args.iter();
    let value = |flag: &str, inline: &str, rest: &mut std::slice::Iter<'_, String>| {
        if inline.is_empty() {
            rest.next()
                .cloned()
                .ok_or_else(|| SendmailError::Usage(format!("sendmail: {flag} needs a value")))
        } else {
            Ok(inline.to_string())
        }
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--" => {
                parsed
                    .recipients
                    .extend(args.by_ref().flat_map(|a| split_list(a)));
                break;
            }
            "-t" => parsed.recipients_from_headers = true,
            "-i" | "-oi" => parsed.ignore_dots = true,
            "-bm" | "-v" => {}
            flag if flag.starts_with("-f") || flag.starts_with("-r") => {
                parsed.sender = Some(value(&flag[..2], &flag[2..], &mut args)?);
            }
            flag if flag.starts_with("-F") => {
                value("-F", &flag[2..], &mut args)?;
            }
            flag if flag.starts_with("-o") || flag.starts_with("-B") => {
                if flag.len() == 2 {
                    args.next();
                }
            }
            flag if flag.starts_with('-') && flag.len() > 1 => {
                return Err(SendmailError::Usage(format!(
                    "sendmail: option {flag} is not supported by graph-relay's sendmail interface \
                     (supported: -t -i -oi -f -r -F; recipients as arguments)"
                )));
            }
            recipients => parsed.recipients.extend(split_list(recipients)),
        }
    }
    Ok(parsed)
}

fn split_list(list: &str) -> impl Iterator<Item = String> + '_ {
    list.split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(str::to_string)
}

/// Turns standard input into the message to send: stops at a lone `.` line unless `-i`, uses
/// CRLF line ends, and with `-t` collects the recipients and drops the Bcc header.
///
/// # Errors
/// No recipients at all.
pub fn prepare(args: &SendmailArgs, input: &[u8]) -> Result<(Vec<u8>, Vec<String>), SendmailError> {
    let mut message = Vec::with_capacity(input.len() + input.len() / 32);
    let mut in_headers = true;
    let mut in_bcc = false;
    let mut recipients = args.recipients.clone();
    for line in input.split_inclusive(|&b| b == b'\n') {
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if !args.ignore_dots && text == b"." {
            break;
        }
        if in_headers {
            if text.is_empty() {
                in_headers = false;
            } else if text[0] == b' ' || text[0] == b'\t' {
                // A folded continuation belongs to the header before it.
                if in_bcc {
                    if args.recipients_from_headers {
                        collect_addresses(text, &mut recipients);
                    }
                    continue;
                }
            } else {
                let name = text.split(|&b| b == b':').next().unwrap_or_default();
                in_bcc = name.eq_ignore_ascii_case(b"bcc");
                if args.recipients_from_headers
                    && [&b"to"[..], b"cc", b"bcc"]
                        .iter()
                        .any(|h| name.eq_ignore_ascii_case(h))
                {
                    collect_addresses(&text[name.len() + 1..], &mut recipients);
                }
                // Bcc recipients must not see each other: the header never leaves this machine.
                if in_bcc {
                    continue;
                }
            }
        }
        message.extend_from_slice(text);
        message.extend_from_slice(b"\r\n");
    }
    // The SMTP client adds CRLF.CRLF after the data: the message's own last line end is that CRLF.
    if message.ends_with(b"\r\n") {
        message.truncate(message.len() - 2);
    }
    recipients.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
    if recipients.is_empty() {
        return Err(SendmailError::Usage(
            "sendmail: no recipients; give them as arguments or use -t with To/Cc/Bcc headers"
                .into(),
        ));
    }
    Ok((message, recipients))
}

/// Addresses from a header value, through mail-parser (display names, groups, comments).
fn collect_addresses(value: &[u8], into: &mut Vec<String>) {
    let mut header = b"To:".to_vec();
    header.extend_from_slice(value);
    header.extend_from_slice(b"\r\n\r\n");
    if let Some(parsed) = mail_parser::MessageParser::default().parse(&header)
        && let Some(list) = parsed.to()
    {
        into.extend(list.iter().filter_map(|a| a.address()).map(str::to_string));
    }
}

/// The envelope sender when `-f` is not given: the From header, else the login name on this host.
fn default_sender(message: &[u8]) -> Option<String> {
    let parsed = mail_parser::MessageParser::default().parse_headers(message)?;
    parsed
        .from()
        .and_then(|from| from.first())
        .and_then(|addr| addr.address())
        .map(str::to_string)
}

/// Sends the prepared message to the daemon; returns the relay's reply (`Queued as …`).
///
/// # Errors
/// The daemon is unreachable or refused the message.
pub async fn submit(
    smtp_listen: SocketAddr,
    sender: Option<&str>,
    message: &[u8],
    recipients: &[String],
) -> Result<String, SendmailError> {
    let addr = crate::config::connectable(smtp_listen);
    let sender = match sender
        .map(str::to_string)
        .or_else(|| default_sender(message))
    {
        Some(sender) if !sender.is_empty() => Some(parse_address(&sender)?),
        _ => None,
    };
    let to = recipients
        .iter()
        .map(|r| parse_address(r))
        .collect::<Result<Vec<_>, _>>()?;
    let envelope = Envelope::new(sender, to)
        .map_err(|err| SendmailError::Message(format!("sendmail: {err}")))?;
    let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(addr.ip().to_string())
        .port(addr.port())
        .timeout(Some(Duration::from_secs(60)))
        .build();
    match transport.send_raw(&envelope, message).await {
        Ok(response) => Ok(response.message().collect::<Vec<_>>().join(" ")),
        Err(err) if err.is_transient() || err.is_permanent() => Err(SendmailError::Refused {
            addr,
            reply: crate::graph::token::error_chain(&err),
            transient: err.is_transient(),
        }),
        Err(err) => Err(SendmailError::Unreachable {
            addr,
            reason: crate::graph::token::error_chain(&err),
        }),
    }
}

fn parse_address(address: &str) -> Result<Address, SendmailError> {
    address
        .trim_matches(|c| c == '<' || c == '>')
        .parse()
        .map_err(|err| {
            SendmailError::Message(format!("sendmail: {address:?} is not an address: {err}"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn traditional_options_parse() {
        let cases: &[(&[&str], SendmailArgs)] = &[
            (
                &["-t", "-i"],
                SendmailArgs {
                    recipients_from_headers: true,
                    ignore_dots: true,
                    ..Default::default()
                },
            ),
            (
                &[
                    "-oi",
                    "-f",
                    "app@example.com",
                    "a@example.com,b@example.com",
                ],
                SendmailArgs {
                    ignore_dots: true,
                    sender: Some("app@example.com".into()),
                    recipients: vec!["a@example.com".into(), "b@example.com".into()],
                    ..Default::default()
                },
            ),
            (
                // cron: sendmail -FCronDaemon -i -B8BITMIME -oem user
                &[
                    "-FCronDaemon",
                    "-i",
                    "-B8BITMIME",
                    "-oem",
                    "root@example.com",
                ],
                SendmailArgs {
                    ignore_dots: true,
                    recipients: vec!["root@example.com".into()],
                    ..Default::default()
                },
            ),
            (
                &["-fapp@example.com", "--", "-odd@example.com"],
                SendmailArgs {
                    sender: Some("app@example.com".into()),
                    recipients: vec!["-odd@example.com".into()],
                    ..Default::default()
                },
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(&parse_args(&args(input)).unwrap(), expected, "{input:?}");
        }
        for bad in [&["-bs"][..], &["-bp"], &["-f"]] {
            let err = parse_args(&args(bad)).unwrap_err();
            assert_eq!(err.exit_code(), EX_USAGE, "{bad:?}");
        }
    }

    #[test]
    fn minus_t_takes_recipients_from_headers_and_drops_bcc() {
        let input = b"From: app@example.com\nTo: A <a@example.com>, b@example.com\nCc: c@example.com\nBcc: hidden@example.com,\n  hidden2@example.com\nSubject: hi\n\nbody\n.\nafter the dot\n";
        let parsed = SendmailArgs {
            recipients_from_headers: true,
            ..Default::default()
        };
        let (message, recipients) = prepare(&parsed, input).unwrap();
        assert_eq!(
            recipients,
            [
                "a@example.com",
                "b@example.com",
                "c@example.com",
                "hidden@example.com",
                "hidden2@example.com"
            ]
        );
        let text = String::from_utf8(message).unwrap();
        assert_eq!(
            text,
            "From: app@example.com\r\nTo: A <a@example.com>, b@example.com\r\nCc: c@example.com\r\nSubject: hi\r\n\r\nbody"
        );
    }

    #[test]
    fn minus_i_keeps_dot_lines_and_arguments_are_recipients() {
        let parsed = SendmailArgs {
            ignore_dots: true,
            recipients: vec!["x@example.com".into()],
            ..Default::default()
        };
        let (message, recipients) = prepare(&parsed, b"Subject: s\n\n.\nmore\n").unwrap();
        assert_eq!(recipients, ["x@example.com"]);
        assert_eq!(message, b"Subject: s\r\n\r\n.\r\nmore");
        let err = prepare(&SendmailArgs::default(), b"Subject: s\n\nx\n").unwrap_err();
        assert_eq!(err.exit_code(), EX_USAGE);
    }
}
