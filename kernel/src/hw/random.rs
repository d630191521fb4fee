//! Entropy for the random bit generators (the challenges and DH exponents of
//! NVMe in-band authentication): RDRAND where the CPU has it, mixed with TSC
//! readings taken around it.

/// 64 bytes of entropy: RDRAND output (when available) and TSC samples.
pub fn entropy() -> [u8; 64] {
    let mut out = [0u8; 64];
    let rdrand = x86_64::instructions::random::RdRand::new();
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        // SAFETY: RDTSC has no side effects.
        let tsc = unsafe { core::arch::x86_64::_rdtsc() };
        let hw = rdrand
            .and_then(|r| (0..10).find_map(|_| r.get_u64()))
            .unwrap_or(0);
        let word = hw ^ tsc.rotate_left((i as u32 * 7) % 64);
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    out
}
