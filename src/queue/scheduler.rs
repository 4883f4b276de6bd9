//! Decides when each spooled entry is attempted and keeps Graph's limits. Entries wait for their
//! due time, then join the lane of their (authentication profile, mailbox), which is how Graph
//! counts: at most `queue.mailbox_concurrency` requests in flight per lane, lanes served in
//! turn, a lane paused by Retry-After or a configuration fault while the others keep flowing.
//! Each worker applies its own outcome to the spool before it reports, so a delivered message
//! leaves the spool straight after Graph's `202`. An entry whose SMTP session waits for it
//! (acknowledgement modes `synchronous` and `hybrid`) carries a [`Watcher`] to its first attempt.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ack::{self, Claimed, Verdict, Wait, Watch, Watcher};
use super::dsn::{Cause, Reporter};
use super::metrics::Counters;
use super::pacing::{MinuteWindow, Pacing};
use super::pauses::PauseFile;
use super::retry::{Class, Decision, FaultScope, Pause, RetryPolicy};
use super::spool::{EntryMeta, QueueId, Spool, SpoolError};
use crate::delivery::Outcome;

/// Due entries whose lane is being worked out at once (reading and parsing their bodies).
const RESOLVERS: usize = 4;

/// Where Graph counts requests: one authentication profile sending as one mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lane {
    pub profile: Arc<str>,
    /// The sending mailbox, lower-cased.
    pub mailbox: Arc<str>,
}

impl Lane {
    pub fn new(profile: &str, mailbox: &str) -> Self {
        Self {
            profile: profile.into(),
            mailbox: mailbox.to_ascii_lowercase().into(),
        }
    }
}

/// One delivery attempt, as the scheduler needs it; [`crate::delivery::Delivery`] in the
/// relay, a scripted fake in tests.
pub trait Attempt: Send + Sync + 'static {
    /// The lane an entry's requests count against.
    fn lane(&self, meta: &EntryMeta) -> impl Future<Output = Lane> + Send;
    /// Makes one attempt (its 401 retry included) and says what became of it. What the attempt
    /// records in `meta` on the way (a draft id) is persisted with the outcome.
    fn attempt(&self, meta: &mut EntryMeta) -> impl Future<Output = Outcome> + Send;
}

/// Wall-clock milliseconds as persisted in the spool, advanced by tokio's clock, so waits are
/// derived from one source and tests can pause time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch_ms: u64,
    start: tokio::time::Instant,
}

impl Clock {
    /// A clock starting at the current wall-clock time.
    pub fn system() -> Self {
        Self::starting_at(super::spool::now_ms())
    }

    pub fn starting_at(epoch_ms: u64) -> Self {
        Self {
            epoch_ms,
            start: tokio::time::Instant::now(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.epoch_ms + self.start.elapsed().as_millis() as u64
    }

    /// The present rounded up to the next millisecond: a pause computed from it never ends
    /// before its `Retry-After` has run out.
    pub fn now_ms_rounded_up(&self) -> u64 {
        let elapsed = self.start.elapsed();
        let partial = u64::from(!elapsed.subsec_nanos().is_multiple_of(1_000_000));
        self.epoch_ms + elapsed.as_millis() as u64 + partial
    }

    /// The tokio instant of a wall-clock time.
    fn instant(&self, at_ms: u64) -> tokio::time::Instant {
        self.start + Duration::from_millis(at_ms.saturating_sub(self.epoch_ms))
    }
}

/// Where an entry is, as `queue list` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryState {
    /// Due, waiting for a free slot (or a paused mailbox).
    Queued,
    /// Waiting for its next attempt after a failed one.
    Deferred,
    /// Being attempted now.
    InFlight,
    /// In `failed/`.
    Failed,
}

/// One entry as the control interface reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EntryView {
    pub meta: EntryMeta,
    pub state: EntryState,
}

/// Requests from the control interface.
pub enum Command {
    /// Every live entry and its state.
    List(oneshot::Sender<Vec<EntryView>>),
    /// How many live entries are in each state, counted in place (no entry is copied: the
    /// gauges ask every few seconds, whatever the size of the queue).
    Census(oneshot::Sender<Census>),
    /// Attempts these entries (all when `None`) now, lifting their lanes' pauses; answers how
    /// many were found.
    RetryNow(Option<QueueId>, oneshot::Sender<usize>),
    /// Removes an entry that is not in flight; answers whether it was found.
    Delete(QueueId, oneshot::Sender<Result<bool, DeleteError>>),
    /// The credentials changed (reload or rotated file): mailboxes and profiles held back by a
    /// configuration fault send one probe now instead of at the next `queue.fault_retry`.
    CredentialsChanged,
}

/// Live entries by state, and when the oldest of them arrived.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Census {
    pub queued: usize,
    pub deferred: usize,
    pub in_flight: usize,
    pub oldest_received_at_ms: Option<u64>,
}

impl Census {
    fn count(&mut self, meta: &EntryMeta, state: EntryState) {
        match state {
            EntryState::Queued => self.queued += 1,
            EntryState::Deferred => self.deferred += 1,
            EntryState::InFlight => self.in_flight += 1,
            EntryState::Failed => return,
        }
        let at = meta.envelope.received_at_ms;
        self.oldest_received_at_ms = Some(self.oldest_received_at_ms.map_or(at, |o| o.min(at)));
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    #[error("{0} is being delivered right now; try again in a moment")]
    InFlight(QueueId),
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

impl DeleteError {
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::InFlight(_) => true,
            Self::Spool(err) => err.is_retryable(),
        }
    }
}

/// Hands newly committed entries and control requests to the scheduler.
#[derive(Clone)]
pub struct QueueHandle {
    entries: mpsc::UnboundedSender<EntryMeta>,
    watched: mpsc::UnboundedSender<(EntryMeta, Watcher)>,
    commands: mpsc::UnboundedSender<Command>,
}

impl QueueHandle {
    /// A handle whose entries arrive on the returned receiver (for tests of the SMTP side);
    /// its control requests go nowhere.
    pub fn channel() -> (Self, mpsc::UnboundedReceiver<EntryMeta>) {
        let (entries, rx) = mpsc::unbounded_channel();
        let (watched, _) = mpsc::unbounded_channel();
        let (commands, _) = mpsc::unbounded_channel();
        (
            Self {
                entries,
                watched,
                commands,
            },
            rx,
        )
    }

    pub fn enqueue(&self, meta: EntryMeta) {
        // After shutdown the scheduler is gone; the entry is on disk and found at the next start.
        let _ = self.entries.send(meta);
    }

    /// Enqueues an entry whose session waits for its first attempt; see [`Watch::verdict`].
    pub fn enqueue_watched(&self, meta: EntryMeta, wait: Wait) -> Watch {
        let (watch, watcher) = ack::watch(wait);
        // After shutdown the watcher is dropped with the message: the session's wait ends.
        let _ = self.watched.send((meta, watcher));
        watch
    }

    /// Sends a control request; `false` when the scheduler has stopped.
    pub fn command(&self, command: Command) -> bool {
        self.commands.send(command).is_ok()
    }
}

/// How the scheduler is tuned.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Requests in flight across all lanes.
    pub concurrency: usize,
    /// Requests in flight per lane.
    pub per_lane: usize,
}

pub struct Scheduler<A> {
    spool: Arc<Spool>,
    attempt: Arc<A>,
    policy: RetryPolicy,
    limits: Limits,
    clock: Clock,
    counters: Arc<Counters>,
    entries: mpsc::UnboundedReceiver<EntryMeta>,
    watched: mpsc::UnboundedReceiver<(EntryMeta, Watcher)>,
    commands: mpsc::UnboundedReceiver<Command>,
    /// Where workers hand the notices they spool.
    notices: mpsc::UnboundedSender<EntryMeta>,
    dsn: Option<Arc<Reporter>>,
    pacing: Pacing,
}

/// What a worker or resolver reports back to the scheduler loop.
enum Report {
    Resolved(EntryMeta, Lane),
    /// An attempt's answer pauses its lane or profile. Sent as soon as the answer is known,
    /// before the outcome is persisted, so no request leaves for a paused mailbox meanwhile.
    Paused {
        lane: Lane,
        pause: Pause,
        /// A configuration fault's cause and fix, for the one log line of its pause.
        fault: Option<(String, &'static str)>,
    },
    Done {
        lane: Lane,
        id: QueueId,
        delivered: bool,
        retry: Option<EntryMeta>,
    },
}

impl<A: Attempt> Scheduler<A> {
    pub fn new(
        spool: Arc<Spool>,
        attempt: Arc<A>,
        policy: RetryPolicy,
        limits: Limits,
        clock: Clock,
        counters: Arc<Counters>,
    ) -> (Self, QueueHandle) {
        let (entries_tx, entries) = mpsc::unbounded_channel();
        let (watched_tx, watched) = mpsc::unbounded_channel();
        let (commands_tx, commands) = mpsc::unbounded_channel();
        let scheduler = Self {
            spool,
            attempt,
            policy,
            limits,
            clock,
            counters,
            entries,
            watched,
            commands,
            notices: entries_tx.clone(),
            dsn: None,
            pacing: Pacing::default(),
        };
        let handle = QueueHandle {
            entries: entries_tx,
            watched: watched_tx,
            commands: commands_tx,
        };
        (scheduler, handle)
    }

    /// Sends a delivery status notification for each message moved to `failed/` (`queue.dsn_from`).
    pub fn with_dsn(mut self, reporter: Reporter) -> Self {
        self.dsn = Some(Arc::new(reporter));
        self
    }

    /// Keeps each lane within a pace (messages per minute, recipients per day); off by default.
    pub fn with_pacing(mut self, pacing: Pacing) -> Self {
        self.pacing = pacing;
        self
    }

    /// Runs until `shutdown`; workers are tracked by `workers` so shutdown can wait for them.
    pub async fn run(
        mut self,
        recovered: Vec<EntryMeta>,
        shutdown: CancellationToken,
        workers: TaskTracker,
    ) {
        let mut waiting = Waiting::default();
        // Entries due already skip the timer queue, whose table would otherwise grow to the
        // whole backlog at a start and keep that size; they stay in the recovered list's own
        // allocation (no second copy of the backlog at its peak).
        let now = self.clock.now_ms();
        let mut due = recovered;
        for meta in due.extract_if(.., |meta| meta.next_attempt_at_ms > now) {
            waiting.push(meta, None);
        }
        let mut held = Held {
            unresolved: VecDeque::from(due),
            ..Held::default()
        };
        let mut lanes = Lanes::new(self.limits.per_lane, self.pacing);
        // Retry-After pauses of the process before this one (killed, perhaps) still hold.
        let pause_file = PauseFile::new(self.spool.dir());
        for (lane, until_ms) in pause_file.load(self.clock.now_ms()) {
            let pause = Pause {
                scope: FaultScope::Mailbox,
                until_ms,
                probe: false,
            };
            lanes.pause(&lane, pause);
        }
        let (pauses, kept) = watch::channel(lanes.throttle_pauses(self.clock.now_ms()));
        workers.spawn(keep_pauses(pause_file, kept, shutdown.clone()));
        let publish = |lanes: &Lanes| {
            let now = lanes.throttle_pauses(self.clock.now_ms());
            pauses.send_if_modified(|kept| {
                let changed = *kept != now;
                *kept = now;
                changed
            });
        };
        let (report_tx, mut report_rx) = mpsc::unbounded_channel::<Report>();
        loop {
            let now = self.clock.now_ms();
            while let Some((meta, lane)) = waiting.pop_due(now) {
                match lane {
                    Some(lane) => lanes.push(lane, meta),
                    None => held.unresolved.push_back(meta),
                }
            }
            while held.resolving.len() < RESOLVERS
                && let Some(meta) = held.unresolved.pop_front()
            {
                held.resolving.insert(meta.id, meta.clone());
                let attempt = self.attempt.clone();
                let tx = report_tx.clone();
                workers.spawn(async move {
                    let lane = attempt.lane(&meta).await;
                    let _ = tx.send(Report::Resolved(meta, lane));
                });
            }
            // The backlog recovered at a start is handed out: its buffer goes back.
            if held.unresolved.is_empty() && held.unresolved.capacity() > 1024 {
                held.unresolved = VecDeque::new();
            }
            while held.in_flight.len() < self.limits.concurrency
                && let Some((lane, meta)) = lanes.next(now, &self.counters)
            {
                held.in_flight.insert(meta.id, meta.clone());
                let watcher = held.watchers.remove(&meta.id);
                let worker = Worker {
                    spool: self.spool.clone(),
                    attempt: self.attempt.clone(),
                    policy: self.policy,
                    clock: self.clock,
                    counters: self.counters.clone(),
                    dsn: self.dsn.clone(),
                    notices: self.notices.clone(),
                    reports: report_tx.clone(),
                };
                let tx = report_tx.clone();
                workers.spawn(async move {
                    if let Some(report) = worker.deliver(lane, meta, watcher).await {
                        let _ = tx.send(report);
                    }
                });
            }
            let wake = [waiting.next_at(), lanes.next_wake(now)]
                .into_iter()
                .flatten()
                .min()
                .map(|at| self.clock.instant(at));
            tokio::select! {
                () = shutdown.cancelled() => return,
                Some(meta) = self.entries.recv() => waiting.push(meta, None),
                Some((meta, watcher)) = self.watched.recv() => {
                    held.watchers.insert(meta.id, watcher);
                    waiting.push(meta, None);
                }
                Some(command) = self.commands.recv() => {
                    // Entries committed before the request was made are part of its answer.
                    while let Ok(meta) = self.entries.try_recv() {
                        waiting.push(meta, None);
                    }
                    while let Ok((meta, watcher)) = self.watched.try_recv() {
                        held.watchers.insert(meta.id, watcher);
                        waiting.push(meta, None);
                    }
                    self.command(command, &mut waiting, &mut lanes, &mut held);
                    publish(&lanes);
                }
                Some(report) = report_rx.recv() => match report {
                    Report::Resolved(meta, lane) => {
                        held.resolving.remove(&meta.id);
                        lanes.push(lane, meta);
                    }
                    Report::Paused { lane, pause, fault } => {
                        let newly = lanes.pause(&lane, pause);
                        publish(&lanes);
                        if let (true, Some((cause, fix))) = (newly, fault) {
                            let scope = match pause.scope {
                                FaultScope::Mailbox => "mailbox",
                                FaultScope::Profile => "authentication profile",
                            };
                            tracing::error!(
                                profile = %lane.profile,
                                mailbox = %lane.mailbox,
                                %cause,
                                fix,
                                retry_in_s = pause.until_ms.saturating_sub(self.clock.now_ms()) / 1000,
                                "configuration fault: {scope} paused, its messages stay queued; fix: {fix}"
                            );
                        }
                    }
                    Report::Done { lane, id, delivered, retry } => {
                        let recipients = held
                            .in_flight
                            .remove(&id)
                            .map_or(0, |meta| meta.envelope.rcpt_to.len() as u64);
                        lanes.done(&lane, delivered, recipients);
                        if let Some(meta) = retry {
                            waiting.push(meta, Some(lane));
                        }
                    }
                },
                () = sleep_until(wake) => {}
            }
        }
    }

    fn command(&self, command: Command, waiting: &mut Waiting, lanes: &mut Lanes, held: &mut Held) {
        let now = self.clock.now_ms();
        match command {
            Command::Census(reply) => {
                let mut census = Census::default();
                for (meta, _) in waiting.entries.values() {
                    census.count(meta, waiting_state(meta, now));
                }
                for meta in lanes
                    .entries()
                    .chain(&held.unresolved)
                    .chain(held.resolving.values())
                {
                    census.count(meta, EntryState::Queued);
                }
                for meta in held.in_flight.values() {
                    census.count(meta, EntryState::InFlight);
                }
                let _ = reply.send(census);
            }
            Command::List(reply) => {
                let mut views: Vec<EntryView> = waiting
                    .entries
                    .values()
                    .map(|(meta, _)| EntryView {
                        meta: meta.clone(),
                        state: waiting_state(meta, now),
                    })
                    .chain(
                        lanes
                            .entries()
                            .chain(&held.unresolved)
                            .chain(held.resolving.values())
                            .map(|meta| EntryView {
                                meta: meta.clone(),
                                state: EntryState::Queued,
                            }),
                    )
                    .chain(held.in_flight.values().map(|meta| EntryView {
                        meta: meta.clone(),
                        state: EntryState::InFlight,
                    }))
                    .collect();
                views.sort_by_key(|view| view.meta.id);
                let _ = reply.send(views);
            }
            Command::RetryNow(id, reply) => {
                let found = waiting.make_due(id, now, |lane| lanes.lift(lane)) + lanes.lift_for(id);
                let _ = reply.send(found);
            }
            Command::CredentialsChanged => {
                let faulted: Vec<QueueId> = waiting
                    .entries
                    .iter()
                    .filter(|(_, (_, lane))| {
                        lane.as_ref().is_some_and(|lane| lanes.is_faulted(lane))
                    })
                    .map(|(id, _)| *id)
                    .collect();
                for id in faulted {
                    waiting.make_due(Some(id), now, |lane| lanes.lift(lane));
                }
                lanes.lift_faults();
            }
            Command::Delete(id, reply) => {
                let result = if held.in_flight.contains_key(&id) || held.resolving.contains_key(&id)
                {
                    Err(DeleteError::InFlight(id))
                } else if waiting.remove(id) || lanes.remove(id) || held.remove_unresolved(id) {
                    // A session waiting for it stops waiting (and answers as its mode says).
                    held.watchers.remove(&id);
                    // Off the scheduler's loop: the removal waits for a flush.
                    let spool = self.spool.clone();
                    tokio::spawn(async move {
                        let removed = spool.remove_async(id).await;
                        let _ = reply.send(removed.map(|()| true).map_err(Into::into));
                    });
                    return;
                } else {
                    Ok(false)
                };
                let _ = reply.send(result);
            }
        }
    }
}

/// Writes each new list of throttling pauses to `file`, one write at a time, so the last
/// list is the one kept.
async fn keep_pauses(
    file: PauseFile,
    mut pauses: watch::Receiver<Vec<(Lane, u64)>>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = pauses.changed() => {
                if changed.is_err() {
                    return;
                }
                let list = pauses.borrow_and_update().clone();
                let file = file.clone();
                match tokio::task::spawn_blocking(move || file.store(&list)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => {
                        tracing::warn!(error = %err, "cannot keep throttling pauses for a restart");
                    }
                    Err(err) => tracing::warn!(error = %err, "throttling pause task failed"),
                }
            }
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Entries the loop holds outside [`Waiting`] and [`Lanes`].
#[derive(Default)]
struct Held {
    /// Due, lane not known yet.
    unresolved: VecDeque<EntryMeta>,
    /// Lane being worked out.
    resolving: HashMap<QueueId, EntryMeta>,
    /// Being attempted.
    in_flight: HashMap<QueueId, EntryMeta>,
    /// Sessions waiting for an entry's first attempt.
    watchers: HashMap<QueueId, Watcher>,
}

impl Held {
    fn remove_unresolved(&mut self, id: QueueId) -> bool {
        let before = self.unresolved.len();
        self.unresolved.retain(|meta| meta.id != id);
        self.unresolved.len() != before
    }
}

/// Entries waiting for their due time, earliest first; the lane is kept once known.
#[derive(Default)]
struct Waiting {
    order: BinaryHeap<Reverse<(u64, QueueId)>>,
    entries: HashMap<QueueId, (EntryMeta, Option<Lane>)>,
}

impl Waiting {
    fn push(&mut self, meta: EntryMeta, lane: Option<Lane>) {
        self.order.push(Reverse((meta.next_attempt_at_ms, meta.id)));
        self.entries.insert(meta.id, (meta, lane));
    }

    /// Drops heap items whose entry was removed or rescheduled.
    fn skip_stale(&mut self) {
        while let Some(Reverse((at, id))) = self.order.peek() {
            match self.entries.get(id) {
                Some((meta, _)) if meta.next_attempt_at_ms == *at => return,
                _ => {
                    self.order.pop();
                }
            }
        }
    }

    fn next_at(&mut self) -> Option<u64> {
        self.skip_stale();
        self.order.peek().map(|Reverse((at, _))| *at)
    }

    fn pop_due(&mut self, now: u64) -> Option<(EntryMeta, Option<Lane>)> {
        if self.next_at()? > now {
            return None;
        }
        let Reverse((_, id)) = self.order.pop()?;
        self.entries.remove(&id)
    }

    fn remove(&mut self, id: QueueId) -> bool {
        self.entries.remove(&id).is_some()
    }

    /// Makes `id` (or every entry) due now; returns how many, calling `lift` for known lanes.
    fn make_due(&mut self, id: Option<QueueId>, now: u64, mut lift: impl FnMut(&Lane)) -> usize {
        let ids: Vec<QueueId> = match id {
            Some(id) => self
                .entries
                .contains_key(&id)
                .then_some(id)
                .into_iter()
                .collect(),
            None => self.entries.keys().copied().collect(),
        };
        for id in &ids {
            if let Some((mut meta, lane)) = self.entries.remove(id) {
                if let Some(lane) = &lane {
                    lift(lane);
                }
                meta.next_attempt_at_ms = now;
                self.push(meta, lane);
            }
        }
        ids.len()
    }
}

/// The lanes with due work, served in turn.
struct Lanes {
    lanes: HashMap<Lane, LaneState>,
    /// Lanes with waiting entries, in service order; each appears once.
    turn: VecDeque<Lane>,
    per_lane: usize,
    pacing: Pacing,
    /// Pauses of whole authentication profiles, applied to lanes created later too.
    profile_pauses: HashMap<Arc<str>, Pause>,
}

#[derive(Default)]
struct LaneState {
    waiting: VecDeque<EntryMeta>,
    in_flight: usize,
    paused_until: u64,
    /// After a configuration fault: one request at a time until one is delivered.
    probing: bool,
    in_turn: bool,
    /// With pacing: when the next entry may go, and what the pace counts.
    paced_until: u64,
    sent: MinuteWindow,
    in_flight_recipients: u64,
}

impl Lanes {
    fn new(per_lane: usize, pacing: Pacing) -> Self {
        Self {
            lanes: HashMap::new(),
            turn: VecDeque::new(),
            per_lane,
            pacing,
            profile_pauses: HashMap::new(),
        }
    }

    fn state(&mut self, lane: &Lane) -> &mut LaneState {
        let pause = self.profile_pauses.get(&lane.profile).copied();
        self.lanes.entry(lane.clone()).or_insert_with(|| {
            let mut state = LaneState::default();
            if let Some(pause) = pause {
                state.paused_until = pause.until_ms;
                state.probing = pause.probe;
            }
            state
        })
    }

    fn push(&mut self, lane: Lane, meta: EntryMeta) {
        let state = self.state(&lane);
        state.waiting.push_back(meta);
        if !state.in_turn {
            state.in_turn = true;
            self.turn.push_back(lane);
        }
    }

    /// The next entry to send: lanes take turns, one entry each, skipping paused, full and
    /// paced ones. `counters` keeps the recipients each mailbox sent to over 24 hours.
    fn next(&mut self, now: u64, counters: &Counters) -> Option<(Lane, EntryMeta)> {
        for _ in 0..self.turn.len() {
            let lane = self.turn.pop_front()?;
            let (per_lane, pacing) = (self.per_lane, self.pacing);
            let state = self.lanes.get_mut(&lane)?;
            let limit = if state.probing { 1 } else { per_lane };
            let recipients = state
                .waiting
                .front()
                .map_or(0, |meta| meta.envelope.rcpt_to.len() as u64);
            // Recipients in flight count too: they are not in the window until delivered.
            let ready = if state.paused_until <= now && state.in_flight < limit && recipients > 0 {
                let ready = pacing.ready_at(
                    now,
                    &mut state.sent,
                    state.in_flight_recipients,
                    recipients,
                    |per_day, extra| {
                        counters.recipients_room_at(&lane.mailbox, now, per_day, extra)
                    },
                );
                // Without an answer, the end of a request in flight wakes the loop.
                state.paced_until = ready.unwrap_or(now);
                ready.is_some_and(|at| at <= now)
            } else {
                false
            };
            if ready
                && state.in_flight < limit
                && let Some(meta) = state.waiting.pop_front()
            {
                state.in_flight += 1;
                state.in_flight_recipients += recipients;
                if pacing.messages_per_minute.is_some() {
                    state.sent.record(now);
                }
                if state.waiting.is_empty() {
                    state.in_turn = false;
                } else {
                    self.turn.push_back(lane.clone());
                }
                return Some((lane, meta));
            }
            self.turn.push_back(lane);
        }
        None
    }

    /// When a paused or paced lane with waiting entries may send again.
    fn next_wake(&self, now: u64) -> Option<u64> {
        self.lanes
            .values()
            .filter(|state| !state.waiting.is_empty())
            .map(|state| state.paused_until.max(state.paced_until))
            .filter(|at| *at > now)
            .min()
    }

    fn done(&mut self, lane: &Lane, delivered: bool, recipients: u64) {
        let pacing_off = self.pacing.is_off();
        let state = self.state(lane);
        state.in_flight = state.in_flight.saturating_sub(1);
        state.in_flight_recipients = state.in_flight_recipients.saturating_sub(recipients);
        if delivered {
            state.probing = false;
        }
        // A paced lane keeps its send times.
        let forget = state.in_flight == 0
            && state.waiting.is_empty()
            && state.paused_until == 0
            && pacing_off;
        if forget {
            self.lanes.remove(lane);
        }
    }

    /// Pauses a lane or its whole profile; `true` when this starts a new pause.
    fn pause(&mut self, lane: &Lane, pause: Pause) -> bool {
        let apply = |state: &mut LaneState| {
            let newly = state.paused_until < pause.until_ms && !state.probing;
            state.paused_until = state.paused_until.max(pause.until_ms);
            state.probing |= pause.probe;
            newly
        };
        match pause.scope {
            FaultScope::Mailbox => apply(self.state(lane)),
            FaultScope::Profile => {
                let newly = !self.profile_pauses.contains_key(&lane.profile);
                self.profile_pauses.insert(lane.profile.clone(), pause);
                self.state(lane);
                for (_, state) in self
                    .lanes
                    .iter_mut()
                    .filter(|(l, _)| l.profile == lane.profile)
                {
                    apply(state);
                }
                newly
            }
        }
    }

    /// The running Retry-After pauses (not configuration faults'), in lane order.
    fn throttle_pauses(&self, now: u64) -> Vec<(Lane, u64)> {
        let mut pauses: Vec<(Lane, u64)> = self
            .lanes
            .iter()
            .filter(|(_, state)| state.paused_until > now && !state.probing)
            .map(|(lane, state)| (lane.clone(), state.paused_until))
            .collect();
        pauses.sort();
        pauses
    }

    /// Whether `lane` is held back by a configuration fault (of its own or of its profile).
    fn is_faulted(&self, lane: &Lane) -> bool {
        self.lanes.get(lane).is_some_and(|state| state.probing)
            || self
                .profile_pauses
                .get(&lane.profile)
                .is_some_and(|pause| pause.probe)
    }

    /// Lifts every configuration-fault pause; the lanes stay probing (one request at a time)
    /// until a delivery succeeds. Throttling pauses (Retry-After) stay.
    fn lift_faults(&mut self) {
        self.profile_pauses.retain(|_, pause| !pause.probe);
        for state in self.lanes.values_mut().filter(|state| state.probing) {
            state.paused_until = 0;
        }
    }

    /// Lifts a lane's pause (an operator asked for a retry now).
    fn lift(&mut self, lane: &Lane) {
        self.profile_pauses.remove(&lane.profile);
        if let Some(state) = self.lanes.get_mut(lane) {
            state.paused_until = 0;
        }
    }

    /// Lifts the pause of the lane holding `id` (every lane when `None`); returns how many
    /// entries that makes sendable.
    fn lift_for(&mut self, id: Option<QueueId>) -> usize {
        self.profile_pauses.retain(|_, _| id.is_some());
        let mut found = 0;
        for state in self.lanes.values_mut() {
            let holds = match id {
                Some(id) => state.waiting.iter().any(|meta| meta.id == id),
                None => !state.waiting.is_empty(),
            };
            if holds {
                state.paused_until = 0;
                found += match id {
                    Some(_) => 1,
                    None => state.waiting.len(),
                };
            }
        }
        found
    }

    fn remove(&mut self, id: QueueId) -> bool {
        for state in self.lanes.values_mut() {
            if let Some(at) = state.waiting.iter().position(|meta| meta.id == id) {
                state.waiting.remove(at);
                return true;
            }
        }
        false
    }

    fn entries(&self) -> impl Iterator<Item = &EntryMeta> {
        self.lanes.values().flat_map(|state| state.waiting.iter())
    }
}

struct Worker<A> {
    spool: Arc<Spool>,
    attempt: Arc<A>,
    policy: RetryPolicy,
    clock: Clock,
    counters: Arc<Counters>,
    dsn: Option<Arc<Reporter>>,
    notices: mpsc::UnboundedSender<EntryMeta>,
    /// For [`Report::Paused`], ahead of this worker's [`Report::Done`].
    reports: mpsc::UnboundedSender<Report>,
}

impl<A: Attempt> Worker<A> {
    /// Attempts one delivery and records the outcome in the spool before reporting it. With a
    /// watcher, the session waiting for this first attempt is told the verdict, unless it
    /// stopped waiting first and so decided the entry's fate itself. `None`: reported already.
    async fn deliver(
        self,
        lane: Lane,
        mut meta: EntryMeta,
        watcher: Option<Watcher>,
    ) -> Option<Report> {
        let id = meta.id;
        if watcher.as_ref().is_some_and(Watcher::dropped) {
            tracing::info!(queue_id = %id, "not attempted: its SMTP client was told to try again");
            return Some(Report::done(lane, id, false));
        }
        let outcome = self.attempt.attempt(&mut meta).await;
        meta.attempts += 1;
        let answered = !matches!(
            outcome,
            Outcome::NotDelivered {
                class: Class::Transient | Class::Ambiguous,
                ..
            }
        );
        self.counters.upstream(&lane.profile, answered);
        let (watcher, dropped) = match watcher.map(Watcher::claim) {
            Some(Claimed::Worker(watcher)) => (Some(watcher), false),
            Some(Claimed::Dropped) => (None, true),
            Some(Claimed::Kept) | None => (None, false),
        };
        let spool = self.spool.clone();
        let (class, retry_after, reason) = match outcome {
            Outcome::Delivered => {
                self.counters.delivered();
                tracing::info!(
                    event = "message_delivered",
                    queue_id = %id,
                    client = %meta.envelope.client,
                    listener = meta.envelope.origin.as_ref().map_or("", |o| o.listener.as_str()),
                    user = meta.envelope.origin.as_ref().and_then(|o| o.user.as_deref()).unwrap_or(""),
                    mail_from = %meta.envelope.mail_from,
                    recipients = %meta.envelope.rcpt_to.join(","),
                    mailbox = %lane.mailbox,
                    attempts = meta.attempts,
                    queued_ms = self.clock.now_ms().saturating_sub(meta.envelope.received_at_ms),
                    "message delivered"
                );
                self.counters.recipients(
                    &lane.mailbox,
                    meta.envelope.rcpt_to.len(),
                    self.clock.now_ms(),
                );
                if let Some(watcher) = watcher {
                    watcher.tell(Verdict::Delivered);
                }
                // Graph has answered, so the mailbox's slot is free: the report goes first and
                // the removal (a flush away) follows; this task stays tracked until it is done,
                // so a shutdown waits for it.
                let _ = self.reports.send(Report::done(lane, id, true));
                // A dropped entry's files are gone already.
                if !dropped {
                    remove_done(spool, id).await;
                }
                return None;
            }
            Outcome::NotDelivered {
                class,
                retry_after,
                reason,
            } => (class, retry_after, reason),
        };
        let decision = self.policy.decide(
            class,
            retry_after,
            meta.attempts,
            meta.envelope.received_at_ms,
            self.clock.now_ms_rounded_up(),
            fastrand::f64(),
        );
        let fault = match class {
            Class::ConfigFault { fix, .. } => {
                self.counters.config_fault();
                Some((reason.clone(), fix))
            }
            _ => None,
        };
        if let Decision::Retry {
            pause: Some(pause), ..
        } = decision
        {
            let _ = self.reports.send(Report::Paused {
                lane: lane.clone(),
                pause,
                fault,
            });
        }
        // Entries whose client was told to try again are not kept: the client sends them again.
        let not_kept = dropped
            || (watcher.as_ref().map(Watcher::wait) == Some(Wait::Synchronous)
                && matches!(decision, Decision::Retry { .. }));
        if not_kept {
            tracing::info!(
                queue_id = %id,
                mailbox = %lane.mailbox,
                %reason,
                "not delivered; its SMTP client was told to try again, so it is not kept"
            );
            if !dropped {
                remove_done(spool, id).await;
            }
            if let Some(watcher) = watcher {
                watcher.tell(Verdict::TryLater);
            }
            return Some(Report::done(lane, id, false));
        }
        match decision {
            Decision::Retry { at_ms, .. } => {
                self.counters.retried();
                match class {
                    Class::Ambiguous => self.counters.ambiguous_retry(),
                    Class::Throttled => self.counters.throttled(&lane.mailbox),
                    _ => {}
                }
                tracing::info!(
                    queue_id = %id,
                    mailbox = %lane.mailbox,
                    attempts = meta.attempts,
                    retry_in_ms = at_ms.saturating_sub(self.clock.now_ms()),
                    %reason,
                    "delivery deferred"
                );
                meta.next_attempt_at_ms = at_ms;
                meta.last_error = Some(reason);
                let persisted = meta.clone();
                let result = tokio::task::spawn_blocking(move || spool.update(&persisted)).await;
                log_spool_result(id, result);
                if let Some(watcher) = watcher {
                    watcher.tell(Verdict::Queued);
                }
                Some(Report::Done {
                    lane,
                    id,
                    delivered: false,
                    retry: Some(meta),
                })
            }
            Decision::Fail { why } => {
                let (label, cause) = failure_cause(why);
                self.counters.failed(label);
                meta.last_error = Some(format!("{why}: {reason}"));
                tracing::warn!(
                    event = "message_failed",
                    queue_id = %id,
                    client = %meta.envelope.client,
                    listener = meta.envelope.origin.as_ref().map_or("", |o| o.listener.as_str()),
                    user = meta.envelope.origin.as_ref().and_then(|o| o.user.as_deref()).unwrap_or(""),
                    mailbox = %lane.mailbox,
                    mail_from = %meta.envelope.mail_from,
                    recipients = meta.envelope.rcpt_to.len(),
                    attempts = meta.attempts,
                    reason = meta.last_error.as_deref().unwrap_or(""),
                    "message failed; moved to failed/"
                );
                // A client answered 554 in the session knows already: no notice.
                let reporter = self
                    .dsn
                    .clone()
                    .filter(|_| watcher.is_none() && Reporter::wants(&meta));
                let failed = meta.clone();
                let now_ms = self.clock.now_ms();
                let result = tokio::task::spawn_blocking(move || {
                    let original = reporter.as_ref().map(|_| spool.read_body(id));
                    spool.fail(&failed)?;
                    if let (Some(reporter), Some(original)) = (reporter, original) {
                        let notice = original.map_err(Into::into).and_then(|original| {
                            reporter.spool(&spool, &failed, cause, &original, now_ms)
                        });
                        return Ok(Some(notice));
                    }
                    Ok(None)
                })
                .await;
                let notice = match result {
                    Ok(Ok(notice)) => notice,
                    other => {
                        log_spool_result(id, other.map(|r| r.map(drop)));
                        None
                    }
                };
                match notice {
                    Some(Ok(mut notice)) => {
                        // Due now by the scheduler's clock (the spool stamps the system's).
                        notice.next_attempt_at_ms = now_ms;
                        tracing::info!(queue_id = %id, notice = %notice.id, to = %meta.envelope.mail_from, "delivery status notification queued");
                        let _ = self.notices.send(notice);
                    }
                    Some(Err(err)) => {
                        tracing::error!(queue_id = %id, error = %err, "cannot queue a delivery status notification");
                    }
                    None => {}
                }
                if let Some(watcher) = watcher {
                    watcher.tell(Verdict::Refused);
                }
                Some(Report::done(lane, id, false))
            }
        }
    }
}

impl Report {
    /// An attempt that leaves nothing to retry.
    fn done(lane: Lane, id: QueueId, delivered: bool) -> Self {
        Self::Done {
            lane,
            id,
            delivered,
            retry: None,
        }
    }
}

/// The `reason` label and the notice's cause of a failed message, from the policy's explanation.
fn failure_cause(why: &str) -> (&'static str, Cause) {
    match why {
        "refused" => ("refused", Cause::Refused),
        "too large for one request" => ("too_large", Cause::TooLarge),
        _ => ("expired", Cause::Expired),
    }
}

/// How long a failed removal waits before its next try: doubling up to a minute, so a spool
/// that stays read-only costs one try a minute, not a busy loop.
const REMOVAL_RETRY: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(60));

/// Removes the entry of a message that is done (delivered, or not kept). When the spool
/// refuses (read-only, I/O errors) the entry stays on disk intact and the removal is retried
/// in the background until it succeeds, so this process does not send the message again; only
/// a restart before then finds the entry and sends it again, as the error says.
async fn remove_done(spool: Arc<Spool>, id: QueueId) {
    let error = match spool.remove_async(id).await {
        Ok(()) => return,
        Err(err) => err.to_string(),
    };
    tracing::error!(
        queue_id = %id,
        %error,
        "message done but its spool entry cannot be removed; retrying the removal (a restart before it succeeds sends the message again)"
    );
    tokio::spawn(async move {
        let mut wait = REMOVAL_RETRY.0;
        loop {
            tokio::time::sleep(wait).await;
            match spool.remove_async(id).await {
                Ok(()) => {
                    tracing::info!(queue_id = %id, "spool entry of a finished message removed after all");
                    return;
                }
                // Its commit marker is gone already: nothing will send it again.
                Err(SpoolError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    return;
                }
                _ => wait = (wait * 2).min(REMOVAL_RETRY.1),
            }
        }
    });
}

/// A waiting entry is deferred once an attempt has put it off, else queued.
fn waiting_state(meta: &EntryMeta, now_ms: u64) -> EntryState {
    if meta.next_attempt_at_ms > now_ms && meta.attempts > 0 {
        EntryState::Deferred
    } else {
        EntryState::Queued
    }
}

fn log_spool_result(id: QueueId, result: Result<Result<(), SpoolError>, tokio::task::JoinError>) {
    match result {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            tracing::error!(queue_id = %id, error = %err, "cannot record the delivery outcome in the spool");
        }
        Err(err) => tracing::error!(queue_id = %id, error = %err, "spool task failed"),
    }
}

#[cfg(test)]
mod tests;
