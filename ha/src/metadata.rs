//! The on-disk metadata area, reserved at the end of each data disk (like
//! DRBD's internal metadata); the namespace size excludes it. Specified in
//! `docs/on-disk-format.md`.
//!
//! ```text
//! data area                       metadata area (metadata_offset ..)
//! [0 .. data_bytes) | slot 0 (4 KiB) | slot 1 (4 KiB) | bitmap block 0 | 1 | ...
//! ```
//! The superblock is written alternately to slot 0 and slot 1 (slot =
//! sequence % 2): a write torn by a crash damages only the copy being
//! written, and the other copy holds the previous state — which is the state
//! that governed everything done so far, since nothing that depends on a
//! superblock write is done before that write completes. Bitmap blocks are
//! written in place, each with its own CRC; a block that fails its check is
//! read back as all-dirty, which only costs a larger resync.

use alloc::vec::Vec;

use crate::Error;
use crate::bitmap::Bitmap;
use crate::generations::{Generations, HISTORY_LEN};
use crate::types::{DataState, EpochRecord, NodeId, opt_node_from_u8, opt_node_to_u8};
use crate::wire::{CRC32C, Reader, Writer};

pub const SUPERBLOCK_MAGIC: [u8; 8] = *b"TANDEMHA";
pub const BITMAP_MAGIC: u32 = 0x5444_424d; // "TDBM"
/// Version of the superblock. Version 2 added the data generations and the
/// blank flag, version 3 the agreed namespace size; an older superblock is
/// read and rewritten in the current version.
pub const FORMAT_VERSION: u16 = 3;
/// The oldest superblock version still read (and upgraded in place).
pub const OLDEST_FORMAT_VERSION: u16 = 1;
/// Version of the bitmap blocks (unchanged since version 1).
pub const BITMAP_FORMAT_VERSION: u16 = 1;
pub const BLOCK_SIZE: usize = 4096;
/// Bytes of a superblock covered by its CRC (the rest of the 4 KiB is zero).
pub const SUPERBLOCK_LEN: usize = 256;
pub const BITMAP_HEADER_LEN: usize = 32;
/// Region bits held by one bitmap block.
pub const BITS_PER_BLOCK: u64 = ((BLOCK_SIZE - BITMAP_HEADER_LEN) * 8) as u64;

/// Where everything lives on a disk of a given size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub disk_bytes: u64,
    /// Size of the data area (the namespace size); also where metadata starts.
    pub data_bytes: u64,
    pub region_size: u32,
    pub region_count: u64,
    pub bitmap_blocks: u32,
}

impl Layout {
    /// Computes the layout. `region_size` must be a power of two ≥ 4096.
    pub fn new(disk_bytes: u64, region_size: u32) -> Result<Layout, Error> {
        if region_size < BLOCK_SIZE as u32 || !region_size.is_power_of_two() {
            return Err(Error::InvalidConfig(
                "region size must be a power of two of at least 4096",
            ));
        }
        // Size the bitmap for the whole disk (a slight over-estimate), then
        // put the metadata at the end, aligned down to 4 KiB.
        let regions_upper = disk_bytes.div_ceil(region_size as u64);
        let bitmap_blocks = regions_upper.div_ceil(BITS_PER_BLOCK).max(1);
        let md_bytes = (2 + bitmap_blocks) * BLOCK_SIZE as u64;
        if disk_bytes < md_bytes + region_size as u64 {
            return Err(Error::InvalidConfig("disk too small for the HA metadata"));
        }
        let data_bytes = (disk_bytes - md_bytes) / BLOCK_SIZE as u64 * BLOCK_SIZE as u64;
        let bitmap_blocks =
            u32::try_from(bitmap_blocks).map_err(|_| Error::InvalidConfig("disk too large"))?;
        Ok(Layout {
            disk_bytes,
            data_bytes,
            region_size,
            region_count: data_bytes.div_ceil(region_size as u64),
            bitmap_blocks,
        })
    }
    /// First byte of the metadata area.
    pub fn metadata_offset(&self) -> u64 {
        self.data_bytes
    }
    /// Bytes of the metadata area (superblock slots and bitmap).
    pub fn metadata_bytes(&self) -> u64 {
        (2 + self.bitmap_blocks as u64) * BLOCK_SIZE as u64
    }
    /// Disk offset of superblock slot 0 or 1.
    pub fn superblock_offset(&self, slot: u64) -> u64 {
        self.metadata_offset() + (slot % 2) * BLOCK_SIZE as u64
    }
    /// Disk offset of bitmap block `index`.
    pub fn bitmap_block_offset(&self, index: u32) -> u64 {
        self.metadata_offset() + (2 + index as u64) * BLOCK_SIZE as u64
    }
    /// The regions touched by the byte range `[offset, offset + len)`.
    pub fn regions(&self, offset: u64, len: u64) -> core::ops::Range<u64> {
        let rs = self.region_size as u64;
        if len == 0 {
            return 0..0;
        }
        offset / rs
            ..offset
                .saturating_add(len)
                .div_ceil(rs)
                .min(self.region_count)
    }
    /// The bitmap block holding region `region`.
    pub fn block_of_region(&self, region: u64) -> u32 {
        (region / BITS_PER_BLOCK) as u32
    }
}

/// The highest superblock sequence number read: higher is refused.
pub const MAX_SEQUENCE: u64 = 1 << 62;

/// Superblock flag bits.
pub const FLAG_ADMIN_FENCED: u8 = 1 << 0;
/// Formatted on an empty disk and never paired since (version 2).
pub const FLAG_BLANK: u8 = 1 << 1;

/// The persistent state of a data node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// Incremented on every write; selects the slot and the newest copy.
    pub sequence: u64,
    /// Identifies the pair, so a disk from another pair is never joined.
    pub pair_id: u64,
    pub node: NodeId,
    pub data_state: DataState,
    /// The peer's data state as last known.
    pub peer_state: DataState,
    pub admin_fenced: bool,
    /// The highest epoch this node has seen or promised (fencing token).
    pub epoch: u64,
    /// The candidate this node voted for in `epoch`, and the node that
    /// candidate's proposal records as Outdated.
    pub voted_for: Option<NodeId>,
    pub vote_outdated: Option<NodeId>,
    /// The latest committed epoch record this node knows.
    pub record: EpochRecord,
    pub layout: Layout,
    /// The data generations (version 2).
    pub generations: Generations,
    /// Formatted on an empty disk and never paired since (version 2).
    pub blank: bool,
    /// The namespace size agreed with the peer, at most `layout.data_bytes`;
    /// 0: not agreed yet (version 3; see [`crate::sizes`]).
    pub agreed_bytes: u64,
    /// The version this copy was read as ([`FORMAT_VERSION`] when written).
    pub version: u16,
}

impl Superblock {
    /// Encodes the 4 KiB block for slot `sequence % 2`.
    pub fn emit(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(BLOCK_SIZE);
        let l = &self.layout;
        Writer(&mut out)
            .bytes(&SUPERBLOCK_MAGIC)
            .u16(FORMAT_VERSION)
            .u16(SUPERBLOCK_LEN as u16)
            .u32(0)
            .u64(self.sequence)
            .u64(self.pair_id)
            .u8(self.node.to_u8())
            .u8(self.data_state as u8)
            .u8(self.peer_state as u8)
            .u8(if self.admin_fenced {
                FLAG_ADMIN_FENCED
            } else {
                0
            } | if self.blank { FLAG_BLANK } else { 0 })
            .u32(0)
            .u64(self.epoch)
            .u8(opt_node_to_u8(self.voted_for))
            .u8(opt_node_to_u8(self.vote_outdated))
            .zeros(6)
            .record(&self.record)
            .u64(l.data_bytes)
            .u32(l.region_size)
            .u32(l.bitmap_blocks)
            .u64(l.region_count)
            .u64(l.disk_bytes)
            .u64(self.generations.current)
            .u64(self.generations.bitmap);
        for h in self.generations.history {
            Writer(&mut out).u64(h);
        }
        Writer(&mut out).u64(self.agreed_bytes);
        out.resize(BLOCK_SIZE, 0);
        let crc = CRC32C.checksum(&out[..SUPERBLOCK_LEN]);
        out[12..16].copy_from_slice(&crc.to_be_bytes());
        out
    }

    /// Decodes and validates one superblock copy.
    pub fn parse(block: &[u8]) -> Result<Superblock, Error> {
        if block.len() < SUPERBLOCK_LEN {
            return Err(Error::Truncated);
        }
        let mut r = Reader::new(block);
        if r.bytes(8) != SUPERBLOCK_MAGIC {
            return Err(Error::BadMagic);
        }
        let version = r.u16();
        let len = r.u16();
        let crc = r.u32();
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(Error::UnsupportedVersion(version));
        }
        if len as usize != SUPERBLOCK_LEN {
            return Err(Error::InvalidField("superblock.length"));
        }
        let mut copy = [0u8; SUPERBLOCK_LEN];
        copy.copy_from_slice(&block[..SUPERBLOCK_LEN]);
        copy[12..16].fill(0);
        if CRC32C.checksum(&copy) != crc {
            return Err(Error::BadChecksum);
        }
        let sequence = r.u64();
        if sequence > MAX_SEQUENCE {
            // Never reached by counting (one write per microsecond would
            // take 290,000 years): a damaged or forged copy, which would
            // make the next write's sequence wrap and lose to this one.
            return Err(Error::InvalidField("superblock.sequence"));
        }
        let pair_id = r.u64();
        let node = NodeId::from_u8(r.u8())
            .filter(|n| n.is_data_node())
            .ok_or(Error::InvalidField("superblock.node"))?;
        let data_state =
            DataState::from_u8(r.u8()).ok_or(Error::InvalidField("superblock.data_state"))?;
        let peer_state =
            DataState::from_u8(r.u8()).ok_or(Error::InvalidField("superblock.peer_state"))?;
        let flags = r.u8();
        let known_flags = if version >= 2 {
            FLAG_ADMIN_FENCED | FLAG_BLANK
        } else {
            FLAG_ADMIN_FENCED
        };
        if flags & !known_flags != 0 {
            return Err(Error::InvalidField("superblock.flags"));
        }
        r.skip(4);
        let epoch = r.u64();
        let voted_for =
            opt_node_from_u8(r.u8()).map_err(|_| Error::InvalidField("superblock.voted_for"))?;
        let vote_outdated = opt_node_from_u8(r.u8())
            .map_err(|_| Error::InvalidField("superblock.vote_outdated"))?;
        r.skip(6);
        let record = r.record()?;
        let data_bytes = r.u64();
        let region_size = r.u32();
        let bitmap_blocks = r.u32();
        let region_count = r.u64();
        let disk_bytes = r.u64();
        let mut generations = Generations::NONE;
        if version >= 2 {
            generations.current = r.u64();
            generations.bitmap = r.u64();
            for h in 0..HISTORY_LEN {
                generations.history[h] = r.u64();
            }
        } else if !(data_state == DataState::Inconsistent && record.epoch == 0) {
            // Version 1 had no generations: both nodes of a pair take the
            // same one, derived from the pair id, so an upgraded pair meets
            // as before (in sync, or resynced from its bitmaps). A disk that
            // version 1 would have resynced in full holds no data.
            generations = Generations::initial(pair_id);
        }
        let agreed_bytes = if version >= 3 {
            r.u64()
        } else if flags & FLAG_BLANK != 0 || generations.current == 0 {
            // Before version 3 both disks of a pair had the same size and
            // served all of it; a disk without data had not agreed one.
            0
        } else {
            data_bytes
        };
        let layout = Layout {
            disk_bytes,
            data_bytes,
            region_size,
            region_count,
            bitmap_blocks,
        };
        if Layout::new(disk_bytes, region_size) != Ok(layout) {
            return Err(Error::InvalidField("superblock.layout"));
        }
        if agreed_bytes > data_bytes || agreed_bytes % BLOCK_SIZE as u64 != 0 {
            return Err(Error::InvalidField("superblock.agreed_bytes"));
        }
        if record.epoch > epoch {
            return Err(Error::InvalidField("superblock.record.epoch"));
        }
        Ok(Superblock {
            sequence,
            pair_id,
            node,
            data_state,
            peer_state,
            admin_fenced: flags & FLAG_ADMIN_FENCED != 0,
            epoch,
            voted_for,
            vote_outdated,
            record,
            layout,
            generations,
            blank: flags & FLAG_BLANK != 0,
            agreed_bytes,
            version,
        })
    }

    /// Picks the newest valid copy of the two slots.
    pub fn load(slot0: &[u8], slot1: &[u8]) -> Result<Superblock, Error> {
        match (Superblock::parse(slot0), Superblock::parse(slot1)) {
            (Ok(a), Ok(b)) => Ok(if b.sequence > a.sequence { b } else { a }),
            (Ok(a), Err(_)) | (Err(_), Ok(a)) => Ok(a),
            (Err(_), Err(_)) => Err(Error::NoValidSuperblock),
        }
    }
}

/// Encodes bitmap block `index` of `bitmap`.
pub fn emit_bitmap_block(bitmap: &Bitmap, index: u32) -> Vec<u8> {
    let first = index as u64 * BITS_PER_BLOCK;
    let count = BITS_PER_BLOCK.min(bitmap.len().saturating_sub(first));
    let bits = bitmap.export(first, count);
    let mut out = Vec::with_capacity(BLOCK_SIZE);
    Writer(&mut out)
        .u32(BITMAP_MAGIC)
        .u16(BITMAP_FORMAT_VERSION)
        .u16(0)
        .u32(0)
        .u32(index)
        .u64(first)
        .u32(count as u32)
        .u32(0);
    out.extend_from_slice(&bits);
    out.resize(BLOCK_SIZE, 0);
    let crc = CRC32C.checksum(&out);
    out[8..12].copy_from_slice(&crc.to_be_bytes());
    out
}

/// Reads bitmap block `index` into `bitmap` (OR). A block that is missing,
/// torn or corrupt marks all its regions dirty; returns false in that case.
pub fn load_bitmap_block(bitmap: &mut Bitmap, index: u32, block: &[u8]) -> bool {
    let first = index as u64 * BITS_PER_BLOCK;
    let count = BITS_PER_BLOCK.min(bitmap.len().saturating_sub(first));
    let valid = (|| {
        if block.len() < BLOCK_SIZE {
            return false;
        }
        let mut r = Reader::new(block);
        if r.u32() != BITMAP_MAGIC || r.u16() != BITMAP_FORMAT_VERSION {
            return false;
        }
        r.skip(2);
        let crc = r.u32();
        let mut copy = [0u8; BLOCK_SIZE];
        copy.copy_from_slice(&block[..BLOCK_SIZE]);
        copy[8..12].fill(0);
        CRC32C.checksum(&copy) == crc
            && r.u32() == index
            && r.u64() == first
            && r.u32() as u64 == count
    })();
    if valid {
        bitmap.import_or(first, count, &block[BITMAP_HEADER_LEN..]);
    } else {
        for i in first..first + count {
            bitmap.set(i);
        }
    }
    valid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sb(seq: u64) -> Superblock {
        Superblock {
            sequence: seq,
            pair_id: 0xfeed,
            node: NodeId::B,
            data_state: DataState::Outdated,
            peer_state: DataState::UpToDate,
            admin_fenced: true,
            epoch: 12,
            voted_for: Some(NodeId::A),
            vote_outdated: Some(NodeId::B),
            record: EpochRecord {
                epoch: 11,
                primary: Some(NodeId::A),
                outdated: Some(NodeId::B),
            },
            layout: Layout::new(1 << 30, 65536).unwrap(),
            generations: Generations {
                current: 0x1234_5678_9abc_def0,
                bitmap: 77,
                history: [55, 33],
            },
            blank: false,
            agreed_bytes: (1 << 30) - 3 * 4096 - 65536,
            version: FORMAT_VERSION,
        }
    }

    /// A superblock as an older version wrote it: its version, and zeros
    /// from where the fields it did not have begin.
    fn emit_old(s: &Superblock, version: u16) -> Vec<u8> {
        let mut b = s.emit();
        b[8..10].copy_from_slice(&version.to_be_bytes());
        b[if version == 1 { 104 } else { 136 }..SUPERBLOCK_LEN].fill(0);
        b[12..16].fill(0);
        let crc = CRC32C.checksum(&b[..SUPERBLOCK_LEN]);
        b[12..16].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// A version 1 superblock as version 1 wrote it.
    fn emit_v1(s: &Superblock) -> Vec<u8> {
        emit_old(s, 1)
    }

    #[test]
    fn version_2_is_read_with_its_whole_data_area_agreed() {
        let s = sb(5);
        let v2 = Superblock::parse(&emit_old(&s, 2)).unwrap();
        assert_eq!(v2.version, 2);
        assert_eq!(v2.generations, s.generations);
        assert_eq!(v2.agreed_bytes, s.layout.data_bytes);
        assert_eq!(
            Superblock {
                agreed_bytes: s.agreed_bytes,
                version: FORMAT_VERSION,
                ..v2
            },
            s
        );
        // A blank disk, or one without data, had agreed nothing.
        for (blank, current) in [(true, 0), (false, 0)] {
            let mut t = sb(5);
            t.blank = blank;
            t.generations.current = current;
            assert_eq!(Superblock::parse(&emit_old(&t, 2)).unwrap().agreed_bytes, 0);
        }
        let again = Superblock::parse(&v2.emit()).unwrap();
        assert_eq!(again.version, FORMAT_VERSION);
        assert_eq!(again.agreed_bytes, s.layout.data_bytes);
    }

    #[test]
    fn an_agreed_size_beyond_the_data_area_or_unaligned_is_refused() {
        for bad in [(1 << 30) - 3 * 4096 + 4096, 4097, u64::MAX] {
            let mut s = sb(5);
            s.agreed_bytes = bad;
            assert_eq!(
                Superblock::parse(&s.emit()),
                Err(Error::InvalidField("superblock.agreed_bytes")),
                "{bad}"
            );
        }
        let mut s = sb(5);
        s.agreed_bytes = 0;
        assert_eq!(Superblock::parse(&s.emit()), Ok(s));
    }

    #[test]
    fn version_1_is_read_with_the_pair_generation() {
        let s = sb(5);
        let v1 = Superblock::parse(&emit_v1(&s)).unwrap();
        assert_eq!(v1.version, 1);
        assert_eq!(v1.generations, Generations::initial(s.pair_id));
        assert_eq!(
            Superblock {
                generations: s.generations,
                agreed_bytes: s.agreed_bytes,
                version: FORMAT_VERSION,
                ..v1
            },
            s
        );
        // What version 1 would have resynced in full holds no data.
        let mut never = sb(5);
        never.data_state = DataState::Inconsistent;
        never.record = EpochRecord::INITIAL;
        let v1 = Superblock::parse(&emit_v1(&never)).unwrap();
        assert_eq!(v1.generations, Generations::NONE);
        // Rewritten, it is version 2.
        let again = Superblock::parse(&v1.emit()).unwrap();
        assert_eq!(again.version, FORMAT_VERSION);
        // A flag version 1 did not know is refused there.
        let mut blank = sb(5);
        blank.blank = true;
        assert!(Superblock::parse(&emit_v1(&blank)).is_err());
        assert!(Superblock::parse(&blank.emit()).unwrap().blank);
        let mut v4 = s.emit();
        v4[8..10].copy_from_slice(&4u16.to_be_bytes());
        assert!(matches!(
            Superblock::parse(&v4),
            Err(Error::UnsupportedVersion(4)) | Err(Error::BadChecksum)
        ));
    }

    #[test]
    fn layout_reserves_the_end_of_the_disk() {
        let l = Layout::new(1 << 30, 65536).unwrap();
        assert_eq!(l.bitmap_blocks, 1);
        assert_eq!(l.data_bytes + l.metadata_bytes(), 1 << 30);
        assert_eq!(l.region_count, l.data_bytes.div_ceil(65536));
        assert_eq!(l.regions(0, 1), 0..1);
        assert_eq!(l.regions(65535, 2), 0..2);
        assert_eq!(l.regions(65536, 65536), 1..2);
        let big = Layout::new(4 << 40, 65536).unwrap();
        assert!(big.region_count <= big.bitmap_blocks as u64 * BITS_PER_BLOCK);
        assert!(Layout::new(4096 * 3, 4096).is_err());
        assert!(Layout::new(1 << 30, 5000).is_err());
    }

    #[test]
    fn superblock_round_trip_and_rejections() {
        let s = sb(5);
        let b = s.emit();
        assert_eq!(b.len(), BLOCK_SIZE);
        assert_eq!(Superblock::parse(&b), Ok(s));
        for i in 0..SUPERBLOCK_LEN {
            let mut c = b.clone();
            c[i] ^= 0x10;
            assert!(Superblock::parse(&c).is_err(), "byte {i}");
        }
        assert_eq!(Superblock::parse(&b[..100]), Err(Error::Truncated));
        // A sequence that could wrap is refused.
        assert_eq!(
            Superblock::parse(&sb(MAX_SEQUENCE).emit()).map(|s| s.sequence),
            Ok(MAX_SEQUENCE)
        );
        assert_eq!(
            Superblock::parse(&sb(MAX_SEQUENCE + 1).emit()),
            Err(Error::InvalidField("superblock.sequence"))
        );
    }

    #[test]
    fn newest_valid_copy_wins_and_a_torn_write_falls_back() {
        let old = sb(6).emit();
        let mut newer = sb(7);
        newer.epoch = 13;
        let new = newer.emit();
        assert_eq!(Superblock::load(&old, &new).unwrap().sequence, 7);
        assert_eq!(Superblock::load(&new, &old).unwrap().sequence, 7);
        // Torn: only the first 512-byte sector of the new copy made it.
        let mut torn = old.clone();
        torn[..512].copy_from_slice(&new[..512]);
        torn[..8].copy_from_slice(&SUPERBLOCK_MAGIC);
        let mut torn2 = new.clone();
        torn2[100] ^= 1;
        assert_eq!(Superblock::load(&old, &torn2).unwrap().sequence, 6);
        assert_eq!(
            Superblock::load(&[0; 4096], &[0; 4096]),
            Err(Error::NoValidSuperblock)
        );
    }

    #[test]
    fn bitmap_blocks_round_trip_and_corruption_means_dirty() {
        let l = Layout::new(3 * BITS_PER_BLOCK * 4096 + 65536, 4096).unwrap();
        assert!(l.bitmap_blocks >= 3);
        let mut bm = Bitmap::new(l.region_count);
        for i in [
            0,
            5,
            BITS_PER_BLOCK,
            2 * BITS_PER_BLOCK + 7,
            l.region_count - 1,
        ] {
            bm.set(i);
        }
        let blocks: Vec<Vec<u8>> = (0..l.bitmap_blocks)
            .map(|i| emit_bitmap_block(&bm, i))
            .collect();
        let mut back = Bitmap::new(l.region_count);
        for (i, b) in blocks.iter().enumerate() {
            assert!(load_bitmap_block(&mut back, i as u32, b));
        }
        assert_eq!(back, bm);
        let mut torn = blocks[1].clone();
        torn[600] ^= 1;
        let mut back = Bitmap::new(l.region_count);
        assert!(!load_bitmap_block(&mut back, 1, &torn));
        assert_eq!(
            back.count(),
            BITS_PER_BLOCK.min(l.region_count - BITS_PER_BLOCK)
        );
        // A block written for another index is refused too.
        let mut back = Bitmap::new(l.region_count);
        assert!(!load_bitmap_block(&mut back, 0, &blocks[1]));
    }
}
