//! The secondary's apply queue: replicated writes, resync data and
//! verification reads wait here until nothing overlapping them is on the
//! disk, so that overlapping ones reach the disk in stream order (the disk
//! may reorder concurrent requests); others go at once.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use super::Content;
use super::ids::{Seq, WriteId};
use super::overlaps;

/// Replicated data held while an overlapping write is on the disk; beyond
/// this the peer is misbehaving and the stream is reset.
const MAX_QUEUED_BYTES: usize = 64 << 20;
/// What a queued entry counts for at least: at most 1024 entries wait.
const ENTRY_BYTES: usize = 64 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ApplyKind {
    /// A replicated write (or Write Zeroes, Deallocate) of the primary.
    Write(Seq),
    Resync,
    /// A host write issued to the local disk before this node lost the
    /// primary role: it will still land, so replicated and resync data for
    /// the same range must wait for it.
    Orphan(WriteId),
    /// A read for online verification: after the writes before it, before
    /// the writes after it.
    Verify,
}

#[derive(Clone, Debug)]
pub(crate) struct Apply {
    pub(crate) kind: ApplyKind,
    pub(crate) offset: u64,
    /// Empty unless `content` is `Data`.
    pub(crate) data: Vec<u8>,
    pub(crate) len: u64,
    pub(crate) content: Content,
    pub(crate) force_unit_access: bool,
}

impl Apply {
    /// Data to write at `offset`.
    pub(crate) fn data(
        kind: ApplyKind,
        offset: u64,
        data: Vec<u8>,
        force_unit_access: bool,
    ) -> Apply {
        let len = data.len() as u64;
        Apply {
            kind,
            offset,
            data,
            len,
            content: Content::Data,
            force_unit_access,
        }
    }

    /// No data of its own: zeroes, a deallocation or a read of the range.
    pub(crate) fn range(kind: ApplyKind, offset: u64, len: u64, content: Content) -> Apply {
        Apply {
            kind,
            offset,
            data: Vec::new(),
            len,
            content,
            force_unit_access: false,
        }
    }
}

/// The peer sent more overlapping data than the queue may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct QueueFull;

/// What waits, and what is on the disk (kind, offset, length).
#[derive(Debug, Default)]
pub(crate) struct ApplyQueue {
    on_disk: Vec<(ApplyKind, u64, u64)>,
    waiting: VecDeque<Apply>,
}

impl ApplyQueue {
    /// Queues `a`; [`ApplyQueue::take_ready`] says when it can go.
    pub(crate) fn push(&mut self, a: Apply) -> Result<(), QueueFull> {
        // Each entry counts as at least ENTRY_BYTES: a peer's WriteZeroes
        // frames carry no data but still take memory and time (every entry
        // is checked against the ones before it) while they wait.
        let cost = |q: &Apply| q.data.len().max(ENTRY_BYTES);
        let queued: usize = self.waiting.iter().map(cost).sum();
        if queued + cost(&a) > MAX_QUEUED_BYTES {
            return Err(QueueFull);
        }
        self.waiting.push_back(a);
        Ok(())
    }

    /// The entries that can go to the disk now, in stream order: nothing on
    /// the disk and nothing queued before them overlaps them. They count as
    /// on the disk until [`ApplyQueue::finish`].
    pub(crate) fn take_ready(&mut self) -> Vec<Apply> {
        let mut ready = Vec::new();
        let mut i = 0;
        while i < self.waiting.len() {
            let (off, len) = (self.waiting[i].offset, self.waiting[i].len);
            let busy = self
                .on_disk
                .iter()
                .any(|&(_, o, l)| overlaps(off, len, o, l))
                || self
                    .waiting
                    .iter()
                    .take(i)
                    .any(|q| overlaps(off, len, q.offset, q.len));
            if busy {
                i += 1;
                continue;
            }
            let Some(a) = self.waiting.remove(i) else {
                break;
            };
            self.on_disk.push((a.kind, a.offset, a.len));
            ready.push(a);
        }
        ready
    }

    /// The disk finished the `kind` entry at `offset`: its length, or
    /// `None` if no such entry is on the disk.
    pub(crate) fn finish(&mut self, kind: ApplyKind, offset: u64) -> Option<u64> {
        let pos = self
            .on_disk
            .iter()
            .position(|&(k, o, _)| k == kind && o == offset)?;
        let (_, _, len) = self.on_disk.remove(pos);
        Some(len)
    }

    /// Host write `id`, issued before this node stopped being primary, is
    /// still on the disk over `[offset, offset+len)`.
    pub(crate) fn hold_orphan(&mut self, id: WriteId, offset: u64, len: u64) {
        self.on_disk.push((ApplyKind::Orphan(id), offset, len));
    }

    /// Orphaned host write `id` finished; false if it was not one.
    pub(crate) fn release_orphan(&mut self, id: WriteId) -> bool {
        match self
            .on_disk
            .iter()
            .position(|&(k, _, _)| k == ApplyKind::Orphan(id))
        {
            Some(pos) => {
                self.on_disk.remove(pos);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(seq: u64, offset: u64, len: usize) -> Apply {
        Apply::data(
            ApplyKind::Write(Seq(seq)),
            offset,
            alloc::vec![seq as u8; len],
            false,
        )
    }

    fn kinds(v: &[Apply]) -> Vec<ApplyKind> {
        v.iter().map(|a| a.kind).collect()
    }

    #[test]
    fn disjoint_entries_go_at_once_in_stream_order() {
        let mut q = ApplyQueue::default();
        q.push(write(1, 0, 4096)).unwrap();
        q.push(write(2, 8192, 4096)).unwrap();
        q.push(Apply::range(
            ApplyKind::Write(Seq(3)),
            4096,
            4096,
            Content::Zeroes,
        ))
        .unwrap();
        assert_eq!(
            kinds(&q.take_ready()),
            [1, 2, 3].map(|s| ApplyKind::Write(Seq(s)))
        );
        assert!(q.take_ready().is_empty());
    }

    #[test]
    fn an_overlapping_write_waits_for_the_one_on_the_disk() {
        let mut q = ApplyQueue::default();
        q.push(write(1, 0, 8192)).unwrap();
        assert_eq!(q.take_ready().len(), 1);
        q.push(write(2, 4096, 8192)).unwrap();
        q.push(write(3, 65536, 512)).unwrap();
        assert_eq!(
            kinds(&q.take_ready()),
            [ApplyKind::Write(Seq(3))],
            "disjoint: goes"
        );
        assert_eq!(q.finish(ApplyKind::Write(Seq(1)), 0), Some(8192));
        let ready = q.take_ready();
        assert_eq!(kinds(&ready), [ApplyKind::Write(Seq(2))]);
        assert_eq!(ready[0].data, alloc::vec![2u8; 8192]);
    }

    #[test]
    fn overlapping_entries_keep_stream_order_while_they_wait() {
        let mut q = ApplyQueue::default();
        q.push(write(1, 0, 4096)).unwrap();
        q.take_ready();
        // 2 waits for 1; 3 overlaps only 2, and must not overtake it.
        q.push(write(2, 0, 8192)).unwrap();
        q.push(write(3, 4096, 8192)).unwrap();
        assert!(q.take_ready().is_empty());
        q.finish(ApplyKind::Write(Seq(1)), 0);
        assert_eq!(kinds(&q.take_ready()), [ApplyKind::Write(Seq(2))]);
        q.finish(ApplyKind::Write(Seq(2)), 0);
        assert_eq!(kinds(&q.take_ready()), [ApplyKind::Write(Seq(3))]);
    }

    #[test]
    fn finishing_names_kind_and_offset() {
        let mut q = ApplyQueue::default();
        q.push(Apply::data(ApplyKind::Resync, 0, alloc::vec![0; 512], true))
            .unwrap();
        q.take_ready();
        assert_eq!(q.finish(ApplyKind::Write(Seq(1)), 0), None, "not a write");
        assert_eq!(q.finish(ApplyKind::Resync, 512), None, "not there");
        assert_eq!(q.finish(ApplyKind::Resync, 0), Some(512));
        assert_eq!(q.finish(ApplyKind::Resync, 0), None, "finished once");
    }

    #[test]
    fn replicated_data_waits_behind_an_orphaned_host_write() {
        let mut q = ApplyQueue::default();
        q.hold_orphan(WriteId(9), 0, 4096);
        q.push(Apply::data(
            ApplyKind::Resync,
            0,
            alloc::vec![0; 4096],
            true,
        ))
        .unwrap();
        assert!(q.take_ready().is_empty());
        assert!(!q.release_orphan(WriteId(8)));
        assert!(q.release_orphan(WriteId(9)));
        assert_eq!(kinds(&q.take_ready()), [ApplyKind::Resync]);
    }

    #[test]
    fn a_peer_that_floods_the_queue_is_refused() {
        let mut q = ApplyQueue::default();
        q.hold_orphan(WriteId(1), 0, 1);
        // Zeroes carry no data but count as an entry each.
        for s in 0..1024 {
            q.push(Apply::range(
                ApplyKind::Write(Seq(s)),
                0,
                512,
                Content::Zeroes,
            ))
            .unwrap();
        }
        let one_more = Apply::range(ApplyKind::Write(Seq(1024)), 0, 512, Content::Zeroes);
        assert_eq!(q.push(one_more), Err(QueueFull));
        let mut q = ApplyQueue::default();
        q.hold_orphan(WriteId(1), 0, 1);
        q.push(write(1, 0, 32 << 20)).unwrap();
        q.push(write(2, 0, 32 << 20)).unwrap();
        assert_eq!(q.push(write(3, 0, 512)), Err(QueueFull), "64 MiB waiting");
    }
}
