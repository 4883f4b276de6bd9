//! Repairs for legacy senders, applied by [`super::convert`] before anything else looks at the
//! message: bare LF line ends, From display names Graph refuses, and the header section the
//! DATA-time check reads. Nothing here rejects a message; it only makes it acceptable.

use std::borrow::Cow;

use crate::graph::model::Recipient;

/// Bare LF (and bare CR) line ends as CRLF. Borrows when the message is already clean, so the
/// common case costs no copy.
pub(super) fn normalise_line_ends(raw: &[u8]) -> Cow<'_, [u8]> {
    let clean = raw.iter().enumerate().all(|(i, &b)| match b {
        b'\n' => i > 0 && raw[i - 1] == b'\r',
        b'\r' => raw.get(i + 1) == Some(&b'\n'),
        _ => true,
    });
    if clean {
        return Cow::Borrowed(raw);
    }
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 32);
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'\r' if raw.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(out)
}

/// The header section of `raw` including its terminating empty line (or all of `raw` when it
/// has no body).
pub(super) fn header_section(raw: &[u8]) -> &[u8] {
    let end = (0..raw.len()).find_map(|i| {
        if raw[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if raw[i..].starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    });
    &raw[..end.unwrap_or(raw.len())]
}

/// Graph answers ErrorSendAsDenied when the From display name contains an `@` (an old printer's
/// `From: a@b <a@b>`, SMTP2Graph#28): the words with an `@` are dropped, and the name with them
/// when nothing else is left.
pub(super) fn clean_display_name(mut from: Recipient) -> Recipient {
    from.email_address.name = clean_name(from.email_address.name.as_deref());
    from
}

pub(super) fn clean_name(name: Option<&str>) -> Option<String> {
    let name = name?;
    if !name.contains('@') {
        return Some(name.to_owned());
    }
    let kept: Vec<&str> = name
        .split_whitespace()
        .filter(|word| !word.contains('@'))
        .collect();
    let kept = kept.join(" ");
    let kept = kept.trim_matches(|c: char| c == '(' || c == ')' || c == '"' || c == ',');
    (!kept.trim().is_empty()).then(|| kept.trim().to_owned())
}
