//! Issue 9, faults of the spool's own disk (a real full tmpfs, a spool directory remounted
//! read-only) and header injection through the headers the relay adds in MIME format. The disk
//! faults need root for `mount`; without it they print SKIPPED.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use graph_relay_emulator::{Fault, MailContent};

use super::hardening::{arrivals, assert_all_arrive, transaction};
use super::support::*;

/// A mount made by a test, detached (lazily, so a relay still holding files cannot stop it)
/// when dropped, so a failing test leaves nothing mounted.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Runs `mount` with `args`; `None` (after printing SKIPPED) when not root or mount fails.
fn mount(test: &str, args: &[&str]) -> Option<()> {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let uid = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
            Some(uid.split_whitespace().nth(1)? == "0")
        })
        .unwrap_or(false);
    let mounted = root
        && find_tool("mount").is_some()
        && Command::new("mount")
            .args(args)
            .status()
            .is_ok_and(|s| s.success());
    if !mounted {
        println!(
            "SKIPPED: {test} needs root and mount (mount {})",
            args.join(" ")
        );
    }
    mounted.then_some(())
}

/// Files in `dir` with this extension.
fn count(dir: &Path, extension: &str) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some(extension.as_ref()))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_full_disk_answers_452_keeps_what_is_queued_and_delivers_it_after() {
    const TEST: &str = "a_real_full_disk_answers_452_keeps_what_is_queued_and_delivers_it_after";
    let dir = tempfile::tempdir().unwrap();
    let queue = dir.path().join("queue");
    std::fs::create_dir(&queue).unwrap();
    if mount(
        TEST,
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=1m",
            "tmpfs",
            queue.to_str().unwrap(),
        ],
    )
    .is_none()
    {
        return;
    }
    let _mount = Mount(queue.clone());
    // Graph holds everything back until the disk has been filled.
    let emulator = emulator().await;
    emulator.inject(Fault::graph(503, usize::MAX).retry_after("1"));
    let relay = Relay::start(&["serve"], &graph_env(&emulator, &queue));

    // Four clients at once until each is refused; bodies of 40 KB (written at the end of DATA)
    // and 100 KB (written mid-DATA, past the session's 64 KiB buffer).
    let mut clients = Vec::new();
    for client in 0..4 {
        let addr = relay.smtp;
        clients.push(tokio::spawn(async move {
            let mut smtp = SmtpClient::connect(addr).await;
            smtp.command("EHLO filler", "250").await;
            let mut acknowledged = Vec::new();
            for i in 0..100 {
                let subject = format!("full-{client}-{i}");
                let size = if i % 2 == 0 { 40_000 } else { 100_000 };
                let body = subject.repeat(size / subject.len());
                let reply = transaction(&mut smtp, &subject, &body).await;
                if !reply.starts_with("250 ") {
                    // Refused for now, and the session goes on.
                    smtp.command("RSET", "250").await;
                    return (acknowledged, reply);
                }
                acknowledged.push(subject);
            }
            panic!("1 MB of spool took 100 messages of 40 KB or more");
        }));
    }
    let mut acknowledged = Vec::new();
    for client in clients {
        let (subjects, refusal) = client.await.unwrap();
        assert!(refusal.starts_with("452 4.3.1"), "{refusal}");
        acknowledged.extend(subjects);
    }
    assert!(acknowledged.len() >= 4, "{acknowledged:?}");
    // Nothing already queued was harmed: an entry file for each 250, nothing of the refused ones
    // (their partial files are unlinked off the session task, so soon rather than at once), also
    // after several retries that could not write their metadata on the full disk.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        eventually(Duration::from_secs(5), || count(&queue, "msg")
            == acknowledged.len())
        .await,
        "{} entry files for {} messages",
        count(&queue, "msg"),
        acknowledged.len()
    );
    assert!(arrivals(&[&emulator]).is_empty());

    // Graph back: deliveries make room, every acknowledged message arrives whole, and new mail
    // is taken again.
    emulator.clear_faults();
    assert_all_arrive(&[&emulator], &acknowledged, &relay, |ambiguous| ambiguous).await;
    for (_, message) in accepted_messages(&emulator) {
        let subject = message["subject"].as_str().unwrap();
        let content = message["body"]["content"].as_str().unwrap();
        assert!(
            content.starts_with(&subject.repeat(10)),
            "{subject} arrived damaged"
        );
    }
    let mut smtp = SmtpClient::connect(relay.smtp).await;
    smtp.command("EHLO after", "250").await;
    let reply = transaction(&mut smtp, "after-full", "room again").await;
    assert!(reply.starts_with("250 "), "{reply}");
    drop(relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_spool_answers_4xx_loses_nothing_and_resends_nothing() {
    const TEST: &str = "a_read_only_spool_answers_4xx_loses_nothing_and_resends_nothing";
    let dir = tempfile::tempdir().unwrap();
    let queue = dir.path().join("queue");
    std::fs::create_dir(&queue).unwrap();
    let queue_arg = queue.to_str().unwrap();
    let emulator = emulator().await;
    emulator.inject(Fault::graph(503, usize::MAX).retry_after("1"));
    let relay = Relay::start(&["serve"], &graph_env(&emulator, &queue));
    let mut smtp = SmtpClient::connect(relay.smtp).await;
    smtp.command("EHLO before", "250").await;
    let mut acknowledged = Vec::new();
    for i in 0..3 {
        let subject = format!("queued-{i}");
        let reply = transaction(&mut smtp, &subject, "x").await;
        assert!(reply.starts_with("250 "), "{reply}");
        acknowledged.push(subject);
    }

    // The spool directory remounted read-only under the running relay (root ignores chmod).
    if mount(TEST, &["--bind", queue_arg, queue_arg]).is_none() {
        return;
    }
    let _mount = Mount(queue.clone());
    if mount(TEST, &["-o", "remount,bind,ro", queue_arg]).is_none() {
        return;
    }
    // Retries meanwhile cannot rewrite their metadata; new mail is refused for now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let reply = transaction(&mut smtp, "while-read-only", "x").await;
    assert!(reply.starts_with("451 4.3.0"), "{reply}");
    smtp.command("NOOP", "250").await;

    // Graph back while still read-only: each queued message is delivered once, and its entry,
    // which cannot be removed, stays whole and is not sent again.
    emulator.clear_faults();
    assert!(
        eventually(Duration::from_secs(30), || arrivals(&[&emulator]).len()
            == 3)
        .await,
        "{}",
        relay.logs()
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let counts = arrivals(&[&emulator]);
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    assert_eq!(count(&queue, "msg"), 3);
    assert!(
        relay.logs().contains("retrying the removal"),
        "{}",
        relay.logs()
    );

    // Writable again: the removals are retried (a minute apart at most) and succeed; nothing is
    // sent twice; new mail is taken.
    assert!(
        Command::new("mount")
            .args(["-o", "remount,bind,rw", queue_arg])
            .status()
            .unwrap()
            .success()
    );
    assert!(
        eventually(Duration::from_secs(70), || count(&queue, "msg") == 0).await,
        "{}",
        relay.logs()
    );
    let reply = transaction(&mut smtp, "after-read-only", "x").await;
    assert!(reply.starts_with("250 "), "{reply}");
    acknowledged.push("after-read-only".into());
    assert_all_arrive(&[&emulator], &acknowledged, &relay, |_| 0).await;
}

/// The header section of a message as (name, unfolded value), after checking that each line
/// ends in CRLF and is a field or the continuation of one.
fn header_fields(message: &[u8]) -> Vec<(String, String)> {
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header section")
        + 2;
    let text = std::str::from_utf8(&message[..end]).expect("UTF-8 headers");
    assert!(
        !text.replace("\r\n", "").contains(['\r', '\n']),
        "bare CR or LF in {text:?}"
    );
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.split_terminator("\r\n") {
        if line.starts_with([' ', '\t']) {
            fields.last_mut().expect("a field first").1.push_str(line);
            continue;
        }
        let (name, value) = line.split_once(':').expect("a field");
        assert!(
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
            "not a field: {line:?}"
        );
        fields.push((name.to_owned(), value.trim().to_owned()));
    }
    fields
}

#[tokio::test]
async fn nothing_from_the_session_can_inject_into_the_headers_added_in_mime_format() {
    let emulator = emulator().await;
    let spool = tempfile::tempdir().unwrap();
    let mut env = graph_env(&emulator, spool.path());
    env.push(("GRAPH_RELAY_GRAPH__FORMAT".into(), "mime".into()));
    let relay = Relay::start(&["serve"], &env);
    let mut smtp = SmtpClient::connect(relay.smtp).await;
    // Odd HELO names: taken or refused, never written anywhere.
    for helo in [
        "EHLO evil.example\tX-Injected: helo",
        "EHLO \"a<b>,c;d:e\"@x",
        "EHLO [127.0.0.1]",
    ] {
        smtp.send(&format!("{helo}\r\n")).await;
        let reply = smtp.reply().await;
        assert!(
            reply.starts_with("250") || reply.starts_with("501"),
            "{reply}"
        );
    }
    // An SMTPUTF8 sender and recipients; quoted local parts that would be addresses or
    // headers once the SMTP parser drops their quotes are refused.
    smtp.command("MAIL FROM:<jörg@contoso.com> SMTPUTF8", "250")
        .await;
    for hostile in [
        "\"evil@attacker.example>, x\"@contoso.com",
        "\"a\tBcc: evil@attacker.example\"@contoso.com",
        "\"a\\\"b\"@contoso.com",
    ] {
        smtp.command(&format!("RCPT TO:<{hostile}>"), "553 5.1.3")
            .await;
    }
    let rcpts = [
        "bob@example.net",
        "jörg@bücher.example",
        "o'brien+x@example.org",
    ];
    for rcpt in rcpts {
        smtp.command(&format!("RCPT TO:<{rcpt}>"), "250").await;
    }
    smtp.command("DATA", "354").await;
    // No Date or Message-ID (added), a display name with '@' (cleaned), To naming one envelope
    // recipient (the other two go to an added Bcc).
    smtp.send(&format!(
        "From: \"{MAILBOX}\" <{MAILBOX}>\r\nTo: bob@example.net\r\nSubject: headers\r\n\r\nbody\r\n.\r\n"
    ))
    .await;
    let reply = smtp.reply().await;
    let id = reply
        .strip_prefix("250 2.0.0 Queued as ")
        .expect(&reply)
        .to_owned();
    assert!(
        emulator.wait_for_accepted(1, Duration::from_secs(15)).await,
        "{}",
        relay.logs()
    );
    let MailContent::Mime(mime) = emulator.accepted().remove(0).content else {
        panic!("expected MIME sendMail")
    };
    let fields = header_fields(&mime);
    let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
    let unique: HashSet<&str> = names.iter().copied().collect();
    assert_eq!(unique.len(), names.len(), "a repeated header: {names:?}");
    assert_eq!(
        unique,
        HashSet::from([
            "Received",
            "From",
            "To",
            "Subject",
            "Bcc",
            "Date",
            "Message-ID"
        ]),
        "{}",
        String::from_utf8_lossy(&mime)
    );
    let value = |name: &str| fields.iter().find(|(n, _)| n == name).unwrap().1.as_str();
    // The Received header names only the relay, the queue id and the time.
    let received = value("Received");
    let prefix = format!("from graph-relay by localhost with SMTP id {id}; ");
    assert!(received.starts_with(&prefix), "{received}");
    assert!(
        mail_parser::DateTime::parse_rfc822(&received[prefix.len()..]).is_some(),
        "{received}"
    );
    assert!(mail_parser::DateTime::parse_rfc822(value("Date")).is_some());
    assert_eq!(value("Message-ID"), format!("<{id}@localhost>"));
    assert_eq!(value("From"), format!("<{MAILBOX}>"));
    assert_eq!(
        value("Bcc"),
        "<jörg@bücher.example>, <o'brien+x@example.org>",
        "one folded field"
    );
    assert_eq!(value("To"), "bob@example.net");
}

#[tokio::test]
async fn dry_run_requests_are_owner_only_even_under_umask_000() {
    use std::os::unix::fs::PermissionsExt;
    let out = tempfile::tempdir().unwrap();
    let requests = out.path().join("made").join("requests");
    let env = vec![(
        "GRAPH_RELAY_QUEUE__DIR".to_string(),
        out.path().join("queue").display().to_string(),
    )];
    // The most permissive umask: only the relay's own modes can keep the files private.
    let relay = Relay::start_under(
        &["sh", "-c", r#"umask 000 && exec "$0" "$@""#],
        &["serve", "--dry-run", requests.to_str().unwrap()],
        &env,
    );
    let mut smtp = SmtpClient::connect(relay.smtp).await;
    smtp.command("EHLO dry", "250").await;
    let id = smtp
        .submit(MAILBOX, &["a@example.com"], "Subject: dry\r\n\r\nx\r\n")
        .await;
    let file = requests.join(format!("{id}.json"));
    assert!(
        eventually(Duration::from_secs(15), || file.exists()).await,
        "{}",
        relay.logs()
    );
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o600, "request file");
    for dir in [&requests, requests.parent().unwrap()] {
        assert_eq!(mode(dir), 0o700, "{}", dir.display());
    }
}
