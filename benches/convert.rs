//! Criterion bench for `graph_relay::convert::convert`: a ~10 KB text message and a message
//! with a ~100 KB base64 attachment, the two shapes legacy senders mostly produce, in JSON and
//! (the attachment one) MIME format.

use std::{hint::black_box, time::Duration};

use base64::{Engine, engine::general_purpose::STANDARD};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use graph_relay::convert::{Arrival, Format, Options, convert};

const ARRIVAL: Arrival<'static> = Arrival {
    queue_id: "01JBENCH0000000000000000",
    received_at: 1_700_000_000,
};

const HEADERS: &str = "From: Billing <billing@example.com>\r\n\
    To: Customer <customer@example.net>\r\n\
    Subject: =?UTF-8?Q?Rechnung_M=C3=A4rz?=\r\n\
    Message-ID: <bench@example.com>\r\n\
    MIME-Version: 1.0\r\n";

fn text_message() -> Vec<u8> {
    let line = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n";
    let body = line.repeat(10 * 1024 / line.len());
    format!("{HEADERS}Content-Type: text/plain; charset=utf-8\r\n\r\n{body}").into_bytes()
}

fn attachment_message() -> Vec<u8> {
    let content: Vec<u8> = (0..100 * 1024).map(|i: u32| (i * 31 % 251) as u8).collect();
    let encoded = STANDARD.encode(content);
    let wrapped: Vec<&str> = encoded
        .as_bytes()
        .chunks(76)
        .map(|chunk| std::str::from_utf8(chunk).expect("base64 is ASCII"))
        .collect();
    format!(
        "{HEADERS}Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain\r\n\r\nInvoice attached.\r\n\
         --b\r\nContent-Type: application/pdf\r\n\
         Content-Disposition: attachment; filename=\"invoice.pdf\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{}\r\n--b--\r\n",
        wrapped.join("\r\n")
    )
    .into_bytes()
}

fn bench_convert(c: &mut Criterion) {
    let rcpt_to = vec!["customer@example.net".to_owned()];
    let mut group = c.benchmark_group("convert");
    let mime = Options {
        format: Format::Mime,
        ..Options::default()
    };
    for (name, raw, options) in [
        ("text_10k", text_message(), Options::default()),
        ("attachment_100k", attachment_message(), Options::default()),
        // MIME: the envelope-exact header rewrite and base64 of the whole message.
        ("mime_attachment_100k", attachment_message(), mime),
    ] {
        group.throughput(Throughput::Bytes(raw.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                convert(
                    black_box(&raw),
                    "billing@example.com",
                    &rcpt_to,
                    ARRIVAL,
                    &options,
                )
                .expect("converts")
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench_convert
}
criterion_main!(benches);
