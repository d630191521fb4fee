//! Block requests the connection hands to the caller, and their outcomes.
//!
//! The caller executes each [`BlockRequest`] asynchronously (virtio-blk, or the
//! HA layer that replicates a write first) and reports the outcome with
//! [`Connection::complete_block`](crate::Connection::complete_block), in any order.

use alloc::vec::Vec;

/// Identifies a block request within its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// A byte range of a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub offset: u64,
    pub len: u64,
}

/// The operation; offsets and lengths are in bytes, already checked against
/// the namespace size and the transfer limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockOp {
    /// Read `len` bytes; complete with [`BlockOutcome::ReadData`] of exactly `len` bytes.
    Read { offset: u64, len: u32 },
    /// Write `data`. With `force_unit_access` the data must be durable (on
    /// stable media, not only in a volatile cache) before completing.
    Write {
        offset: u64,
        data: Vec<u8>,
        force_unit_access: bool,
    },
    /// Make every completed write durable.
    Flush,
    /// Zero a range. `deallocate` says the host allows deallocating it instead,
    /// as long as it then reads as zeroes.
    WriteZeroes {
        offset: u64,
        len: u64,
        deallocate: bool,
    },
    /// Deallocate (discard) ranges; their content afterwards is unspecified.
    Deallocate { ranges: Vec<ByteRange> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRequest {
    pub id: RequestId,
    pub nsid: u32,
    pub op: BlockOp,
}

/// Why a block request failed; each maps to the NVMe status the host sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockError {
    /// The medium failed (Write Fault / Unrecovered Read Error; retryable).
    Media,
    /// The namespace is not ready (e.g. resynchronising); retryable.
    NotReady,
    /// This path may not serve the I/O any more: ANA Inaccessible; the host
    /// retries on another path.
    AnaInaccessible,
    /// ANA Transition: the host retries after the transition.
    AnaTransition,
    /// Anything else: Internal Error.
    Internal,
}

/// The outcome of a block request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockOutcome {
    /// Write, Flush, WriteZeroes, Deallocate done.
    Done,
    /// Read done: the data.
    ReadData(Vec<u8>),
    Failed(BlockError),
}
