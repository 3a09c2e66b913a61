//! When requests are due: the run's time window and the open-loop schedule. Plain
//! arithmetic on instants, no clock reads, so it is tested without waiting.
//!
//! The open-loop schedule puts global request `i` at `start + i / rate`, computed from `i`
//! each time (never by adding up intervals, so there is no drift). With several threads,
//! thread `lane` of `lanes` takes requests `lane, lane + lanes, lane + 2 * lanes, ...`: the
//! threads together follow the one global schedule.

use std::time::{Duration, Instant};

use crate::limits;

/// The phases of a run: warmup from `start`, the measured period from `measure_from` to
/// `end`, then a drain until `drain_until` for the measured requests still in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: Instant,
    pub measure_from: Instant,
    pub end: Instant,
    pub drain_until: Instant,
}

impl Window {
    pub fn new(start: Instant, warmup: Duration, duration: Duration, drain: Duration) -> Window {
        let measure_from = start + warmup;
        let end = measure_from + duration;
        Window { start, measure_from, end, drain_until: end + drain }
    }

    /// Whether `instant` lies in the measured period: a request intended then is measured,
    /// a response arriving then counts towards the throughput.
    pub fn is_measured(&self, instant: Instant) -> bool {
        self.measure_from <= instant && instant < self.end
    }

    /// The length of the measured period.
    pub fn measured(&self) -> Duration {
        self.end - self.measure_from
    }
}

/// One thread's share of the open-loop schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    start: Instant,
    rate_per_s: f64,
    lane: u64,
    lanes: u64,
}

impl Schedule {
    /// The share of thread `lane` of `lanes` in a schedule of `rate_per_s` requests a second
    /// (over all threads) from `start`.
    pub fn new(start: Instant, rate_per_s: f64, lane: u64, lanes: u64) -> Schedule {
        assert!(rate_per_s.is_finite() && rate_per_s > 0.0, "rate {rate_per_s}");
        assert!(lane < lanes, "lane {lane} of {lanes}");
        Schedule { start, rate_per_s, lane, lanes }
    }

    /// The intended send time of this lane's request number `k` (counting from 0).
    pub fn intended(&self, k: u64) -> Instant {
        let index = k.saturating_mul(self.lanes).saturating_add(self.lane);
        // Past twice the longest run an instant is only ever compared with the run's end:
        // saturate there rather than overflow an `Instant`.
        let horizon = Duration::from_secs(2 * limits::run_s_max);
        let offset = Duration::try_from_secs_f64(index as f64 / self.rate_per_s).unwrap_or(horizon);
        self.start + offset.min(horizon)
    }

    /// How many of this lane's requests are intended strictly before `instant`.
    pub fn count_before(&self, instant: Instant) -> u64 {
        let seconds = instant.saturating_duration_since(self.start).as_secs_f64();
        // Global requests `i` with `i / rate < seconds`, then this lane's among them; the
        // float estimate is corrected against `intended` itself, so the two always agree.
        let global = (seconds * self.rate_per_s).ceil() as u64;
        let mut count = global.saturating_sub(self.lane).div_ceil(self.lanes);
        while count > 0 && self.intended(count - 1) >= instant {
            count -= 1;
        }
        while self.intended(count) < instant {
            count += 1;
        }
        count
    }
}

#[cfg(test)]
mod tests {
    //! Intended times checked against exact arithmetic: no drift, lanes interleave, counts agree.

    use super::*;

    #[test]
    fn requests_are_due_at_start_plus_index_over_rate() {
        let start = Instant::now();
        let schedule = Schedule::new(start, 1000.0, 0, 1);
        for k in [0, 1, 2, 999, 1000, 12_345] {
            assert_eq!(schedule.intended(k) - start, Duration::from_millis(k), "request {k}");
        }
        let schedule = Schedule::new(start, 0.5, 0, 1);
        assert_eq!(schedule.intended(3) - start, Duration::from_secs(6));
    }

    #[test]
    fn the_schedule_does_not_drift() {
        // 7 a second has no exact binary interval: adding intervals up would drift, while
        // computing each time from the index stays on the exact seconds.
        let start = Instant::now();
        let schedule = Schedule::new(start, 7.0, 0, 1);
        assert_eq!(schedule.intended(7 * 3600) - start, Duration::from_secs(3600));
        assert_eq!(schedule.intended(7 * 86_400) - start, Duration::from_secs(86_400));
        let interval = Duration::from_nanos(142_857_143);
        for k in [1, 1_000, 600_000] {
            let gap = schedule.intended(k + 1) - schedule.intended(k);
            assert!(gap.abs_diff(interval) <= Duration::from_nanos(1), "gap {gap:?} at {k}");
        }
    }

    #[test]
    fn lanes_interleave_into_the_global_schedule() {
        let start = Instant::now();
        let global = Schedule::new(start, 300.0, 0, 1);
        let lanes: Vec<Schedule> = (0..3).map(|lane| Schedule::new(start, 300.0, lane, 3)).collect();
        for i in 0..300 {
            assert_eq!(lanes[(i % 3) as usize].intended(i / 3), global.intended(i), "request {i}");
        }
    }

    #[test]
    fn count_before_agrees_with_intended() {
        let start = Instant::now();
        for (rate, lane, lanes) in [(1000.0, 0, 1), (7.0, 0, 1), (300.0, 2, 3), (0.5, 1, 2), (1e6, 3, 4)] {
            let schedule = Schedule::new(start, rate, lane, lanes);
            for millis in [0, 1, 2, 999, 1000, 1001, 2500, 10_000] {
                let instant = start + Duration::from_millis(millis);
                let count = schedule.count_before(instant);
                assert!(count == 0 || schedule.intended(count - 1) < instant, "{rate} {lane}/{lanes} {millis} ms");
                assert!(schedule.intended(count) >= instant, "{rate} {lane}/{lanes} {millis} ms");
            }
        }
        let schedule = Schedule::new(start, 1000.0, 0, 1);
        assert_eq!(schedule.count_before(start + Duration::from_secs(2)), 2000);
        assert_eq!(schedule.count_before(start), 0);
    }

    #[test]
    fn far_requests_saturate_instead_of_overflowing() {
        let start = Instant::now();
        let schedule = Schedule::new(start, 1e-9, 0, 1);
        assert_eq!(schedule.intended(u64::MAX) - start, Duration::from_secs(2 * limits::run_s_max));
    }

    #[test]
    fn the_window_measures_after_warmup_until_the_end() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let window = Window::new(start, second, 2 * second, 3 * second);
        assert_eq!(window.measured(), 2 * second);
        assert_eq!(window.drain_until - start, 6 * second);
        assert!(!window.is_measured(start));
        assert!(!window.is_measured(start + second - Duration::from_nanos(1)));
        assert!(window.is_measured(start + second));
        assert!(window.is_measured(start + 3 * second - Duration::from_nanos(1)));
        assert!(!window.is_measured(start + 3 * second));
    }
}
