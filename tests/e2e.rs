//! End to end: real SMTP clients → the relay binary → the Entra/Graph emulator.

mod support;

use std::time::Duration;

use base64::Engine;
use serde_json::Value;
use support::*;

fn addresses(message: &Value, field: &str) -> Vec<String> {
    message[field]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|r| r["emailAddress"]["address"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn attachment_bytes(attachment: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(attachment["contentBytes"].as_str().unwrap())
        .unwrap()
}

/// (a) lettre: envelope-exact to/cc/bcc and a binary attachment arrive byte-identical.
#[tokio::test]
async fn lettre_message_arrives_envelope_exact_with_attachment_intact() {
    use lettre::address::Envelope;
    use lettre::message::header::ContentType;
    use lettre::message::{Attachment, MultiPart, SinglePart};
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

    let emulator = emulator().await;
    let spool = tempfile::tempdir().unwrap();
    let relay = Relay::start(&["serve"], &graph_env(&emulator, spool.path()));

    let data = random_bytes(150 * 1024, 0x5eed);
    assert!(data.contains(&0) && data.iter().any(|&b| b >= 0x80));
    let message = Message::builder()
        .from(format!("Scanner <{MAILBOX}>").parse().unwrap())
        .to("Alice Example <alice@example.com>".parse().unwrap())
        .to("Header Only <header-only@example.com>".parse().unwrap())
        .cc("carol@example.com".parse().unwrap())
        .subject("Scan 42")
        .multipart(
            MultiPart::mixed()
                .singlepart(SinglePart::plain("Your scan is attached.".to_string()))
                .singlepart(Attachment::new("Résumé – scan.bin".to_string()).body(
                    data.clone(),
                    ContentType::parse("application/octet-stream").unwrap(),
                )),
        )
        .unwrap();
    let envelope = Envelope::new(
        Some(MAILBOX.parse().unwrap()),
        vec![
            "alice@example.com".parse().unwrap(),
            "carol@example.com".parse().unwrap(),
            "bcc-only@example.com".parse().unwrap(),
        ],
    )
    .unwrap();
    let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(relay.smtp.port())
        .build();
    let response = transport
        .send_raw(&envelope, &message.formatted())
        .await
        .unwrap();
    assert!(
        response.message().any(|line| line.contains("Queued as")),
        "{response:?}"
    );

    assert!(
        emulator.wait_for_accepted(1, Duration::from_secs(15)).await,
        "not delivered; relay log:\n{}",
        relay.logs()
    );
    let accepted = accepted_messages(&emulator);
    assert_eq!(accepted.len(), 1);
    let (mailbox, message) = &accepted[0];
    assert_eq!(mailbox, MAILBOX);
    assert_eq!(message["subject"], "Scan 42");
    assert_eq!(addresses(message, "toRecipients"), ["alice@example.com"]);
    assert_eq!(addresses(message, "ccRecipients"), ["carol@example.com"]);
    assert_eq!(
        addresses(message, "bccRecipients"),
        ["bcc-only@example.com"]
    );
    let attachments = message["attachments"].as_array().unwrap();
    assert_eq!(attachments.len(), 1);
    assert_eq!(attachments[0]["name"], "Résumé – scan.bin");
    assert_eq!(attachment_bytes(&attachments[0]), data);
}

/// (a) Python's smtplib with an RFC 2231 filename.
#[tokio::test]
async fn python_smtplib_message_arrives_envelope_exact_with_attachment_intact() {
    if std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_err()
    {
        println!(
            "SKIPPED: python_smtplib_message_arrives_envelope_exact_with_attachment_intact needs python3"
        );
        return;
    }
    let emulator = emulator().await;
    let spool = tempfile::tempdir().unwrap();
    let relay = Relay::start(&["serve"], &graph_env(&emulator, spool.path()));
    let data = random_bytes(150 * 1024, 0xfeed);
    let file = spool.path().join("attachment.bin");
    std::fs::write(&file, &data).unwrap();

    let script = r#"
import smtplib, sys
from email.message import EmailMessage
port, path, sender = int(sys.argv[1]), sys.argv[2], sys.argv[3]
msg = EmailMessage()
msg["From"] = "Scanner <%s>" % sender
msg["To"] = "Dana <dana@example.com>, outsider@example.com"
msg["Cc"] = "erin@example.com"
msg["Subject"] = "Ünïcode subject"
msg.set_content("see attachment")
with open(path, "rb") as f:
    msg.add_attachment(f.read(), maintype="application", subtype="octet-stream",
                       filename=("utf-8", "", "Übersicht 2025.bin"))
with smtplib.SMTP("127.0.0.1", port, timeout=20) as smtp:
    refused = smtp.send_message(msg, from_addr=sender,
        to_addrs=["dana@example.com", "erin@example.com", "frank@example.com"])
    assert not refused, refused
"#;
    let status = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            &relay.smtp.port().to_string(),
            file.to_str().unwrap(),
            MAILBOX,
        ])
        .status()
        .unwrap();
    assert!(status.success());

    assert!(
        emulator.wait_for_accepted(1, Duration::from_secs(15)).await,
        "not delivered; relay log:\n{}",
        relay.logs()
    );
    let accepted = accepted_messages(&emulator);
    let (_, message) = &accepted[0];
    assert_eq!(message["subject"], "Ünïcode subject");
    assert_eq!(addresses(message, "toRecipients"), ["dana@example.com"]);
    assert_eq!(addresses(message, "ccRecipients"), ["erin@example.com"]);
    assert_eq!(addresses(message, "bccRecipients"), ["frank@example.com"]);
    let attachments = message["attachments"].as_array().unwrap();
    assert_eq!(attachments[0]["name"], "Übersicht 2025.bin");
    assert_eq!(attachment_bytes(&attachments[0]), data);
}

/// (b) Three messages on one connection each arrive once, under their own ids.
#[tokio::test]
async fn three_messages_on_one_connection_each_arrive_once() {
    let emulator = emulator().await;
    let spool = tempfile::tempdir().unwrap();
    let relay = Relay::start(&["serve"], &graph_env(&emulator, spool.path()));
    let mut smtp = SmtpClient::connect(relay.smtp).await;
    smtp.command("EHLO erp.local", "250").await;
    let mut ids = Vec::new();
    for n in 1..=3 {
        smtp.command(&format!("MAIL FROM:<{MAILBOX}>"), "250").await;
        smtp.command("RCPT TO:<alice@example.com>", "250").await;
        smtp.command("DATA", "354").await;
        smtp.send(&format!(
            "From: {MAILBOX}\r\nTo: alice@example.com\r\nSubject: invoice {n}\r\n\r\nbody {n}\r\n.\r\n"
        ))
        .await;
        let reply = smtp.reply().await;
        ids.push(
            reply
                .strip_prefix("250 2.0.0 Queued as ")
                .unwrap()
                .to_string(),
        );
    }
    smtp.command("QUIT", "221").await;
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "each message has its own id");

    assert!(
        emulator.wait_for_accepted(3, Duration::from_secs(15)).await,
        "{}",
        relay.logs()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut subjects: Vec<String> = accepted_messages(&emulator)
        .iter()
        .map(|(_, m)| m["subject"].as_str().unwrap().to_string())
        .collect();
    subjects.sort();
    assert_eq!(subjects, ["invoice 1", "invoice 2", "invoice 3"]);
}

/// (c) A message acknowledged while Graph fails survives SIGKILL and arrives exactly once.
#[tokio::test]
async fn acknowledged_message_survives_a_crash_and_arrives_once() {
    let emulator = emulator().await;
    emulator.inject(graph_relay_emulator::Fault::graph(503, usize::MAX));
    let spool = tempfile::tempdir().unwrap();
    let env = graph_env(&emulator, spool.path());
    let relay = Relay::start(&["serve"], &env);

    let mut smtp = SmtpClient::connect(relay.smtp).await;
    smtp.command("HELO printer", "250").await;
    smtp.command(&format!("MAIL FROM:<{MAILBOX}>"), "250").await;
    smtp.command("RCPT TO:<alice@example.com>", "250").await;
    smtp.command("DATA", "354").await;
    smtp.send(&format!(
        "From: {MAILBOX}\r\nSubject: survive\r\n\r\nx\r\n.\r\n"
    ))
    .await;
    assert!(smtp.reply().await.starts_with("250 2.0.0 Queued as "));

    assert!(
        eventually(Duration::from_secs(15), || !emulator.rejected().is_empty()).await,
        "the relay never tried: {}",
        relay.logs()
    );
    assert!(emulator.accepted().is_empty());
    relay.kill();

    emulator.clear_faults();
    let relay = Relay::start(&["serve"], &env);
    assert!(
        emulator.wait_for_accepted(1, Duration::from_secs(15)).await,
        "not delivered after restart: {}",
        relay.logs()
    );
    // Give a duplicate every chance to show up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let accepted = accepted_messages(&emulator);
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].1["subject"], "survive");
}

/// (d) Dry run writes the request, without credentials, and again after a restart.
#[tokio::test]
async fn dry_run_writes_requests_and_recovers_them_after_restart() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_str().unwrap();
    let relay = Relay::start(&["serve", "--dry-run", dir], &[]);
    let mut smtp = SmtpClient::connect(relay.smtp).await;
    smtp.command("EHLO c", "250").await;
    smtp.command("MAIL FROM:<app@example.com>", "250").await;
    smtp.command("RCPT TO:<alice@example.com>", "250").await;
    smtp.command("DATA", "354").await;
    smtp.send("From: app@example.com\r\nSubject: dry\r\n\r\nx\r\n.\r\n")
        .await;
    let reply = smtp.reply().await;
    let id = reply
        .strip_prefix("250 2.0.0 Queued as ")
        .unwrap()
        .to_string();
    let file = out.path().join(format!("{id}.json"));
    assert!(
        eventually(Duration::from_secs(10), || file.exists()).await,
        "{}",
        relay.logs()
    );
    let written: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(written["queue_id"], id.as_str());
    assert_eq!(written["method"], "POST");
    assert_eq!(written["path"], "/v1.0/users/app@example.com/sendMail");
    assert_eq!(written["content_type"], "application/json");
    assert_eq!(written["body"]["message"]["subject"], "dry");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    relay.kill();

    // An entry acknowledged but not yet written when the relay stopped.
    let queued_id = {
        let (spool, _) = graph_relay::queue::Spool::open(&out.path().join(".queue")).unwrap();
        let mut incoming = spool.receive().unwrap();
        spool
            .append(
                &mut incoming,
                b"From: app@example.com\r\nSubject: after restart\r\n\r\nx\r\n",
            )
            .unwrap();
        let envelope = graph_relay::queue::Envelope {
            mail_from: "app@example.com".into(),
            rcpt_to: vec!["bob@example.com".into()],
            client: "127.0.0.1:1".into(),
            received_at_ms: 0,
        };
        spool.commit(incoming, envelope).unwrap().id
    };
    let relay = Relay::start(&["serve", "--dry-run", dir], &[]);
    let file = out.path().join(format!("{queued_id}.json"));
    assert!(
        eventually(Duration::from_secs(10), || file.exists()).await,
        "{}",
        relay.logs()
    );
    let written: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(written["body"]["message"]["subject"], "after restart");
}

/// (e) A bad value exits 78 naming the key; the secret appears in no output and no log.
#[tokio::test]
async fn bad_configuration_exits_78_and_secrets_never_leak() {
    let (code, _, stderr) = run_relay(
        &["check-config"],
        &[("GRAPH_RELAY_SMTP__LISTEN".into(), "localhost-ish".into())],
    );
    assert_eq!(code, 78, "{stderr}");
    assert!(stderr.contains("smtp.listen"), "{stderr}");

    let (code, _, stderr) = run_relay(&["serve"], &[]);
    assert_eq!(code, 78, "serve without credentials must refuse: {stderr}");
    assert!(
        stderr.contains("auth.tenant_id") && stderr.contains("--dry-run"),
        "{stderr}"
    );

    let emulator = emulator().await;
    let spool = tempfile::tempdir().unwrap();
    let env = graph_env(&emulator, spool.path());
    let (code, stdout, stderr) = run_relay(&["check-config"], &env);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("<redacted>"), "{stdout}");
    assert!(!stdout.contains(SECRET) && !stderr.contains(SECRET));

    // A wrong secret: the token is refused, and the refusal is logged without the secret.
    let wrong = "Wrong~Secret-Value-123";
    let mut env_wrong = env.clone();
    env_wrong.retain(|(k, _)| k != "GRAPH_RELAY_AUTH__CLIENT_SECRET");
    env_wrong.push(("GRAPH_RELAY_AUTH__CLIENT_SECRET".into(), wrong.into()));
    env_wrong.retain(|(k, _)| k != "GRAPH_RELAY_QUEUE__DIR");
    let spool_wrong = tempfile::tempdir().unwrap();
    env_wrong.push((
        "GRAPH_RELAY_QUEUE__DIR".into(),
        spool_wrong.path().display().to_string(),
    ));
    let relay = Relay::start(&["serve"], &env_wrong);
    send_simple(relay.smtp, "wrong secret").await;
    assert!(
        eventually(Duration::from_secs(10), || relay
            .logs()
            .contains("AADSTS7000215"))
        .await,
        "{}",
        relay.logs()
    );
    let logs = relay.kill();
    assert!(!logs.contains(wrong), "secret in logs:\n{logs}");

    // The right secret, a delivered message: neither the secret nor the token is logged.
    let relay = Relay::start(&["serve"], &env);
    send_simple(relay.smtp, "right secret").await;
    assert!(
        emulator.wait_for_accepted(1, Duration::from_secs(15)).await,
        "{}",
        relay.logs()
    );
    let logs = relay.kill();
    assert!(!logs.contains(SECRET), "secret in logs:\n{logs}");
    assert!(!logs.contains("eyJ"), "token in logs:\n{logs}");
}

async fn send_simple(addr: std::net::SocketAddr, subject: &str) {
    let mut smtp = SmtpClient::connect(addr).await;
    smtp.command("EHLO c", "250").await;
    smtp.command(&format!("MAIL FROM:<{MAILBOX}>"), "250").await;
    smtp.command("RCPT TO:<alice@example.com>", "250").await;
    smtp.command("DATA", "354").await;
    smtp.send(&format!(
        "From: {MAILBOX}\r\nSubject: {subject}\r\n\r\nx\r\n.\r\n"
    ))
    .await;
    assert!(smtp.reply().await.starts_with("250 2.0.0 Queued as "));
    smtp.command("QUIT", "221").await;
}
