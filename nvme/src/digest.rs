//! CRC-32C (Castagnoli) for NVMe/TCP header and data digests.
//!
//! The digest is computed incrementally over a raw register: start at
//! [`Crc32c::INIT`], feed bytes with [`Crc32c::update`], end with
//! [`Crc32c::finish`]. The register form is exactly what the SSE4.2 `crc32`
//! instruction updates, so a kernel that has it can plug it in through
//! [`Crc32c::with_update`] without this crate knowing about CPU features.

use crc::{CRC_32_ISCSI, Crc};

static CASTAGNOLI: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);

/// Update function over the raw (reflected, not final-xored) CRC-32C register.
pub type UpdateFn = fn(register: u32, data: &[u8]) -> u32;

/// Software CRC-32C update (table driven, from the `crc` crate).
pub fn software_update(register: u32, data: &[u8]) -> u32 {
    // The `crc` crate takes its initial value un-reflected and returns the
    // final-xored value; convert both ways to keep a raw register.
    let mut digest = CASTAGNOLI.digest_with_initial(register.reverse_bits());
    digest.update(data);
    digest.finalize() ^ 0xFFFF_FFFF
}

/// A CRC-32C implementation choice; cheap to copy.
#[derive(Clone, Copy)]
pub struct Crc32c {
    update: UpdateFn,
}

impl core::fmt::Debug for Crc32c {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Crc32c")
    }
}

impl Default for Crc32c {
    fn default() -> Self {
        Crc32c {
            update: software_update,
        }
    }
}

impl Crc32c {
    pub const INIT: u32 = 0xFFFF_FFFF;

    /// Use a faster implementation of the same register update.
    pub fn with_update(update: UpdateFn) -> Self {
        Crc32c { update }
    }

    #[inline]
    pub fn update(&self, register: u32, data: &[u8]) -> u32 {
        (self.update)(register, data)
    }

    #[inline]
    pub fn finish(register: u32) -> u32 {
        register ^ 0xFFFF_FFFF
    }

    /// CRC-32C of one buffer.
    pub fn checksum(&self, data: &[u8]) -> u32 {
        Self::finish(self.update(Self::INIT, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_value() {
        assert_eq!(Crc32c::default().checksum(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn incremental_equals_one_shot() {
        let c = Crc32c::default();
        let data: alloc::vec::Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        let whole = c.checksum(&data);
        for split in [0, 1, 3, 64, 999, 1000] {
            let r = c.update(Crc32c::INIT, &data[..split]);
            let r = c.update(r, &data[split..]);
            assert_eq!(Crc32c::finish(r), whole, "split at {split}");
        }
    }

    fn bitwise(mut reg: u32, data: &[u8]) -> u32 {
        for &b in data {
            reg ^= b as u32;
            for _ in 0..8 {
                reg = if reg & 1 != 0 {
                    (reg >> 1) ^ 0x82F6_3B78
                } else {
                    reg >> 1
                };
            }
        }
        reg
    }

    #[test]
    fn pluggable_update_is_used() {
        let c = Crc32c::with_update(bitwise);
        assert_eq!(c.checksum(b"123456789"), 0xE306_9283);
        assert_eq!(
            software_update(0x1234_5678, b"abc"),
            bitwise(0x1234_5678, b"abc")
        );
    }
}
