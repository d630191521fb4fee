//! The dirty log of a data node: which regions may differ between the two
//! disks, and when those marks are durable.
//!
//! A bit is set before the data of a write can differ between the disks,
//! and the write waits until the block holding the bit is on disk. Bits set
//! together share one persist (group commit): every bit set gets the next
//! bitmap generation, and a persist makes every generation up to its own
//! durable. Marking every region at once (a full resync) takes a single
//! generation, during which no bit counts as durable.
//!
//! Bits go away in a clean cycle: regions no write touched during a whole
//! interval become candidates; both disks are flushed; the candidates still
//! untouched and idle are then cleared.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use super::ids::{BitmapGeneration, FlushId, Region};
use crate::bitmap::Bitmap;
use crate::metadata::{Layout, emit_bitmap_block};

/// A clean cycle under way: the flush of both disks it waits for, and the
/// regions it clears once that is done.
#[derive(Clone, Debug)]
struct CleanCycle {
    flush: FlushId,
    candidates: Vec<Region>,
}

/// What a finished bitmap persist means for the writes waiting on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Persisted {
    /// Every bit set up to its generation is durable.
    Durable,
    /// It failed: the blocks are written again with the next persist, and
    /// writes that waited must fail (their bits may not be on disk).
    Failed,
}

/// The dirty-region bitmap, its persistence and its clean cycle.
#[derive(Debug)]
pub(crate) struct DirtyLog {
    layout: Layout,
    bitmap: Bitmap,
    /// Bitmap blocks changed since the last persist started.
    dirty_blocks: BTreeSet<u32>,
    /// Generation of the newest bit set in memory, and the one being
    /// persisted.
    generation: BitmapGeneration,
    persisting: Option<BitmapGeneration>,
    /// Regions whose bit was set in a generation not yet durable.
    not_durable: BTreeMap<Region, BitmapGeneration>,
    /// Every region was marked at once (a full resync) in this generation:
    /// until it is durable, no region's bit counts as durable (one entry
    /// instead of one per region of a large disk).
    all_marked: Option<BitmapGeneration>,
    /// Regions written since the current clean interval began.
    touched: Bitmap,
    clean: Option<CleanCycle>,
}

impl DirtyLog {
    /// The log of a disk with this layout, its bitmap as read from disk.
    pub(crate) fn new(layout: Layout, bitmap: Bitmap) -> DirtyLog {
        DirtyLog {
            layout,
            touched: Bitmap::new(bitmap.len()),
            bitmap,
            dirty_blocks: BTreeSet::new(),
            generation: BitmapGeneration(0),
            persisting: None,
            not_durable: BTreeMap::new(),
            all_marked: None,
            clean: None,
        }
    }

    pub(crate) fn bitmap(&self) -> &Bitmap {
        &self.bitmap
    }

    /// Regions marked.
    pub(crate) fn count(&self) -> u64 {
        self.bitmap.count()
    }

    pub(crate) fn is_marked(&self, r: Region) -> bool {
        self.bitmap.get(r.0)
    }

    /// The marked regions, in order.
    pub(crate) fn marked(&self) -> impl Iterator<Item = Region> + '_ {
        let mut from = 0;
        core::iter::from_fn(move || {
            let r = self.bitmap.next_set(from)?;
            from = r + 1;
            Some(Region(r))
        })
    }

    /// Marks `r` (a new generation if it was not marked).
    pub(crate) fn mark(&mut self, r: Region) {
        if self.bitmap.set(r.0) {
            self.dirty_blocks.insert(self.layout.block_of_region(r.0));
            self.generation = self.generation.next();
            self.not_durable.insert(r, self.generation);
        }
    }

    /// Marks `r` for a host write: also touched in this clean interval.
    pub(crate) fn mark_written(&mut self, r: Region) {
        self.mark(r);
        self.touched.set(r.0);
    }

    /// Marks every region below `regions` (a full resync of the namespace,
    /// which a larger disk's bitmap outgrows), in one generation.
    pub(crate) fn mark_all(&mut self, regions: u64) {
        for r in 0..regions.min(self.bitmap.len()) {
            self.bitmap.set(r);
        }
        for b in 0..self.layout.bitmap_blocks {
            self.dirty_blocks.insert(b);
        }
        self.generation = self.generation.next();
        self.all_marked = Some(self.generation);
    }

    pub(crate) fn clear(&mut self, r: Region) {
        if self.bitmap.clear(r.0) {
            self.dirty_blocks.insert(self.layout.block_of_region(r.0));
        }
    }

    /// Clears every mark (both disks are known equal).
    pub(crate) fn clear_all(&mut self) {
        let marked: Vec<Region> = self.marked().collect();
        for r in marked {
            self.clear(r);
        }
    }

    /// Whether the marks of every region of `[offset, offset+len)` are
    /// durable.
    pub(crate) fn durable(&self, offset: u64, len: u64) -> bool {
        if self.all_marked.is_some() {
            return false;
        }
        self.not_durable.is_empty()
            || self
                .layout
                .regions(offset, len)
                .all(|r| !self.not_durable.contains_key(&Region(r)))
    }

    /// Starts persisting the changed bitmap blocks (disk offset and bytes of
    /// each) unless a persist is outstanding: the next one then carries
    /// everything changed meanwhile.
    pub(crate) fn start_persist(&mut self) -> Option<(BitmapGeneration, Vec<(u64, Vec<u8>)>)> {
        if self.persisting.is_some() || self.dirty_blocks.is_empty() {
            return None;
        }
        let blocks = core::mem::take(&mut self.dirty_blocks)
            .into_iter()
            .map(|b| {
                (
                    self.layout.bitmap_block_offset(b),
                    emit_bitmap_block(&self.bitmap, b),
                )
            })
            .collect();
        self.persisting = Some(self.generation);
        Some((self.generation, blocks))
    }

    /// The persist of `generation` finished; `None` if it is not the one
    /// outstanding (a stale report, ignored).
    pub(crate) fn on_persisted(
        &mut self,
        generation: BitmapGeneration,
        ok: bool,
    ) -> Option<Persisted> {
        if self.persisting != Some(generation) {
            return None;
        }
        self.persisting = None;
        if ok {
            self.not_durable.retain(|_, g| *g > generation);
            if self.all_marked.is_some_and(|g| g <= generation) {
                self.all_marked = None;
            }
            return Some(Persisted::Durable);
        }
        if self.all_marked.is_some() {
            for b in 0..self.layout.bitmap_blocks {
                self.dirty_blocks.insert(b);
            }
        }
        for r in self.not_durable.keys() {
            self.dirty_blocks.insert(self.layout.block_of_region(r.0));
        }
        Some(Persisted::Failed)
    }

    // ----- clean cycle -----

    /// The flush the clean cycle under way waits for.
    pub(crate) fn clean_flush(&self) -> Option<FlushId> {
        self.clean.as_ref().map(|c| c.flush)
    }

    /// The regions a clean cycle could clear now: marked, untouched during
    /// this interval, not `busy`.
    pub(crate) fn clean_candidates(&self, busy: impl Fn(Region) -> bool) -> Vec<Region> {
        self.marked()
            .filter(|&r| !self.touched.get(r.0) && !busy(r))
            .collect()
    }

    /// A new clean interval begins: nothing touched yet.
    pub(crate) fn new_interval(&mut self) {
        self.touched.clear_all();
    }

    /// A clean cycle starts: `candidates` are cleared once `flush` of both
    /// disks finished.
    pub(crate) fn start_clean(&mut self, flush: FlushId, candidates: Vec<Region>) {
        self.clean = Some(CleanCycle { flush, candidates });
    }

    /// The cycle's flush finished on both disks: clears the candidates that
    /// are still marked, untouched and not `busy`; returns how many.
    pub(crate) fn finish_clean(&mut self, busy: impl Fn(Region) -> bool) -> u64 {
        let Some(c) = self.clean.take() else {
            return 0;
        };
        let mut cleared = 0;
        for r in c.candidates {
            if !self.touched.get(r.0) && !busy(r) && self.is_marked(r) {
                self.clear(r);
                cleared += 1;
            }
        }
        cleared
    }

    /// Ends the clean cycle without clearing anything; returns its flush.
    pub(crate) fn abandon_clean(&mut self) -> Option<FlushId> {
        self.clean.take().map(|c| c.flush)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RS: u32 = 65536;

    /// 64 MiB of data at 64 KiB regions, plus the metadata area.
    fn log() -> DirtyLog {
        let layout = Layout::new(64 << 20, RS).unwrap();
        DirtyLog::new(layout, Bitmap::new(layout.region_count))
    }

    fn range(r: u64) -> (u64, u64) {
        (r * RS as u64, RS as u64)
    }

    #[test]
    fn a_mark_is_durable_only_once_its_generation_persisted() {
        let mut d = log();
        assert!(d.durable(0, 4096), "nothing marked: nothing to wait for");
        d.mark(Region(3));
        let (o, l) = range(3);
        assert!(!d.durable(o, l));
        assert!(d.durable(0, 4096), "other regions do not wait");
        let (g, blocks) = d.start_persist().expect("a persist starts");
        assert_eq!(g, BitmapGeneration(1));
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].0, d.layout.bitmap_block_offset(0));
        assert!(!d.durable(o, l), "written, not yet reported");
        assert_eq!(d.on_persisted(g, true), Some(Persisted::Durable));
        assert!(d.durable(o, l));
    }

    #[test]
    fn marking_a_marked_region_costs_no_generation() {
        let mut d = log();
        d.mark(Region(5));
        let (g, _) = d.start_persist().unwrap();
        d.on_persisted(g, true);
        d.mark(Region(5));
        assert!(d.durable(range(5).0, range(5).1));
        assert_eq!(d.start_persist(), None, "nothing changed, nothing written");
    }

    #[test]
    fn one_persist_at_a_time_and_the_next_carries_what_changed_meanwhile() {
        let mut d = log();
        d.mark(Region(1));
        let (g1, _) = d.start_persist().unwrap();
        d.mark(Region(2));
        d.mark(Region(100_000 % d.layout.region_count));
        assert_eq!(d.start_persist(), None, "one persist outstanding");
        assert_eq!(d.on_persisted(g1, true), Some(Persisted::Durable));
        assert!(d.durable(range(1).0, range(1).1));
        assert!(
            !d.durable(range(2).0, range(2).1),
            "set after the persist began"
        );
        let (g2, _) = d.start_persist().unwrap();
        assert!(g2 > g1);
        d.on_persisted(g2, true);
        assert!(d.durable(range(2).0, range(2).1));
    }

    #[test]
    fn a_stale_persist_report_changes_nothing() {
        let mut d = log();
        d.mark(Region(1));
        let (g, _) = d.start_persist().unwrap();
        assert_eq!(d.on_persisted(BitmapGeneration(g.0 + 7), true), None);
        assert!(!d.durable(range(1).0, range(1).1));
        assert_eq!(d.on_persisted(g, true), Some(Persisted::Durable));
        assert_eq!(d.on_persisted(g, true), None, "reported twice");
    }

    #[test]
    fn a_failed_persist_writes_the_same_blocks_again() {
        let mut d = log();
        d.mark(Region(1));
        let (g, first) = d.start_persist().unwrap();
        assert_eq!(d.on_persisted(g, false), Some(Persisted::Failed));
        assert!(!d.durable(range(1).0, range(1).1));
        let (g2, again) = d.start_persist().expect("the block is written again");
        assert_eq!(again, first);
        d.on_persisted(g2, true);
        assert!(d.durable(range(1).0, range(1).1));
    }

    #[test]
    fn marking_everything_holds_every_region_until_persisted() {
        let mut d = log();
        d.mark(Region(1));
        let (g, _) = d.start_persist().unwrap();
        d.on_persisted(g, true);
        d.mark_all(d.layout.region_count);
        assert_eq!(d.count(), d.layout.region_count);
        assert!(!d.durable(range(1).0, range(1).1), "even one marked before");
        let (g, blocks) = d.start_persist().unwrap();
        assert_eq!(blocks.len() as u32, d.layout.bitmap_blocks);
        assert_eq!(d.on_persisted(g, false), Some(Persisted::Failed));
        let (g, blocks) = d.start_persist().unwrap();
        assert_eq!(blocks.len() as u32, d.layout.bitmap_blocks, "all again");
        d.on_persisted(g, true);
        assert!(d.durable(0, d.layout.data_bytes));
    }

    #[test]
    fn clearing_writes_the_block_but_waits_for_no_one() {
        let mut d = log();
        d.mark(Region(4));
        let (g, _) = d.start_persist().unwrap();
        d.on_persisted(g, true);
        d.clear(Region(4));
        assert!(!d.is_marked(Region(4)));
        assert!(d.durable(range(4).0, range(4).1));
        let (_, blocks) = d.start_persist().expect("the cleared bit is persisted");
        assert_eq!(blocks.len(), 1);
        d.mark(Region(6));
        d.mark(Region(9));
        d.clear_all();
        assert_eq!(d.count(), 0);
    }

    #[test]
    fn a_clean_cycle_clears_only_idle_untouched_regions() {
        let mut d = log();
        for r in [1, 2, 3, 4] {
            d.mark_written(Region(r));
        }
        assert!(
            d.clean_candidates(|_| false).is_empty(),
            "written during this interval"
        );
        d.new_interval();
        let busy = |r: Region| r == Region(2);
        let candidates = d.clean_candidates(busy);
        assert_eq!(candidates, [Region(1), Region(3), Region(4)]);
        d.start_clean(FlushId(7), candidates);
        assert_eq!(d.clean_flush(), Some(FlushId(7)));
        // Written again while both disks flush: it keeps its mark.
        d.mark_written(Region(3));
        // Busy now (a write under way): keeps it too.
        let busy = |r: Region| r == Region(4);
        assert_eq!(d.finish_clean(busy), 1);
        assert_eq!(d.clean_flush(), None);
        assert!(!d.is_marked(Region(1)));
        for r in [2, 3, 4] {
            assert!(d.is_marked(Region(r)), "region {r}");
        }
    }

    #[test]
    fn an_abandoned_clean_cycle_clears_nothing() {
        let mut d = log();
        d.mark(Region(1));
        let candidates = d.clean_candidates(|_| false);
        d.start_clean(FlushId(3), candidates);
        assert_eq!(d.abandon_clean(), Some(FlushId(3)));
        assert_eq!(d.finish_clean(|_| false), 0);
        assert!(d.is_marked(Region(1)));
        assert_eq!(d.abandon_clean(), None);
    }
}
