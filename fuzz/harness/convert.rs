//! The converter fuzz harness, shared by the cargo-fuzz target (`fuzz_targets/convert.rs`) and
//! `tests/fuzz_corpus.rs`: any bytes, in both formats and for the upload plan, must convert or
//! give a `ConvertError`, never panic; and a JSON conversion names every envelope recipient
//! exactly once.

use graph_relay::convert::{self, Arrival, Format, Options, Outgoing};

pub fn run(data: &[u8]) {
    let rcpt_to = vec!["a@example.com".to_owned(), "b@example.net".to_owned()];
    let arrival = Arrival {
        queue_id: "01FUZZ0000000000000000000",
        received_at: 1_700_000_000,
    };
    for format in [Format::Json, Format::Mime] {
        let options = Options {
            format,
            ..Options::default()
        };
        if let Ok(converted) = convert::convert(data, "s@example.org", &rcpt_to, arrival, &options)
            && let Outgoing::Json(request) = &converted.outgoing
        {
            let message = &request.message;
            let mut sent: Vec<String> = [
                &message.to_recipients,
                &message.cc_recipients,
                &message.bcc_recipients,
            ]
            .into_iter()
            .flatten()
            .map(|r| r.email_address.address.to_lowercase())
            .collect();
            sent.sort();
            assert_eq!(sent, ["a@example.com", "b@example.net"]);
        }
    }
    let _ = convert::plan_upload(data, "s@example.org", &rcpt_to, &Options::default());
    let _ = convert::check_at_data(data, "", &Options::default());
}
