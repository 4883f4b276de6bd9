//! Property tests of the recipient invariant: whatever the To/Cc headers say, every envelope
//! recipient receives the message exactly once and nobody else does, in both formats.

use std::collections::BTreeMap;

use mail_parser::MessageParser;
use proptest::prelude::*;

use super::tests::{ARRIVAL, run_with};
use super::{Format, Options, Outgoing, convert};

const POOL: &[&str] = &[
    "alice@example.com",
    "Bob@Example.net",
    "carol@example.org",
    "dave@example.com",
    "erin@example.net",
    "frank@example.org",
];

/// A header address: a pool address in any case, with an optional display name that may hold
/// commas, quotes and non-ASCII letters.
fn header_address() -> impl Strategy<Value = String> {
    (
        0..POOL.len(),
        any::<bool>(),
        proptest::option::of("[A-Za-zÄöü ,.'\"]{1,12}"),
    )
        .prop_map(|(i, upper, name)| {
            let address = if upper {
                POOL[i].to_uppercase()
            } else {
                POOL[i].to_owned()
            };
            match name {
                Some(name) => {
                    let escaped = name.replace('\\', "\\\\").replace('"', "\\\"");
                    format!("\"{escaped}\" <{address}>")
                }
                None => address,
            }
        })
}

fn counts(addresses: impl IntoIterator<Item = String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for address in addresses {
        *counts.entry(address.to_lowercase()).or_insert(0) += 1;
    }
    counts
}

proptest! {
    #[test]
    fn every_envelope_recipient_exactly_once(
        to in proptest::collection::vec(header_address(), 0..4),
        cc in proptest::collection::vec(header_address(), 0..3),
        envelope in proptest::sample::subsequence(POOL.to_vec(), 1..=POOL.len()),
        undisclosed in any::<bool>(),
    ) {
        let mut headers = String::from("From: sender@example.com\r\nSubject: p\r\n");
        if !to.is_empty() {
            headers.push_str(&format!("To: {}\r\n", to.join(", ")));
        } else if undisclosed {
            headers.push_str("To: Undisclosed recipients:;\r\n");
        }
        if !cc.is_empty() {
            headers.push_str(&format!("Cc: {}\r\n", cc.join(",\r\n ")));
        }
        let raw = format!("{headers}\r\nbody\r\n").into_bytes();
        let rcpt: Vec<&str> = envelope.clone();
        let expected = counts(envelope.iter().map(|s| s.to_string()));

        let json = run_with(&raw, "", &rcpt, &Options::default()).unwrap();
        let message = &json.request().message;
        let sent = counts(
            [&message.to_recipients, &message.cc_recipients, &message.bcc_recipients]
                .into_iter()
                .flatten()
                .map(|r| r.email_address.address.clone()),
        );
        prop_assert_eq!(&sent, &expected);

        let options = Options { format: Format::Mime, ..Options::default() };
        let rcpt_to: Vec<String> = rcpt.iter().map(|r| r.to_string()).collect();
        let mime = convert(&raw, "", &rcpt_to, ARRIVAL, &options).unwrap();
        let Outgoing::Mime(bytes) = mime.outgoing else { panic!("MIME") };
        let parsed = MessageParser::default().parse(&bytes).unwrap();
        let in_headers = counts(
            parsed
                .headers()
                .iter()
                .filter(|h| ["To", "Cc", "Bcc"].iter().any(|n| h.name().eq_ignore_ascii_case(n)))
                .filter_map(|h| h.value().as_address())
                .flat_map(|a| a.iter())
                .filter_map(|a| a.address().map(str::to_owned)),
        );
        prop_assert_eq!(&in_headers, &expected, "{}", String::from_utf8_lossy(&bytes));
    }
}
