//! Sender and recipients for [`super::convert`]: the From header, and To/Cc/Bcc made exact to
//! the SMTP envelope.
//!
//! The envelope decides who receives the message, never the headers: a relay that trusted the
//! headers would drop envelope-only (Bcc) recipients and still reach header addresses that a
//! redirecting MTA removed. The headers only contribute display names and the To/Cc split.

use std::borrow::Cow;

use mail_parser::{Addr, Address, Message as MimeMessage};

use crate::graph::model::Recipient;

/// Recipients split the way Graph wants them.
pub(super) struct Recipients {
    pub to: Vec<Recipient>,
    pub cc: Vec<Recipient>,
    pub bcc: Vec<Recipient>,
}

/// The first usable From address with its decoded display name, if any.
pub(super) fn from_header(message: &MimeMessage<'_>) -> Option<Recipient> {
    message
        .from()
        .into_iter()
        .flat_map(Address::iter)
        .find_map(recipient)
}

/// Splits `rcpt_to` into To, Cc and Bcc.
///
/// A header address is kept only if it is in the envelope and not already placed (so an
/// address in both To and Cc appears once, in To); every envelope recipient not named in To or
/// Cc goes to Bcc without a name. Groups contribute their members, so `Undisclosed
/// recipients:;` contributes nothing.
pub(super) fn envelope_recipients(message: &MimeMessage<'_>, rcpt_to: &[String]) -> Recipients {
    let mut placed = vec![false; rcpt_to.len()];
    // all_to/all_cc: legacy senders sometimes split recipients over repeated headers.
    let to = keep_in_envelope(message.all_to(), rcpt_to, &mut placed);
    let cc = keep_in_envelope(message.all_cc(), rcpt_to, &mut placed);
    let bcc = rcpt_to
        .iter()
        .zip(&placed)
        .filter(|(_, placed)| !**placed)
        .map(|(rcpt, _)| Recipient::new(None, rcpt.clone()))
        .collect();
    Recipients { to, cc, bcc }
}

/// The header addresses that are envelope recipients not yet placed, marking them placed.
fn keep_in_envelope<'a>(
    headers: impl Iterator<Item = &'a Address<'a>>,
    rcpt_to: &[String],
    placed: &mut [bool],
) -> Vec<Recipient> {
    let mut kept = Vec::new();
    for candidate in headers.flat_map(Address::iter).filter_map(recipient) {
        let address = &candidate.email_address.address;
        let slot = rcpt_to.iter().position(|rcpt| same_address(rcpt, address));
        if let Some(slot) = slot
            && !placed[slot]
        {
            placed[slot] = true;
            kept.push(candidate);
        }
    }
    kept
}

/// A header address as a Graph recipient, or `None` when it has no usable address (a bare
/// group name or display-name-only junk).
pub(super) fn recipient(addr: &Addr<'_>) -> Option<Recipient> {
    let address = addr.address()?.trim();
    if !address.contains('@') {
        return None;
    }
    let name = addr
        .name()
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(str::to_owned);
    Some(Recipient::new(name, address.to_owned()))
}

/// Envelope comparison: case-insensitive over the whole address, as the SMTP layer
/// de-duplicates. (Strictly only the domain is case-insensitive, but no mailbox we can send
/// to through Exchange distinguishes local-part case.)
fn same_address(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
        || ((!a.is_ascii() || !b.is_ascii()) && a.to_lowercase() == b.to_lowercase())
}

/// A `dot-atom@host.name` address (non-ASCII letters allowed, as SMTPUTF8 brings them). The
/// SMTP parser takes quoted local parts and drops their quotes, so `"a>, b@evil.example"@x.y`
/// arrives as `a>, b@evil.example@x.y`: envelope addresses end up in the `To`/`Bcc` headers of
/// a MIME message, and only this form cannot add an address, a header or a line there.
pub fn is_plain_address(address: &str) -> bool {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return false;
    };
    // Non-ASCII whitespace includes U+2028/U+2029 and NEL, which some parsers take as line ends.
    let other = |c: char| !c.is_ascii() && !c.is_control() && !c.is_whitespace();
    let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c);
    let dot_separated = |text: &str, allowed: &dyn Fn(char) -> bool| {
        text.split('.')
            .all(|part| !part.is_empty() && part.chars().all(allowed))
    };
    dot_separated(local, &|c| atext(c) || other(c))
        && dot_separated(domain, &|c| {
            c.is_ascii_alphanumeric() || c == '-' || other(c)
        })
}

/// An address as it can stand in a header. Envelope addresses are plain ([`super::convert`]
/// checks); an address from the sender's own headers (the From of a cleaned display name) may
/// not be: its local part is quoted and it loses whatever could end the header or the address
/// list (controls, line ends, specials in the domain).
pub(super) fn header_addr_spec(address: &str) -> Cow<'_, str> {
    if is_plain_address(address) {
        return Cow::Borrowed(address);
    }
    let printable = |c: &char| !c.is_control() && (c.is_ascii() || !c.is_whitespace());
    let (local, domain) = address.rsplit_once('@').unwrap_or((address, ""));
    // A local part quoted already (mail-parser keeps the quotes) is unquoted first.
    let mut unquoted = String::new();
    match local.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
        Some(inner) => {
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                unquoted.extend(if c == '\\' { chars.next() } else { Some(c) });
            }
        }
        None => unquoted.push_str(local),
    }
    let mut out = String::from('"');
    for c in unquoted.chars().filter(printable) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out.push('@');
    out.extend(domain.chars().filter(|c| {
        c.is_ascii_alphanumeric() || *c == '-' || *c == '.' || (!c.is_ascii() && printable(c))
    }));
    Cow::Owned(out)
}
