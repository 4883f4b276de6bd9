//! Acknowledgement modes `synchronous` and `hybrid`: the SMTP session, having committed a
//! message to the spool, waits for the scheduler's first attempt before it answers. Either side
//! may decide the entry's fate, the worker when the attempt ends or the session when it stops
//! waiting, so a compare-and-set on a shared [`Claim`] lets exactly one of them decide: an
//! acknowledged message is never dropped, and a message whose client was told `4xx` never stays.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use tokio::sync::oneshot;

use super::spool::{QueueId, Spool, SpoolError};

/// How the session waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// A message not delivered at once is not kept: the client is told to try again.
    Synchronous,
    /// A message not delivered within the wait is kept queued and acknowledged.
    Hybrid,
}

/// What the session answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Graph accepted it.
    Delivered,
    /// On disk and kept queued for retries.
    Queued,
    /// Graph refused it for now; it was not kept.
    TryLater,
    /// No answer from Graph in time; it was not kept.
    TimedOut,
    /// Graph refused it for good; it is in `failed/`.
    Refused,
}

const PENDING: u8 = 0;
/// The worker decides (and tells its verdict).
const WORKER: u8 = 1;
/// The session stopped waiting and the entry stays queued.
const KEPT: u8 = 2;
/// The session stopped waiting and removed the entry.
const DROPPED: u8 = 3;

/// Who decides an entry's fate; set once.
#[derive(Debug, Default)]
struct Claim(AtomicU8);

impl Claim {
    /// Moves from pending to `to`; otherwise returns who claimed first.
    fn take(&self, to: u8) -> Result<(), u8> {
        self.0
            .compare_exchange(PENDING, to, Ordering::AcqRel, Ordering::Acquire)
            .map(drop)
    }
}

/// Creates the two sides of one watched entry.
pub fn watch(wait: Wait) -> (Watch, Watcher) {
    let claim = Arc::new(Claim::default());
    let (tx, rx) = oneshot::channel();
    (
        Watch {
            claim: claim.clone(),
            wait,
            rx,
        },
        Watcher { claim, wait, tx },
    )
}

/// The scheduler's side, travelling with the entry to its first attempt.
#[derive(Debug)]
pub struct Watcher {
    claim: Arc<Claim>,
    wait: Wait,
    tx: oneshot::Sender<Verdict>,
}

/// The outcome of the worker's claim after the first attempt.
#[derive(Debug)]
pub enum Claimed {
    /// The worker decides; it applies the outcome to the spool, then calls [`Watcher::tell`].
    Worker(Watcher),
    /// The session gave up and acknowledged the message: handle it like any queued entry.
    Kept,
    /// The session gave up and removed the entry: leave the spool alone, do not retry.
    Dropped,
}

impl Watcher {
    /// The session removed the entry before its attempt started: do not attempt it.
    pub fn dropped(&self) -> bool {
        self.claim.0.load(Ordering::Acquire) == DROPPED
    }

    pub fn wait(&self) -> Wait {
        self.wait
    }

    pub fn claim(self) -> Claimed {
        match self.claim.take(WORKER) {
            Ok(()) => Claimed::Worker(self),
            Err(DROPPED) => Claimed::Dropped,
            Err(_) => Claimed::Kept,
        }
    }

    /// Tells the session, once the spool reflects the verdict.
    pub fn tell(self, verdict: Verdict) {
        // A session that is gone has nobody to answer; the spool already holds the verdict.
        let _ = self.tx.send(verdict);
    }
}

/// The session's side.
#[derive(Debug)]
pub struct Watch {
    claim: Arc<Claim>,
    wait: Wait,
    rx: oneshot::Receiver<Verdict>,
}

impl Watch {
    /// Waits up to `limit` for the first attempt's verdict. When it does not come in time (or
    /// the scheduler let go of the entry), the session claims the entry: hybrid keeps it queued
    /// (`Queued`), synchronous removes it from the spool (`TimedOut`). If the worker claimed
    /// first, its verdict follows at once.
    pub async fn verdict(mut self, limit: Duration, spool: &Arc<Spool>, id: QueueId) -> Verdict {
        let closed = match tokio::time::timeout(limit, &mut self.rx).await {
            Ok(Ok(verdict)) => return verdict,
            Ok(Err(_)) => true,
            Err(_elapsed) => false,
        };
        let (to, verdict) = match self.wait {
            Wait::Hybrid => (KEPT, Verdict::Queued),
            Wait::Synchronous => (DROPPED, Verdict::TimedOut),
        };
        if self.claim.take(to).is_err() {
            // The worker decides and answers right after its spool operation. Without an answer
            // (it failed midway) the spool state is unknown: "try again" risks a duplicate,
            // "queued" could lose the message.
            if closed {
                return Verdict::TryLater;
            }
            return (&mut self.rx).await.unwrap_or(Verdict::TryLater);
        }
        if self.wait == Wait::Synchronous {
            // One already gone (an operator deleted it) is fine.
            let removed = match spool.remove_async(id).await {
                Err(SpoolError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                    Ok(())
                }
                result => result,
            };
            if removed.is_err() {
                tracing::error!(queue_id = %id, result = ?removed, "cannot remove an unanswered synchronous message from the spool");
            }
        }
        verdict
    }
}

impl Drop for Watch {
    /// A session that ends without answering (client gone, relay stopping) told the client
    /// nothing: the message stays queued, as in `queued` mode.
    fn drop(&mut self) {
        let _ = self.claim.take(KEPT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spool() -> (tempfile::TempDir, Arc<Spool>, QueueId) {
        let tmp = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(tmp.path()).unwrap();
        let mut incoming = spool.receive();
        spool
            .append(&mut incoming, b"Subject: x\r\n\r\nx\r\n")
            .unwrap();
        let meta = spool
            .commit(
                incoming,
                super::super::Envelope {
                    mail_from: "a@contoso.com".into(),
                    rcpt_to: vec!["b@example.com".into()],
                    client: "127.0.0.1:1".into(),
                    received_at_ms: 0,
                    origin: None,
                },
            )
            .unwrap();
        (tmp, Arc::new(spool), meta.id)
    }

    fn live(spool: &Spool, id: QueueId) -> bool {
        spool.read_body(id).is_ok()
    }

    const LIMIT: Duration = Duration::from_secs(5);

    #[tokio::test(start_paused = true)]
    async fn the_worker_claims_first_and_its_verdict_is_the_answer() {
        for wait in [Wait::Synchronous, Wait::Hybrid] {
            for verdict in [Verdict::Delivered, Verdict::Refused, Verdict::TryLater] {
                let (_tmp, spool, id) = spool();
                let (watch, watcher) = watch(wait);
                let Claimed::Worker(watcher) = watcher.claim() else {
                    panic!("the worker was first");
                };
                watcher.tell(verdict);
                assert_eq!(watch.verdict(LIMIT, &spool, id).await, verdict);
                assert!(
                    live(&spool, id),
                    "the session leaves the spool to the worker"
                );
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_hybrid_session_that_stops_waiting_keeps_the_entry_queued() {
        let (_tmp, spool, id) = spool();
        let (watch, watcher) = watch(Wait::Hybrid);
        let started = tokio::time::Instant::now();
        assert_eq!(watch.verdict(LIMIT, &spool, id).await, Verdict::Queued);
        assert_eq!(started.elapsed(), LIMIT);
        assert!(!watcher.dropped());
        assert!(matches!(watcher.claim(), Claimed::Kept));
        assert!(live(&spool, id), "acknowledged: kept");
    }

    #[tokio::test(start_paused = true)]
    async fn a_synchronous_session_that_stops_waiting_removes_the_entry() {
        let (_tmp, spool, id) = spool();
        let (watch, watcher) = watch(Wait::Synchronous);
        assert_eq!(watch.verdict(LIMIT, &spool, id).await, Verdict::TimedOut);
        assert!(watcher.dropped(), "the worker must not attempt it");
        assert!(matches!(watcher.claim(), Claimed::Dropped));
        assert!(!live(&spool, id), "told 4xx: not kept");
    }

    #[tokio::test(start_paused = true)]
    async fn the_worker_claiming_at_the_deadline_wins_over_the_session() {
        // The worker claims just before the session's deadline but answers after it: the
        // session must not decide too, and waits for the worker's answer.
        for wait in [Wait::Synchronous, Wait::Hybrid] {
            let (_tmp, spool, id) = spool();
            let (watch, watcher) = watch(wait);
            let worker = tokio::spawn(async move {
                tokio::time::sleep(LIMIT - Duration::from_millis(1)).await;
                let Claimed::Worker(watcher) = watcher.claim() else {
                    panic!("the worker was first");
                };
                tokio::time::sleep(Duration::from_millis(10)).await;
                watcher.tell(Verdict::Delivered);
            });
            assert_eq!(watch.verdict(LIMIT, &spool, id).await, Verdict::Delivered);
            worker.await.unwrap();
            assert!(live(&spool, id), "the session did not remove it");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_that_ends_without_answering_leaves_the_entry_queued() {
        let (watch, watcher) = watch(Wait::Synchronous);
        drop(watch);
        assert!(matches!(watcher.claim(), Claimed::Kept));
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_that_claims_but_never_answers_gets_try_later() {
        let (_tmp, spool, id) = spool();
        let (watch, watcher) = watch(Wait::Hybrid);
        let Claimed::Worker(watcher) = watcher.claim() else {
            panic!("the worker was first");
        };
        drop(watcher);
        assert_eq!(watch.verdict(LIMIT, &spool, id).await, Verdict::TryLater);
    }
}
