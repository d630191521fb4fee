//! The HA metadata area as a data node reads it back from the end of its
//! disk, on arbitrary bytes: the superblock decoder ([`Superblock::parse`]
//! and [`Superblock::load`], every version it reads and upgrades), the
//! bitmap block decoder ([`load_bitmap_block`]) and [`DataNode::open`] over
//! them. Never panics; a superblock that decodes emits (in the current
//! version) to bytes that decode to the same superblock; a bitmap block
//! either imports its bits or marks all its regions dirty; a node that
//! opens serves no more than its disk's data area.
//!
//! The first byte chooses how the rest is used: as the raw blocks (slot 0,
//! slot 1, bitmap blocks), or as the fields of a superblock of version 1 to
//! 3 with magic, length and CRC filled in (and, if the input says so, a
//! valid layout for the disk size it gives), so that inputs reach the field
//! checks behind the CRC and the node behind the decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_ha::Instant;
use tandem_ha::bitmap::Bitmap;
use tandem_ha::metadata::{
    BITS_PER_BLOCK, BLOCK_SIZE, FORMAT_VERSION, Layout, SUPERBLOCK_LEN, SUPERBLOCK_MAGIC,
    Superblock, load_bitmap_block,
};
use tandem_ha::node::{Config, DataNode};
use tandem_ha::wire::CRC32C;

/// Regions of a bitmap the target builds (bounded: a real disk's size is
/// what bounds it in the image).
const MAX_REGIONS: u64 = 1 << 16;

/// `bytes` as a 4 KiB block (cut or padded with zeros).
fn block(bytes: &[u8]) -> Vec<u8> {
    let mut b = bytes[..bytes.len().min(BLOCK_SIZE)].to_vec();
    b.resize(BLOCK_SIZE, 0);
    b
}

/// A superblock built from `rest`: its version and fields, with magic,
/// length and CRC right.
fn superblock_from_fields(rest: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK_SIZE];
    let n = rest.len().min(SUPERBLOCK_LEN - 16);
    b[16..16 + n].copy_from_slice(&rest[..n]);
    b[..8].copy_from_slice(&SUPERBLOCK_MAGIC);
    let version = 1 + u16::from(rest.first().copied().unwrap_or(0) % 3);
    b[8..10].copy_from_slice(&version.to_be_bytes());
    b[10..12].copy_from_slice(&(SUPERBLOCK_LEN as u16).to_be_bytes());
    if rest.get(1).is_some_and(|f| f & 1 != 0) {
        // A layout the reader accepts: disk size from the input (at most
        // 4 GiB), region size a power of two from 4 KiB to 1 MiB.
        let disk = u64::from(u32::from_be_bytes(b[96..100].try_into().unwrap()));
        let region = 4096u32 << (b[80] % 9);
        if let Ok(l) = Layout::new(disk, region) {
            b[72..80].copy_from_slice(&l.data_bytes.to_be_bytes());
            b[80..84].copy_from_slice(&l.region_size.to_be_bytes());
            b[84..88].copy_from_slice(&l.bitmap_blocks.to_be_bytes());
            b[88..96].copy_from_slice(&l.region_count.to_be_bytes());
            b[96..104].copy_from_slice(&l.disk_bytes.to_be_bytes());
            // The agreed size within the data area, 4 KiB aligned, often.
            if rest.get(2).is_some_and(|f| f & 1 != 0) {
                let agreed = u64::from_be_bytes(b[136..144].try_into().unwrap())
                    % (l.data_bytes + 1)
                    / 4096
                    * 4096;
                b[136..144].copy_from_slice(&agreed.to_be_bytes());
            }
        }
    }
    if version < 3 {
        b[if version == 1 { 104 } else { 136 }..SUPERBLOCK_LEN].fill(0);
    }
    reseal(&mut b);
    b
}

/// Sets a superblock's CRC.
fn reseal(b: &mut [u8]) {
    b[12..16].fill(0);
    let crc = CRC32C.checksum(&b[..SUPERBLOCK_LEN]);
    b[12..16].copy_from_slice(&crc.to_be_bytes());
}

/// Decodes `b`; if it decodes, checks that it emits to the same.
fn parsed(b: &[u8]) -> Option<Superblock> {
    let sb = Superblock::parse(b).ok()?;
    let current = Superblock {
        version: FORMAT_VERSION,
        ..sb
    };
    assert_eq!(Superblock::parse(&sb.emit()), Ok(current), "emits as it decodes");
    assert!(sb.agreed_bytes <= sb.layout.data_bytes);
    Some(sb)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (slot0, slot1, bitmap) = if mode & 1 == 0 {
        let slot0 = block(rest);
        let slot1 = block(rest.get(BLOCK_SIZE..).unwrap_or(&[]));
        let bitmap = rest.get(2 * BLOCK_SIZE..).unwrap_or(&[]).to_vec();
        (slot0, slot1, bitmap)
    } else {
        let (fields, tail) = rest.split_at(rest.len().min(SUPERBLOCK_LEN));
        let slot0 = superblock_from_fields(fields);
        // The other slot: an older copy, or garbage.
        let slot1 = if mode & 2 == 0 {
            let mut older = slot0.clone();
            older[23] = older[23].wrapping_sub(1);
            reseal(&mut older);
            older
        } else {
            block(tail)
        };
        (slot0, slot1, tail.to_vec())
    };
    let a = parsed(&slot0);
    let b = parsed(&slot1);
    let loaded = Superblock::load(&slot0, &slot1);
    assert_eq!(loaded.is_ok(), a.is_some() || b.is_some());
    if let Ok(sb) = loaded {
        assert!(Some(sb) == a || Some(sb) == b);
    }

    // Bitmap blocks of a small bitmap: valid or all dirty, never a panic.
    let regions = u64::from(mode >> 2) * 4096 + 1;
    for (index, chunk) in bitmap.chunks(BLOCK_SIZE).take(4).enumerate() {
        let mut bm = Bitmap::new(regions);
        let first = index as u64 * BITS_PER_BLOCK;
        let count = BITS_PER_BLOCK.min(regions.saturating_sub(first));
        if !load_bitmap_block(&mut bm, index as u32, chunk) {
            assert_eq!(bm.count(), count);
        }
    }

    // The node opened on that metadata (as its own: same node and pair).
    let Ok(sb) = loaded else { return };
    if sb.layout.region_count > MAX_REGIONS {
        return;
    }
    let cfg = Config::new(sb.node, sb.pair_id, 1);
    let mut node = DataNode::open(cfg, &slot0, &slot1, &bitmap, Instant::ZERO)
        .expect("metadata that decodes opens");
    assert!(node.data_bytes() <= sb.layout.data_bytes);
    assert_eq!(node.namespace_bytes().is_some(), sb.agreed_bytes != 0);
    let _ = node.status(Instant::ZERO).to_string();
    node.on_stream_connected(Instant::from_millis(1));
    node.tick(Instant::from_millis(2));
    node.drain_actions().for_each(drop);
});
