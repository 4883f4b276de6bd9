//! Table tests of [`super::convert`] against an independent oracle: for every fixture in
//! `tests/fixtures/fidelity/`, Python's `email` package (`oracle.py`, run by hand when fixtures
//! change) wrote `expected/<name>.json`. Subjects, addresses, body, attachment names, types,
//! Content-IDs and exact bytes must agree.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::Options;
use super::tests::{run_with, to_json};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fidelity")
}

fn list(value: &Value, field: &str) -> Vec<String> {
    value[field]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|r| {
                    r["emailAddress"]["address"]
                        .as_str()
                        .or(r.as_str())
                        .unwrap()
                        .to_lowercase()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Line ends and trailing white space are not content: Python reports `\n`, Graph keeps `\r\n`.
fn normalise(text: &str) -> String {
    text.replace("\r\n", "\n").trim_end().to_owned()
}

#[test]
fn every_fixture_agrees_with_pythons_email_package() {
    let mut checked = 0;
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir().join("expected"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    for path in paths {
        let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
        let expected: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let raw = std::fs::read(dir().join(format!("{name}.eml"))).unwrap();
        let rcpt: Vec<&str> = expected["rcptTo"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        let converted = run_with(&raw, "bounce@example.com", &rcpt, &Options::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let json = to_json(&converted);
        let message = &json["message"];

        assert_eq!(message["subject"], expected["subject"], "{name}: subject");
        if let Some(from) = expected["from"].as_str() {
            assert_eq!(converted.sender, from, "{name}: sender");
        }
        let lower = |field: &str| -> Vec<String> {
            expected[field]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_lowercase())
                .collect()
        };
        assert_eq!(
            list(message, "replyTo"),
            lower("replyTo"),
            "{name}: replyTo"
        );
        assert_eq!(list(message, "toRecipients"), lower("to"), "{name}: to");
        assert_eq!(list(message, "ccRecipients"), lower("cc"), "{name}: cc");
        assert_eq!(list(message, "bccRecipients"), lower("bcc"), "{name}: bcc");
        if let Some(kind) = expected["bodyType"].as_str() {
            assert_eq!(message["body"]["contentType"], kind, "{name}: body type");
            assert_eq!(
                normalise(message["body"]["content"].as_str().unwrap()),
                normalise(expected["body"].as_str().unwrap()),
                "{name}: body"
            );
        }

        let got = message["attachments"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let want = expected["attachments"].as_array().unwrap();
        assert_eq!(got.len(), want.len(), "{name}: attachments {got:#?}");
        for (got, want) in got.iter().zip(want) {
            assert_eq!(got["contentType"], want["contentType"], "{name}");
            match want["name"].as_str() {
                Some(file) => assert_eq!(got["name"], file, "{name}: file name"),
                None => assert!(!got["name"].as_str().unwrap().is_empty(), "{name}"),
            }
            if let Some(subject) = want["innerSubject"].as_str() {
                // The relay's rule: characters Windows refuses in file names become `_`.
                let file: String = subject
                    .chars()
                    .map(|c| if r#"/\:*?"<>|"#.contains(c) { '_' } else { c })
                    .collect();
                assert_eq!(got["name"], format!("{file}.eml"), "{name}: .eml name");
            } else {
                assert_eq!(got["contentBytes"], want["contentBytes"], "{name}: bytes");
            }
            let cid = got.get("contentId").cloned().unwrap_or(Value::Null);
            assert_eq!(cid, want["contentId"], "{name}: contentId");
            let inline = got.get("isInline").cloned().unwrap_or(Value::Bool(false));
            assert_eq!(inline, want["isInline"], "{name}: isInline");
        }
        checked += 1;
    }
    assert!(checked >= 25, "only {checked} oracle files");
}
