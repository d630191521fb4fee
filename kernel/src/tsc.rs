//! Measuring the TSC's rate against the PIT, robust to a preempted CPU.
//!
//! The pair's leases assume that two nodes' clocks differ in rate by at most
//! `Timing::clock_drift_ppm` (0.1 %). A virtual CPU can be descheduled by its
//! host at any instruction, for tens of milliseconds on a loaded host. A
//! measurement that notices the end of a PIT window late (the only thing a
//! spin on the PIT's output can do) then takes the window for longer than it
//! was: the TSC seems faster than it is and the clock runs slow, by a factor
//! of 8 seen on a loaded two-core host. Such a node keeps its lease, and its
//! keep-alives and heartbeats come, many times later than its peers expect.
//!
//! So the rate here comes from two readings of the PIT's counter, each
//! bracketed by two TSC reads: a reading taken while the CPU was preempted
//! has wide brackets and is not used, and whatever happens between the two
//! readings does not matter. The result carries its error bound, from the
//! brackets and the counter's resolution.

/// The PIT's input clock.
pub const PIT_HZ: u64 = 1_193_182;
/// The count the PIT starts each window from (its largest, about 55 ms).
pub const WINDOW_START_COUNT: u16 = 0xffff;
/// PIT ticks between the two readings of a window (40 ms).
pub const WINDOW_TICKS: u16 = 47_727;
/// Readings taken at each end of a window; the narrowest is used.
const READINGS_PER_END: usize = 4;
/// Windows tried at most.
const MAX_WINDOWS: usize = 8;
/// A window this accurate ends the calibration.
pub const GOOD_ENOUGH_PPM: u64 = 250;
/// Spins of the wait for a window's end before it is given up.
const MAX_WAIT_READINGS: u64 = 50_000_000;

/// One reading of PIT channel 2 (count and output latched together),
/// between two TSC reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PitReading {
    pub tsc_before: u64,
    pub tsc_after: u64,
    /// The counter (counting down).
    pub count: u16,
    /// The output: set once the count reached zero (the window overran).
    pub out: bool,
}

impl PitReading {
    fn width(&self) -> u64 {
        self.tsc_after.saturating_sub(self.tsc_before)
    }
}

/// PIT channel 2 and the TSC, as the calibration uses them.
pub trait PitTimer {
    /// (Re)starts channel 2 in mode 0 (interrupt on terminal count) from
    /// `count`.
    fn start(&mut self, count: u16);
    /// Latches count and output, reading the TSC right before and after.
    fn read(&mut self) -> PitReading;
}

/// A measured TSC rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TscRate {
    /// TSC ticks per microsecond, times 1024.
    pub per_us_x1024: u64,
    /// Bound of the relative error, in parts per million.
    pub error_ppm: u64,
    /// Windows measured.
    pub windows: usize,
}

/// The narrowest of a few readings.
fn narrowest<T: PitTimer>(timer: &mut T) -> PitReading {
    let mut best = timer.read();
    for _ in 1..READINGS_PER_END {
        let reading = timer.read();
        if reading.width() < best.width() {
            best = reading;
        }
    }
    best
}

/// One window: its rate and error bound, or `None` when it overran or the
/// PIT did not count.
fn window<T: PitTimer>(timer: &mut T) -> Option<TscRate> {
    timer.start(WINDOW_START_COUNT);
    let first = narrowest(timer);
    if first.out {
        return None;
    }
    let target = first.count.checked_sub(WINDOW_TICKS)?;
    let mut waited = 0u64;
    loop {
        let reading = timer.read();
        if reading.out || reading.count <= target {
            break;
        }
        waited += 1;
        if waited > MAX_WAIT_READINGS {
            return None;
        }
    }
    let last = narrowest(timer);
    // With the output set the counter wrapped: the elapsed ticks are unknown.
    if last.out || last.count >= first.count {
        return None;
    }
    let pit_ticks = u64::from(first.count - last.count);
    // The elapsed TSC lies between these two.
    let shortest = last.tsc_before.checked_sub(first.tsc_after)?;
    let longest = last.tsc_after.checked_sub(first.tsc_before)?;
    if shortest == 0 {
        return None;
    }
    let middle = shortest + (longest - shortest) / 2;
    // Ticks per microsecond ×1024 = tsc / (pit_ticks / PIT_HZ µs·10⁻⁶) × 1024.
    let per_us_x1024 = (u128::from(middle) * u128::from(PIT_HZ) * 1024
        / (u128::from(pit_ticks) * 1_000_000)) as u64;
    // Half the brackets' spread, plus a counter tick at each end.
    let bracket_ppm = (longest - shortest) / 2 * 1_000_000 / shortest;
    let count_ppm = 2 * 1_000_000 / pit_ticks;
    Some(TscRate {
        per_us_x1024: per_us_x1024.max(1),
        error_ppm: bracket_ppm + count_ppm,
        windows: 1,
    })
}

/// Measures the TSC's rate: windows until one is within
/// [`GOOD_ENOUGH_PPM`], at most a few; the most accurate one counts.
/// `None` when no window could be measured (no PIT).
pub fn measure<T: PitTimer>(timer: &mut T) -> Option<TscRate> {
    let mut best: Option<TscRate> = None;
    for tried in 1..=MAX_WINDOWS {
        if let Some(rate) = window(timer)
            && best.is_none_or(|best| rate.error_ppm < best.error_ppm)
        {
            best = Some(rate);
        }
        if let Some(best) = best.as_mut() {
            best.windows = tried;
            if best.error_ppm <= GOOD_ENOUGH_PPM {
                break;
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A simulated CPU and PIT: the TSC runs at `tsc_mhz`, every PIT or TSC
    /// access costs `access_ns`, and the CPU is preempted for `pause_ns`
    /// at the accesses listed in `pauses` (by access number).
    struct Simulated {
        tsc_mhz: u64,
        now_ns: u64,
        access_ns: u64,
        accesses: u64,
        pauses: alloc::vec::Vec<(u64, u64)>,
        pit_started_ns: u64,
        pit_start_count: u16,
    }

    impl Simulated {
        fn new(tsc_mhz: u64, pauses: &[(u64, u64)]) -> Self {
            Self {
                tsc_mhz,
                now_ns: 1_000_000,
                access_ns: 1_000,
                accesses: 0,
                pauses: pauses.to_vec(),
                pit_started_ns: 0,
                pit_start_count: 0,
            }
        }

        fn access(&mut self) {
            self.accesses += 1;
            self.now_ns += self.access_ns;
            for &(at, pause) in &self.pauses {
                if at == self.accesses {
                    self.now_ns += pause;
                }
            }
        }

        fn rdtsc(&mut self) -> u64 {
            self.access();
            self.now_ns * self.tsc_mhz / 1000
        }

        fn ticks(&self) -> u64 {
            (self.now_ns - self.pit_started_ns) * PIT_HZ / 1_000_000_000
        }
    }

    impl PitTimer for Simulated {
        fn start(&mut self, count: u16) {
            self.access();
            self.pit_started_ns = self.now_ns;
            self.pit_start_count = count;
        }

        fn read(&mut self) -> PitReading {
            let tsc_before = self.rdtsc();
            self.access();
            let ticks = self.ticks();
            let out = ticks >= u64::from(self.pit_start_count);
            // Mode 0 wraps around after the terminal count.
            let count = (u64::from(self.pit_start_count).wrapping_sub(ticks) & 0xffff) as u16;
            let tsc_after = self.rdtsc();
            PitReading {
                tsc_before,
                tsc_after,
                count,
                out,
            }
        }
    }

    fn measured_mhz(rate: TscRate) -> f64 {
        rate.per_us_x1024 as f64 / 1024.0
    }

    fn assert_within(rate: TscRate, mhz: u64, ppm: f64) {
        let error = (measured_mhz(rate) - mhz as f64).abs() / mhz as f64 * 1e6;
        assert!(
            error <= ppm,
            "measured {} MHz for {mhz} MHz: {error:.0} ppm off ({rate:?})",
            measured_mhz(rate)
        );
        assert!(
            error <= rate.error_ppm as f64 + 1.0,
            "the error bound holds: {error:.0} ppm, bound {rate:?}"
        );
    }

    #[test]
    fn an_undisturbed_cpu_measures_its_rate_in_one_window() {
        let mut cpu = Simulated::new(2613, &[]);
        let rate = measure(&mut cpu).unwrap();
        assert_within(rate, 2613, 100.0);
        assert_eq!(rate.windows, 1);
    }

    #[test]
    fn preemption_while_waiting_for_the_window_end_does_not_slow_the_clock() {
        // Preempted for 12 ms twice while it waits for the end of the
        // window (late in the wait too): a measurement that notices the
        // end late takes 64 ms for 40.
        let mut cpu = Simulated::new(2613, &[(20, 12_000_000), (30_000, 12_000_000)]);
        let rate = measure(&mut cpu).unwrap();
        assert_within(rate, 2613, 100.0);
        assert_eq!(rate.windows, 1);
    }

    #[test]
    fn a_reading_interrupted_between_its_tsc_reads_is_not_used() {
        // Preempted for 5 ms inside each of the first window's opening
        // readings (between the TSC read before and the PIT read): that
        // window's bound is wide, and a later one counts.
        let mut cpu = Simulated::new(
            3000,
            &[
                (3, 5_000_000),
                (6, 5_000_000),
                (9, 5_000_000),
                (12, 5_000_000),
            ],
        );
        let rate = measure(&mut cpu).unwrap();
        assert_within(rate, 3000, 500.0);
        assert!(rate.windows >= 2, "{rate:?}");
    }

    #[test]
    fn preempted_at_every_reading_the_best_window_counts_and_says_how_good_it_is() {
        // Every access costs 20 µs (a very slow, busy host): the bound says
        // so rather than pretending.
        let mut cpu = Simulated::new(2000, &[]);
        cpu.access_ns = 20_000;
        let rate = measure(&mut cpu).unwrap();
        assert!(rate.error_ppm > GOOD_ENOUGH_PPM, "{rate:?}");
        assert_eq!(rate.windows, MAX_WINDOWS);
        assert_within(rate, 2000, rate.error_ppm as f64);
    }

    #[test]
    fn a_window_that_overran_the_counter_is_not_used() {
        // Preempted for 80 ms (longer than the whole counter) in the first
        // window's wait: the counter wrapped, which its output shows.
        let mut cpu = Simulated::new(2500, &[(30, 80_000_000)]);
        let rate = measure(&mut cpu).unwrap();
        assert_within(rate, 2500, 1000.0);
        assert!(rate.windows >= 2, "{rate:?}");
    }
}
