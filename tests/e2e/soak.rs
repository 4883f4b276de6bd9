//! Soak (issue 6's load criterion, issue 9's "killed at random points under load"): N messages
//! over concurrent SMTP sessions from K sending mailboxes, while the emulator throttles at random
//! (429 with Retry-After, 503 with and without) and the relay is SIGKILLed at R seeded points and
//! restarted on the same spool. Then, with Graph healthy again and the queue drained: every
//! acknowledged message arrived, duplicates stay within the bound below, no request for a mailbox
//! came before its Retry-After, and nothing is in `failed/`.
//!
//! The duplicate bound. A message reaches Graph twice only when the relay did not learn (or did
//! not record) that an attempt was accepted:
//! (a) the request timed out or was reset after its body was sent: the process that saw it
//!     counts it in `graph_relay_ambiguous_retries_total`;
//! (b) the process was killed with the entry in flight: sent, or answered 202 but not yet removed
//!     from the spool. A lane's slot is held until its worker has recorded the outcome, so per
//!     kill at most min(`queue.concurrency`, `queue.mailbox_concurrency` × K) entries are.
//! Asserted: duplicates ≤ Σ over the relay's lifetimes of its ambiguous counter (scraped just
//! before each kill and at the end) + kills × min(32, 4 × K). A kill loses the counter's
//! increments between that scrape and the kill; the emulator here answers every request, well
//! within `graph.request_timeout`, and stays up, so (a) does not occur and every counter is
//! expected to be 0; the summary prints them.
//!
//! Retry-After. The emulator records every request for a mailbox that arrives before the end of
//! a Retry-After it gave. Some cannot be helped: requests the relay had sent, or dispatched,
//! before it read the answer (up to 3 others in flight per mailbox), and on a loaded machine the
//! task holding the answer may wait for a core while another task's answer frees a slot. Such
//! requests come just after the answer: in the hand runs (docs/RELIABILITY.md) all within 100 ms,
//! more than 95 % within 10 ms. Asserted: no request comes more than 100 ms after the answer and
//! before the Retry-After ran out (a tenth of the 1 s used here), which a relay that forgets or
//! ignores a pause cannot pass (a pause forgotten at a restart gave 124 such requests in one
//! run). Not counted: answers given from 100 ms before a kill until the restarted relay was ready;
//! a killed process cannot read them (or may die before it records the pause), and the new one
//! cannot know of them. That the pause takes effect at once is proven exactly by the scheduler's unit tests
//! (`retry_after_pauses_the_mailbox_before_the_deferral_is_persisted`,
//! `a_retry_after_outlives_a_restart`). The summary prints the early requests by delay and how
//! many came beyond the 3 that may have been in flight.
//!
//! Parameters: `GRAPH_RELAY_SOAK_MESSAGES` (default 1,000: about a minute in CI),
//! `GRAPH_RELAY_SOAK_KILLS` (3), `GRAPH_RELAY_SOAK_SEED` (1), `GRAPH_RELAY_SOAK_SESSIONS` (8),
//! `GRAPH_RELAY_SOAK_MAILBOXES` (4). The hand run and its results: docs/RELIABILITY.md.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use graph_relay_emulator::{EmulatorConfig, Throttling};
use tokio::sync::watch;

use super::support::*;

const AMBIGUOUS: &str = "graph_relay_ambiguous_retries_total";
/// The relay's defaults, which this test does not change: `queue.concurrency` and
/// `queue.mailbox_concurrency`.
const CONCURRENCY: usize = 32;
const MAILBOX_CONCURRENCY: usize = 4;
/// How long after a Retry-After answer a request may still arrive without counting as ignoring
/// it; see the module documentation.
const REACTION_US: u64 = 100_000;
/// Before a kill, how long an answer may be on its way to a process that dies before it records
/// the pause.
const KILL_MARGIN: Duration = Duration::from_millis(100);

/// The soak's size, from the environment.
#[derive(Debug)]
struct Params {
    messages: usize,
    kills: usize,
    seed: u64,
    sessions: usize,
    mailboxes: usize,
}

fn param<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
        Err(_) => default,
    }
}

impl Params {
    fn from_env() -> Self {
        let params = Self {
            messages: param("GRAPH_RELAY_SOAK_MESSAGES", 1_000),
            kills: param("GRAPH_RELAY_SOAK_KILLS", 3),
            seed: param("GRAPH_RELAY_SOAK_SEED", 1),
            sessions: param("GRAPH_RELAY_SOAK_SESSIONS", 8),
            mailboxes: param("GRAPH_RELAY_SOAK_MAILBOXES", 4),
        };
        assert!(
            params.messages >= 20 && params.sessions >= 1 && params.mailboxes >= 1,
            "{params:?}: at least 20 messages, one session and one mailbox"
        );
        params
    }

    fn mailbox(&self, message: usize) -> String {
        format!("soak{}@contoso.com", message % self.mailboxes)
    }

    /// Entries one kill can leave in flight (case (b) of the module's bound).
    fn in_flight_bound(&self) -> usize {
        CONCURRENCY.min(MAILBOX_CONCURRENCY * self.mailboxes)
    }
}

/// What the SMTP sessions share: the next message to send, where the relay listens now, and the
/// subjects the relay acknowledged with `250`.
struct Load {
    next: AtomicUsize,
    attempts: AtomicUsize,
    relay: watch::Receiver<SocketAddr>,
    acknowledged: Mutex<Vec<String>>,
}

/// One SMTP command; anything but `code` (or no answer) ends the connection's use.
async fn step(client: &mut SmtpClient, line: &str, code: &str) -> std::io::Result<String> {
    client.try_send(&format!("{line}\r\n")).await?;
    let reply = client.try_reply().await?;
    if reply.starts_with(code) {
        Ok(reply)
    } else {
        Err(std::io::Error::other(format!("{line:?} → {reply:?}")))
    }
}

/// A greeted session with the relay wherever it listens now; waits out a restart.
async fn connect(relay: &watch::Receiver<SocketAddr>) -> SmtpClient {
    loop {
        let addr = *relay.borrow();
        if let Ok(mut client) = SmtpClient::try_connect(addr).await
            && step(&mut client, "EHLO soak", "250").await.is_ok()
        {
            return client;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One transaction with `subject`; `Ok` only for the `250` after the data.
async fn offer(client: &mut SmtpClient, mailbox: &str, subject: &str) -> std::io::Result<()> {
    step(client, &format!("MAIL FROM:<{mailbox}>"), "250").await?;
    step(client, "RCPT TO:<a@example.com>", "250").await?;
    step(client, "DATA", "354").await?;
    let data = format!(
        "From: {mailbox}\r\nTo: a@example.com\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@soak.example>\r\n\r\nbody of {subject}\r\n."
    );
    step(client, &data, "250 ").await.map(drop)
}

/// Takes messages until none are left; each is offered until acknowledged, under a new subject
/// each time (an unanswered offer may still have been spooled: it is not the relay's duplicate).
async fn session(load: Arc<Load>, params: Arc<Params>) {
    let mut client = None;
    loop {
        let message = load.next.fetch_add(1, Ordering::Relaxed);
        if message >= params.messages {
            return;
        }
        let mailbox = params.mailbox(message);
        for attempt in 0.. {
            load.attempts.fetch_add(1, Ordering::Relaxed);
            let subject = format!("soak-{message}-{attempt}");
            let mut current = match client.take() {
                Some(current) => current,
                None => connect(&load.relay).await,
            };
            if offer(&mut current, &mailbox, &subject).await.is_ok() {
                load.acknowledged.lock().unwrap().push(subject);
                client = Some(current);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The last `n` lines of a log, for failure messages.
fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_with_throttling_and_sigkills_loses_nothing_and_keeps_retry_after() {
    let params = Arc::new(Params::from_env());
    let started = Instant::now();
    let mut rng = fastrand::Rng::with_seed(params.seed);

    let mut config = EmulatorConfig::single(TENANT, CLIENT_ID, SECRET);
    config.mailboxes = Some((0..params.mailboxes).map(|k| params.mailbox(k)).collect());
    // Service time, so that requests overlap as they do against Graph; Graph's limit of four
    // concurrent requests per mailbox is enforced (a fifth gets 429 without Retry-After).
    config.latency = Duration::from_millis(20);
    config.max_concurrent_per_mailbox = Some(MAILBOX_CONCURRENCY);
    let emulator = graph_relay_emulator::start(config).await.unwrap();
    let throttling = Throttling {
        seed: params.seed,
        too_many_requests: 0.03,
        unavailable: 0.02,
        unavailable_retry_after: 0.5,
        retry_after_s: 1,
    };
    emulator.throttle(Some(throttling.clone())).unwrap();

    let spool = tempfile::tempdir().unwrap();
    let env = graph_env(&emulator, spool.path());
    let mut relay = tokio::task::block_in_place(|| Relay::start(&["serve"], &env));
    let (address, relay_address) = watch::channel(relay.smtp);
    let load = Arc::new(Load {
        next: AtomicUsize::new(0),
        attempts: AtomicUsize::new(0),
        relay: relay_address,
        acknowledged: Mutex::new(Vec::new()),
    });
    let sessions: Vec<_> = (0..params.sessions)
        .map(|_| tokio::spawn(session(load.clone(), params.clone())))
        .collect();

    // Kill points: seeded points of the progress acknowledged + accepted (0 to 2N), so a kill
    // lands while messages are being received or delivered or both.
    let mut points: Vec<usize> = (0..params.kills)
        .map(|_| rng.usize(params.messages / 10..=params.messages * 19 / 10))
        .collect();
    points.sort_unstable();
    let progress = || load.acknowledged.lock().unwrap().len() + emulator.stats().accepted;
    let load_limit = Duration::from_secs(120) + Duration::from_millis(50) * params.messages as u32;
    let mut ambiguous = Vec::new();
    let mut kills = Vec::new();
    // From just before each kill until the restarted relay was ready: answers no relay read.
    let mut unread_windows: Vec<(Instant, Instant)> = Vec::new();
    for point in points {
        assert!(
            eventually(load_limit, || progress() >= point).await,
            "stalled before progress {point}: {}",
            tail(&relay.logs(), 40)
        );
        tokio::time::sleep(Duration::from_millis(rng.u64(0..200))).await;
        ambiguous.push(metric(&relay, AMBIGUOUS).await as u64);
        let killed_at = Instant::now();
        tokio::task::block_in_place(|| drop(relay.kill()));
        kills.push((
            emulator.stats().accepted,
            load.acknowledged.lock().unwrap().len(),
        ));
        relay = tokio::task::block_in_place(|| Relay::start(&["serve"], &env));
        wait_ready(&relay).await;
        address.send_replace(relay.smtp);
        unread_windows.push((killed_at - KILL_MARGIN, Instant::now()));
    }
    let load_ended = tokio::time::timeout(load_limit, async {
        for session in sessions {
            session.await.unwrap();
        }
    })
    .await;
    assert!(
        load_ended.is_ok(),
        "the SMTP load did not finish: {}",
        tail(&relay.logs(), 40)
    );
    // Throttling goes on until nine tenths are delivered, so it meets most deliveries.
    assert!(
        emulator
            .wait_for_accepted(params.messages * 9 / 10, load_limit)
            .await,
        "deliveries stalled: {}",
        tail(&relay.logs(), 40)
    );
    let load_elapsed = started.elapsed();

    // Conditions return: Graph stops throttling; the queue drains.
    emulator.throttle(None).unwrap();
    let drain_limit = Duration::from_secs(120) + Duration::from_millis(20) * params.messages as u32;
    let drain_start = Instant::now();
    let mut stats = BTreeMap::new();
    while drain_start.elapsed() < drain_limit {
        stats = tokio::task::block_in_place(|| queue_stats(&env))
            .into_iter()
            .collect();
        if stats["queued"] + stats["deferred"] + stats["in flight"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    ambiguous.push(metric(&relay, AMBIGUOUS).await as u64);
    let logs = tail(&relay.logs(), 40);

    let acknowledged = load.acknowledged.lock().unwrap().clone();
    let counts = arrivals(&emulator);
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|s| !counts.contains_key(*s))
        .collect();
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    let ambiguous_sum: u64 = ambiguous.iter().sum();
    let allowed = ambiguous_sum + (params.kills * params.in_flight_bound()) as u64;
    let audit = emulator.retry_after_audit();
    let emulator_stats = emulator.stats();
    let max_in_flight = emulator_stats.max_in_flight.values().copied().max();
    // How long after the Retry-After answer the early requests came: <1, <10, <100, ≥100 ms.
    let beyond_in_flight = audit.beyond(MAILBOX_CONCURRENCY - 1).len();
    let latest_ms = audit
        .early
        .iter()
        .map(|early| early.after_answer_us as f64 / 1000.0)
        .fold(0.0, f64::max);
    let mut early_after = [0usize; 4];
    for early in &audit.early {
        let bucket = match early.after_answer_us {
            0..1_000 => 0,
            1_000..10_000 => 1,
            10_000..100_000 => 2,
            _ => 3,
        };
        early_after[bucket] += 1;
    }
    println!(
        "soak: {params:?}, throttling {throttling:?}\n\
         soak: acknowledged {} of {} offers; acknowledged and delivered {}; lost {}\n\
         soak: Graph accepted {} requests, refused {}; duplicates {duplicates}\n\
         soak: kills at (accepted, acknowledged) {kills:?}\n\
         soak: ambiguous retries per lifetime {ambiguous:?} (sum {ambiguous_sum}); in-flight bound \
         per kill {}; duplicates allowed {allowed}\n\
         soak: Retry-After answers {}, requests before their Retry-After {} (after the answer: \
         <1 ms, <10 ms, <100 ms, later: {early_after:?}; the latest {latest_ms:.1} ms), of which \
         beyond the 3 that may have \
         been on their way: {beyond_in_flight}; max in flight per mailbox {max_in_flight:?}\n\
         soak: queue after drain {stats:?}\n\
         soak: elapsed {:.1} s (load, kills and 90 % delivered {:.1} s, drain {:.1} s)",
        acknowledged.len(),
        load.attempts.load(Ordering::Relaxed),
        acknowledged.len() - lost.len(),
        lost.len(),
        emulator_stats.accepted,
        emulator_stats.rejected,
        params.in_flight_bound(),
        audit.answers,
        audit.early.len(),
        started.elapsed().as_secs_f64(),
        load_elapsed.as_secs_f64(),
        drain_start.elapsed().as_secs_f64(),
    );

    assert_eq!(acknowledged.len(), params.messages);
    assert!(
        lost.is_empty(),
        "{} acknowledged messages never reached Graph, e.g. {:?}; queue {stats:?}; relay log:\n{logs}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    assert!(
        duplicates as u64 <= allowed,
        "{duplicates} duplicates, at most {allowed} allowed"
    );
    let (unread, violations): (Vec<_>, Vec<_>) = audit
        .early
        .iter()
        .filter(|early| early.after_answer_us > REACTION_US)
        .partition(|early| {
            unread_windows
                .iter()
                .any(|(from, to)| (*from..=*to).contains(&early.answered_at))
        });
    eprintln!(
        "soak: later than {} ms but after answers around a kill, which no relay read: {}",
        REACTION_US / 1000,
        unread.len()
    );
    assert!(
        violations.is_empty(),
        "{} requests came more than {} ms after their mailbox's Retry-After answer and before it \
         ran out, e.g. {:#?}",
        violations.len(),
        REACTION_US / 1000,
        &violations[..violations.len().min(10)]
    );
    assert!(audit.answers > 0, "the emulator never asked for a wait");
    assert_eq!(stats["failed"], 0, "nothing may fail: {stats:?}");
    assert!(
        max_in_flight.is_some_and(|max| max <= MAILBOX_CONCURRENCY),
        "{max_in_flight:?} requests in flight for one mailbox"
    );
}
