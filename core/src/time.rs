//! Time as the core sees it: a wall-clock instant handed in by the driver.

use std::time::Duration;

/// Milliseconds since the Unix epoch. Wall-clock time, because delayed messages must fire at
/// the right moment after a restart; the driver reads the clock, the core never does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UnixMillis(pub u64);

impl UnixMillis {
    /// This instant plus `duration`, saturating at the end of time.
    pub fn plus(self, duration: Duration) -> UnixMillis {
        let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        UnixMillis(self.0.saturating_add(millis))
    }

    /// Time from `self` until `later`, zero if `later` is not after `self`.
    pub fn until(self, later: UnixMillis) -> Duration {
        Duration::from_millis(later.0.saturating_sub(self.0))
    }
}
