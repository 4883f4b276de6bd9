//! Issue 9, hardening: resource exhaustion (file descriptors, slow clients, huge DATA, recipient
//! floods, a huge spool) and faults (Graph gone, disk full, read-only spool, random kills). Memory
//! ceilings here are generous correctness checks, not benchmarks.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use graph_relay::queue::spool::{FileOps, Origin};
use graph_relay::queue::{Envelope, Spool};
use graph_relay_emulator::{EmulatorConfig, Fault};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::support::*;

/// Generous: a relay that held a 25 MB message or 100,000 bodies in memory would pass it.
const MEMORY_CEILING_KB: u64 = 200 * 1024;

fn with(mut env: Vec<(String, String)>, pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    env.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

/// The soft limit on open files of a running process, from /proc/PID/limits.
fn soft_nofile(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

/// The relay in dry-run mode, started with an open-file soft limit of 1024 as many distributions
/// set it; `None` (after printing SKIPPED) when the hard limit leaves no room above it.
fn relay_at_1024_files(
    test: &str,
    out: &Path,
    extra: &[(&str, &str)],
) -> Option<(Relay, Vec<(String, String)>)> {
    // The test's own process needs the room too, for its end of the connections.
    let hard = graph_relay::smtp::limits::raise_fd_limit().unwrap_or(0);
    if hard < 4096 {
        println!("SKIPPED: {test} needs an open-file hard limit of at least 4096 (have {hard})");
        return None;
    }
    let env = with(
        vec![(
            "GRAPH_RELAY_QUEUE__DIR".to_string(),
            out.join("queue").display().to_string(),
        )],
        extra,
    );
    let dry_run = out.join("requests");
    let relay = Relay::start_under(
        &["sh", "-c", r#"ulimit -Sn 1024 && exec "$0" "$@""#],
        &["serve", "--dry-run", dry_run.to_str().unwrap()],
        &env,
    );
    let soft = soft_nofile(relay.pid());
    assert!(soft > 1024, "the relay kept the soft limit of {soft}");
    Some((relay, env))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections_do_not_stop_a_new_client() {
    let out = tempfile::tempdir().unwrap();
    // 1,000 idle sessions plus the new client must fit the connection limits, so that only the
    // file-descriptor limit (1,024 at start) could refuse it.
    let Some((relay, _)) = relay_at_1024_files(
        "a_thousand_idle_connections_do_not_stop_a_new_client",
        out.path(),
        &[
            ("GRAPH_RELAY_SMTP__MAX_CONNECTIONS", "1100"),
            ("GRAPH_RELAY_SMTP__MAX_CONNECTIONS_PER_CLIENT", "1100"),
        ],
    ) else {
        return;
    };
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(BufReader::new(
            TcpStream::connect(relay.smtp).await.unwrap(),
        ));
    }
    // Each got its greeting: they are live sessions holding descriptors, not a listen backlog.
    for stream in &mut idle {
        let mut greeting = String::new();
        tokio::time::timeout(Duration::from_secs(20), stream.read_line(&mut greeting))
            .await
            .expect("greeting within 20 s")
            .unwrap();
        assert!(greeting.starts_with("220 "), "{greeting:?}");
    }
    let mut client = SmtpClient::connect(relay.smtp).await;
    client.command("EHLO newcomer", "250").await;
    client
        .submit(
            MAILBOX,
            &["a@example.com"],
            &format!("From: {MAILBOX}\r\nSubject: served\r\n\r\nhello\r\n"),
        )
        .await;
    assert!(!relay.logs().contains("accept failed"), "{}", relay.logs());
    drop(idle);
}

/// Writes `bytes` one at a time, `gap` apart, until the relay closes; returns what it said and
/// how long after the first byte the connection ended.
async fn trickle(mut stream: TcpStream, bytes: &[u8], gap: Duration) -> (String, Duration) {
    let (mut reader, mut writer) = stream.split();
    let start = Instant::now();
    let mut said = Vec::new();
    let write = async {
        for byte in bytes {
            if writer.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(gap).await;
        }
        // Out of bytes before being cut off: wait for the read side's verdict.
        std::future::pending::<()>().await;
    };
    tokio::select! {
        () = write => unreachable!(),
        read = tokio::time::timeout(Duration::from_secs(30), reader.read_to_end(&mut said)) => {
            let _ = read.expect("the relay closed within 30 s");
        }
    }
    (String::from_utf8_lossy(&said).into_owned(), start.elapsed())
}

#[tokio::test]
async fn a_client_sending_a_byte_a_second_is_cut_off_by_the_deadlines() {
    let out = tempfile::tempdir().unwrap();
    let Some((relay, _)) = relay_at_1024_files(
        "a_client_sending_a_byte_a_second_is_cut_off_by_the_deadlines",
        out.path(),
        &[
            ("GRAPH_RELAY_SMTP__IDLE_TIMEOUT", "2s"),
            ("GRAPH_RELAY_SMTP__DATA_TIMEOUT", "3s"),
        ],
    ) else {
        return;
    };
    // A command line trickled a byte a second: the line deadline runs from the previous reply,
    // so each byte does not buy more time.
    let mut stream = TcpStream::connect(relay.smtp).await.unwrap();
    let mut greeting = [0u8; 5];
    stream.read_exact(&mut greeting).await.unwrap();
    let command = "EHLO a-very-slow-client.example.com\r\n".repeat(2);
    let (said, elapsed) = trickle(stream, command.as_bytes(), Duration::from_secs(1)).await;
    assert!(said.contains("421 4.4.2"), "{said:?}");
    assert!(
        elapsed < Duration::from_secs(6),
        "cut off after {elapsed:?}"
    );

    // DATA trickled a line every half second (each well within the idle deadline): the whole
    // transfer's deadline ends it.
    let mut smtp = SmtpClient::connect(relay.smtp).await;
    smtp.command("EHLO slow", "250").await;
    smtp.command(&format!("MAIL FROM:<{MAILBOX}>"), "250").await;
    smtp.command("RCPT TO:<a@example.com>", "250").await;
    smtp.command("DATA", "354").await;
    let start = Instant::now();
    let mut cut = false;
    for _ in 0..40 {
        smtp.send("x\r\n").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        if start.elapsed() > Duration::from_secs(2) {
            let reply = tokio::time::timeout(Duration::from_millis(10), smtp.reply()).await;
            if let Ok(reply) = reply {
                assert!(reply.starts_with("421 4.4.2"), "{reply}");
                cut = true;
                break;
            }
        }
    }
    assert!(cut, "DATA trickle never cut off");
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gigabyte_data_is_refused_at_the_limit_with_flat_memory() {
    let out = tempfile::tempdir().unwrap();
    let Some((relay, env)) = relay_at_1024_files(
        "a_gigabyte_data_is_refused_at_the_limit_with_flat_memory",
        out.path(),
        &[],
    ) else {
        return;
    };
    let mut smtp = SmtpClient::connect(relay.smtp).await;
    smtp.command("EHLO big", "250").await;
    smtp.command(&format!("MAIL FROM:<{MAILBOX}>"), "250").await;
    smtp.command("RCPT TO:<a@example.com>", "250").await;
    smtp.command("DATA", "354").await;
    // 1 GiB in 1 MiB writes of 1,000-byte lines: streamed, never held by the test either.
    let line = format!("{}\r\n", "x".repeat(998));
    let chunk = line.repeat(1024 * 1024 / line.len());
    let mut sent = 0usize;
    while sent < 1 << 30 {
        smtp.send(&chunk).await;
        sent += chunk.len();
    }
    smtp.send(".\r\n").await;
    let reply = smtp.reply().await;
    assert!(reply.starts_with("552 5.3.4"), "{reply}");
    // The session is still usable, and nothing of the refused message stayed in the spool.
    smtp.command("RSET", "250").await;
    // The partial body is unlinked off the session's task (`abort_transaction`): soon, not at once.
    let spooled = || -> u64 {
        std::fs::read_dir(&env[0].1)
            .unwrap()
            .filter_map(|e| e.ok()?.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum()
    };
    assert!(
        eventually(Duration::from_secs(10), || spooled() < 1024 * 1024).await,
        "{} bytes left in the spool",
        spooled()
    );
    let peak = status_kb(relay.pid(), "VmHWM");
    assert!(peak < MEMORY_CEILING_KB, "peak resident memory {peak} kB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_recipients_are_refused_past_the_limit() {
    let out = tempfile::tempdir().unwrap();
    let Some((relay, _)) = relay_at_1024_files(
        "ten_thousand_recipients_are_refused_past_the_limit",
        out.path(),
        &[],
    ) else {
        return;
    };
    // Pipelined, as a mass mailer would: everything at once, replies read as they come.
    let stream = TcpStream::connect(relay.smtp).await.unwrap();
    let (reader, mut writer) = stream.into_split();
    let mut commands = format!("EHLO flood\r\nMAIL FROM:<{MAILBOX}>\r\n");
    for i in 0..10_000 {
        commands.push_str(&format!("RCPT TO:<r{i}@example.com>\r\n"));
    }
    // The relay may close mid-way (too many errors): a failed write is expected then.
    let write = tokio::spawn(async move {
        let _ = writer.write_all(commands.as_bytes()).await;
        writer
    });
    let mut reader = BufReader::new(reader);
    let mut order = Vec::new();
    let mut line = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while order.len() < 10_003 && Instant::now() < deadline {
        line.clear();
        match tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line)).await {
            Ok(Ok(n)) if n > 4 => {}
            _ => break,
        }
        // Only the last line of a multi-line reply counts.
        if line.as_bytes()[3] != b'-' {
            order.push(line[..3].to_string());
        }
    }
    let _writer = write.await.unwrap();
    let mut codes: HashMap<&str, usize> = HashMap::new();
    for code in &order {
        *codes.entry(code.as_str()).or_insert(0) += 1;
    }
    // Greeting, EHLO, MAIL, then the recipients.
    assert_eq!(order[..3], ["220", "250", "250"], "{codes:?}");
    let order = &order[3..];
    // Exactly the first 500 (Graph's limit, the default) are taken; after that only refusals,
    // until the session is closed for too many errors.
    assert!(order[..500].iter().all(|c| c == "250"), "{codes:?}");
    assert!(
        order[500..].iter().all(|c| c == "452" || c == "421"),
        "{codes:?}"
    );
    assert!(order.len() > 500, "{codes:?}");
    let peak = status_kb(relay.pid(), "VmHWM");
    assert!(peak < MEMORY_CEILING_KB, "peak resident memory {peak} kB");
    // The relay still serves others.
    let mut other = SmtpClient::connect(relay.smtp).await;
    other.command("EHLO next", "250").await;
}

/// The spool's file operations without fsync: only for filling a test spool quickly.
struct NoSync;

impl FileOps for NoSync {
    fn sync(&self, _: &File, _: &Path) -> io::Result<()> {
        Ok(())
    }
    fn sync_dir(&self, _: &Path) -> io::Result<()> {
        Ok(())
    }
    fn sync_fs(&self, _: &Path) -> io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_spooled_messages_keep_memory_bounded() {
    const MESSAGES: usize = 100_000;
    let spool_dir = tempfile::tempdir().unwrap();
    // 4 KiB bodies: 400 MB on disk, twice the memory ceiling, so bodies held in RAM would fail.
    let body = format!(
        "From: {MAILBOX}\r\nTo: a@example.com\r\nSubject: backlog\r\n\r\n{}\r\n",
        "y".repeat(4000)
    );
    {
        let (spool, _) = Spool::open_with(spool_dir.path(), Arc::new(NoSync)).unwrap();
        for _ in 0..MESSAGES {
            let mut incoming = spool.receive();
            spool.append(&mut incoming, body.as_bytes()).unwrap();
            let envelope = Envelope {
                mail_from: MAILBOX.to_string(),
                rcpt_to: vec!["a@example.com".to_string()],
                client: "127.0.0.1:1".to_string(),
                received_at_ms: graph_relay::queue::spool::now_ms(),
                // As the session records it: the scheduler needs no body to find the lane.
                origin: Some(Box::new(Origin {
                    listener: "listen".to_string(),
                    user: None,
                    sender: MAILBOX.to_string(),
                })),
            };
            spool.commit(incoming, envelope).unwrap();
        }
    }
    // Graph holds everything back, so the whole backlog stays queued while memory is measured.
    let emulator = emulator().await;
    emulator.inject(Fault::graph(503, usize::MAX).retry_after("3600"));
    let env = graph_env(&emulator, spool_dir.path());
    let relay = Relay::start(&["serve"], &env);
    assert!(
        eventually(Duration::from_secs(60), || {
            let (code, stdout, _) = run_relay(&["queue", "stats"], &env);
            code == 0 && {
                let stats: HashMap<&str, u64> = stdout
                    .lines()
                    .filter_map(|l| {
                        let (k, v) = l.rsplit_once(' ')?;
                        Some((k.trim(), v.parse().ok()?))
                    })
                    .collect();
                stats["queued"] + stats["deferred"] + stats["in flight"] == MESSAGES as u64
            }
        })
        .await,
        "{}",
        relay.logs()
    );
    let peak = status_kb(relay.pid(), "VmHWM");
    eprintln!("peak resident memory with {MESSAGES} messages queued: {peak} kB");
    assert!(peak < MEMORY_CEILING_KB, "peak resident memory {peak} kB");
}

/// Arrivals per subject over several emulators (one per incarnation of Graph).
pub(super) fn arrivals(emulators: &[&graph_relay_emulator::Emulator]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for emulator in emulators {
        for (_, message) in accepted_messages(emulator) {
            let subject = message["subject"].as_str().unwrap_or("").to_string();
            *counts.entry(subject).or_insert(0) += 1;
        }
    }
    counts
}

/// `graph_relay_ambiguous_retries_total` of the running relay, from `/metrics`.
async fn ambiguous_retries(relay: &Relay) -> u64 {
    let mut stream = TcpStream::connect(relay.http).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body.lines()
        .find(|l| l.starts_with("graph_relay_ambiguous_retries_total"))
        .and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

/// Every acknowledged subject arrived; duplicates are bounded by `allowed`.
pub(super) async fn assert_all_arrive(
    emulators: &[&graph_relay_emulator::Emulator],
    subjects: &[String],
    relay: &Relay,
    allowed: impl Fn(u64) -> u64,
) {
    assert!(
        eventually(Duration::from_secs(60), || {
            let counts = arrivals(emulators);
            subjects.iter().all(|s| counts.contains_key(s))
        })
        .await,
        "acknowledged messages lost: {}",
        relay.logs()
    );
    let duplicates: usize = arrivals(emulators).values().map(|n| n - 1).sum();
    let ambiguous = ambiguous_retries(relay).await;
    assert!(
        duplicates as u64 <= allowed(ambiguous),
        "{duplicates} duplicates, {ambiguous} ambiguous retries"
    );
}

/// One transaction that tolerates refusal: the final reply (to DATA or the message).
pub(super) async fn transaction(smtp: &mut SmtpClient, subject: &str, body: &str) -> String {
    smtp.command(&format!("MAIL FROM:<{MAILBOX}>"), "250").await;
    smtp.command("RCPT TO:<a@example.com>", "250").await;
    smtp.send("DATA\r\n").await;
    let reply = smtp.reply().await;
    if !reply.starts_with("354") {
        return reply;
    }
    smtp.send(&format!(
        "From: {MAILBOX}\r\nSubject: {subject}\r\n\r\n{body}\r\n.\r\n"
    ))
    .await;
    smtp.reply().await
}

#[tokio::test]
async fn graph_failing_for_a_long_stretch_then_recovering_loses_nothing() {
    let emulator = emulator().await;
    let spool = tempfile::tempdir().unwrap();
    let env = graph_env(&emulator, spool.path());
    let relay = Relay::start(&["serve"], &env);
    let mut smtp = SmtpClient::connect(relay.smtp).await;
    smtp.command("EHLO stretch", "250").await;
    let mut subjects = Vec::new();
    // Each phase lasts several retry periods (queue.retry_max is 2 s here); `every_…` in
    // delivery.rs covers counted faults, this one open-ended outages that end by the clock.
    let phases = [
        Fault::graph(503, usize::MAX).retry_after("1"),
        Fault::graph(500, usize::MAX),
        Fault::graph(429, usize::MAX).retry_after("1"),
        // The token endpoint down while the cached token is revoked: Graph 401, then no token.
        Fault::token(503, usize::MAX),
    ];
    for (i, fault) in phases.into_iter().enumerate() {
        emulator.clear_faults();
        emulator.inject(fault);
        if i == 3 {
            emulator.revoke_tokens();
        }
        for j in 0..3 {
            let subject = format!("stretch-{i}-{j}");
            let reply = transaction(&mut smtp, &subject, "x").await;
            assert!(reply.starts_with("250 "), "{reply}");
            subjects.push(subject);
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        let counts = arrivals(&[&emulator]);
        assert!(
            !subjects.iter().any(|s| counts.contains_key(s)),
            "delivered during an outage: {counts:?}"
        );
    }
    emulator.clear_faults();
    assert_all_arrive(&[&emulator], &subjects, &relay, |ambiguous| ambiguous).await;
}

/// An emulator on its own runtime, so that dropping the runtime kills it mid-request (its
/// graceful shutdown would let requests finish).
fn killable_emulator(
    addr: std::net::SocketAddr,
    latency: Duration,
) -> (tokio::runtime::Runtime, graph_relay_emulator::Emulator) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut config = EmulatorConfig::single(TENANT, CLIENT_ID, SECRET);
    config.mailboxes = Some(vec![MAILBOX.to_string()]);
    config.latency = latency;
    let handle = runtime.handle().clone();
    let emulator =
        std::thread::spawn(move || handle.block_on(graph_relay_emulator::start_on(addr, config)))
            .join()
            .unwrap()
            .expect("emulator starts");
    (runtime, emulator)
}

#[tokio::test]
async fn graph_killed_mid_request_and_down_then_back_on_the_same_port_loses_nothing() {
    let (runtime, first) =
        killable_emulator("127.0.0.1:0".parse().unwrap(), Duration::from_secs(3));
    let addr = first.addr();
    let spool = tempfile::tempdir().unwrap();
    let env = graph_env(&first, spool.path());
    let relay = Relay::start(&["serve"], &env);
    let mut smtp = SmtpClient::connect(relay.smtp).await;
    smtp.command("EHLO crash", "250").await;
    let mut subjects = Vec::new();
    for i in 0..4 {
        let subject = format!("mid-request-{i}");
        smtp.submit(
            MAILBOX,
            &["a@example.com"],
            &format!("Subject: {subject}\r\n\r\nx\r\n"),
        )
        .await;
        subjects.push(subject);
    }
    // Requests are in flight (3 s latency): kill Graph under them.
    assert!(
        eventually(Duration::from_secs(10), || {
            first.stats().max_in_flight.values().any(|n| *n >= 1)
        })
        .await
    );
    runtime.shutdown_background();
    // Down: connections refused, and mail keeps being accepted meanwhile.
    for i in 0..4 {
        let subject = format!("while-down-{i}");
        smtp.submit(
            MAILBOX,
            &["a@example.com"],
            &format!("Subject: {subject}\r\n\r\nx\r\n"),
        )
        .await;
        subjects.push(subject);
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (runtime, second) = killable_emulator(addr, Duration::ZERO);
    // A request cut off mid-way may have been sent: those are the ambiguous retries.
    assert_all_arrive(&[&first, &second], &subjects, &relay, |ambiguous| ambiguous).await;
    // A runtime may not be dropped (blocking) inside the test's own.
    runtime.shutdown_background();
}

#[tokio::test]
async fn a_trace_level_run_and_every_command_reveal_no_secret_token_or_password() {
    use base64::Engine;
    const PASSWORD: &str = "Sm7p-Pa55word!";
    let emulator = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    let hash = bcrypt::hash(PASSWORD, 4).unwrap();
    std::fs::write(&users, format!("printer:{hash}\n")).unwrap();
    let env = with(
        graph_env(&emulator, &dir.path().join("queue")),
        &[
            // Every crate's trace output: reqwest, hyper, h2 and rustls included.
            ("RUST_LOG", "trace"),
            ("GRAPH_RELAY_SMTP__PLAINTEXT_AUTH", "true"),
            (
                "GRAPH_RELAY_SMTP__AUTH__USERS_FILE",
                users.to_str().unwrap(),
            ),
        ],
    );
    let relay = Relay::start(&["serve"], &env);
    let mut smtp = SmtpClient::connect(relay.smtp).await;
    smtp.command("EHLO secretive", "250").await;
    let plain = base64::engine::general_purpose::STANDARD.encode(format!("\0printer\0{PASSWORD}"));
    smtp.command(&format!("AUTH PLAIN {plain}"), "235").await;
    smtp.submit(MAILBOX, &["a@example.com"], "Subject: one\r\n\r\nx\r\n")
        .await;
    assert!(emulator.wait_for_accepted(1, Duration::from_secs(20)).await);
    // Graph 401: the token is dropped and fetched again.
    emulator.revoke_tokens();
    smtp.submit(MAILBOX, &["a@example.com"], "Subject: two\r\n\r\nx\r\n")
        .await;
    assert!(emulator.wait_for_accepted(2, Duration::from_secs(20)).await);
    let mut output = relay.kill();

    let wrong = with(
        env.clone(),
        &[("GRAPH_RELAY_AUTH__CLIENT_SECRET", "wrong-secret-value")],
    );
    for (args, env) in [
        (vec!["check-config"], &env),
        (vec!["test-auth"], &env),
        (vec!["test-auth"], &wrong),
        (vec!["test-mail", "--to", "a@example.com"], &env),
        (vec!["test-mail", "--to", "a@example.com"], &wrong),
        (vec!["queue", "stats"], &env),
        (vec!["queue", "list"], &env),
    ] {
        // Off the runtime: the emulator answering these commands runs on it.
        let (args, env): (Vec<String>, _) =
            (args.iter().map(|a| a.to_string()).collect(), env.clone());
        let (_, stdout, stderr) = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_relay(&args, &env)
        })
        .await
        .unwrap();
        output.push_str(&stdout);
        output.push_str(&stderr);
    }
    assert!(output.contains("TRACE"), "not a trace-level run");
    let encoded_secret: String = url_encode(SECRET);
    for needle in [SECRET, &encoded_secret, PASSWORD, &plain, "eyJ"] {
        assert!(!output.contains(needle), "{needle:?} leaked");
    }
}

/// Form encoding, as the secret travels to the token endpoint.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
