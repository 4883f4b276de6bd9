//! Header fields besides sender and recipients that Graph's `message` resource can carry, for
//! [`super::convert`] in JSON format: Reply-To, importance, receipt requests and up to five `X-`
//! headers.

use mail_parser::{Address, HeaderValue, Message as MimeMessage};

use super::address;
use crate::graph::model::{Importance, InternetMessageHeader, Recipient};

/// Graph refuses more than five `internetMessageHeaders` (microsoft-graph.md §2).
pub const MAX_X_HEADERS: usize = 5;

pub(super) struct Extras {
    pub reply_to: Vec<Recipient>,
    pub importance: Option<Importance>,
    pub read_receipt: bool,
    pub delivery_receipt: bool,
    pub x_headers: Vec<InternetMessageHeader>,
}

/// Reads the extras from the top-level header section. `wanted` is `graph.x_headers`.
pub(super) fn extras(message: &MimeMessage<'_>, wanted: &[String]) -> Extras {
    Extras {
        reply_to: message
            .reply_to()
            .into_iter()
            .flat_map(Address::iter)
            .filter_map(address::recipient)
            .collect(),
        importance: importance(message),
        read_receipt: has_header(message, "Disposition-Notification-To"),
        delivery_receipt: has_header(message, "Return-Receipt-To"),
        x_headers: x_headers(message, wanted),
    }
}

/// `Importance:` (RFC 2156) wins over the older `X-Priority:` (1–2 high, 3 normal, 4–5 low).
fn importance(message: &MimeMessage<'_>) -> Option<Importance> {
    let text = |name: &str| header_text(message, name).map(|v| v.trim().to_ascii_lowercase());
    if let Some(value) = text("Importance") {
        match value.as_str() {
            "high" => return Some(Importance::High),
            "normal" => return Some(Importance::Normal),
            "low" => return Some(Importance::Low),
            _ => {}
        }
    }
    // X-Priority: "1 (Highest)", "2", "3 (Normal)", ...
    match text("X-Priority")?.chars().next()? {
        '1' | '2' => Some(Importance::High),
        '3' => Some(Importance::Normal),
        '4' | '5' => Some(Importance::Low),
        _ => None,
    }
}

fn has_header(message: &MimeMessage<'_>, name: &str) -> bool {
    header_text(message, name).is_some_and(|v| !v.trim().is_empty())
}

/// The first field called `name` (case-insensitive), unfolded, RFC 2047 decoded where
/// mail-parser decoded it.
fn header_text(message: &MimeMessage<'_>, name: &str) -> Option<String> {
    message
        .headers()
        .iter()
        .find(|h| h.name().eq_ignore_ascii_case(name))
        .map(|h| value_text(h.value(), message.raw_message(), h))
}

fn value_text(value: &HeaderValue<'_>, raw: &[u8], header: &mail_parser::Header<'_>) -> String {
    match value {
        HeaderValue::Text(text) => unfold(text),
        HeaderValue::TextList(list) => unfold(&list.join(", ")),
        // Addresses and other structured values: the raw field, unfolded.
        _ => {
            let bytes = raw
                .get(header.offset_start() as usize..header.offset_end() as usize)
                .unwrap_or_default();
            unfold(&String::from_utf8_lossy(bytes))
        }
    }
}

fn unfold(text: &str) -> String {
    text.split(['\r', '\n'])
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Up to five `X-` headers: with no configured list the message's first five distinct names in
/// message order; otherwise the listed names in list order, each if present. A name appears
/// once (its first value).
fn x_headers(message: &MimeMessage<'_>, wanted: &[String]) -> Vec<InternetMessageHeader> {
    let mut present: Vec<InternetMessageHeader> = Vec::new();
    for header in message.headers() {
        let name = header.name();
        let is_x = name.len() > 2 && name.as_bytes()[..2].eq_ignore_ascii_case(b"x-");
        if is_x && !present.iter().any(|h| h.name.eq_ignore_ascii_case(name)) {
            present.push(InternetMessageHeader {
                name: name.to_owned(),
                value: value_text(header.value(), message.raw_message(), header),
            });
        }
    }
    let chosen: Vec<InternetMessageHeader> = if wanted.is_empty() {
        present
    } else {
        wanted
            .iter()
            .filter_map(|name| {
                present
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .cloned()
            })
            .collect()
    };
    chosen.into_iter().take(MAX_X_HEADERS).collect()
}
