//! Disk files: sizes, fresh sparse files, and the image's `disk fill` pattern.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{Error, Result};

/// Sector size of the image's disk diagnostics.
pub const SECTOR_SIZE: usize = 512;

/// Parses a size such as `4096`, `64K`, `512M`, `1G`, `2T` (binary units; an
/// optional trailing `B` or `iB` is accepted).
pub fn parse_size(text: &str) -> Result<u64> {
    let bad = || {
        Error::Usage(format!(
            "size `{text}`: expected a number with an optional K, M, G or T suffix"
        ))
    };
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(bad()),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(1u64 << shift)
        .filter(|&s| s > 0)
        .ok_or_else(bad)
}

/// Creates (or truncates) `path` as a sparse file of `size` bytes.
pub fn create_sparse(path: &Path, size: u64) -> Result<()> {
    let file =
        File::create(path).map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    file.set_len(size)
        .map_err(|e| Error::io(format!("sizing {}", path.display()), e))
}

/// Checks that QEMU will be able to use `path` as a read-write disk.
pub fn check_disk(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|source| Error::DiskUnreadable {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.is_dir() {
        return Err(Error::DiskUnreadable {
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "is a directory"),
        });
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|source| Error::DiskUnreadable {
            path: path.to_path_buf(),
            source,
        })?;
    let mut probe = [0u8; 1];
    if meta.len() > 0 {
        file.read_at(&mut probe, 0)
            .map_err(|source| Error::DiskUnreadable {
                path: path.to_path_buf(),
                source,
            })?;
    }
    Ok(())
}

/// One sector of the `disk fill` pattern: 64 little-endian u64 words,
/// word k = (seed * 0x9E3779B97F4A7C15 wrapping) ^ (lba << 8) ^ k.
pub fn pattern_sector(seed: u64, lba: u64) -> [u8; SECTOR_SIZE] {
    let base = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (lba << 8);
    let mut sector = [0u8; SECTOR_SIZE];
    for (k, word) in sector.chunks_exact_mut(8).enumerate() {
        word.copy_from_slice(&(base ^ k as u64).to_le_bytes());
    }
    sector
}

/// Writes the pattern for `count` sectors from `lba` into a disk file.
pub fn write_pattern(file: &File, lba: u64, count: u64, seed: u64) -> io::Result<()> {
    for l in lba..lba + count {
        file.write_all_at(&pattern_sector(seed, l), l * SECTOR_SIZE as u64)?;
    }
    Ok(())
}

/// Checks the pattern in a disk file: `Ok(None)` when all `count` sectors
/// match, `Ok(Some(lba))` for the first sector that does not.
pub fn verify_pattern(file: &File, lba: u64, count: u64, seed: u64) -> io::Result<Option<u64>> {
    let mut sector = [0u8; SECTOR_SIZE];
    for l in lba..lba + count {
        file.read_exact_at(&mut sector, l * SECTOR_SIZE as u64)?;
        if sector != pattern_sector(seed, l) {
            return Ok(Some(l));
        }
    }
    Ok(None)
}

/// True when `count` sectors from `lba` are all zero.
pub fn sectors_are_zero(file: &File, lba: u64, count: u64) -> io::Result<bool> {
    let mut sector = [0u8; SECTOR_SIZE];
    for l in lba..lba + count {
        file.read_exact_at(&mut sector, l * SECTOR_SIZE as u64)?;
        if sector.iter().any(|&b| b != 0) {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64K").unwrap(), 64 << 10);
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("2T").unwrap(), 2 << 40);
        for bad in ["", "G", "0", "-1", "1X", "1.5G", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn pattern_matches_the_documented_formula() {
        let s = pattern_sector(1, 2);
        let word = |k: usize| u64::from_le_bytes(s[k * 8..k * 8 + 8].try_into().unwrap());
        assert_eq!(word(0), 0x9E37_79B9_7F4A_7C15 ^ 0x200);
        assert_eq!(word(63), 0x9E37_79B9_7F4A_7C15 ^ 0x200 ^ 63);
        // Seed 0 at LBA 0 is word k = k: not all zero, so a blank disk never verifies.
        assert_eq!(pattern_sector(0, 0)[8], 1);
        assert_ne!(pattern_sector(7, 10), pattern_sector(7, 11));
        assert_ne!(pattern_sector(7, 10), pattern_sector(8, 10));
    }

    #[test]
    fn pattern_round_trips_through_a_sparse_file() {
        let dir = crate::TempDir::new("disk-unit").unwrap();
        let path = dir.path().join("d.img");
        create_sparse(&path, 1 << 20).unwrap();
        check_disk(&path).unwrap();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        assert_eq!(verify_pattern(&file, 10, 4, 99).unwrap(), Some(10));
        write_pattern(&file, 10, 4, 99).unwrap();
        assert_eq!(verify_pattern(&file, 10, 4, 99).unwrap(), None);
        assert_eq!(verify_pattern(&file, 10, 4, 98).unwrap(), Some(10));
        assert_eq!(verify_pattern(&file, 10, 5, 99).unwrap(), Some(14));
        assert!(sectors_are_zero(&file, 0, 10).unwrap());
        assert!(!sectors_are_zero(&file, 9, 2).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20);
    }

    #[test]
    fn unreadable_disks_are_reported_with_their_path() {
        let missing = Path::new("/nonexistent/disk.img");
        match check_disk(missing) {
            Err(Error::DiskUnreadable { path, .. }) => assert_eq!(path, missing),
            other => panic!("{other:?}"),
        }
        let dir = crate::TempDir::new("disk-unit-dir").unwrap();
        assert!(matches!(
            check_disk(dir.path()),
            Err(Error::DiskUnreadable { .. })
        ));
    }
}
