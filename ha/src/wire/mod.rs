//! Wire formats, in the manner of smoltcp: a `Packet` gives checked, zero-copy
//! access to a buffer's fields; a `Repr` is the validated value with `parse`
//! and `emit`. Parsing never panics, whatever the bytes; lengths declared by a
//! peer are checked against fixed limits before anything is allocated.
//!
//! All integers are big-endian. Two families:
//! - [`control`]: datagrams (heartbeat, lease, vote, handover) sent over UDP
//!   on every link;
//! - [`stream`]: frames of the replication byte stream (TCP on the
//!   replication link): hello, epoch record, writes, acks, bitmap, resync.
//!
//! The byte layouts are specified in `docs/ha-protocol.md`.

pub mod connections;
pub mod control;
pub mod sealed;
pub mod stream;

use crate::Error;
use crate::types::{EpochRecord, opt_node_from_u8, opt_node_to_u8};

/// CRC-32C (Castagnoli, as iSCSI and NVMe/TCP use it).
pub const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
/// The digest of online verification (`crc`'s `CRC_64_XZ`): 64 bits, so
/// that two different regions practically never compare equal by chance.
pub const CRC64: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_XZ);

/// Reads big-endian fields from a slice whose length was checked beforehand;
/// out-of-range reads return zero instead of panicking (they cannot happen
/// once the length is checked, and must not crash if a check is missing).
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    pub(crate) fn bytes(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos.min(self.buf.len());
        let end = self.pos.saturating_add(n).min(self.buf.len());
        self.pos = self.pos.saturating_add(n);
        &self.buf[start..end]
    }
    pub(crate) fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }
    pub(crate) fn u16(&mut self) -> u16 {
        let b = self.bytes(2);
        let mut a = [0u8; 2];
        a[..b.len()].copy_from_slice(b);
        u16::from_be_bytes(a)
    }
    pub(crate) fn u32(&mut self) -> u32 {
        let b = self.bytes(4);
        let mut a = [0u8; 4];
        a[..b.len()].copy_from_slice(b);
        u32::from_be_bytes(a)
    }
    pub(crate) fn u64(&mut self) -> u64 {
        let b = self.bytes(8);
        let mut a = [0u8; 8];
        a[..b.len()].copy_from_slice(b);
        u64::from_be_bytes(a)
    }
    pub(crate) fn skip(&mut self, n: usize) {
        self.pos = self.pos.saturating_add(n);
    }
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let start = self.pos.min(self.buf.len());
        self.pos = self.buf.len();
        &self.buf[start..]
    }
    /// An epoch record: epoch u64, primary u8, outdated u8, 6 reserved bytes.
    pub(crate) fn record(&mut self) -> Result<EpochRecord, Error> {
        let epoch = self.u64();
        let primary =
            opt_node_from_u8(self.u8()).map_err(|_| Error::InvalidField("record.primary"))?;
        let outdated =
            opt_node_from_u8(self.u8()).map_err(|_| Error::InvalidField("record.outdated"))?;
        self.skip(6);
        Ok(EpochRecord {
            epoch,
            primary,
            outdated,
        })
    }
}

/// Appends big-endian fields to a vector.
pub(crate) struct Writer<'a>(pub(crate) &'a mut alloc::vec::Vec<u8>);

impl Writer<'_> {
    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub(crate) fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn zeros(&mut self, n: usize) -> &mut Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }
    pub(crate) fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    pub(crate) fn record(&mut self, r: &EpochRecord) -> &mut Self {
        self.u64(r.epoch)
            .u8(opt_node_to_u8(r.primary))
            .u8(opt_node_to_u8(r.outdated))
            .zeros(6)
    }
}

/// Size of an encoded [`EpochRecord`].
pub const RECORD_LEN: usize = 16;
