//! Graph's throttling as a client sees it (microsoft-graph.md §4, G-thr, G-err): requests that
//! name a mailbox are answered at random, with a seeded generator, `429` with `Retry-After` or
//! `503` with or without it; and every `Retry-After` given for a mailbox is audited: a request
//! for that mailbox arriving before the time it named is recorded as an early request.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::state::Fault;

/// Random throttling of requests that name a mailbox (sendMail and the draft/upload path).
/// Each request draws once from a generator seeded with `seed`, so a run with the same seed
/// and the same request order gets the same answers.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Throttling {
    /// Seed of the generator.
    pub seed: u64,
    /// Share of requests (0..=1) answered `429 TooManyRequests` with `Retry-After`.
    pub too_many_requests: f64,
    /// Share of requests (0..=1) answered `503 serviceNotAvailable`.
    pub unavailable: f64,
    /// Share of those 503 answers (0..=1) that carry `Retry-After` (Graph's 503 "may" have it).
    pub unavailable_retry_after: f64,
    /// The `Retry-After` value, whole seconds (Graph's documented form, e.g. `10`).
    pub retry_after_s: u64,
}

/// Why a [`Throttling`] cannot be used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ThrottlingError {
    #[error("each share must be a number from 0 to 1")]
    ShareOutOfRange,
    #[error("too_many_requests + unavailable must not exceed 1")]
    SharesAboveOne,
}

impl Throttling {
    /// # Errors
    /// A share outside 0..=1, or 429 and 503 shares adding up to more than 1.
    pub fn validate(&self) -> Result<(), ThrottlingError> {
        let shares = [
            self.too_many_requests,
            self.unavailable,
            self.unavailable_retry_after,
        ];
        if !shares.iter().all(|s| (0.0..=1.0).contains(s)) {
            return Err(ThrottlingError::ShareOutOfRange);
        }
        if self.too_many_requests + self.unavailable > 1.0 {
            return Err(ThrottlingError::SharesAboveOne);
        }
        Ok(())
    }
}

/// A request for a mailbox that arrived while a `Retry-After` given for it was still running.
#[derive(Clone, Debug, Serialize)]
pub struct EarlyRequest {
    /// The mailbox, lower-cased.
    pub mailbox: String,
    /// The request's path.
    pub path: String,
    /// How long before the end of the `Retry-After` it arrived, in microseconds.
    pub early_us: u64,
    /// How long after the answer that carried the `Retry-After` it arrived, in microseconds.
    pub after_answer_us: u64,
    /// When the answer that carried the `Retry-After` left (for a test in the same process to
    /// relate it to what the client was doing then, such as being killed).
    #[serde(skip)]
    pub answered_at: Instant,
    /// 1 for the first early request after that answer, 2 for the second, and so on. A client
    /// keeping Graph's limit of 4 concurrent requests per mailbox may have had up to 3 others
    /// on their way when the answer left; [`RetryAfterAudit::beyond`] separates those.
    pub nth: usize,
}

/// What the `Retry-After` audit saw; see [`crate::Emulator::retry_after_audit`].
#[derive(Clone, Debug, Default, Serialize)]
pub struct RetryAfterAudit {
    /// Answers that carried a `Retry-After` for a mailbox.
    pub answers: usize,
    /// Requests that arrived before the `Retry-After` of their mailbox ran out, oldest first.
    pub early: Vec<EarlyRequest>,
}

impl RetryAfterAudit {
    /// Early requests beyond the first `in_flight` after each answer: those that cannot have
    /// been on their way already when the answer left, for a client that never has more than
    /// `in_flight + 1` requests in flight per mailbox. `beyond(0)` is every early request.
    pub fn beyond(&self, in_flight: usize) -> Vec<&EarlyRequest> {
        self.early.iter().filter(|e| e.nth > in_flight).collect()
    }
}

/// Until when a mailbox must not be called, and when that was said.
#[derive(Clone, Copy)]
struct Hold {
    answered: Instant,
    until: Instant,
    /// Early requests since `answered`.
    early: usize,
}

#[derive(Default)]
struct Inner {
    throttling: Option<(Throttling, fastrand::Rng)>,
    holds: HashMap<String, Hold>,
    audit: RetryAfterAudit,
}

/// Random throttling and the `Retry-After` audit, shared by all handlers.
#[derive(Default)]
pub struct Throttle {
    inner: Mutex<Inner>,
}

impl Throttle {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts (or, with `None`, stops) random throttling; a new configuration restarts the
    /// generator from its seed.
    pub fn set(&self, throttling: Option<Throttling>) {
        self.lock().throttling = throttling.map(|t| {
            let rng = fastrand::Rng::with_seed(t.seed);
            (t, rng)
        });
    }

    /// A request for `mailbox` arrived at `now`: audited, then maybe answered with a throttling
    /// fault instead of being served.
    pub fn arrive(&self, mailbox: &str, path: &str, now: Instant) -> Option<Fault> {
        let mut inner = self.lock();
        let key = mailbox.to_lowercase();
        if let Some(hold) = inner.holds.get_mut(&key) {
            if now < hold.until {
                hold.early += 1;
                let early = EarlyRequest {
                    mailbox: key,
                    path: path.to_owned(),
                    early_us: micros(hold.until - now),
                    after_answer_us: micros(now.saturating_duration_since(hold.answered)),
                    answered_at: hold.answered,
                    nth: hold.early,
                };
                inner.audit.early.push(early);
            } else {
                inner.holds.remove(&key);
            }
        }
        let (throttling, rng) = inner.throttling.as_mut()?;
        let draw = rng.f64();
        let retry_after = Some(throttling.retry_after_s.to_string());
        if draw < throttling.too_many_requests {
            return Some(Fault {
                retry_after,
                ..Fault::graph(429, 1)
            });
        }
        if draw < throttling.too_many_requests + throttling.unavailable {
            let with_header = rng.f64() < throttling.unavailable_retry_after;
            return Some(Fault {
                retry_after: retry_after.filter(|_| with_header),
                ..Fault::graph(503, 1)
            });
        }
        None
    }

    /// An answer for `mailbox` carrying `retry_after` (decimal seconds, as Graph sends it) left
    /// at `now`: the mailbox must not be called before it runs out. An HTTP-date value is not
    /// audited (Graph does not send one).
    pub fn answered(&self, mailbox: &str, retry_after: &str, now: Instant) {
        let Some(wait) = retry_after
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
        else {
            return;
        };
        let mut inner = self.lock();
        inner.audit.answers += 1;
        let hold = inner.holds.entry(mailbox.to_lowercase()).or_insert(Hold {
            answered: now,
            until: now,
            early: 0,
        });
        // A later answer starts a new hold; an earlier, longer one is not shortened.
        hold.answered = now;
        hold.until = hold.until.max(now + wait);
        hold.early = 0;
    }

    pub fn audit(&self) -> RetryAfterAudit {
        self.lock().audit.clone()
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttling(too_many: f64, unavailable: f64, with_header: f64) -> Throttling {
        Throttling {
            seed: 7,
            too_many_requests: too_many,
            unavailable,
            unavailable_retry_after: with_header,
            retry_after_s: 2,
        }
    }

    #[test]
    fn a_request_before_the_retry_after_ran_out_is_early_and_one_after_is_not() {
        let throttle = Throttle::default();
        let t0 = Instant::now();
        throttle.answered("Billing@Contoso.com", "2", t0);
        assert!(
            throttle
                .arrive(
                    "billing@contoso.com",
                    "/a",
                    t0 + Duration::from_millis(1999)
                )
                .is_none()
        );
        throttle.arrive("other@contoso.com", "/b", t0 + Duration::from_millis(10));
        throttle.arrive("billing@contoso.com", "/c", t0 + Duration::from_secs(2));
        let audit = throttle.audit();
        assert_eq!(audit.answers, 1);
        assert_eq!(audit.early.len(), 1, "{audit:?}");
        let early = &audit.early[0];
        assert_eq!(
            (early.mailbox.as_str(), early.path.as_str()),
            ("billing@contoso.com", "/a")
        );
        assert_eq!((early.early_us, early.after_answer_us), (1_000, 1_999_000));
    }

    #[test]
    fn early_requests_are_numbered_from_each_answer() {
        let throttle = Throttle::default();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        throttle.answered("m@contoso.com", "5", t0);
        for ms in [1, 2, 3, 4] {
            throttle.arrive("m@contoso.com", "/", at(ms));
        }
        throttle.answered("m@contoso.com", "5", at(10));
        throttle.arrive("m@contoso.com", "/", at(11));
        let audit = throttle.audit();
        let nth: Vec<usize> = audit.early.iter().map(|e| e.nth).collect();
        assert_eq!(nth, [1, 2, 3, 4, 1]);
        let beyond: Vec<u64> = audit.beyond(3).iter().map(|e| e.after_answer_us).collect();
        assert_eq!(beyond, [4_000], "only the fourth after the first answer");
        assert_eq!(audit.beyond(0).len(), 5);
    }

    #[test]
    fn fractional_retry_after_is_kept_to_the_millisecond_and_dates_are_not_audited() {
        let throttle = Throttle::default();
        let t0 = Instant::now();
        throttle.answered("m@contoso.com", "2.128", t0);
        throttle.answered("d@contoso.com", "Wed, 21 Oct 2015 07:28:00 GMT", t0);
        throttle.arrive("m@contoso.com", "/", t0 + Duration::from_millis(2127));
        throttle.arrive("m@contoso.com", "/", t0 + Duration::from_millis(2128));
        throttle.arrive("d@contoso.com", "/", t0);
        let audit = throttle.audit();
        assert_eq!(audit.answers, 1);
        assert_eq!(audit.early.len(), 1, "{audit:?}");
        assert_eq!(audit.early[0].early_us, 1_000);
    }

    #[test]
    fn a_shorter_later_retry_after_does_not_shorten_a_running_one() {
        let throttle = Throttle::default();
        let t0 = Instant::now();
        throttle.answered("m@contoso.com", "10", t0);
        throttle.answered("m@contoso.com", "1", t0 + Duration::from_millis(100));
        throttle.arrive("m@contoso.com", "/", t0 + Duration::from_secs(5));
        let audit = throttle.audit();
        assert_eq!(audit.early.len(), 1);
        assert_eq!(audit.early[0].after_answer_us, 4_900_000);
        assert_eq!(audit.early[0].early_us, 5_000_000);
    }

    #[test]
    fn the_same_seed_gives_the_same_answers_in_the_documented_shares() {
        let answers = |seed| {
            let throttle = Throttle::default();
            throttle.set(Some(Throttling {
                seed,
                ..throttling(0.2, 0.1, 0.5)
            }));
            let now = Instant::now();
            (0..10_000)
                .map(|i| {
                    throttle
                        .arrive(&format!("m{}@contoso.com", i % 7), "/", now)
                        .map(|f| (f.status, f.retry_after))
                })
                .collect::<Vec<_>>()
        };
        let first = answers(42);
        assert_eq!(first, answers(42));
        assert_ne!(first, answers(43));
        let count = |status: u16, header: bool| {
            first
                .iter()
                .flatten()
                .filter(|(s, r)| *s == status && r.is_some() == header)
                .count()
        };
        // 10,000 draws: each share within a few standard deviations of its expectation.
        assert!(
            (1800..2200).contains(&count(429, true)),
            "{}",
            count(429, true)
        );
        assert_eq!(count(429, false), 0, "a 429 always says when to come back");
        assert!(
            (400..600).contains(&count(503, true)),
            "{}",
            count(503, true)
        );
        assert!(
            (400..600).contains(&count(503, false)),
            "{}",
            count(503, false)
        );
        assert!(
            first
                .iter()
                .flatten()
                .all(|(_, r)| r.as_deref().is_none_or(|v| v == "2"))
        );
    }

    #[test]
    fn stopping_throttling_serves_everything_again() {
        let throttle = Throttle::default();
        throttle.set(Some(throttling(1.0, 0.0, 0.0)));
        let now = Instant::now();
        assert_eq!(
            throttle.arrive("m@contoso.com", "/", now).map(|f| f.status),
            Some(429)
        );
        throttle.set(None);
        assert!(throttle.arrive("m@contoso.com", "/", now).is_none());
    }

    #[test]
    fn shares_are_validated() {
        assert_eq!(throttling(0.5, 0.5, 1.0).validate(), Ok(()));
        assert_eq!(
            throttling(0.6, 0.5, 0.0).validate(),
            Err(ThrottlingError::SharesAboveOne)
        );
        for bad in [
            throttling(-0.1, 0.0, 0.0),
            throttling(0.0, 1.5, 0.0),
            throttling(0.0, 0.0, f64::NAN),
        ] {
            assert_eq!(bad.validate(), Err(ThrottlingError::ShareOutOfRange));
        }
    }
}
