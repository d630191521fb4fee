//! Where the image's time goes, for `status`: time spent in chosen steps
//! (the event loop's steps, the replication stream's MACs), counted with a
//! clock the binary installs at boot. Without one (the host tests) every
//! step counts as taking no time.

use core::fmt;

static CLOCK: spin::Once<fn() -> u64> = spin::Once::new();

/// Installs the clock (nanoseconds since boot) the measurements read.
pub fn install_clock(nanos: fn() -> u64) {
    CLOCK.call_once(|| nanos);
}

/// Nanoseconds since boot, or 0 without a clock.
pub fn now_nanos() -> u64 {
    CLOCK.get().map_or(0, |clock| clock())
}

/// The time spent in one kind of step: how often, over how many bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Spent {
    pub count: u64,
    pub bytes: u64,
    pub nanos: u64,
}

impl Spent {
    /// Counts one step that started at `started` (a [`now_nanos`] reading)
    /// and covered `bytes`.
    pub fn add_since(&mut self, started: u64, bytes: usize) {
        self.count += 1;
        self.bytes += bytes as u64;
        self.nanos += now_nanos().saturating_sub(started);
    }

    pub fn micros(&self) -> u64 {
        self.nanos / 1000
    }

    /// Nanoseconds per KiB covered (0 when nothing was).
    pub fn nanos_per_kib(&self) -> u64 {
        (self.nanos * 1024).checked_div(self.bytes).unwrap_or(0)
    }
}

impl fmt::Display for Spent {
    /// `N/BYTESB/MICROSus`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}B/{}us", self.count, self.bytes, self.micros())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_clock_steps_take_no_time_but_are_counted() {
        let mut spent = Spent::default();
        spent.add_since(now_nanos(), 4096);
        spent.add_since(now_nanos(), 4096);
        assert_eq!(
            spent,
            Spent {
                count: 2,
                bytes: 8192,
                nanos: 0
            }
        );
        assert_eq!(spent.to_string(), "2/8192B/0us");
        assert_eq!(Spent::default().nanos_per_kib(), 0);
        assert_eq!(
            Spent {
                count: 1,
                bytes: 2048,
                nanos: 10_000
            }
            .nanos_per_kib(),
            5000
        );
    }
}
