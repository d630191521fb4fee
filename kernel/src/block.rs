//! The block side of the glue: what a disk is asked to do, and the narrow
//! queue trait through which the glue asks it ([`BlockQueue`]; virtio-blk
//! implements it in the image, a fake in the tests).
//!
//! Offsets and lengths above this module are in bytes (NVMe's and
//! `tandem_ha`'s); the constructors of [`DiskOp`] are the one place they
//! become sectors.

use alloc::rc::Rc;
use alloc::vec::Vec;

use tandem_nvme::BlockOp;

/// The sector size of every disk request.
pub const SECTOR: u64 = 512;

/// The caller's tag for a request; returned with its completion.
pub type Tag = u64;

/// Why a disk request failed (the virtio driver's own error).
pub use virtio_drivers::Error as DiskError;

/// A write's data, shared with whoever else still reads it (the
/// replication stream sends the same bytes the disk writes): never copied
/// on its way to the device.
pub type WriteData = Rc<Vec<u8>>;

/// A range of [`SECTOR`]-byte sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SectorRange {
    pub sector: u64,
    pub sectors: u64,
}

/// One disk request.
#[derive(Debug)]
pub enum DiskOp {
    Read {
        sector: u64,
        bytes: usize,
    },
    /// With `flush_after` (forced unit access) the write completes only once
    /// it is durable.
    Write {
        sector: u64,
        data: WriteData,
        flush_after: bool,
    },
    /// Zero `sectors` sectors: the device's write-zeroes command where it
    /// has one, zero-filled writes otherwise. With `unmap` the device may
    /// deallocate them instead (they still read as zeroes).
    Zero {
        sector: u64,
        sectors: u64,
        unmap: bool,
    },
    /// The content of the ranges is no longer needed (NVMe Deallocate):
    /// the device's discard where it has one, nothing otherwise.
    Discard {
        ranges: Vec<SectorRange>,
    },
    /// Makes every write completed before it durable.
    Flush,
}

#[derive(Debug)]
pub enum DiskResult {
    Done,
    ReadData(Vec<u8>),
    Failed(DiskError),
}

impl DiskOp {
    /// Reads `len` bytes at byte `offset`.
    pub fn read(offset: u64, len: usize) -> Self {
        DiskOp::Read {
            sector: offset / SECTOR,
            bytes: len,
        }
    }

    /// Writes `data` at byte `offset`.
    pub fn write(offset: u64, data: WriteData, flush_after: bool) -> Self {
        DiskOp::Write {
            sector: offset / SECTOR,
            data,
            flush_after,
        }
    }

    /// Zeroes `len` bytes at byte `offset`.
    pub fn zero(offset: u64, len: u64, unmap: bool) -> Self {
        DiskOp::Zero {
            sector: offset / SECTOR,
            sectors: len / SECTOR,
            unmap,
        }
    }

    /// Discards byte ranges given as (offset, len).
    pub fn discard(ranges: impl IntoIterator<Item = (u64, u64)>) -> Self {
        DiskOp::Discard {
            ranges: ranges
                .into_iter()
                .map(|(offset, len)| SectorRange {
                    sector: offset / SECTOR,
                    sectors: len / SECTOR,
                })
                .collect(),
        }
    }

    /// The disk request that carries out an NVMe block operation.
    pub fn from_block_op(op: BlockOp) -> Self {
        match op {
            BlockOp::Read { offset, len } => DiskOp::read(offset, len as usize),
            BlockOp::Write {
                offset,
                data,
                force_unit_access,
            } => DiskOp::write(offset, Rc::new(data), force_unit_access),
            BlockOp::Flush => DiskOp::Flush,
            BlockOp::WriteZeroes {
                offset,
                len,
                deallocate,
            } => DiskOp::zero(offset, len, deallocate),
            // The device discards them where it can (their content is unspecified either way).
            BlockOp::Deallocate { ranges } => {
                DiskOp::discard(ranges.iter().map(|range| (range.offset, range.len)))
            }
        }
    }
}

/// A disk's request queue: many tagged requests in flight, completed in any
/// order.
pub trait BlockQueue {
    /// The disk's size in [`SECTOR`]s.
    fn sectors(&self) -> u64;
    /// Queues a request; its result comes back from [`BlockQueue::poll`]
    /// with `tag`.
    fn submit(&mut self, tag: Tag, op: DiskOp);
    /// Starts what fits, and returns what finished.
    fn poll(&mut self) -> Vec<(Tag, DiskResult)>;
    /// Runs `op` ahead of everything queued and waits for its result (the
    /// completions of other requests are kept for the next
    /// [`BlockQueue::poll`]): for metadata, read at start and written as a
    /// barrier.
    fn run_now(&mut self, op: DiskOp) -> DiskResult;

    /// The disk's size in bytes.
    fn bytes(&self) -> u64 {
        self.sectors() * SECTOR
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_nvme::ByteRange;

    #[test]
    fn nvme_block_ops_become_sector_addressed_disk_ops() {
        let read = DiskOp::from_block_op(BlockOp::Read {
            offset: 8192,
            len: 4096,
        });
        assert!(matches!(
            read,
            DiskOp::Read {
                sector: 16,
                bytes: 4096
            }
        ));
        let write = DiskOp::from_block_op(BlockOp::Write {
            offset: 1024,
            data: alloc::vec![7; 512],
            force_unit_access: true,
        });
        assert!(
            matches!(write, DiskOp::Write { sector: 2, ref data, flush_after: true } if data.len() == 512)
        );
        let zero = DiskOp::from_block_op(BlockOp::WriteZeroes {
            offset: 512,
            len: 4096,
            deallocate: true,
        });
        assert!(matches!(
            zero,
            DiskOp::Zero {
                sector: 1,
                sectors: 8,
                unmap: true
            }
        ));
        let discard = DiskOp::from_block_op(BlockOp::Deallocate {
            ranges: alloc::vec![
                ByteRange {
                    offset: 0,
                    len: 1024
                },
                ByteRange {
                    offset: 4096,
                    len: 512
                }
            ],
        });
        let DiskOp::Discard { ranges } = discard else {
            panic!("a discard")
        };
        assert_eq!(
            ranges,
            [
                SectorRange {
                    sector: 0,
                    sectors: 2
                },
                SectorRange {
                    sector: 8,
                    sectors: 1
                }
            ]
        );
        assert!(matches!(
            DiskOp::from_block_op(BlockOp::Flush),
            DiskOp::Flush
        ));
    }
}
