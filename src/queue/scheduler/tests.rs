//! Scheduler tests on paused tokio time with a scripted [`Attempt`]: the per-lane limit is
//! never exceeded and is reached, Retry-After pauses only its mailbox and the retry lands within
//! a second after it, lanes are served fairly, configuration faults probe one at a time.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::queue::faulty_fs::FaultyFs;
use crate::queue::spool::{Envelope, FileOps, RealFs};

/// Every attempt takes `latency`; answers are scripted per mailbox, then `Delivered`.
struct Scripted {
    latency: Duration,
    script: Mutex<HashMap<String, VecDeque<Outcome>>>,
    /// (mailbox, start, end) of every attempt.
    log: Mutex<Vec<(String, Instant, Instant)>>,
    in_flight: Mutex<HashMap<String, usize>>,
    max_in_flight: Mutex<HashMap<String, usize>>,
    /// The draft id each attempt found in its entry; each records `draft-N` (N its number), as
    /// the upload path records its draft.
    drafts: Mutex<Vec<Option<String>>>,
}

impl Scripted {
    fn new(latency: Duration) -> Arc<Self> {
        Arc::new(Self {
            latency,
            script: Mutex::default(),
            log: Mutex::default(),
            in_flight: Mutex::default(),
            max_in_flight: Mutex::default(),
            drafts: Mutex::default(),
        })
    }

    fn answer(&self, mailbox: &str, outcome: Outcome) {
        let mut script = self.script.lock().unwrap();
        script.entry(mailbox.into()).or_default().push_back(outcome);
    }

    fn attempts(&self, mailbox: &str) -> Vec<(Instant, Instant)> {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|(m, ..)| m == mailbox)
            .map(|(_, start, end)| (*start, *end))
            .collect()
    }

    fn max_in_flight(&self, mailbox: &str) -> usize {
        self.max_in_flight
            .lock()
            .unwrap()
            .get(mailbox)
            .copied()
            .unwrap_or(0)
    }
}

impl Attempt for Scripted {
    async fn lane(&self, meta: &EntryMeta) -> Lane {
        Lane::new("default", &meta.envelope.mail_from)
    }

    async fn attempt(&self, meta: &mut EntryMeta) -> Outcome {
        let mailbox = meta.envelope.mail_from.clone();
        {
            let mut drafts = self.drafts.lock().unwrap();
            drafts.push(meta.draft_id.take());
            meta.draft_id = Some(format!("draft-{}", drafts.len()));
        }
        let start = Instant::now();
        {
            let mut in_flight = self.in_flight.lock().unwrap();
            let n = in_flight.entry(mailbox.clone()).or_default();
            *n += 1;
            let mut max = self.max_in_flight.lock().unwrap();
            let max = max.entry(mailbox.clone()).or_default();
            *max = (*max).max(*n);
        }
        tokio::time::sleep(self.latency).await;
        *self.in_flight.lock().unwrap().get_mut(&mailbox).unwrap() -= 1;
        self.log
            .lock()
            .unwrap()
            .push((mailbox.clone(), start, Instant::now()));
        let mut script = self.script.lock().unwrap();
        script
            .get_mut(&mailbox)
            .and_then(VecDeque::pop_front)
            .unwrap_or(Outcome::Delivered)
    }
}

fn throttled(retry_after_ms: u64) -> Outcome {
    Outcome::NotDelivered {
        class: Class::Throttled,
        retry_after: Some(Duration::from_millis(retry_after_ms)),
        reason: "HTTP 429 ApplicationThrottled".into(),
    }
}

struct Harness {
    _tmp: tempfile::TempDir,
    spool: Arc<Spool>,
    queue: QueueHandle,
    counters: Arc<Counters>,
    stop: CancellationToken,
    clock: Clock,
}

const EPOCH_MS: u64 = 1_700_000_000_000;

fn start(attempt: Arc<Scripted>, limits: Limits) -> Harness {
    start_with(attempt, limits, |scheduler| scheduler)
}

fn start_with(
    attempt: Arc<Scripted>,
    limits: Limits,
    configure: impl FnOnce(Scheduler<Scripted>) -> Scheduler<Scripted>,
) -> Harness {
    start_on(attempt, limits, Arc::new(RealFs), configure)
}

fn policy() -> RetryPolicy {
    RetryPolicy::try_new(
        Duration::from_secs(1),
        Duration::from_secs(60),
        Duration::from_secs(3600),
        Duration::from_secs(300),
    )
    .unwrap()
}

/// As [`start_with`], with the spool's file operations in `fs`.
fn start_on(
    attempt: Arc<Scripted>,
    limits: Limits,
    fs: Arc<dyn FileOps>,
    configure: impl FnOnce(Scheduler<Scripted>) -> Scheduler<Scripted>,
) -> Harness {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open_with(tmp.path(), fs).unwrap();
    // The paused clock would jump ahead while a task awaits the writer thread.
    start_spool(attempt, limits, tmp, spool.with_inline_writes(), configure)
}

/// Runs a scheduler over `spool` (in `tmp`), as it is configured.
fn start_spool(
    attempt: Arc<Scripted>,
    limits: Limits,
    tmp: tempfile::TempDir,
    spool: Spool,
    configure: impl FnOnce(Scheduler<Scripted>) -> Scheduler<Scripted>,
) -> Harness {
    let spool = Arc::new(spool);
    let policy = policy();
    let clock = Clock::starting_at(EPOCH_MS);
    let counters = Arc::new(Counters::default());
    let (scheduler, queue) = Scheduler::new(
        spool.clone(),
        attempt,
        policy,
        limits,
        clock,
        counters.clone(),
    );
    let scheduler = configure(scheduler);
    let stop = CancellationToken::new();
    tokio::spawn(scheduler.run(Vec::new(), stop.clone(), TaskTracker::new()));
    Harness {
        _tmp: tmp,
        spool,
        queue,
        counters,
        stop,
        clock,
    }
}

impl Harness {
    /// Commits a message from `mailbox` to the spool and hands it to the scheduler.
    fn submit(&self, mailbox: &str) -> QueueId {
        let meta = self.commit(mailbox);
        let id = meta.id;
        self.queue.enqueue(meta);
        id
    }

    /// Like [`Harness::submit`], for a session that waits up to `limit` as `wait` says; returns
    /// the id and the session's answer to come.
    fn submit_watched(
        &self,
        mailbox: &str,
        wait: Wait,
        limit: Duration,
    ) -> (QueueId, tokio::task::JoinHandle<Verdict>) {
        let meta = self.commit(mailbox);
        let id = meta.id;
        let watch = self.queue.enqueue_watched(meta, wait);
        let spool = self.spool.clone();
        (
            id,
            tokio::spawn(async move { watch.verdict(limit, &spool, id).await }),
        )
    }

    fn commit(&self, mailbox: &str) -> EntryMeta {
        let mut incoming = self.spool.receive();
        self.spool
            .append(&mut incoming, b"Subject: x\r\n\r\nx\r\n")
            .unwrap();
        let mut meta = self
            .spool
            .commit(
                incoming,
                Envelope {
                    mail_from: mailbox.into(),
                    rcpt_to: vec!["to@example.com".into()],
                    client: "127.0.0.1:1".into(),
                    received_at_ms: self.clock.now_ms(),
                    origin: None,
                },
            )
            .unwrap();
        meta.next_attempt_at_ms = self.clock.now_ms();
        meta
    }

    fn is_queued(&self, id: QueueId) -> bool {
        self.spool.read_body(id).is_ok()
    }

    fn is_failed(&self, id: QueueId) -> bool {
        self.spool
            .failed_entries()
            .unwrap()
            .iter()
            .any(|meta| meta.id == id)
    }

    async fn list(&self) -> Vec<EntryView> {
        let (tx, rx) = oneshot::channel();
        assert!(self.queue.command(Command::List(tx)));
        rx.await.unwrap()
    }

    /// Waits (in paused time) until the live queue is empty.
    async fn drained(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.list().await.is_empty() {
            assert!(Instant::now() < deadline, "queue not drained in {limit:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

const LIMITS: Limits = Limits {
    concurrency: 64,
    per_lane: 4,
};

#[tokio::test(start_paused = true)]
async fn a_mailbox_never_has_more_than_four_in_flight_and_reaches_four() {
    let attempt = Scripted::new(Duration::from_millis(200));
    let h = start(attempt.clone(), LIMITS);
    for _ in 0..20 {
        h.submit("a@contoso.com");
    }
    for _ in 0..3 {
        h.submit("b@contoso.com");
    }
    h.drained(Duration::from_secs(30)).await;
    assert_eq!(attempt.max_in_flight("a@contoso.com"), 4);
    assert_eq!(attempt.max_in_flight("b@contoso.com"), 3);
    assert_eq!(attempt.attempts("a@contoso.com").len(), 20);
    // 20 messages, 4 at a time, 200 ms each: 5 rounds, so the limit was used fully.
    let last_end = attempt
        .attempts("a@contoso.com")
        .iter()
        .map(|(_, e)| *e)
        .max()
        .unwrap();
    let first_start = attempt
        .attempts("a@contoso.com")
        .iter()
        .map(|(s, _)| *s)
        .min()
        .unwrap();
    assert!(
        last_end - first_start < Duration::from_millis(1100),
        "{:?}",
        last_end - first_start
    );
    h.stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn the_configured_lane_limit_is_kept() {
    let attempt = Scripted::new(Duration::from_millis(100));
    let h = start(
        attempt.clone(),
        Limits {
            concurrency: 64,
            per_lane: 2,
        },
    );
    for _ in 0..10 {
        h.submit("a@contoso.com");
    }
    h.drained(Duration::from_secs(30)).await;
    assert_eq!(attempt.max_in_flight("a@contoso.com"), 2);
}

#[tokio::test(start_paused = true)]
async fn retry_after_pauses_only_its_mailbox_and_the_retry_lands_within_a_second_after() {
    let attempt = Scripted::new(Duration::from_millis(50));
    attempt.answer("a@contoso.com", throttled(2_128));
    let h = start(attempt.clone(), LIMITS);
    let throttled_id = h.submit("a@contoso.com");
    // Let the 429 come back, then queue more work for both mailboxes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let answered_at = attempt.attempts("a@contoso.com")[0].1;
    let deferred = h.list().await;
    assert_eq!(deferred.len(), 1);
    assert_eq!(deferred[0].meta.id, throttled_id);
    assert_eq!(deferred[0].state, EntryState::Deferred);
    for _ in 0..3 {
        h.submit("a@contoso.com");
        h.submit("b@contoso.com");
    }
    h.drained(Duration::from_secs(30)).await;

    let pause_end = answered_at + Duration::from_millis(2_128);
    let a = attempt.attempts("a@contoso.com");
    assert_eq!(a.len(), 5, "one 429, then the retry and three new messages");
    for (start, _) in &a[1..] {
        assert!(
            *start >= pause_end,
            "request {:?} before Retry-After",
            pause_end - *start
        );
        assert!(
            *start < pause_end + Duration::from_secs(1),
            "retry late by {:?}",
            *start - pause_end
        );
    }
    let b = attempt.attempts("b@contoso.com");
    assert_eq!(b.len(), 3);
    assert!(
        b.iter().all(|(_, end)| *end < pause_end),
        "b flowed during a's pause"
    );
    assert_eq!(
        count(&h.counters, crate::telemetry::AMBIGUOUS_RETRIES),
        0,
        "a 429 is not ambiguous"
    );
}

/// The real file system, with every fsync taking `delay` once `slow` is set.
struct SlowSync {
    slow: std::sync::atomic::AtomicBool,
    delay: Duration,
}

impl FileOps for SlowSync {
    fn sync(&self, file: &std::fs::File, path: &std::path::Path) -> std::io::Result<()> {
        if self.slow.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(self.delay);
        }
        RealFs.sync(file, path)
    }
    fn sync_fs(&self, dir: &std::path::Path) -> std::io::Result<()> {
        if self.slow.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(self.delay);
        }
        RealFs.sync_fs(dir)
    }
}

/// A 429 pauses its mailbox when it comes back, not once the deferral is on disk: while the
/// throttled entry's update waits for a slow fsync, the lane's freed slots stay empty.
/// Real time: the fsync blocks a thread, which paused tokio time would not wait for.
#[tokio::test]
async fn retry_after_pauses_the_mailbox_before_the_deferral_is_persisted() {
    let attempt = Scripted::new(Duration::from_millis(50));
    attempt.answer("a@contoso.com", throttled(1_000));
    let fs = Arc::new(SlowSync {
        slow: Default::default(),
        delay: Duration::from_millis(400),
    });
    let limits = Limits {
        concurrency: 8,
        per_lane: 2,
    };
    let h = start_on(attempt.clone(), limits, fs.clone(), |scheduler| scheduler);
    let committed: Vec<EntryMeta> = (0..4).map(|_| h.commit("a@contoso.com")).collect();
    fs.slow.store(true, std::sync::atomic::Ordering::Relaxed);
    for meta in committed {
        h.queue.enqueue(meta);
    }
    h.drained(Duration::from_secs(10)).await;
    let a = attempt.attempts("a@contoso.com");
    assert_eq!(a.len(), 5, "one 429, its retry and three more");
    let pause_end = a[0].1 + Duration::from_millis(1_000);
    for (start, _) in &a[2..] {
        assert!(
            *start >= pause_end,
            "a request {:?} before the Retry-After ran out",
            pause_end - *start
        );
    }
}

/// A relay killed during a Retry-After and started again still waits it out (real time: the
/// pauses are kept by a blocking write).
#[tokio::test]
async fn a_retry_after_outlives_a_restart() {
    let attempt = Scripted::new(Duration::from_millis(10));
    attempt.answer("a@contoso.com", throttled(800));
    let h = start(attempt.clone(), LIMITS);
    h.submit("a@contoso.com");
    let kept = h.spool.dir().join("throttle-pauses");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !kept.exists() {
        assert!(Instant::now() < deadline, "the pause was not kept");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    h.stop.cancel();
    let answered_at = attempt.attempts("a@contoso.com")[0].1;

    let (scheduler, queue) = Scheduler::new(
        h.spool.clone(),
        attempt.clone(),
        policy(),
        LIMITS,
        h.clock,
        h.counters.clone(),
    );
    let stop = CancellationToken::new();
    tokio::spawn(scheduler.run(Vec::new(), stop.clone(), TaskTracker::new()));
    queue.enqueue(h.commit("a@contoso.com"));
    while attempt.attempts("a@contoso.com").len() < 2 {
        assert!(Instant::now() < deadline, "not sent after the pause");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.cancel();
    let sent_at = attempt.attempts("a@contoso.com")[1].0;
    assert!(
        sent_at >= answered_at + Duration::from_millis(800),
        "sent {:?} before the Retry-After ran out",
        answered_at + Duration::from_millis(800) - sent_at
    );
}

#[tokio::test(start_paused = true)]
async fn lanes_are_served_in_turn() {
    let attempt = Scripted::new(Duration::from_millis(100));
    let h = start(
        attempt.clone(),
        Limits {
            concurrency: 2,
            per_lane: 4,
        },
    );
    let started = Instant::now();
    for _ in 0..40 {
        h.submit("busy@contoso.com");
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
    for _ in 0..3 {
        h.submit("quiet@contoso.com");
    }
    h.drained(Duration::from_secs(60)).await;
    // With two slots shared in turn, the quiet mailbox's three messages are done within a few
    // rounds instead of after the busy mailbox's forty.
    let quiet_done = attempt
        .attempts("quiet@contoso.com")
        .iter()
        .map(|(_, e)| *e)
        .max()
        .unwrap();
    let busy_done = attempt
        .attempts("busy@contoso.com")
        .iter()
        .map(|(_, e)| *e)
        .max()
        .unwrap();
    assert!(
        quiet_done < started + Duration::from_millis(500),
        "quiet mailbox waited"
    );
    assert!(busy_done > started + Duration::from_millis(2000));
    assert_eq!(attempt.attempts("busy@contoso.com").len(), 40);
}

#[tokio::test(start_paused = true)]
async fn a_configuration_fault_pauses_the_mailbox_and_probes_one_at_a_time() {
    let attempt = Scripted::new(Duration::from_millis(10));
    let fault = || Outcome::NotDelivered {
        class: Class::ConfigFault {
            scope: FaultScope::Mailbox,
            fix: "give the app Send As rights",
        },
        retry_after: None,
        reason: "HTTP 403 ErrorSendAsDenied".into(),
    };
    attempt.answer("a@contoso.com", fault());
    attempt.answer("a@contoso.com", fault());
    let h = start(attempt.clone(), LIMITS);
    h.submit("a@contoso.com");
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..4 {
        h.submit("a@contoso.com");
    }
    h.submit("b@contoso.com");
    tokio::time::sleep(Duration::from_secs(299)).await;
    assert_eq!(
        attempt.attempts("a@contoso.com").len(),
        1,
        "paused for fault_retry"
    );
    assert_eq!(
        attempt.attempts("b@contoso.com").len(),
        1,
        "other mailboxes flow"
    );
    // After 5 minutes one probe (fails again), another 5 minutes, one probe that succeeds,
    // then the rest at full concurrency.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(attempt.attempts("a@contoso.com").len(), 2);
    assert_eq!(attempt.max_in_flight("a@contoso.com"), 1);
    h.drained(Duration::from_secs(400)).await;
    assert_eq!(attempt.attempts("a@contoso.com").len(), 7);
    assert_eq!(
        count(&h.counters, crate::telemetry::CONFIG_FAULTS),
        2,
        "two configuration faults counted"
    );
    assert!(
        h.spool.failed_entries().unwrap().is_empty(),
        "kept queued, not failed"
    );
}

#[tokio::test(start_paused = true)]
async fn ambiguous_retries_are_counted_and_permanent_failures_go_to_failed() {
    let attempt = Scripted::new(Duration::from_millis(10));
    attempt.answer(
        "a@contoso.com",
        Outcome::NotDelivered {
            class: Class::Ambiguous,
            retry_after: None,
            reason: "timed out after the request was sent".into(),
        },
    );
    attempt.answer(
        "b@contoso.com",
        Outcome::NotDelivered {
            class: Class::Permanent,
            retry_after: None,
            reason: "HTTP 400 ErrorInvalidRecipients".into(),
        },
    );
    let h = start(attempt.clone(), LIMITS);
    h.submit("a@contoso.com");
    let failed = h.submit("b@contoso.com");
    h.drained(Duration::from_secs(30)).await;
    assert_eq!(attempt.attempts("a@contoso.com").len(), 2);
    let counters = h.counters.snapshot();
    let count = |name| counters.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
    assert_eq!(count(crate::telemetry::AMBIGUOUS_RETRIES), Some(1));
    assert_eq!(count(crate::telemetry::MESSAGES_FAILED), Some(1));
    let failed_entries = h.spool.failed_entries().unwrap();
    assert_eq!(failed_entries.len(), 1);
    assert_eq!(failed_entries[0].id, failed);
    assert_eq!(
        failed_entries[0].last_error.as_deref(),
        Some("refused: HTTP 400 ErrorInvalidRecipients")
    );
}

/// The upload path records its draft id in the entry mid-attempt; when the attempt then fails
/// for an ordinary retryable reason, the scheduler's own write keeps the id, so the retry finds
/// the draft (and deletes it before making a new one).
#[tokio::test(start_paused = true)]
async fn a_draft_id_recorded_by_a_failed_attempt_survives_for_the_retry() {
    let attempt = Scripted::new(Duration::from_millis(10));
    let transient = || Outcome::NotDelivered {
        class: Class::Transient,
        retry_after: None,
        reason: "HTTP 503 ServiceUnavailable".into(),
    };
    attempt.answer("a@contoso.com", transient());
    attempt.answer("a@contoso.com", transient());
    let h = start(attempt.clone(), LIMITS);
    let id = h.submit("a@contoso.com");
    // An update writes the entry's metadata beside its file.
    let meta_file = h.spool.dir().join(format!("{id}.json"));
    let mut persisted = None;
    for _ in 0..1000 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let Ok(bytes) = std::fs::read(&meta_file) else {
            continue;
        };
        let meta: EntryMeta = serde_json::from_slice(&bytes).unwrap();
        if meta.attempts > 0 {
            persisted = Some(meta);
            break;
        }
    }
    let persisted = persisted.expect("the first attempt's outcome is written");
    assert_eq!(
        persisted.draft_id,
        Some(format!("draft-{}", persisted.attempts)),
        "the spool keeps the draft id of the failed attempt"
    );
    h.drained(Duration::from_secs(30)).await;
    assert_eq!(
        *attempt.drafts.lock().unwrap(),
        [None, Some("draft-1".to_owned()), Some("draft-2".to_owned())]
    );
}

#[tokio::test(start_paused = true)]
async fn operators_can_retry_now_and_delete() {
    let attempt = Scripted::new(Duration::from_millis(10));
    attempt.answer("a@contoso.com", throttled(3_600_000));
    attempt.answer("b@contoso.com", throttled(3_600_000));
    let h = start(attempt.clone(), LIMITS);
    let a = h.submit("a@contoso.com");
    let b = h.submit("b@contoso.com");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.list().await.len(), 2);

    let (tx, rx) = oneshot::channel();
    h.queue.command(Command::Delete(b, tx));
    assert!(rx.await.unwrap().unwrap());
    assert!(h.spool.read_body(b).is_err(), "deleted from the spool");

    let (tx, rx) = oneshot::channel();
    h.queue.command(Command::RetryNow(Some(a), tx));
    assert_eq!(rx.await.unwrap(), 1);
    h.drained(Duration::from_secs(5)).await;
    assert_eq!(attempt.attempts("a@contoso.com").len(), 2);
    assert_eq!(attempt.attempts("b@contoso.com").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn changed_credentials_end_a_configuration_fault_pause_at_once() {
    let attempt = Scripted::new(Duration::from_millis(10));
    attempt.answer(
        "a@contoso.com",
        Outcome::NotDelivered {
            class: Class::ConfigFault {
                scope: FaultScope::Profile,
                fix: "check the client secret",
            },
            retry_after: None,
            reason: "AADSTS7000215".into(),
        },
    );
    let h = start(attempt.clone(), LIMITS);
    h.submit("a@contoso.com");
    // The second message arrives once the fault is known.
    tokio::time::sleep(Duration::from_millis(50)).await;
    h.submit("a@contoso.com");
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        attempt.attempts("a@contoso.com").len(),
        1,
        "held back by the fault"
    );

    assert!(h.queue.command(Command::CredentialsChanged));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let attempts = attempt.attempts("a@contoso.com");
    assert_eq!(
        attempts.len(),
        3,
        "one probe, then the rest, within a second"
    );
    h.drained(Duration::from_secs(5)).await;
}

/// A counter's value by its metric name.
fn count(counters: &Counters, name: &str) -> u64 {
    counters
        .snapshot()
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(0, |(_, v)| *v)
}

fn refused() -> Outcome {
    Outcome::NotDelivered {
        class: Class::Permanent,
        retry_after: None,
        reason: "HTTP 400 ErrorInvalidRecipients".into(),
    }
}

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test(start_paused = true)]
async fn synchronous_answers_follow_the_first_attempt_and_only_delivered_or_refused_stay() {
    let attempt = Scripted::new(Duration::from_millis(100));
    attempt.answer("later@contoso.com", throttled(30_000));
    attempt.answer("refused@contoso.com", refused());
    let h = start(attempt.clone(), LIMITS);
    let (ok, ok_answer) = h.submit_watched("ok@contoso.com", Wait::Synchronous, WAIT);
    let (later, later_answer) = h.submit_watched("later@contoso.com", Wait::Synchronous, WAIT);
    let (bad, bad_answer) = h.submit_watched("refused@contoso.com", Wait::Synchronous, WAIT);
    assert_eq!(ok_answer.await.unwrap(), Verdict::Delivered);
    assert_eq!(later_answer.await.unwrap(), Verdict::TryLater);
    assert_eq!(bad_answer.await.unwrap(), Verdict::Refused);
    assert!(!h.is_queued(ok));
    assert!(!h.is_queued(later), "told to try again: not kept");
    assert!(!h.is_failed(later));
    assert!(h.is_failed(bad), "a refusal goes to failed/ as usual");
    // Long after the Retry-After: the message the client must resend was never retried.
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(attempt.attempts("later@contoso.com").len(), 1);
    assert!(h.list().await.is_empty());
    assert_eq!(count(&h.counters, crate::telemetry::MESSAGES_RETRIED), 0);
}

#[tokio::test(start_paused = true)]
async fn hybrid_answers_delivered_refused_or_queued_and_keeps_what_it_queued() {
    let attempt = Scripted::new(Duration::from_millis(100));
    attempt.answer("later@contoso.com", throttled(30_000));
    attempt.answer("refused@contoso.com", refused());
    let h = start(attempt.clone(), LIMITS);
    let (ok, ok_answer) = h.submit_watched("ok@contoso.com", Wait::Hybrid, WAIT);
    let (later, later_answer) = h.submit_watched("later@contoso.com", Wait::Hybrid, WAIT);
    let (bad, bad_answer) = h.submit_watched("refused@contoso.com", Wait::Hybrid, WAIT);
    assert_eq!(ok_answer.await.unwrap(), Verdict::Delivered);
    assert_eq!(later_answer.await.unwrap(), Verdict::Queued);
    assert_eq!(bad_answer.await.unwrap(), Verdict::Refused);
    assert!(!h.is_queued(ok));
    assert!(h.is_queued(later), "acknowledged: kept for its retry");
    assert!(h.is_failed(bad));
    h.drained(Duration::from_secs(60)).await;
    assert_eq!(attempt.attempts("later@contoso.com").len(), 2);
    assert!(!h.is_queued(later), "delivered by its retry");
}

#[tokio::test(start_paused = true)]
async fn hybrid_acknowledges_a_slow_attempt_as_queued_and_the_worker_finishes_it() {
    let attempt = Scripted::new(Duration::from_secs(8));
    attempt.answer("slow@contoso.com", throttled(1_000));
    let h = start(attempt.clone(), LIMITS);
    let (id, answer) = h.submit_watched("slow@contoso.com", Wait::Hybrid, WAIT);
    let started = Instant::now();
    assert_eq!(answer.await.unwrap(), Verdict::Queued);
    assert_eq!(
        started.elapsed(),
        WAIT,
        "answered at the wait, not at Graph's answer"
    );
    assert!(h.is_queued(id));
    // The 429 that comes after the answer is an ordinary retry of a queued message.
    h.drained(Duration::from_secs(60)).await;
    assert_eq!(attempt.attempts("slow@contoso.com").len(), 2);
    assert!(!h.is_queued(id));
    assert_eq!(count(&h.counters, crate::telemetry::MESSAGES_DELIVERED), 1);
}

#[tokio::test(start_paused = true)]
async fn a_synchronous_session_that_gives_up_mid_attempt_leaves_nothing_queued() {
    // Graph answers after the session gave up: delivered or not, the worker must neither
    // keep nor retry the message (its client was told 4xx), nor fail on the removed files.
    let attempt = Scripted::new(Duration::from_secs(8));
    attempt.answer("later@contoso.com", throttled(1_000));
    let h = start(attempt.clone(), LIMITS);
    let (ok, ok_answer) = h.submit_watched("ok@contoso.com", Wait::Synchronous, WAIT);
    let (later, later_answer) = h.submit_watched("later@contoso.com", Wait::Synchronous, WAIT);
    assert_eq!(ok_answer.await.unwrap(), Verdict::TimedOut);
    assert_eq!(later_answer.await.unwrap(), Verdict::TimedOut);
    assert!(
        !h.is_queued(ok) && !h.is_queued(later),
        "removed at the 4xx"
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(attempt.attempts("ok@contoso.com").len(), 1);
    assert_eq!(
        attempt.attempts("later@contoso.com").len(),
        1,
        "not retried"
    );
    assert!(h.list().await.is_empty());
    assert!(h.spool.failed_entries().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_synchronous_message_given_up_while_its_mailbox_is_paused_is_never_attempted() {
    let attempt = Scripted::new(Duration::from_millis(10));
    attempt.answer("a@contoso.com", throttled(60_000));
    let h = start(attempt.clone(), LIMITS);
    h.submit("a@contoso.com");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (id, answer) = h.submit_watched("a@contoso.com", Wait::Synchronous, WAIT);
    assert_eq!(answer.await.unwrap(), Verdict::TimedOut);
    assert!(!h.is_queued(id));
    h.drained(Duration::from_secs(120)).await;
    assert_eq!(
        attempt.attempts("a@contoso.com").len(),
        2,
        "the 429 and its retry; the abandoned message never went out"
    );
}

#[tokio::test(start_paused = true)]
async fn a_waiting_session_gets_an_answer_when_its_message_is_deleted() {
    let attempt = Scripted::new(Duration::from_millis(10));
    attempt.answer("a@contoso.com", throttled(3_600_000));
    let h = start(attempt.clone(), LIMITS);
    h.submit("a@contoso.com");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (id, answer) = h.submit_watched("a@contoso.com", Wait::Hybrid, Duration::from_secs(600));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (tx, rx) = oneshot::channel();
    h.queue.command(Command::Delete(id, tx));
    assert!(rx.await.unwrap().unwrap());
    let started = Instant::now();
    assert_eq!(answer.await.unwrap(), Verdict::Queued);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "did not wait out its limit"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_message_gets_one_notice_unless_its_client_already_knows() {
    let attempt = Scripted::new(Duration::from_millis(10));
    attempt.answer("queued@contoso.com", refused());
    attempt.answer("hybrid@contoso.com", refused());
    attempt.answer("", refused());
    let h = start_with(attempt.clone(), LIMITS, |scheduler| {
        scheduler.with_dsn(crate::queue::dsn::Reporter::new(
            "postmaster@contoso.com",
            "relay.test",
        ))
    });
    let queued = h.submit("queued@contoso.com");
    let (_, answer) = h.submit_watched("hybrid@contoso.com", Wait::Hybrid, WAIT);
    assert_eq!(answer.await.unwrap(), Verdict::Refused);
    h.drained(Duration::from_secs(10)).await;
    // Only the queued message's sender is notified; the notice itself (null reverse-path) was
    // then refused too, and got no notice of its own.
    assert_eq!(attempt.attempts("").len(), 1, "one notice sent");
    let failed = h.spool.failed_entries().unwrap();
    assert_eq!(failed.len(), 3, "both messages and the notice");
    let notice = failed
        .iter()
        .find(|meta| meta.envelope.mail_from.is_empty())
        .unwrap();
    assert_eq!(notice.envelope.rcpt_to, ["queued@contoso.com"]);
    assert!(failed.iter().any(|meta| meta.id == queued));
}

fn paced(
    attempt: Arc<Scripted>,
    messages_per_minute: Option<u32>,
    recipients_per_day: Option<u64>,
) -> Harness {
    start_with(attempt, LIMITS, |scheduler| {
        scheduler.with_pacing(crate::queue::pacing::Pacing {
            messages_per_minute,
            recipients_per_day,
        })
    })
}

#[tokio::test(start_paused = true)]
async fn a_paced_mailbox_sends_at_most_its_messages_per_minute_and_others_flow() {
    let attempt = Scripted::new(Duration::from_millis(100));
    let h = paced(attempt.clone(), Some(3), None);
    let started = Instant::now();
    for _ in 0..7 {
        h.submit("a@contoso.com");
    }
    for _ in 0..2 {
        h.submit("b@contoso.com");
    }
    h.drained(Duration::from_secs(300)).await;
    let starts: Vec<Instant> = attempt
        .attempts("a@contoso.com")
        .iter()
        .map(|(start, _)| *start)
        .collect();
    assert_eq!(starts.len(), 7, "waited, not failed");
    for (i, start) in starts.iter().enumerate() {
        let in_minute = starts
            .iter()
            .filter(|s| **s >= *start && **s < *start + Duration::from_secs(60))
            .count();
        assert!(
            in_minute <= 3,
            "{in_minute} requests in the minute from #{i}"
        );
    }
    // Three at once, three a minute later, the last two minutes later: no slower than needed.
    assert!(
        starts[6] - started < Duration::from_secs(121),
        "{:?}",
        starts[6] - started
    );
    assert!(starts[3] - started >= Duration::from_secs(60));
    assert!(
        attempt
            .attempts("b@contoso.com")
            .iter()
            .all(|(_, end)| *end < started + Duration::from_secs(1)),
        "another mailbox is not held back"
    );
    assert!(h.spool.failed_entries().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_paced_mailbox_waits_for_room_in_its_recipients_per_day() {
    let attempt = Scripted::new(Duration::from_millis(10));
    let h = paced(attempt.clone(), None, Some(3));
    for _ in 0..5 {
        h.submit("a@contoso.com");
    }
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(
        attempt.attempts("a@contoso.com").len(),
        3,
        "in flight counts too"
    );
    let waiting = h.list().await;
    assert_eq!(waiting.len(), 2);
    assert!(waiting.iter().all(|view| view.state == EntryState::Queued));
    // The first deliveries leave the 24-hour window; the rest go then.
    tokio::time::sleep(Duration::from_secs(23 * 3600)).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(attempt.attempts("a@contoso.com").len(), 5);
    h.drained(Duration::from_secs(5)).await;
    assert!(h.spool.failed_entries().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_delivered_entry_that_cannot_be_removed_is_kept_intact_and_removed_later_not_resent() {
    use std::sync::atomic::Ordering::SeqCst;
    let fs = Arc::new(FaultyFs::default());
    fs.read_only.store(true, SeqCst);
    let attempt = Scripted::new(Duration::from_millis(10));
    let h = start_on(attempt.clone(), LIMITS, fs.clone(), |s| s);
    let id = h.submit("a@contoso.com");
    h.drained(Duration::from_secs(5)).await;
    // Ten minutes of a read-only spool: the entry is on disk, whole, and still committed; the
    // message was sent once; the removal is retried about once a minute, not in a busy loop.
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(attempt.attempts("a@contoso.com").len(), 1);
    assert_eq!(h.spool.read_body(id).unwrap(), b"Subject: x\r\n\r\nx\r\n");
    let markers = std::fs::read_dir(h.spool.dir())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("msg".as_ref()))
        .count();
    assert_eq!(markers, 1, "the entry file, its commit marker, stays");
    let tries = fs.removals.load(SeqCst);
    assert!(
        (5..=20).contains(&tries),
        "{tries} removal tries in 10 minutes"
    );
    // Writable again: the next try removes it, and nothing is sent again.
    fs.read_only.store(false, SeqCst);
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert!(!h.is_queued(id));
    assert_eq!(attempt.attempts("a@contoso.com").len(), 1);
    assert_eq!(count(&h.counters, crate::telemetry::MESSAGES_DELIVERED), 1);
}

/// Lets flushes through until closed; then holds each until opened again.
#[derive(Default)]
struct GatedFlush {
    closed: Mutex<bool>,
    opened: std::sync::Condvar,
    held: std::sync::atomic::AtomicUsize,
}

impl GatedFlush {
    fn set_closed(&self, closed: bool) {
        *self.closed.lock().unwrap_or_else(|e| e.into_inner()) = closed;
        self.opened.notify_all();
    }
}

/// Opens the gate when dropped, so a failing test ends instead of waiting on the writer.
struct OpenAtEnd(Arc<GatedFlush>);

impl Drop for OpenAtEnd {
    fn drop(&mut self) {
        self.0.set_closed(false);
    }
}

impl FileOps for GatedFlush {
    fn sync_fs(&self, dir: &std::path::Path) -> std::io::Result<()> {
        let mut closed = self.closed.lock().unwrap();
        if *closed {
            self.held.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            while *closed {
                closed = self.opened.wait(closed).unwrap();
            }
        }
        drop(closed);
        RealFs.sync_fs(dir)
    }
}

/// A mailbox's slot is Graph's to count: it is free as soon as Graph has answered, not after
/// the delivered entry's removal has been flushed (which held every mailbox to a few
/// deliveries per flush).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivered_messages_mailbox_slot_is_free_before_its_removal_is_flushed() {
    let fs = Arc::new(GatedFlush::default());
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open_with(tmp.path(), fs.clone()).unwrap();
    let attempt = Scripted::new(Duration::from_millis(1));
    let one_at_a_time = Limits {
        concurrency: 8,
        per_lane: 1,
    };
    // The real writer thread: removals wait for its flush.
    let h = start_spool(attempt.clone(), one_at_a_time, tmp, spool, |s| s);
    let (a, b) = (h.commit("a@contoso.com"), h.commit("a@contoso.com"));
    fs.set_closed(true);
    // Declared after the harness: dropped, and so opened, before the spool's writer is joined.
    let _open_at_end = OpenAtEnd(fs.clone());
    h.queue.enqueue(a);
    h.queue.enqueue(b);
    let deadline = Instant::now() + Duration::from_secs(10);
    while attempt.attempts("a@contoso.com").len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the second message waited for the first one's removal"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        fs.held.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "no removal was held"
    );
    fs.set_closed(false);
    h.drained(Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.spool.used() > 0 {
        assert!(Instant::now() < deadline, "removals not finished");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
