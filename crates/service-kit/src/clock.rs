//! Where "now" comes from: the system clock in production, a hand-moved one
//! in tests.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use jiff::{SignedDuration, Timestamp};

pub trait Clock: Send + Sync + Debug {
    fn now(&self) -> Timestamp;
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that only moves when told to; clones share the time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<Timestamp>>,
}

impl ManualClock {
    pub fn new(at: Timestamp) -> Self {
        Self {
            now: Arc::new(Mutex::new(at)),
        }
    }

    pub fn set(&self, at: Timestamp) {
        *self.now.lock().unwrap_or_else(|p| p.into_inner()) = at;
    }

    pub fn advance(&self, by: SignedDuration) {
        let mut now = self.now.lock().unwrap_or_else(|p| p.into_inner());
        *now = now.saturating_add(by).unwrap_or(*now);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.now.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A clock that reads a given instant at a given moment of the system
/// clock and runs from there at the system clock's pace, or `rate` times
/// faster: lets an end-to-end test place "now" anywhere (just before a
/// window opens, far from a day boundary) and see an hour pass in minutes,
/// without waiting. Servers given the same start and moment agree.
#[derive(Debug, Clone, Copy)]
pub struct OffsetClock {
    start: Timestamp,
    since: Timestamp,
    rate: i32,
}

impl OffsetClock {
    /// Reads `start` now.
    pub fn starting_at(start: Timestamp) -> Self {
        Self {
            start,
            since: Timestamp::now(),
            rate: 1,
        }
    }

    /// The same clock, reading its start at `since` by the system clock.
    pub fn since(self, since: Timestamp) -> Self {
        Self { since, ..self }
    }

    /// The same clock, running `rate` times faster than the system's.
    pub fn at_rate(self, rate: u32) -> Self {
        Self {
            rate: i32::try_from(rate.max(1)).unwrap_or(i32::MAX),
            ..self
        }
    }
}

impl Clock for OffsetClock {
    fn now(&self) -> Timestamp {
        let elapsed = Timestamp::now().duration_since(self.since);
        let elapsed = elapsed
            .checked_mul(self.rate)
            .unwrap_or(SignedDuration::MAX);
        self.start.saturating_add(elapsed).unwrap_or(self.start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offset_clock_starts_where_told_and_runs_at_its_rate() {
        let start: Timestamp = "2026-03-01T08:00:00Z".parse().unwrap();
        let clock = OffsetClock::starting_at(start).at_rate(100);
        let first = clock.now();
        assert!(first >= start && first < start + SignedDuration::from_secs(60));
        // Anchored a minute ago by the system clock: 100 minutes on.
        let anchored = OffsetClock::starting_at(start)
            .since(Timestamp::now() - SignedDuration::from_secs(60))
            .at_rate(100);
        let read = anchored.now();
        assert!(read >= start + SignedDuration::from_mins(100));
        assert!(read < start + SignedDuration::from_mins(101));
        std::thread::sleep(std::time::Duration::from_millis(20));
        // 20 ms at a hundred times is at least 2 s.
        assert!(clock.now() - first >= SignedDuration::from_secs(2));
    }
}
