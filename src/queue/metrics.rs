//! The delivery engine's counters, kept in one place: the scheduler counts here, `queue stats`
//! reads the totals through the control socket, and every count is also exported to `/metrics`
//! under the names in [`crate::telemetry`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::telemetry::{
    AMBIGUOUS_RETRIES, CONFIG_FAULTS, GRAPH_THROTTLED, MESSAGES_DELIVERED, MESSAGES_FAILED,
    MESSAGES_RETRIED, RECIPIENTS_24H, UPSTREAM_UP,
};

/// Exchange Online lets one mailbox send to 10,000 recipients per rolling 24 hours.
pub const RECIPIENTS_PER_DAY: u64 = 10_000;
/// Share of that limit at which the relay warns.
const RECIPIENT_WARNING_PERCENT: u64 = 80;
const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// Recipients a mailbox sent to over the last 24 hours: (time, recipients) per delivery,
/// oldest first.
#[derive(Debug, Default)]
pub struct RecipientWindow {
    deliveries: VecDeque<(u64, u64)>,
    total: u64,
    warned: bool,
}

impl RecipientWindow {
    /// Adds a delivery at `now_ms`, forgets those older than 24 hours, and returns the total
    /// and whether it just crossed the warning threshold.
    pub fn record(&mut self, now_ms: u64, recipients: u64) -> (u64, bool) {
        self.deliveries.push_back((now_ms, recipients));
        self.total += recipients;
        while let Some(&(at, count)) = self.deliveries.front() {
            if at + DAY_MS > now_ms {
                break;
            }
            self.deliveries.pop_front();
            self.total -= count;
        }
        let over = self.total * 100 >= RECIPIENTS_PER_DAY * RECIPIENT_WARNING_PERCENT;
        let crossed = over && !self.warned;
        self.warned = over;
        (self.total, crossed)
    }
    /// The earliest time from `now_ms` at which `extra` more recipients stay within `limit`
    /// over the rolling 24 hours. A message larger than the limit goes once the window is empty.
    pub fn room_at(&self, now_ms: u64, limit: u64, extra: u64) -> u64 {
        let live = |at: u64| at + DAY_MS > now_ms;
        let mut total: u64 = self
            .deliveries
            .iter()
            .filter(|(at, _)| live(*at))
            .map(|(_, count)| count)
            .sum();
        let mut ready = now_ms;
        for &(at, count) in self.deliveries.iter().filter(|(at, _)| live(*at)) {
            if total == 0 || total + extra <= limit {
                break;
            }
            total -= count;
            ready = at + DAY_MS;
        }
        ready
    }
}

#[derive(Debug, Default)]
pub struct Counters {
    delivered: AtomicU64,
    retried: AtomicU64,
    ambiguous_retries: AtomicU64,
    failed: AtomicU64,
    config_faults: AtomicU64,
    recipients: Mutex<HashMap<String, RecipientWindow>>,
    /// Per authentication profile: did Microsoft answer the last attempt (`/readyz` shows it).
    upstream: Mutex<BTreeMap<String, bool>>,
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

    /// A delivery to `recipients` recipients from `mailbox`: counted over a rolling 24 hours
    /// (in memory, so a restart starts the count again), with a warning at 80 % of Exchange's
    /// 10,000.
    pub fn recipients(&self, mailbox: &str, recipients: usize, now_ms: u64) {
        let (total, crossed) = {
            let mut windows = self.recipients.lock().unwrap_or_else(|p| p.into_inner());
            windows
                .entry(mailbox.to_string())
                .or_default()
                .record(now_ms, recipients as u64)
        };
        metrics::gauge!(RECIPIENTS_24H, "mailbox" => mailbox.to_string()).set(total as f64);
        if crossed {
            tracing::warn!(
                mailbox,
                recipients_24h = total,
                limit = RECIPIENTS_PER_DAY,
                "mailbox is above 80% of Exchange's 10,000 recipients per 24 hours; beyond it Exchange refuses its mail"
            );
        }
    }

    /// Whether Microsoft answered the latest attempt through `profile` (an error answer counts as
    /// an answer; unreachable endpoints and 5xx outages do not).
    pub fn upstream(&self, profile: &str, up: bool) {
        metrics::gauge!(UPSTREAM_UP, "profile" => profile.to_string()).set(if up {
            1.0
        } else {
            0.0
        });
        let mut upstream = self.upstream.lock().unwrap_or_else(|p| p.into_inner());
        upstream.insert(profile.to_string(), up);
    }

    /// The latest [`Counters::upstream`] state of every profile.
    pub fn upstream_states(&self) -> BTreeMap<String, bool> {
        self.upstream
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// When `extra` more recipients from `mailbox` stay within `limit` per rolling 24 hours.
    pub fn recipients_room_at(&self, mailbox: &str, now_ms: u64, limit: u64, extra: u64) -> u64 {
        let windows = self.recipients.lock().unwrap_or_else(|p| p.into_inner());
        windows
            .get(mailbox)
            .map_or(now_ms, |window| window.room_at(now_ms, limit, extra))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_for_more_recipients_comes_when_old_deliveries_leave_the_day() {
        let hour = DAY_MS / 24;
        let mut window = RecipientWindow::default();
        window.record(0, 40);
        window.record(hour, 50);
        window.record(2 * hour, 10);
        // (now, limit, extra, ready)
        let cases = [
            (3 * hour, 200, 100, 3 * hour),
            (3 * hour, 100, 0, 3 * hour),
            (3 * hour, 100, 1, DAY_MS),
            (3 * hour, 100, 41, DAY_MS + hour),
            (3 * hour, 100, 100, DAY_MS + 2 * hour),
            // Larger than the limit: once the window is empty.
            (3 * hour, 100, 500, DAY_MS + 2 * hour),
            // The first delivery has left by now.
            (DAY_MS + 30, 100, 41, DAY_MS + hour),
        ];
        for (now, limit, extra, ready) in cases {
            assert_eq!(
                window.room_at(now, limit, extra),
                ready,
                "now {now}, limit {limit}, extra {extra}"
            );
        }
        assert_eq!(RecipientWindow::default().room_at(5, 1, 10), 5);
    }

    #[test]
    fn recipients_are_counted_over_a_rolling_day_with_one_warning_at_80_percent() {
        let mut window = RecipientWindow::default();
        let hour = DAY_MS / 24;
        // (time in hours, recipients, expected total, expected warning)
        let steps = [
            (0, 5_000, 5_000, false),
            (1, 2_999, 7_999, false),
            (2, 1, 8_000, true),
            (3, 100, 8_100, false),
            // Each delivery leaves the window 24 hours after it was made.
            (24, 10, 3_110, false),
            (26, 5_000, 5_110, false),
            (27, 3_000, 8_010, true),
        ];
        for (at, recipients, total, warn) in steps {
            assert_eq!(
                window.record(at * hour, recipients),
                (total, warn),
                "at {at} h"
            );
        }
    }
}
