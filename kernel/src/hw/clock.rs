//! A monotonic clock from the TSC, calibrated against PIT channel 2.
//!
//! The TSC counts from machine reset, so `now()` is time since the machine
//! started (firmware included). Durations only: nothing compares these
//! values across machines.

use core::sync::atomic::{AtomicU64, Ordering};

use x86_64::instructions::port::Port;

static TSC_PER_MICROSECOND_X1024: AtomicU64 = AtomicU64::new(0);

const PIT_HZ: u64 = 1_193_182;
const CALIBRATION_MICROSECONDS: u64 = 10_000;

fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Measures the TSC rate over 10 ms of PIT channel 2.
pub fn calibrate() {
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
    let per_us_x1024 = (ticks.max(1) * 1024 / CALIBRATION_MICROSECONDS).max(1);
    TSC_PER_MICROSECOND_X1024.store(per_us_x1024, Ordering::Relaxed);
}

/// Microseconds since machine reset.
pub fn now_micros() -> u64 {
    let rate = TSC_PER_MICROSECOND_X1024.load(Ordering::Relaxed).max(1);
    ((rdtsc() as u128 * 1024) / rate as u128) as u64
}

/// TSC ticks per microsecond (for the status report).
pub fn tsc_mhz() -> u64 {
    TSC_PER_MICROSECOND_X1024.load(Ordering::Relaxed) / 1024
}
