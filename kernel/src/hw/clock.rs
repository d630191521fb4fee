//! A monotonic clock from the TSC, its rate measured against PIT channel 2
//! (the measurement itself is `tandem_kernel::tsc`, tested on the host).
//!
//! `now_micros()` counts from this boot's kernel entry. Durations only:
//! nothing compares these values across machines.

use core::sync::atomic::{AtomicU64, Ordering};

use tandem_kernel::tsc;
use x86_64::instructions::port::Port;

static TSC_PER_MICROSECOND_X1024: AtomicU64 = AtomicU64::new(0);
/// TSC at kernel entry: the clock counts from this boot, also after a warm
/// reset (which does not reset the TSC everywhere).
static BOOT_TSC: AtomicU64 = AtomicU64::new(0);

fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Error bound of the TSC rate, in parts per million (for the boot line).
static TSC_ERROR_PPM: AtomicU64 = AtomicU64::new(0);

/// Measures the TSC rate against PIT channel 2 ([`tandem_kernel::tsc`]:
/// from bracketed readings of the counter, so that a preempted virtual CPU
/// does not make the clock run slow).
pub fn calibrate() {
    BOOT_TSC.store(rdtsc(), Ordering::Relaxed);
    let rate = tsc::measure(&mut PitChannel2::new());
    let (per_us_x1024, error_ppm) = match rate {
        Some(rate) => (rate.per_us_x1024, rate.error_ppm),
        // No PIT that counts: the clock is as good as this guess.
        None => (FALLBACK_TSC_MHZ * 1024, u64::MAX),
    };
    TSC_PER_MICROSECOND_X1024.store(per_us_x1024.max(1), Ordering::Relaxed);
    TSC_ERROR_PPM.store(error_ppm, Ordering::Relaxed);
}

/// The TSC rate assumed when the PIT cannot be measured.
const FALLBACK_TSC_MHZ: u64 = 2000;

/// PIT channel 2, gated on with the speaker off, used only by [`calibrate`]
/// (before the timer interrupt is set up).
struct PitChannel2 {
    gate: Port<u8>,
    command: Port<u8>,
    channel2: Port<u8>,
}

impl PitChannel2 {
    fn new() -> Self {
        Self {
            gate: Port::new(0x61),
            command: Port::new(0x43),
            channel2: Port::new(0x42),
        }
    }
}

impl tsc::PitTimer for PitChannel2 {
    fn start(&mut self, count: u16) {
        // SAFETY: PIT channel 2 and port 0x61 are used only here, before the
        // timer interrupt is set up.
        unsafe {
            let gate_value = self.gate.read();
            self.gate.write((gate_value & !0x02) | 0x01); // gate on, speaker off
            self.command.write(0b1011_0000); // channel 2, lobyte/hibyte, mode 0
            self.channel2.write(count as u8);
            self.channel2.write((count >> 8) as u8);
        }
    }

    fn read(&mut self) -> tsc::PitReading {
        let tsc_before = rdtsc();
        // SAFETY: as in `start`. Read-back command: latch channel 2's count
        // and status together; the status comes first, then the count.
        let (status, low, high) = unsafe {
            self.command.write(0b1100_1000);
            (
                self.channel2.read(),
                self.channel2.read(),
                self.channel2.read(),
            )
        };
        let tsc_after = rdtsc();
        tsc::PitReading {
            tsc_before,
            tsc_after,
            count: u16::from_le_bytes([low, high]),
            out: status & 0x80 != 0,
        }
    }
}

/// Microseconds since this boot's kernel entry.
pub fn now_micros() -> u64 {
    let rate = TSC_PER_MICROSECOND_X1024.load(Ordering::Relaxed).max(1);
    let ticks = rdtsc().saturating_sub(BOOT_TSC.load(Ordering::Relaxed));
    ((ticks as u128 * 1024) / rate as u128) as u64
}

/// Nanoseconds since this boot's kernel entry (for measuring short steps).
pub fn now_nanos() -> u64 {
    let rate = TSC_PER_MICROSECOND_X1024.load(Ordering::Relaxed).max(1);
    let ticks = rdtsc().saturating_sub(BOOT_TSC.load(Ordering::Relaxed));
    ((ticks as u128 * 1024 * 1000) / rate as u128) as u64
}

/// TSC ticks per microsecond (for the status report).
pub fn tsc_mhz() -> u64 {
    TSC_PER_MICROSECOND_X1024.load(Ordering::Relaxed) / 1024
}

/// The bound of the TSC rate's error, in parts per million (`u64::MAX`
/// when it could not be measured).
pub fn tsc_error_ppm() -> u64 {
    TSC_ERROR_PPM.load(Ordering::Relaxed)
}

/// A value that differs on every boot (the TSC at kernel entry).
pub fn boot_stamp() -> u64 {
    BOOT_TSC.load(Ordering::Relaxed)
}

/// Bytes that differ from boot to boot, to seed the pair's nonces: the
/// CPU's random number generator where it has one (RDRAND), the TSC at entry
/// and now (with the calibration's jitter), and the CMOS real-time clock.
/// Only uniqueness per boot is relied on; the nonces are keyed besides.
pub fn boot_entropy() -> [u8; 64] {
    let mut out = [0u8; 64];
    out[0..8].copy_from_slice(&BOOT_TSC.load(Ordering::Relaxed).to_le_bytes());
    out[8..16].copy_from_slice(&rdtsc().to_le_bytes());
    out[16..24].copy_from_slice(
        &TSC_PER_MICROSECOND_X1024
            .load(Ordering::Relaxed)
            .to_le_bytes(),
    );
    if has_rdrand() {
        for slot in out[24..56].chunks_mut(8) {
            if let Some(value) = rdrand() {
                slot.copy_from_slice(&value.to_le_bytes());
            }
        }
    }
    // Seconds, minutes, hours, day, month, year of the real-time clock.
    for (i, register) in [0x00u8, 0x02, 0x04, 0x07, 0x08, 0x09]
        .into_iter()
        .enumerate()
    {
        // SAFETY: reading a CMOS register through the index/data ports; the
        // NMI-disable bit stays clear as it is everywhere in this image.
        out[56 + i] = unsafe {
            Port::<u8>::new(0x70).write(register);
            Port::<u8>::new(0x71).read()
        };
    }
    out[62..64].copy_from_slice(&(rdtsc() as u16).to_le_bytes());
    out
}

fn has_rdrand() -> bool {
    // CPUID leaf 1, ECX bit 30.
    #[allow(unused_unsafe)]
    // SAFETY: CPUID is available on every x86_64 CPU and has no side effects.
    let leaf = unsafe { core::arch::x86_64::__cpuid(1) };
    leaf.ecx & (1 << 30) != 0
}

fn rdrand() -> Option<u64> {
    for _ in 0..10 {
        let value: u64;
        let ok: u8;
        // SAFETY: RDRAND only writes its output register and the flags; it
        // is used only after CPUID said the CPU has it.
        unsafe {
            core::arch::asm!("rdrand {value}", "setc {ok}", value = out(reg) value, ok = out(reg_byte) ok, options(nomem, nostack));
        }
        if ok != 0 {
            return Some(value);
        }
    }
    None
}
