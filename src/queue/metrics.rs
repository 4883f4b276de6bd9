//! The delivery engine's counters, kept in one place: the scheduler counts here, `queue stats`
//! reads the totals through the control socket, and every count is also exported to `/metrics`
//! under the names in [`crate::telemetry`].

use std::sync::atomic::{AtomicU64, Ordering};

use crate::telemetry::{
    AMBIGUOUS_RETRIES, CONFIG_FAULTS, GRAPH_THROTTLED, MESSAGES_DELIVERED, MESSAGES_FAILED,
    MESSAGES_RETRIED,
};

#[derive(Debug, Default)]
pub struct Counters {
    delivered: AtomicU64,
    retried: AtomicU64,
    ambiguous_retries: AtomicU64,
    failed: AtomicU64,
    config_faults: AtomicU64,
}

impl Counters {
    pub fn delivered(&self) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(MESSAGES_DELIVERED).increment(1);
    }

    pub fn retried(&self) {
        self.retried.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(MESSAGES_RETRIED).increment(1);
    }

    pub fn ambiguous_retry(&self) {
        self.ambiguous_retries.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(AMBIGUOUS_RETRIES).increment(1);
    }

    /// A message moved to `failed/`; `reason` is a short, fixed label (`refused`, `too_large`,
    /// `expired`), so the metric's cardinality stays small.
    pub fn failed(&self, reason: &'static str) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(MESSAGES_FAILED, "reason" => reason).increment(1);
    }

    pub fn config_fault(&self) {
        self.config_faults.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(CONFIG_FAULTS).increment(1);
    }

    /// Graph answered 429 or 503 for this mailbox.
    pub fn throttled(&self, mailbox: &str) {
        metrics::counter!(GRAPH_THROTTLED, "mailbox" => mailbox.to_string()).increment(1);
    }

    /// Every counter with its metric name.
    pub fn snapshot(&self) -> [(&'static str, u64); 5] {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        [
            (MESSAGES_DELIVERED, load(&self.delivered)),
            (MESSAGES_RETRIED, load(&self.retried)),
            (AMBIGUOUS_RETRIES, load(&self.ambiguous_retries)),
            (MESSAGES_FAILED, load(&self.failed)),
            (CONFIG_FAULTS, load(&self.config_faults)),
        ]
    }
}
