//! CRC-32C with the SSE4.2 `crc32` instruction, when the CPU has it.

use core::arch::x86_64::{__cpuid, _mm_crc32_u8, _mm_crc32_u64};

/// True if CPUID reports SSE4.2.
pub fn has_sse42() -> bool {
    let leaf = __cpuid(1);
    leaf.ecx & (1 << 20) != 0
}

#[target_feature(enable = "sse4.2")]
unsafe fn update_sse42(register: u32, data: &[u8]) -> u32 {
    let mut crc = register as u64;
    let mut chunks = data.chunks_exact(8);
    for chunk in &mut chunks {
        let word = u64::from_le_bytes([
            chunk[0], chunk[1], chunk[2], chunk[3], chunk[4], chunk[5], chunk[6], chunk[7],
        ]);
        crc = _mm_crc32_u64(crc, word);
    }
    let mut crc = crc as u32;
    for byte in chunks.remainder() {
        crc = _mm_crc32_u8(crc, *byte);
    }
    crc
}

/// The register update in the `crc32` instruction's convention; install only
/// when [`has_sse42`] is true.
pub fn update(register: u32, data: &[u8]) -> u32 {
    // SAFETY: callers install this only after `has_sse42()` returned true.
    unsafe { update_sse42(register, data) }
}
