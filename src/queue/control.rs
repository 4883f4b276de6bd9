//! The queue's admin interface: `graph-relay queue …` asks a running daemon through an
//! owner-only Unix socket in `queue.dir` (never HTTP), one JSON request line and one JSON
//! answer line per connection. With the daemon stopped, the same requests are answered from
//! the spool directly ([`answer_offline`]).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::metrics::Counters;
use super::pauses::PauseFile;
use super::scheduler::{Command, EntryState, EntryView, QueueHandle};
use super::spool::{EntryMeta, QueueId, Spool, now_ms};
use crate::telemetry::{QUEUE_MESSAGES, QUEUE_OLDEST_AGE};

/// The socket's name in `queue.dir`.
pub const SOCKET: &str = "control.sock";

/// Longest request line accepted.
const MAX_REQUEST: usize = 4096;

pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    List,
    Show {
        id: QueueId,
    },
    /// One entry (live or failed) now; `None`: every live entry now.
    Retry {
        id: Option<QueueId>,
    },
    Delete {
        id: QueueId,
    },
    Stats,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Answer {
    Entries(Vec<EntryView>),
    /// How many entries the request changed.
    Changed(usize),
    Stats(Stats),
}

/// `queue stats`: counts by state, plus the delivery counters of a running daemon.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    pub queued: usize,
    pub deferred: usize,
    pub in_flight: usize,
    pub failed: usize,
    /// When the oldest entry not in `failed/` arrived.
    #[serde(default)]
    pub oldest_received_at_ms: Option<u64>,
    pub counters: Vec<(String, u64)>,
}

impl Stats {
    fn of(entries: &[EntryView]) -> Self {
        let count = |state| entries.iter().filter(|e| e.state == state).count();
        Self {
            queued: count(EntryState::Queued),
            deferred: count(EntryState::Deferred),
            in_flight: count(EntryState::InFlight),
            failed: count(EntryState::Failed),
            oldest_received_at_ms: entries
                .iter()
                .filter(|e| e.state != EntryState::Failed)
                .map(|e| e.meta.envelope.received_at_ms)
                .min(),
            counters: Vec::new(),
        }
    }
}

fn failed_views(spool: &Spool) -> Result<Vec<EntryView>, String> {
    let failed = spool.failed_entries().map_err(|err| err.to_string())?;
    Ok(failed
        .into_iter()
        .map(|meta| EntryView {
            meta,
            state: EntryState::Failed,
        })
        .collect())
}

fn show(entries: Vec<EntryView>, id: QueueId) -> Result<Answer, String> {
    let found: Vec<EntryView> = entries.into_iter().filter(|e| e.meta.id == id).collect();
    if found.is_empty() {
        return Err(format!("no entry {id} in the queue or in failed/"));
    }
    Ok(Answer::Entries(found))
}

/// Answers a request from the spool of a stopped daemon (`entries`: what it recovered).
///
/// # Errors
/// The entry does not exist or the spool cannot be changed; as a message for the operator.
pub fn answer_offline(
    spool: &Spool,
    entries: Vec<EntryMeta>,
    request: Request,
) -> Result<Answer, String> {
    let now = now_ms();
    let live = |entries: Vec<EntryMeta>| -> Vec<EntryView> {
        entries
            .into_iter()
            .map(|meta| EntryView {
                state: if meta.attempts > 0 && meta.next_attempt_at_ms > now {
                    EntryState::Deferred
                } else {
                    EntryState::Queued
                },
                meta,
            })
            .collect()
    };
    match request {
        Request::List => Ok(Answer::Entries(
            live(entries)
                .into_iter()
                .chain(failed_views(spool)?)
                .collect(),
        )),
        Request::Show { id } => show(
            live(entries)
                .into_iter()
                .chain(failed_views(spool)?)
                .collect(),
            id,
        ),
        Request::Stats => {
            let all: Vec<EntryView> = live(entries)
                .into_iter()
                .chain(failed_views(spool)?)
                .collect();
            Ok(Answer::Stats(Stats::of(&all)))
        }
        Request::Retry { id } => {
            let mut changed = 0;
            for mut meta in entries
                .into_iter()
                .filter(|m| id.is_none_or(|id| m.id == id))
            {
                meta.next_attempt_at_ms = now;
                spool.update(&meta).map_err(|err| err.to_string())?;
                changed += 1;
            }
            if let (Some(id), 0) = (id, changed) {
                spool.requeue(id).map_err(|err| err.to_string())?;
                changed = 1;
            }
            // As the daemon's `--all` lifts every pause, so does this one the kept Retry-After
            // pauses; one entry's mailbox is not known without its parsed message, so a single
            // retry keeps them.
            if id.is_none() {
                PauseFile::new(spool.dir())
                    .store(&[])
                    .map_err(|err| format!("cannot lift the kept Retry-After pauses: {err}"))?;
            }
            Ok(Answer::Changed(changed))
        }
        Request::Delete { id } => {
            if entries.iter().any(|m| m.id == id) {
                spool.remove(id).map_err(|err| err.to_string())?;
                return Ok(Answer::Changed(1));
            }
            let deleted = spool.delete_failed(id).map_err(|err| err.to_string())?;
            Ok(Answer::Changed(usize::from(deleted)))
        }
    }
}

/// The running daemon's side: the scheduler knows the live entries, the spool the failed ones.
struct Live {
    spool: Arc<Spool>,
    queue: QueueHandle,
    counters: Arc<Counters>,
}

const STOPPED: &str = "the scheduler is stopping";
/// How often the queue gauges of `/metrics` are brought up to date.
const GAUGE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

impl Live {
    /// `graph_relay_queue_messages{state}` and `graph_relay_queue_oldest_age_seconds`.
    async fn export_gauges(&self) {
        let Ok(stats) = self.stats().await else {
            return;
        };
        for (state, count) in [
            ("queued", stats.queued),
            ("deferred", stats.deferred),
            ("in_flight", stats.in_flight),
            ("failed", stats.failed),
        ] {
            metrics::gauge!(QUEUE_MESSAGES, "state" => state).set(count as f64);
        }
        let age_ms = stats
            .oldest_received_at_ms
            .map_or(0, |at| now_ms().saturating_sub(at));
        metrics::gauge!(QUEUE_OLDEST_AGE).set(age_ms as f64 / 1000.0);
    }

    /// Counts by state, the live ones counted by the scheduler in place.
    async fn stats(&self) -> Result<Stats, String> {
        let census = self.ask(Command::Census).await?;
        let failed = self
            .blocking(|spool| spool.failed_count().map_err(|err| err.to_string()))
            .await?;
        Ok(Stats {
            queued: census.queued,
            deferred: census.deferred,
            in_flight: census.in_flight,
            failed,
            oldest_received_at_ms: census.oldest_received_at_ms,
            counters: Vec::new(),
        })
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, String> {
        let (tx, rx) = oneshot::channel();
        if !self.queue.command(command(tx)) {
            return Err(STOPPED.into());
        }
        rx.await.map_err(|_| STOPPED.to_string())
    }

    async fn entries(&self) -> Result<Vec<EntryView>, String> {
        let mut entries = self.ask(Command::List).await?;
        entries.extend(self.blocking(failed_views).await?);
        Ok(entries)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Spool) -> Result<T, String> + Send + 'static,
    ) -> Result<T, String> {
        let spool = self.spool.clone();
        tokio::task::spawn_blocking(move || f(&spool))
            .await
            .map_err(|err| err.to_string())?
    }

    async fn answer(&self, request: Request) -> Result<Answer, String> {
        match request {
            Request::List => Ok(Answer::Entries(self.entries().await?)),
            Request::Show { id } => show(self.entries().await?, id),
            Request::Stats => {
                let mut stats = self.stats().await?;
                stats.counters = self
                    .counters
                    .snapshot()
                    .iter()
                    .map(|(name, value)| (name.to_string(), *value))
                    .collect();
                Ok(Answer::Stats(stats))
            }
            Request::Retry { id } => {
                let found = self.ask(|tx| Command::RetryNow(id, tx)).await?;
                match id {
                    Some(id) if found == 0 => {
                        let meta = self
                            .blocking(move |spool| spool.requeue(id).map_err(|err| err.to_string()))
                            .await?;
                        self.queue.enqueue(meta);
                        Ok(Answer::Changed(1))
                    }
                    _ => Ok(Answer::Changed(found)),
                }
            }
            Request::Delete { id } => {
                let live = self.ask(|tx| Command::Delete(id, tx)).await?;
                if live.map_err(|err| err.to_string())? {
                    return Ok(Answer::Changed(1));
                }
                let deleted = self
                    .blocking(move |spool| spool.delete_failed(id).map_err(|err| err.to_string()))
                    .await?;
                Ok(Answer::Changed(usize::from(deleted)))
            }
        }
    }
}

/// Binds the owner-only socket and returns the task that serves it until `stop`.
///
/// # Errors
/// The socket cannot be bound or restricted.
pub fn serve(
    dir: &Path,
    spool: Arc<Spool>,
    queue: QueueHandle,
    counters: Arc<Counters>,
    stop: CancellationToken,
) -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    let path = socket_path(dir);
    // A socket left by a killed daemon; the spool lock proves no other daemon uses it.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let live = Arc::new(Live {
        spool,
        queue,
        counters,
    });
    Ok(async move {
        let mut gauges = tokio::time::interval(GAUGE_INTERVAL);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = gauges.tick() => live.export_gauges().await,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let live = live.clone();
                        tokio::spawn(async move {
                            if let Err(err) = serve_one(stream, &live).await {
                                tracing::debug!(error = %err, "control connection failed");
                            }
                        });
                    }
                    Err(err) => tracing::warn!(error = %err, "control socket accept failed"),
                },
            }
        }
        let _ = std::fs::remove_file(&path);
    })
}

async fn serve_one(stream: UnixStream, live: &Live) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read.take(MAX_REQUEST as u64))
        .read_line(&mut line)
        .await?;
    let answer: Result<Answer, String> = match serde_json::from_str::<Request>(&line) {
        Ok(request) => live.answer(request).await,
        Err(err) => Err(format!("bad request: {err}")),
    };
    let mut out = serde_json::to_vec(&answer).expect("answers always serialise");
    out.push(b'\n');
    write.write_all(&out).await
}

/// The client side: sends one request to a running daemon.
///
/// # Errors
/// The socket cannot be reached or answered nonsense; the daemon's refusal is the inner error.
pub async fn ask(dir: &Path, request: &Request) -> std::io::Result<Result<Answer, String>> {
    let stream = UnixStream::connect(socket_path(dir)).await?;
    let (read, mut write) = stream.into_split();
    let mut out = serde_json::to_vec(request).expect("requests always serialise");
    out.push(b'\n');
    write.write_all(&out).await?;
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    serde_json::from_str(&line).map_err(std::io::Error::other)
}
