//! Delivery engine end to end: Graph faults (429 storm, 503s, token outage, slow Graph), the
//! `queue` command on a live and a stopped daemon, `452` when the spool is full, SIGKILL under
//! load, and the acknowledgement modes (`queued`, `synchronous`, `hybrid`). Assertions are "at least once": duplicates never exceed the ambiguous retries.

use std::time::Duration;

use graph_relay_emulator::{EmulatorConfig, Fault};

use super::support::*;

/// Submits `n` messages on one connection, subjects `{prefix}-{i}`; returns the subjects.
async fn submit_many(relay: &Relay, prefix: &str, n: usize) -> Vec<String> {
    let mut smtp = SmtpClient::connect(relay.smtp).await;
    smtp.command("EHLO load", "250").await;
    let mut subjects = Vec::new();
    for i in 0..n {
        let subject = format!("{prefix}-{i}");
        let data =
            format!("From: {MAILBOX}\r\nTo: a@example.com\r\nSubject: {subject}\r\n\r\nx\r\n");
        smtp.submit(MAILBOX, &["a@example.com"], &data).await;
        subjects.push(subject);
    }
    subjects
}

/// Every subject arrived at least once and the duplicates stay within the ambiguous retries.
fn assert_at_least_once(
    emulator: &graph_relay_emulator::Emulator,
    subjects: &[String],
    env: &[(String, String)],
) {
    let counts = arrivals(emulator);
    for subject in subjects {
        assert!(
            counts.get(subject).is_some_and(|n| *n >= 1),
            "{subject} never arrived"
        );
    }
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    let ambiguous = queue_stats(env)["graph_relay_ambiguous_retries_total"];
    assert!(
        duplicates as u64 <= ambiguous,
        "{duplicates} duplicates, {ambiguous} ambiguous retries"
    );
}

#[tokio::test]
async fn a_429_storm_with_retry_after_is_absorbed_within_four_in_flight() {
    let emulator = emulator().await;
    emulator.inject(
        Fault::graph(429, 12)
            .code("ApplicationThrottled")
            .retry_after("1.5"),
    );
    let spool = tempfile::tempdir().unwrap();
    let env = graph_env(&emulator, spool.path());
    let relay = Relay::start(&["serve"], &env);
    let subjects = submit_many(&relay, "storm", 12).await;
    assert!(
        emulator
            .wait_for_accepted(12, Duration::from_secs(40))
            .await,
        "not all delivered: {}",
        relay.logs()
    );
    assert_at_least_once(&emulator, &subjects, &env);
    let max = emulator
        .stats()
        .max_in_flight
        .values()
        .copied()
        .max()
        .unwrap_or(0);
    assert!((1..=4).contains(&max), "max in flight per mailbox {max}");
    let stats = queue_stats(&env);
    assert_eq!(
        stats["queued"] + stats["deferred"] + stats["failed"],
        0,
        "{stats:?}"
    );
}

#[tokio::test]
async fn service_unavailable_and_a_token_outage_delay_but_lose_nothing() {
    let emulator = emulator().await;
    emulator.inject(Fault::token(503, 2));
    emulator.inject(Fault::graph(503, 3));
    emulator.inject(Fault::graph(500, 2));
    let spool = tempfile::tempdir().unwrap();
    let env = graph_env(&emulator, spool.path());
    let relay = Relay::start(&["serve"], &env);
    let subjects = submit_many(&relay, "outage", 6).await;
    assert!(
        eventually(Duration::from_secs(40), || {
            let counts = arrivals(&emulator);
            subjects.iter().all(|s| counts.contains_key(s))
        })
        .await,
        "not all delivered: {}",
        relay.logs()
    );
    assert_at_least_once(&emulator, &subjects, &env);
}

#[tokio::test]
async fn slow_graph_reaches_four_in_flight_per_mailbox_and_never_more() {
    let mut config = EmulatorConfig::single(TENANT, CLIENT_ID, SECRET);
    config.mailboxes = Some(vec![MAILBOX.to_string()]);
    config.latency = Duration::from_millis(400);
    config.max_concurrent_per_mailbox = Some(4);
    let emulator = graph_relay_emulator::start(config).await.unwrap();
    let spool = tempfile::tempdir().unwrap();
    let env = graph_env(&emulator, spool.path());
    let relay = Relay::start(&["serve"], &env);
    let subjects = submit_many(&relay, "slow", 16).await;
    assert!(
        emulator
            .wait_for_accepted(16, Duration::from_secs(40))
            .await,
        "{}",
        relay.logs()
    );
    assert_at_least_once(&emulator, &subjects, &env);
    assert_eq!(
        emulator.stats().max_in_flight.values().copied().max(),
        Some(4)
    );
    // The emulator answers 429 above 4 in flight: the relay never provoked one.
    assert!(emulator.rejected().is_empty(), "{:?}", emulator.rejected());
}

#[tokio::test]
async fn queue_command_talks_to_the_daemon_and_reads_a_stopped_spool() {
    let emulator = emulator().await;
    emulator.inject(Fault::graph(503, usize::MAX).retry_after("3600"));
    let spool = tempfile::tempdir().unwrap();
    let env = graph_env(&emulator, spool.path());
    let relay = Relay::start(&["serve"], &env);
    submit_many(&relay, "held", 3).await;
    assert!(eventually(Duration::from_secs(15), || !emulator.rejected().is_empty()).await);

    // Live: through the socket, which only the owner may use.
    let socket = spool.path().join("control.sock");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(
        eventually(Duration::from_secs(10), || {
            // The first 503 pauses the mailbox; requests already in flight are deferred too.
            let stats = queue_stats(&env);
            stats["deferred"] >= 1 && stats["queued"] + stats["deferred"] == 3
        })
        .await,
        "{:?}",
        queue_stats(&env)
    );
    let (code, list, _) = run_relay(&["queue", "list"], &env);
    assert_eq!(code, 0);
    assert!(list.starts_with("ID "), "{list}");
    assert!(
        list.contains("3 message(s)") && list.contains("HTTP 503"),
        "{list}"
    );
    relay.kill();

    // Stopped: the spool itself.
    let stats = queue_stats(&env);
    assert_eq!(stats["queued"] + stats["deferred"], 3, "{stats:?}");
    assert_eq!(stats["failed"], 0);
    let (_, list, _) = run_relay(&["queue", "list"], &env);
    let id = list
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let (code, shown, _) = run_relay(&["queue", "show", &id], &env);
    assert_eq!(code, 0);
    assert!(
        shown.contains(&format!("id:           {id}")) && shown.contains("HTTP 503"),
        "{shown}"
    );
    let (code, _, _) = run_relay(&["queue", "delete", &id], &env);
    assert_eq!(code, 0);
    let stats = queue_stats(&env);
    assert_eq!(stats["queued"] + stats["deferred"], 2, "{stats:?}");

    // Restarted with Graph healthy and `retry --all`: the rest is delivered.
    emulator.clear_faults();
    let (code, _, stderr) = run_relay(&["queue", "retry", "--all"], &env);
    assert_eq!(code, 0, "{stderr}");
    let relay = Relay::start(&["serve"], &env);
    assert!(
        emulator.wait_for_accepted(2, Duration::from_secs(15)).await,
        "{}",
        relay.logs()
    );
}

#[tokio::test]
async fn a_full_spool_answers_452_and_keeps_what_it_has() {
    let emulator = emulator().await;
    emulator.inject(Fault::graph(503, usize::MAX).retry_after("3600"));
    let spool = tempfile::tempdir().unwrap();
    let env = with(
        graph_env(&emulator, spool.path()),
        // One entry file (the message, its metadata and footer: about 550 bytes) fits, two do not.
        &[("GRAPH_RELAY_QUEUE__MAX_SIZE", "800")],
    );
    let relay = Relay::start(&["serve"], &env);
    let mut smtp = SmtpClient::connect(relay.smtp).await;
    smtp.command("EHLO full", "250").await;
    let data = format!(
        "From: {MAILBOX}\r\nSubject: first\r\n\r\n{}\r\n",
        "x".repeat(200)
    );
    smtp.submit(MAILBOX, &["a@example.com"], &data).await;
    smtp.command(&format!("MAIL FROM:<{MAILBOX}>"), "250").await;
    smtp.command("RCPT TO:<a@example.com>", "250").await;
    smtp.command("DATA", "354").await;
    smtp.send(&format!("{data}.\r\n")).await;
    let reply = smtp.reply().await;
    assert!(reply.starts_with("452 4.3.1 "), "{reply}");
    let stats = queue_stats(&env);
    assert_eq!(
        stats["queued"] + stats["deferred"] + stats["in flight"],
        1,
        "{stats:?}"
    );
}

#[tokio::test]
async fn every_acknowledged_message_arrives_after_sigkill_under_load() {
    let mut config = EmulatorConfig::single(TENANT, CLIENT_ID, SECRET);
    config.mailboxes = Some(vec![MAILBOX.to_string()]);
    config.latency = Duration::from_millis(150);
    let emulator = graph_relay_emulator::start(config).await.unwrap();
    emulator.inject(Fault::graph(429, 5).retry_after("1"));
    let spool = tempfile::tempdir().unwrap();
    let env = graph_env(&emulator, spool.path());
    let relay = Relay::start(&["serve"], &env);
    let subjects = submit_many(&relay, "kill", 40).await;
    // Some delivered, most not yet: crash now.
    assert!(emulator.wait_for_accepted(1, Duration::from_secs(15)).await);
    relay.kill();
    let before = emulator.accepted().len();
    assert!(before < 40, "load finished before the kill");

    let relay = Relay::start(&["serve"], &env);
    assert!(
        eventually(Duration::from_secs(40), || {
            let counts = arrivals(&emulator);
            subjects.iter().all(|s| counts.contains_key(s))
        })
        .await,
        "acknowledged messages lost: {}",
        relay.logs()
    );
    // Only requests in flight at the kill may repeat: at most 4 for the one mailbox.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let duplicates: usize = arrivals(&emulator).values().map(|n| n - 1).sum();
    assert!(duplicates <= 4, "{duplicates} duplicates");
}

/// Sends one message with `subject` and returns the reply to its end.
async fn send_one(smtp: &mut SmtpClient, subject: &str) -> String {
    smtp.command(&format!("MAIL FROM:<{MAILBOX}>"), "250").await;
    smtp.command("RCPT TO:<a@example.com>", "250").await;
    smtp.command("DATA", "354").await;
    smtp.send(&format!(
        "From: {MAILBOX}\r\nTo: a@example.com\r\nSubject: {subject}\r\n\r\nx\r\n.\r\n"
    ))
    .await;
    smtp.reply().await
}

/// A relay in acknowledgement mode `mode` against a fresh emulator.
async fn relay_in_mode(
    mode: &str,
    spool: &std::path::Path,
) -> (graph_relay_emulator::Emulator, Vec<(String, String)>, Relay) {
    let emulator = emulator().await;
    let env = with(
        graph_env(&emulator, spool),
        &[
            ("GRAPH_RELAY_QUEUE__ACK_MODE", mode),
            ("GRAPH_RELAY_QUEUE__ACK_WAIT", "3s"),
        ],
    );
    let relay = Relay::start(&["serve"], &env);
    (emulator, env, relay)
}

#[tokio::test]
async fn synchronous_mode_answers_after_graph_and_keeps_nothing_it_answered_4xx() {
    let spool = tempfile::tempdir().unwrap();
    let (emulator, env, relay) = relay_in_mode("synchronous", spool.path()).await;
    let mut smtp = SmtpClient::connect(relay.smtp).await;
    smtp.command("EHLO sync", "250").await;

    emulator.inject(Fault::graph(503, 1).retry_after("1"));
    let reply = send_one(&mut smtp, "sync-503").await;
    assert!(reply.starts_with("451 4.4.0 "), "{reply}");
    let stats = queue_stats(&env);
    assert_eq!(
        stats["queued"] + stats["deferred"] + stats["in flight"] + stats["failed"],
        0,
        "told to try again, so not kept: {stats:?}"
    );
    // The client sends it again (after the mailbox's Retry-After): delivered, once.
    let reply = send_one(&mut smtp, "sync-503").await;
    assert!(reply.starts_with("250 2.0.0 Delivered as "), "{reply}");
    assert_eq!(arrivals(&emulator).get("sync-503"), Some(&1));

    emulator.inject(Fault::graph(400, 1).code("ErrorInvalidRecipients"));
    let reply = send_one(&mut smtp, "sync-400").await;
    assert!(reply.starts_with("554 5.0.0 "), "{reply}");
    assert_eq!(queue_stats(&env)["failed"], 1, "a refusal goes to failed/");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        arrivals(&emulator).get("sync-503"),
        Some(&1),
        "{}",
        relay.logs()
    );
    assert_eq!(arrivals(&emulator).get("sync-400"), None);
}

#[tokio::test]
async fn hybrid_mode_answers_delivered_or_refused_and_queues_the_rest() {
    let spool = tempfile::tempdir().unwrap();
    let (emulator, env, relay) = relay_in_mode("hybrid", spool.path()).await;
    let mut smtp = SmtpClient::connect(relay.smtp).await;
    smtp.command("EHLO hybrid", "250").await;

    let reply = send_one(&mut smtp, "hybrid-ok").await;
    assert!(reply.starts_with("250 2.0.0 Delivered as "), "{reply}");

    emulator.inject(Fault::graph(503, 1).retry_after("1"));
    let reply = send_one(&mut smtp, "hybrid-503").await;
    assert!(reply.starts_with("250 2.0.0 Queued as "), "{reply}");
    assert!(
        eventually(Duration::from_secs(15), || arrivals(&emulator)
            .contains_key("hybrid-503"))
        .await,
        "the queued message was not retried: {}",
        relay.logs()
    );

    emulator.inject(Fault::graph(400, 1).code("ErrorInvalidRecipients"));
    let reply = send_one(&mut smtp, "hybrid-400").await;
    assert!(reply.starts_with("554 5.0.0 "), "{reply}");
    let stats = queue_stats(&env);
    assert_eq!(stats["failed"], 1, "{stats:?}");
    assert_eq!(stats["queued"] + stats["deferred"], 0, "{stats:?}");
    assert_eq!(arrivals(&emulator).get("hybrid-ok"), Some(&1));
    assert_eq!(arrivals(&emulator).get("hybrid-503"), Some(&1));
}

#[tokio::test]
async fn queued_mode_answers_before_graph_whatever_graph_says() {
    let spool = tempfile::tempdir().unwrap();
    let (emulator, env, relay) = relay_in_mode("queued", spool.path()).await;
    let mut smtp = SmtpClient::connect(relay.smtp).await;
    smtp.command("EHLO queued", "250").await;
    emulator.inject(Fault::graph(503, 1).retry_after("1"));
    let reply = send_one(&mut smtp, "queued-503").await;
    assert!(reply.starts_with("250 2.0.0 Queued as "), "{reply}");
    assert!(
        eventually(Duration::from_secs(15), || arrivals(&emulator)
            .contains_key("queued-503"))
        .await,
        "{}",
        relay.logs()
    );
    emulator.inject(Fault::graph(400, 1).code("ErrorInvalidRecipients"));
    let reply = send_one(&mut smtp, "queued-400").await;
    assert!(reply.starts_with("250 2.0.0 Queued as "), "{reply}");
    assert!(
        eventually(Duration::from_secs(10), || queue_stats(&env)["failed"] == 1).await,
        "{}",
        relay.logs()
    );
}

#[tokio::test]
async fn a_refused_message_produces_a_delivery_status_notification_to_its_sender() {
    const POSTMASTER: &str = "postmaster@contoso.com";
    let mut config = EmulatorConfig::single(TENANT, CLIENT_ID, SECRET);
    config.mailboxes = Some(vec![MAILBOX.to_string(), POSTMASTER.to_string()]);
    let emulator = graph_relay_emulator::start(config).await.unwrap();
    let spool = tempfile::tempdir().unwrap();
    let env = with(
        graph_env(&emulator, spool.path()),
        &[("GRAPH_RELAY_QUEUE__DSN_FROM", POSTMASTER)],
    );
    let relay = Relay::start(&["serve"], &env);
    emulator.inject(Fault::graph(400, 1).code("ErrorInvalidRecipients"));
    let mut smtp = SmtpClient::connect(relay.smtp).await;
    smtp.command("EHLO dsn", "250").await;
    let reply = send_one(&mut smtp, "doomed").await;
    assert!(reply.starts_with("250 2.0.0 Queued as "), "{reply}");
    // A message with the null reverse-path fails too, and gets no notice.
    emulator.inject(Fault::graph(400, 1).code("ErrorInvalidRecipients"));
    smtp.command("MAIL FROM:<>", "250").await;
    smtp.command("RCPT TO:<a@example.com>", "250").await;
    smtp.command("DATA", "354").await;
    smtp.send(&format!(
        "From: {MAILBOX}\r\nSubject: bounce\r\n\r\nx\r\n.\r\n"
    ))
    .await;
    assert!(smtp.reply().await.starts_with("250 "));

    assert!(
        emulator.wait_for_accepted(1, Duration::from_secs(20)).await,
        "no notice: {}",
        relay.logs()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let accepted = accepted_messages(&emulator);
    assert_eq!(accepted.len(), 1, "one notice only: {accepted:?}");
    let (mailbox, notice) = &accepted[0];
    assert_eq!(mailbox, POSTMASTER);
    assert_eq!(notice["subject"], "Undelivered mail: doomed");
    assert_eq!(
        notice["toRecipients"][0]["emailAddress"]["address"],
        MAILBOX
    );
    assert_eq!(
        queue_stats(&env)["failed"],
        2,
        "both refused messages kept in failed/"
    );
}
