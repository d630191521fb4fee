//! The deterministic sector pattern of the `disk fill` / `disk verify`
//! console commands, also computed by the host-side tests to check the disk
//! file: sector at LBA `L` holds 64 little-endian u64 words, word `k` being
//! `seed * 0x9E3779B97F4A7C15 ^ (L << 8) ^ k` (wrapping multiply).

pub const SECTOR_BYTES: usize = 512;
const WORDS_PER_SECTOR: usize = SECTOR_BYTES / 8;

pub fn word(seed: u64, lba: u64, index: u64) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (lba << 8) ^ index
}

/// Fills `sector` (512 bytes) with the pattern of `lba`.
pub fn fill_sector(sector: &mut [u8], seed: u64, lba: u64) {
    for (index, chunk) in sector
        .chunks_exact_mut(8)
        .take(WORDS_PER_SECTOR)
        .enumerate()
    {
        chunk.copy_from_slice(&word(seed, lba, index as u64).to_le_bytes());
    }
}

/// True if `sector` holds the pattern of `lba`.
pub fn sector_matches(sector: &[u8], seed: u64, lba: u64) -> bool {
    sector.len() >= SECTOR_BYTES
        && sector
            .chunks_exact(8)
            .take(WORDS_PER_SECTOR)
            .enumerate()
            .all(|(index, chunk)| chunk == word(seed, lba, index as u64).to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filled_sector_matches_only_its_own_lba_and_seed() {
        let mut sector = [0u8; SECTOR_BYTES];
        fill_sector(&mut sector, 7, 100);
        assert!(sector_matches(&sector, 7, 100));
        assert!(!sector_matches(&sector, 7, 101));
        assert!(!sector_matches(&sector, 8, 100));
        sector[511] ^= 1;
        assert!(!sector_matches(&sector, 7, 100));
    }

    #[test]
    fn first_word_is_documented_formula() {
        let mut sector = [0u8; SECTOR_BYTES];
        fill_sector(&mut sector, 1, 2);
        let first = u64::from_le_bytes(sector[..8].try_into().unwrap());
        assert_eq!(first, 0x9E37_79B9_7F4A_7C15 ^ 0x200);
    }
}
