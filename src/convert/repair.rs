//! Repairs for legacy senders, applied by [`super::convert`] before anything else looks at the
//! message: bare LF line ends, From display names Graph refuses, and the header section the
//! DATA-time check reads. Nothing here rejects a message; it only makes it acceptable.

use std::borrow::Cow;

use crate::graph::model::Recipient;

/// Bare LF (and bare CR) line ends as CRLF. Borrows when the message is already clean, so the
/// common case costs no copy.
pub(super) fn normalise_line_ends(raw: &[u8]) -> Cow<'_, [u8]> {
    // Only line-end bytes need a look: memchr skips the rest many bytes at a time.
    let clean = memchr::memchr2_iter(b'\r', b'\n', raw).all(|i| match raw[i] {
        b'\n' => i > 0 && raw[i - 1] == b'\r',
        _ => raw.get(i + 1) == Some(&b'\n'),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_ends_become_crlf_and_clean_messages_are_borrowed() {
        let cases: [(&[u8], &[u8], bool); 7] = [
            (b"", b"", true),
            (b"a\r\nb\r\n", b"a\r\nb\r\n", true),
            (b"a\nb\n", b"a\r\nb\r\n", false),
            (b"\nb", b"\r\nb", false),
            (b"a\rb\r", b"a\r\nb\r\n", false),
            (b"a\r\n\nb\r\r\n", b"a\r\n\r\nb\r\n\r\n", false),
            (b"no line end at all", b"no line end at all", true),
        ];
        for (raw, expected, borrowed) in cases {
            let out = normalise_line_ends(raw);
            assert_eq!(&*out, expected, "{:?}", String::from_utf8_lossy(raw));
            assert_eq!(matches!(out, Cow::Borrowed(_)), borrowed, "{raw:?}");
        }
    }
}
