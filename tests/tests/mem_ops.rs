//! The image's copy and fill routines (`kernel/src/hw/mem_ops.rs`, under
//! its `memcpy`, `memmove` and `memset`) against slices: every length up to
//! a few blocks and beyond, every alignment of source and destination within
//! a quad word, and forward moves within one buffer (a destination below its
//! source, as `memmove` does them) at every distance around the 32-byte
//! chunks the loop reads ahead.

#[path = "../../kernel/src/hw/mem_ops.rs"]
#[allow(dead_code)]
mod mem_ops;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

const LENGTHS: [usize; 12] = [0, 1, 7, 8, 9, 63, 64, 65, 127, 200, 4096 + 72, 131_072 + 5];

#[test]
fn copies_every_length_and_alignment() {
    for len in (0..=200).chain(LENGTHS) {
        for src_offset in 0..8 {
            for dest_offset in 0..8 {
                let source = pattern(len + src_offset, len as u8);
                // Guard bytes around the destination must stay untouched.
                let mut dest = vec![0xEEu8; len + dest_offset + 16];
                // SAFETY: both ranges hold `len` bytes and do not overlap.
                unsafe {
                    mem_ops::copy_forward(
                        dest[dest_offset..].as_mut_ptr(),
                        source[src_offset..].as_ptr(),
                        len,
                    )
                };
                assert_eq!(
                    &dest[dest_offset..dest_offset + len],
                    &source[src_offset..],
                    "len {len} src+{src_offset} dest+{dest_offset}"
                );
                assert!(
                    dest[..dest_offset].iter().all(|&b| b == 0xEE),
                    "before, len {len}"
                );
                assert!(
                    dest[dest_offset + len..].iter().all(|&b| b == 0xEE),
                    "after, len {len}"
                );
            }
        }
    }
}

#[test]
fn moves_down_within_one_buffer() {
    for len in (0..=200).chain(LENGTHS) {
        for distance in (1..=80).chain([4096, 4097]) {
            let original = pattern(len + distance, distance as u8);
            let mut buffer = original.clone();
            let base = buffer.as_mut_ptr();
            // SAFETY: source [distance, distance + len) and destination
            // [0, len) are inside the buffer, the destination below.
            unsafe { mem_ops::copy_forward(base, base.add(distance), len) };
            let mut expected = original.clone();
            expected.copy_within(distance..distance + len, 0);
            assert_eq!(buffer, expected, "len {len} distance {distance}");
        }
    }
}

#[test]
fn fills_every_length_and_alignment() {
    for len in (0..=200).chain(LENGTHS) {
        for offset in 0..8 {
            for byte in [0u8, 0x5A, 0xFF] {
                let mut dest = vec![0xEEu8; len + offset + 16];
                // SAFETY: the range holds `len` bytes.
                unsafe { mem_ops::fill(dest[offset..].as_mut_ptr(), byte, len) };
                assert!(
                    dest[offset..offset + len].iter().all(|&b| b == byte),
                    "len {len} +{offset} {byte:#x}"
                );
                assert!(
                    dest[..offset]
                        .iter()
                        .chain(&dest[offset + len..])
                        .all(|&b| b == 0xEE),
                    "guards, len {len}"
                );
            }
        }
    }
}
