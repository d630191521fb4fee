//! The numbers a data node keeps apart. Each is a newtype, so that a
//! replication sequence number cannot be passed where a host write id is
//! expected, nor a region where a bitmap generation is.
//!
//! The kernel still sees plain `u64`s in [`super::Action`] and the `on_*`
//! methods; the node wraps them as they come in.

/// A host write, named by the kernel (its NVMe command's tag).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct WriteId(pub u64);

/// A write's (or flush's) number on the replication stream: the primary
/// numbers what it sends from 1 on each connection; the peer's
/// acknowledgement carries the number back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Seq(pub u64);

impl Seq {
    /// The number after this one.
    pub(crate) fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

/// A byte range of the data area: `len` bytes at `offset`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Extent {
    pub(crate) offset: u64,
    pub(crate) len: u64,
}

impl Extent {
    pub(crate) fn new(offset: u64, len: u64) -> Extent {
        Extent { offset, len }
    }

    /// The two share at least one byte.
    pub(crate) fn overlaps(&self, other: Extent) -> bool {
        super::overlaps(self.offset, self.len, other.offset, other.len)
    }
}

/// A region of the dirty bitmap: its index (`region_size` bytes each).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Region(pub u64);

/// A generation of the in-memory dirty bitmap: it grows by one for every
/// bit set, and a persist makes every generation up to its own durable
/// (group commit). Not the data generations of [`crate::generations`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct BitmapGeneration(pub u64);

impl BitmapGeneration {
    pub(crate) fn next(self) -> BitmapGeneration {
        BitmapGeneration(self.0 + 1)
    }
}

/// A flush of the local disk (and the peer's), numbered by the node; a
/// Flush frame carries it as its sequence number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct FlushId(pub u64);
