//! Decides when each spooled entry is attempted: new entries at once, failed attempts after a
//! growing delay (or Graph's Retry-After), at most `queue.concurrency` at a time. Each worker
//! applies its own outcome to the spool before taking other work, so a delivered message leaves
//! the spool straight after Graph's `202`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::spool::{EntryMeta, QueueId, Spool, now_ms};
use crate::delivery::{Delivery, Outcome};
use crate::telemetry;

/// Hands newly committed entries to the scheduler.
#[derive(Clone)]
pub struct QueueHandle(mpsc::UnboundedSender<EntryMeta>);

impl QueueHandle {
    /// A handle and the receiving end the scheduler (or a test) reads new entries from.
    pub fn channel() -> (Self, mpsc::UnboundedReceiver<EntryMeta>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self(tx), rx)
    }

    pub fn enqueue(&self, meta: EntryMeta) {
        // After shutdown the scheduler is gone; the entry is on disk and found at the next start.
        let _ = self.0.send(meta);
    }
}

/// Delay before attempt `attempts + 1`: `initial` doubled per earlier failure, capped at `max`.
pub fn retry_delay(attempts: u32, initial: Duration, max: Duration) -> Duration {
    let factor = 2u32.saturating_pow(attempts.saturating_sub(1));
    initial.saturating_mul(factor).min(max)
}

pub struct Scheduler {
    spool: Arc<Spool>,
    delivery: Arc<Delivery>,
    concurrency: usize,
    retry_initial: Duration,
    retry_max: Duration,
    rx: mpsc::UnboundedReceiver<EntryMeta>,
}

impl Scheduler {
    pub fn new(
        spool: Arc<Spool>,
        delivery: Arc<Delivery>,
        concurrency: usize,
        retry_initial: Duration,
        retry_max: Duration,
    ) -> (Self, QueueHandle) {
        let (handle, rx) = QueueHandle::channel();
        let scheduler = Self {
            spool,
            delivery,
            concurrency,
            retry_initial,
            retry_max,
            rx,
        };
        (scheduler, handle)
    }

    /// Runs until `shutdown`; workers are tracked by `workers` so shutdown can wait for them.
    pub async fn run(
        mut self,
        recovered: Vec<EntryMeta>,
        shutdown: CancellationToken,
        workers: TaskTracker,
    ) {
        let mut due = DueEntries::default();
        for meta in recovered {
            due.push(meta);
        }
        let permits = Arc::new(Semaphore::new(self.concurrency));
        let (retry_tx, mut retry_rx) = mpsc::unbounded_channel::<EntryMeta>();
        loop {
            let now = now_ms();
            while due.next_at().is_some_and(|at| at <= now) {
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    break;
                };
                let Some(meta) = due.pop() else {
                    break;
                };
                let worker = Worker {
                    spool: self.spool.clone(),
                    delivery: self.delivery.clone(),
                    retry_initial: self.retry_initial,
                    retry_max: self.retry_max,
                };
                let retry_tx = retry_tx.clone();
                workers.spawn(async move {
                    if let Some(again) = worker.deliver(meta).await {
                        let _ = retry_tx.send(again);
                    }
                    drop(permit);
                });
            }
            let next_due = due.next_at();
            let can_dispatch = permits.available_permits() > 0;
            let wait = next_due.map_or(Duration::from_secs(3600), |at| {
                Duration::from_millis(at.saturating_sub(now_ms()))
            });
            tokio::select! {
                () = shutdown.cancelled() => return,
                Some(meta) = self.rx.recv() => due.push(meta),
                Some(meta) = retry_rx.recv() => due.push(meta),
                () = tokio::time::sleep(wait), if can_dispatch => {}
                // A worker finished: a permit is free again.
                _ = permits.acquire(), if !can_dispatch => {}
            }
        }
    }
}

/// Entries waiting for their next attempt, earliest first.
#[derive(Default)]
struct DueEntries {
    order: BinaryHeap<Reverse<(u64, QueueId)>>,
    entries: HashMap<QueueId, EntryMeta>,
}

impl DueEntries {
    fn push(&mut self, meta: EntryMeta) {
        self.order.push(Reverse((meta.next_attempt_at_ms, meta.id)));
        self.entries.insert(meta.id, meta);
    }

    fn next_at(&self) -> Option<u64> {
        self.order.peek().map(|Reverse((at, _))| *at)
    }

    fn pop(&mut self) -> Option<EntryMeta> {
        let Reverse((_, id)) = self.order.pop()?;
        self.entries.remove(&id)
    }
}

struct Worker {
    spool: Arc<Spool>,
    delivery: Arc<Delivery>,
    retry_initial: Duration,
    retry_max: Duration,
}

impl Worker {
    /// Attempts one delivery and records the outcome in the spool; returns the entry when it
    /// must be attempted again.
    async fn deliver(self, mut meta: EntryMeta) -> Option<EntryMeta> {
        let outcome = self.delivery.attempt(&meta).await;
        meta.attempts += 1;
        let spool = self.spool.clone();
        let id = meta.id;
        let (meta, result) = match outcome {
            Outcome::Delivered => {
                metrics::counter!(telemetry::MESSAGES_DELIVERED).increment(1);
                let result = tokio::task::spawn_blocking(move || spool.remove(id)).await;
                (None, result.map_err(|join| join.to_string()))
            }
            Outcome::Failed { reason } => {
                metrics::counter!(telemetry::MESSAGES_FAILED, "reason" => "refused").increment(1);
                tracing::warn!(queue_id = %id, reason = %reason, "message failed permanently");
                meta.last_error = Some(reason);
                let result = tokio::task::spawn_blocking(move || spool.fail(&meta)).await;
                (None, result.map_err(|join| join.to_string()))
            }
            Outcome::Retry { reason, after } => {
                metrics::counter!(telemetry::MESSAGES_RETRIED).increment(1);
                let backoff = retry_delay(meta.attempts, self.retry_initial, self.retry_max);
                let delay = after.map_or(backoff, |after| after.min(self.retry_max));
                meta.next_attempt_at_ms = now_ms() + delay.as_millis() as u64;
                tracing::info!(queue_id = %id, retry_in_s = delay.as_secs_f64(), reason = %reason, "delivery deferred");
                meta.last_error = Some(reason);
                let persisted = meta.clone();
                let result = tokio::task::spawn_blocking(move || spool.update(&persisted)).await;
                (Some(meta), result.map_err(|join| join.to_string()))
            }
        };
        match result {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::error!(queue_id = %id, error = %err, "cannot record the delivery outcome in the spool");
            }
            Err(err) => tracing::error!(queue_id = %id, error = %err, "spool task failed"),
        }
        meta
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_from_initial_up_to_max() {
        let initial = Duration::from_secs(30);
        let max = Duration::from_secs(3600);
        let delays: Vec<u64> = (1..=9)
            .map(|attempts| retry_delay(attempts, initial, max).as_secs())
            .collect();
        assert_eq!(delays, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(retry_delay(u32::MAX, initial, max), max);
    }
}
