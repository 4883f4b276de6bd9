//! Pacing of one (profile, mailbox) lane when configured: at most `queue.mailbox_messages_per_minute`
//! requests in any minute and `queue.mailbox_recipients_per_day` recipients in any 24 hours
//! (Exchange Online's documented limits are 30 and 10,000). Messages over the pace wait; they
//! are never failed. Pure: the scheduler keeps the send times and asks when the next may go.

use std::collections::VecDeque;

const MINUTE_MS: u64 = 60_000;

/// The configured pace; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pacing {
    pub messages_per_minute: Option<u32>,
    pub recipients_per_day: Option<u64>,
}

/// Start times of a lane's requests in the last minute, oldest first.
#[derive(Debug, Default)]
pub struct MinuteWindow(VecDeque<u64>);

impl MinuteWindow {
    pub fn record(&mut self, now_ms: u64) {
        self.forget(now_ms);
        self.0.push_back(now_ms);
    }

    fn forget(&mut self, now_ms: u64) {
        while self.0.front().is_some_and(|at| at + MINUTE_MS <= now_ms) {
            self.0.pop_front();
        }
    }

    /// When one more request stays within `limit` per minute.
    pub fn room_at(&mut self, now_ms: u64, limit: u32) -> u64 {
        self.forget(now_ms);
        let over = (self.0.len() + 1).saturating_sub(limit as usize);
        match over {
            0 => now_ms,
            n => self.0[n - 1] + MINUTE_MS,
        }
    }
}

impl Pacing {
    pub fn is_off(&self) -> bool {
        self.messages_per_minute.is_none() && self.recipients_per_day.is_none()
    }

    /// When the next message, to `recipients` recipients, may go: the later of the two limits'
    /// answers; `None` until requests in flight end, when their recipients and this message's
    /// would pass the day's limit. `room_at(limit, extra)` answers from the rolling window of
    /// delivered recipients.
    pub fn ready_at(
        &self,
        now_ms: u64,
        sent: &mut MinuteWindow,
        in_flight_recipients: u64,
        recipients: u64,
        room_at: impl FnOnce(u64, u64) -> u64,
    ) -> Option<u64> {
        let by_minute = self
            .messages_per_minute
            .map_or(now_ms, |limit| sent.room_at(now_ms, limit));
        let by_day = match self.recipients_per_day {
            None => now_ms,
            Some(limit)
                if in_flight_recipients > 0 && in_flight_recipients + recipients > limit =>
            {
                return None;
            }
            Some(limit) => room_at(limit, in_flight_recipients + recipients),
        };
        Some(by_minute.max(by_day))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minute_holds_at_most_the_limit() {
        // (sent at, now, limit, ready)
        let cases: [(&[u64], u64, u32, u64); 7] = [
            (&[], 0, 1, 0),
            (&[0], 10, 1, 60_000),
            (&[0, 5, 10], 20, 3, 60_000),
            (&[0, 5, 10], 20, 4, 20),
            // The request at 0 has left the minute.
            (&[0, 5, 10], 60_000, 3, 60_000),
            (&[0, 5, 10], 60_001, 2, 60_005),
            (&[0, 5, 10], 70_000, 1, 70_000),
        ];
        for (sent, now, limit, ready) in cases {
            let mut window = MinuteWindow::default();
            for at in sent {
                window.record(*at);
            }
            assert_eq!(
                window.room_at(now, limit),
                ready,
                "{sent:?} at {now}, limit {limit}"
            );
        }
    }

    #[test]
    fn the_later_limit_decides_and_no_limit_is_now() {
        let per_minute = |n| Pacing {
            messages_per_minute: Some(n),
            recipients_per_day: None,
        };
        let per_day = |n| Pacing {
            messages_per_minute: None,
            recipients_per_day: Some(n),
        };
        let both = Pacing {
            messages_per_minute: Some(1),
            recipients_per_day: Some(100),
        };
        // (pacing, in flight, recipients, the window's answer, ready); one request sent at 0.
        let cases = [
            (Pacing::default(), 0, 1, 500, Some(10)),
            (per_minute(1), 0, 1, 500, Some(60_000)),
            (per_minute(2), 0, 1, 500, Some(10)),
            (per_day(100), 0, 1, 500, Some(500)),
            (per_day(100), 50, 50, 500, Some(500)),
            // In flight and this message pass the limit: wait for those in flight.
            (per_day(100), 50, 51, 500, None),
            // Alone above the limit: the window decides (it lets it go once empty).
            (per_day(100), 0, 150, 500, Some(500)),
            (both, 0, 1, 90_000, Some(90_000)),
            (both, 0, 1, 10, Some(60_000)),
        ];
        for (pacing, in_flight, recipients, window, ready) in cases {
            let mut sent = MinuteWindow::default();
            sent.record(0);
            assert_eq!(
                pacing.ready_at(10, &mut sent, in_flight, recipients, |_, _| window),
                ready,
                "{pacing:?} in flight {in_flight} recipients {recipients}"
            );
        }
        assert!(Pacing::default().is_off());
    }
}
