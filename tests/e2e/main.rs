//! End to end: real SMTP clients → the relay binary → the Entra/Graph emulator.
//! One test binary; each area adds a module beside this file.

mod delivery;
mod faults;
mod fidelity;
mod hardening;
mod identity;
mod operations;
mod smtp;
mod soak;
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
        let data = format!(
            "From: {MAILBOX}\r\nTo: alice@example.com\r\nSubject: invoice {n}\r\n\r\nbody {n}\r\n"
        );
        ids.push(smtp.submit(MAILBOX, &["alice@example.com"], &data).await);
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
    // Exactly once is right here, not merely at least once: every attempt before the kill got
    // a definite 503, so no request had an unknown outcome that a retry could duplicate.
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
    let data = "From: app@example.com\r\nSubject: dry\r\n\r\nx\r\n";
    let id = smtp
        .submit("app@example.com", &["alice@example.com"], data)
        .await;
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
        let mut incoming = spool.receive();
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
            origin: None,
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
    let data = format!("From: {MAILBOX}\r\nSubject: {subject}\r\n\r\nx\r\n");
    smtp.submit(MAILBOX, &["alice@example.com"], &data).await;
    smtp.command("QUIT", "221").await;
}

/// Runs an external SMTP client against a relay wired to the emulator and checks that the
/// emulator got `expected` messages; prints SKIPPED when the tool is missing.
async fn deliver_with_tool(test: &str, tool: &str, args: &[&str], expected: usize) {
    let Some(program) = find_tool(tool) else {
        println!("SKIPPED: {test} needs {tool}");
        return;
    };
    let emulator = emulator().await;
    let spool = tempfile::tempdir().unwrap();
    let relay = Relay::start(&["serve"], &graph_env(&emulator, spool.path()));
    let server = relay.smtp.to_string();
    let args: Vec<String> = args
        .iter()
        .map(|arg| arg.replace("{server}", &server))
        .collect();
    let output = tokio::process::Command::new(program)
        .args(&args)
        .current_dir(spool.path())
        .output()
        .await
        .unwrap();
    assert_succeeded(tool, &output);
    assert!(
        emulator
            .wait_for_accepted(expected, Duration::from_secs(15))
            .await,
        "{tool}: not delivered; relay log:\n{}",
        relay.logs()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let accepted = accepted_messages(&emulator);
    assert_eq!(
        accepted.len(),
        expected,
        "{tool}: each message exactly once"
    );
    for (mailbox, message) in accepted {
        assert_eq!(mailbox, MAILBOX);
        assert_eq!(addresses(&message, "toRecipients"), ["alice@example.com"]);
    }
}

#[tokio::test]
async fn swaks_with_pipelining_delivers() {
    let server = "{server}";
    deliver_with_tool(
        "swaks_with_pipelining_delivers",
        "swaks",
        &[
            "--server",
            server,
            "--from",
            MAILBOX,
            "--to",
            "alice@example.com",
            "--pipeline",
            "--header",
            "Subject: from swaks",
            "--body",
            "hello",
        ],
        1,
    )
    .await;
}

#[tokio::test]
async fn postfix_smtp_source_saying_only_helo_delivers_on_one_connection() {
    // -c: count, -m 3: three messages over one session, HELO (no -e/ESMTP flags).
    deliver_with_tool(
        "postfix_smtp_source_saying_only_helo_delivers_on_one_connection",
        "smtp-source",
        &[
            "-m",
            "3",
            "-f",
            MAILBOX,
            "-t",
            "alice@example.com",
            "{server}",
        ],
        3,
    )
    .await;
}

#[tokio::test]
async fn curl_delivers() {
    let mail =
        format!("From: {MAILBOX}\r\nTo: alice@example.com\r\nSubject: from curl\r\n\r\nhello\r\n");
    let file = std::env::temp_dir().join(format!("graph-relay-curl-{}.eml", std::process::id()));
    std::fs::write(&file, mail).unwrap();
    let url = "smtp://{server}";
    deliver_with_tool(
        "curl_delivers",
        "curl",
        &[
            "-sS",
            "--url",
            url,
            "--mail-from",
            MAILBOX,
            "--mail-rcpt",
            "alice@example.com",
            "--upload-file",
            file.to_str().unwrap(),
        ],
        1,
    )
    .await;
    let _ = std::fs::remove_file(file);
}

/// A token Graph no longer accepts (401) is dropped, a new one fetched, and the message sent.
#[tokio::test]
async fn revoked_token_is_replaced_after_graph_401() {
    let emulator = emulator().await;
    let spool = tempfile::tempdir().unwrap();
    let relay = Relay::start(&["serve"], &graph_env(&emulator, spool.path()));
    send_simple(relay.smtp, "before revocation").await;
    assert!(
        emulator.wait_for_accepted(1, Duration::from_secs(15)).await,
        "{}",
        relay.logs()
    );
    assert_eq!(emulator.token_requests(), 1);

    emulator.revoke_tokens();
    send_simple(relay.smtp, "after revocation").await;
    assert!(
        emulator.wait_for_accepted(2, Duration::from_secs(15)).await,
        "{}",
        relay.logs()
    );
    assert_eq!(emulator.token_requests(), 2);
    assert!(emulator.rejected().iter().any(|r| r.status == 401));
}

/// Graph's permanent refusal moves the message to failed/ with the reason; nothing is retried.
#[tokio::test]
async fn refused_message_moves_to_failed_with_the_reason() {
    let emulator = emulator().await;
    let spool = tempfile::tempdir().unwrap();
    let relay = Relay::start(&["serve"], &graph_env(&emulator, spool.path()));
    let mut smtp = SmtpClient::connect(relay.smtp).await;
    smtp.command("EHLO c", "250").await;
    let data = "From: nobody@contoso.com\r\nSubject: unknown mailbox\r\n\r\nx\r\n";
    let id = smtp
        .submit("nobody@contoso.com", &["alice@example.com"], data)
        .await;

    let failed_meta = spool.path().join("failed").join(format!("{id}.json"));
    assert!(
        eventually(Duration::from_secs(15), || failed_meta.exists()).await,
        "{}",
        relay.logs()
    );
    let meta: Value = serde_json::from_slice(&std::fs::read(&failed_meta).unwrap()).unwrap();
    let reason = meta["last_error"].as_str().unwrap();
    assert!(
        reason.contains("404") && reason.contains("ErrorInvalidUser"),
        "{reason}"
    );
    assert!(
        spool
            .path()
            .join("failed")
            .join(format!("{id}.msg"))
            .exists()
    );
    assert!(
        !spool.path().join(format!("{id}.json")).exists(),
        "left the live queue"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        emulator.rejected().len(),
        1,
        "a permanent refusal is not retried"
    );
}

/// SIGHUP applies a changed `[smtp]` limit to new sessions; an invalid file is refused and the
/// running configuration stays.
#[tokio::test]
async fn sighup_reloads_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("graph-relay.toml");
    let write = |size: &str| {
        std::fs::write(&file, format!("[smtp]\nmax_message_size = {size}\n")).unwrap();
    };
    write("1000");
    let out = dir.path().join("out");
    let config = file.to_str().unwrap();
    let relay = Relay::start(
        &[
            "--config",
            config,
            "serve",
            "--dry-run",
            out.to_str().unwrap(),
        ],
        &[],
    );
    let ehlo = |addr| async move {
        let mut smtp = SmtpClient::connect(addr).await;
        smtp.command("EHLO c", "250").await
    };
    assert!(ehlo(relay.smtp).await.contains("SIZE 1000"));

    write("2000");
    relay.signal("HUP");
    assert!(
        eventually(Duration::from_secs(10), || relay
            .logs()
            .contains("configuration reloaded"))
        .await,
        "{}",
        relay.logs()
    );
    assert!(ehlo(relay.smtp).await.contains("SIZE 2000"));

    write("\"lots\"");
    relay.signal("HUP");
    assert!(
        eventually(Duration::from_secs(10), || relay
            .logs()
            .contains("reload refused"))
        .await,
        "{}",
        relay.logs()
    );
    assert!(
        relay.logs().contains("smtp.max_message_size"),
        "{}",
        relay.logs()
    );
    assert!(ehlo(relay.smtp).await.contains("SIZE 2000"));
}
