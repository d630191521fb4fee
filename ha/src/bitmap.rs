//! The dirty-region bitmap: one bit per region of the data area. A set bit
//! means "this region may differ on the peer", so a returning peer is
//! resynchronised region by region instead of in full.

use alloc::vec;
use alloc::vec::Vec;

/// A fixed-size bit set over the data area's regions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bitmap {
    words: Vec<u64>,
    len: u64,
    set: u64,
}

impl Bitmap {
    /// A bitmap of `len` clear bits.
    pub fn new(len: u64) -> Self {
        Bitmap {
            words: vec![0; len.div_ceil(64) as usize],
            len,
            set: 0,
        }
    }
    pub fn len(&self) -> u64 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Number of set bits.
    pub fn count(&self) -> u64 {
        self.set
    }
    pub fn get(&self, i: u64) -> bool {
        i < self.len
            && self
                .words
                .get((i / 64) as usize)
                .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    /// Sets bit `i`; returns true if it was clear. Out-of-range is ignored.
    pub fn set(&mut self, i: u64) -> bool {
        if i >= self.len {
            return false;
        }
        let Some(w) = self.words.get_mut((i / 64) as usize) else {
            return false;
        };
        let m = 1 << (i % 64);
        let was_clear = *w & m == 0;
        *w |= m;
        self.set += was_clear as u64;
        was_clear
    }
    /// Clears bit `i`; returns true if it was set.
    pub fn clear(&mut self, i: u64) -> bool {
        if i >= self.len {
            return false;
        }
        let Some(w) = self.words.get_mut((i / 64) as usize) else {
            return false;
        };
        let m = 1 << (i % 64);
        let was_set = *w & m != 0;
        *w &= !m;
        self.set -= was_set as u64;
        was_set
    }
    pub fn set_all(&mut self) {
        for i in 0..self.len {
            self.set(i);
        }
    }
    pub fn clear_all(&mut self) {
        self.words.iter_mut().for_each(|w| *w = 0);
        self.set = 0;
    }
    /// Sets every bit set in `other` (same length assumed; extra bits ignored).
    pub fn union_with(&mut self, other: &Bitmap) {
        let mut i = 0;
        while let Some(j) = other.next_set(i) {
            self.set(j);
            i = j + 1;
        }
    }
    /// The first set bit at or after `from`.
    pub fn next_set(&self, from: u64) -> Option<u64> {
        let mut i = from;
        while i < self.len {
            let w = self.words.get((i / 64) as usize).copied().unwrap_or(0) >> (i % 64);
            if w != 0 {
                let j = i + w.trailing_zeros() as u64;
                return (j < self.len).then_some(j);
            }
            i = (i / 64 + 1) * 64;
        }
        None
    }
    /// Copies bits `[first, first + count)` into bytes, bit `k` of the run at
    /// byte `k / 8`, bit `k % 8` (LSB first).
    pub fn export(&self, first: u64, count: u64) -> Vec<u8> {
        let mut out = vec![0u8; count.div_ceil(8) as usize];
        for k in 0..count {
            if self.get(first + k)
                && let Some(b) = out.get_mut((k / 8) as usize)
            {
                *b |= 1 << (k % 8);
            }
        }
        out
    }
    /// Sets the bits of a run exported by [`Bitmap::export`] (ORs them in).
    pub fn import_or(&mut self, first: u64, count: u64, bytes: &[u8]) {
        for k in 0..count {
            if bytes
                .get((k / 8) as usize)
                .is_some_and(|b| b & (1 << (k % 8)) != 0)
            {
                self.set(first.saturating_add(k));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_clear_count_next() {
        let mut b = Bitmap::new(200);
        assert!(b.set(3));
        assert!(!b.set(3));
        assert!(b.set(130));
        assert!(!b.set(200));
        assert_eq!(b.count(), 2);
        assert_eq!(b.next_set(0), Some(3));
        assert_eq!(b.next_set(4), Some(130));
        assert_eq!(b.next_set(131), None);
        assert!(b.clear(3));
        assert!(!b.clear(3));
        assert_eq!(b.count(), 1);
        b.set_all();
        assert_eq!(b.count(), 200);
        assert_eq!(b.next_set(199), Some(199));
    }

    #[test]
    fn export_import_and_union() {
        let mut a = Bitmap::new(70);
        for i in [0, 9, 63, 64, 69] {
            a.set(i);
        }
        let bytes = a.export(5, 60);
        let mut c = Bitmap::new(70);
        c.import_or(5, 60, &bytes);
        assert_eq!(
            (c.get(9), c.get(63), c.get(64), c.get(0), c.get(69)),
            (true, true, true, false, false)
        );
        let mut d = Bitmap::new(70);
        d.set(1);
        d.union_with(&a);
        assert_eq!(d.count(), 6);
    }
}
