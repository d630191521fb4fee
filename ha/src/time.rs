//! Caller-supplied monotonic time. The crate only ever subtracts two values
//! taken on the same node: durations are measured locally, never compared
//! across nodes.

use core::ops::{Add, Sub};

/// A point on the local monotonic clock, in microseconds since an arbitrary
/// origin (typically boot).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

/// A span of local time, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(u64);

impl Instant {
    pub const ZERO: Instant = Instant(0);
    pub const fn from_micros(us: u64) -> Self {
        Instant(us)
    }
    pub const fn from_millis(ms: u64) -> Self {
        Instant(ms.saturating_mul(1000))
    }
    pub const fn as_micros(self) -> u64 {
        self.0
    }
    /// Time elapsed since `earlier`, zero if `earlier` is in the future.
    pub fn saturating_since(self, earlier: Instant) -> Duration {
        Duration(self.0.saturating_sub(earlier.0))
    }
}

impl Duration {
    pub const ZERO: Duration = Duration(0);
    pub const fn from_micros(us: u64) -> Self {
        Duration(us)
    }
    pub const fn from_millis(ms: u64) -> Self {
        Duration(ms.saturating_mul(1000))
    }
    pub const fn as_micros(self) -> u64 {
        self.0
    }
    pub const fn as_millis(self) -> u64 {
        self.0 / 1000
    }
    /// `self * (1 + ppm / 1e6)`, rounded up: a duration stretched by the worst
    /// clock-rate difference between two nodes.
    pub fn stretched_by_ppm(self, ppm: u32) -> Duration {
        let extra = (self.0 as u128 * ppm as u128).div_ceil(1_000_000);
        Duration(self.0.saturating_add(extra.min(u64::MAX as u128) as u64))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        Instant(self.0.saturating_add(d.0))
    }
}

impl Add for Duration {
    type Output = Duration;
    fn add(self, d: Duration) -> Duration {
        Duration(self.0.saturating_add(d.0))
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    fn sub(self, earlier: Instant) -> Duration {
        self.saturating_since(earlier)
    }
}

/// Count, mean and largest of a series of durations, for `status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DurationStats {
    count: u64,
    total_micros: u64,
    max: Duration,
}

impl DurationStats {
    pub fn record(&mut self, d: Duration) {
        self.count += 1;
        self.total_micros = self.total_micros.saturating_add(d.0);
        self.max = self.max.max(d);
    }
    pub fn count(&self) -> u64 {
        self.count
    }
    pub fn mean(&self) -> Option<Duration> {
        (self.count > 0).then(|| Duration(self.total_micros / self.count))
    }
    pub fn max(&self) -> Option<Duration> {
        (self.count > 0).then_some(self.max)
    }
}

impl core::fmt::Display for DurationStats {
    /// `avg:310us max:2100us n:42`, or `none`.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match (self.mean(), self.max()) {
            (Some(mean), Some(max)) => {
                write!(f, "avg:{}us max:{}us n:{}", mean.0, max.0, self.count)
            }
            _ => f.write_str("none"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn stretch_rounds_up_and_saturates() {
        assert_eq!(
            Duration::from_micros(1_000_000)
                .stretched_by_ppm(100)
                .as_micros(),
            1_000_100
        );
        assert_eq!(Duration::from_micros(1).stretched_by_ppm(1).as_micros(), 2);
        assert_eq!(
            Duration::from_micros(u64::MAX)
                .stretched_by_ppm(10)
                .as_micros(),
            u64::MAX
        );
        assert_eq!(
            Instant::from_millis(1) - Instant::from_millis(2),
            Duration::ZERO
        );
    }

    #[test]
    fn duration_stats_keep_count_mean_and_max() {
        let mut s = DurationStats::default();
        assert_eq!((s.mean(), s.max()), (None, None));
        assert_eq!(alloc::format!("{s}"), "none");
        for us in [100, 400, 250] {
            s.record(Duration::from_micros(us));
        }
        assert_eq!(s.count(), 3);
        assert_eq!(s.mean(), Some(Duration::from_micros(250)));
        assert_eq!(s.max(), Some(Duration::from_micros(400)));
        assert_eq!(alloc::format!("{s}"), "avg:250us max:400us n:3");
    }
}
