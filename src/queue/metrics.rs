//! The delivery engine's counters, kept in one place: the scheduler counts, the control socket
//! and `queue stats` read, and the operations issue exports them under these names.

use std::sync::atomic::{AtomicU64, Ordering};

/// Retries of requests whose outcome was unknown (Graph may have accepted them): the bound on
/// duplicates, since Graph has no idempotency key.
pub const AMBIGUOUS_RETRIES: &str = "graph_relay_ambiguous_retries_total";
/// Messages moved to `failed/`.
pub const FAILED: &str = "graph_relay_failed_total";
/// Attempts stopped by a configuration fault (permissions, licence, credentials).
pub const CONFIG_FAULTS: &str = "graph_relay_config_faults_total";

#[derive(Debug, Default)]
pub struct Counters {
    ambiguous_retries: AtomicU64,
    failed: AtomicU64,
    config_faults: AtomicU64,
}

impl Counters {
    pub fn ambiguous_retry(&self) {
        self.ambiguous_retries.fetch_add(1, Ordering::Relaxed);
    }

    pub fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn config_fault(&self) {
        self.config_faults.fetch_add(1, Ordering::Relaxed);
    }

    /// Every counter with its metric name.
    pub fn snapshot(&self) -> [(&'static str, u64); 3] {
        [
            (
                AMBIGUOUS_RETRIES,
                self.ambiguous_retries.load(Ordering::Relaxed),
            ),
            (FAILED, self.failed.load(Ordering::Relaxed)),
            (CONFIG_FAULTS, self.config_faults.load(Ordering::Relaxed)),
        ]
    }
}
