//! A monotonic clock from the TSC, calibrated against PIT channel 2.
//!
//! `now_micros()` counts from this boot's kernel entry. Durations only:
//! nothing compares these values across machines.

use core::sync::atomic::{AtomicU64, Ordering};

use x86_64::instructions::port::Port;

static TSC_PER_MICROSECOND_X1024: AtomicU64 = AtomicU64::new(0);
/// TSC at kernel entry: the clock counts from this boot, also after a warm
/// reset (which does not reset the TSC everywhere).
static BOOT_TSC: AtomicU64 = AtomicU64::new(0);

const PIT_HZ: u64 = 1_193_182;
const CALIBRATION_MICROSECONDS: u64 = 10_000;

fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Measures the TSC rate against PIT channel 2: the lowest of three 10 ms
/// measurements, because the only error is noticing the PIT's end late (a
/// preempted virtual CPU), which makes a measurement too high.
pub fn calibrate() {
    BOOT_TSC.store(rdtsc(), Ordering::Relaxed);
    let ticks = (0..3).map(|_| measure_window()).min().unwrap_or(1);
    let per_us_x1024 = (ticks.max(1) * 1024 / CALIBRATION_MICROSECONDS).max(1);
    TSC_PER_MICROSECOND_X1024.store(per_us_x1024, Ordering::Relaxed);
}

fn measure_window() -> u64 {
    let count = (PIT_HZ * CALIBRATION_MICROSECONDS / 1_000_000) as u16;
    // SAFETY: PIT channel 2 and port 0x61 are used only here, before the
    // timer interrupt is set up.
    let ticks = unsafe {
        let mut gate = Port::<u8>::new(0x61);
        let mut command = Port::<u8>::new(0x43);
        let mut channel2 = Port::<u8>::new(0x42);
        let gate_value = gate.read();
        gate.write((gate_value & !0x02) | 0x01); // gate on, speaker off
        command.write(0b1011_0000); // channel 2, lobyte/hibyte, mode 0
        channel2.write(count as u8);
        channel2.write((count >> 8) as u8);
        // Restart the count by toggling the gate.
        let gate_value = gate.read();
        gate.write(gate_value & !0x01);
        gate.write(gate_value | 0x01);
        let start = rdtsc();
        let mut spins = 0u64;
        while gate.read() & 0x20 == 0 && spins < 100_000_000 {
            spins += 1;
        }
        rdtsc() - start
    };
    ticks
}

/// Microseconds since this boot's kernel entry.
pub fn now_micros() -> u64 {
    let rate = TSC_PER_MICROSECOND_X1024.load(Ordering::Relaxed).max(1);
    let ticks = rdtsc().saturating_sub(BOOT_TSC.load(Ordering::Relaxed));
    ((ticks as u128 * 1024) / rate as u128) as u64
}

/// TSC ticks per microsecond (for the status report).
pub fn tsc_mhz() -> u64 {
    TSC_PER_MICROSECOND_X1024.load(Ordering::Relaxed) / 1024
}

/// A value that differs on every boot (the TSC at kernel entry).
pub fn boot_stamp() -> u64 {
    BOOT_TSC.load(Ordering::Relaxed)
}
