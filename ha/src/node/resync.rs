//! The resync pump of a primary (the sync source): it reads the regions
//! marked out of sync, sends each as a ResyncData chunk, and clears a
//! region once the peer acknowledged its chunk — paced by a token bucket
//! (the resync rate) and a bound on the regions being read or on the wire.

use alloc::collections::BTreeSet;
use alloc::vec::Vec;

use super::ids::Region;
use crate::bitmap::Bitmap;
use crate::time::Instant;

/// A token bucket of bytes: `rate` bytes a second, at most `burst` kept.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pacer {
    tokens: u64,
    refilled: Instant,
}

impl Pacer {
    /// Starts with `tokens` at `now`.
    pub(crate) fn new(tokens: u64, now: Instant) -> Pacer {
        Pacer {
            tokens,
            refilled: now,
        }
    }

    /// Adds what `rate` bytes a second earned since the last refill, up to
    /// `burst`.
    pub(crate) fn refill(&mut self, now: Instant, rate: u64, burst: u64) {
        let elapsed = now.saturating_since(self.refilled).as_micros();
        self.tokens = self.tokens.saturating_add(
            (rate as u128 * elapsed as u128 / 1_000_000).min(u64::MAX as u128) as u64,
        );
        self.tokens = self.tokens.min(burst);
        self.refilled = now;
    }

    pub(crate) fn has(&self, bytes: u64) -> bool {
        self.tokens >= bytes
    }

    /// Spends `bytes` (the caller checked [`Pacer::has`]).
    pub(crate) fn spend(&mut self, bytes: u64) {
        self.tokens -= bytes;
    }
}

/// How fast a background copy may go.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pace {
    /// Bytes a second.
    pub(crate) rate: u64,
    /// Regions being read or on the wire, at most.
    pub(crate) max_in_flight: usize,
    pub(crate) region_size: u64,
}

impl Pace {
    /// The most a pacer may save up: a tenth of a second, or one region
    /// for every slot.
    pub(crate) fn burst(&self) -> u64 {
        (self.rate / 10).max(self.region_size * self.max_in_flight as u64)
    }
}

/// A resync under way.
#[derive(Debug)]
pub(crate) struct ResyncPump {
    /// Regions still to copy.
    pending: Bitmap,
    total: u64,
    /// Where the search for the next region starts.
    cursor: u64,
    /// Regions being read for resync (their host writes wait).
    reading: BTreeSet<Region>,
    /// Regions whose chunk is on the wire.
    in_flight: BTreeSet<Region>,
    /// Regions a refused write marked again while their chunk was on the
    /// wire: that chunk's acknowledgement must not clear them.
    redo: BTreeSet<Region>,
    pacer: Pacer,
    /// Every region copied, and ResyncDone sent.
    pub(crate) done_sent: bool,
}

impl ResyncPump {
    /// A resync of the regions marked in `pending`.
    pub(crate) fn new(pending: Bitmap, region_size: u64, now: Instant) -> ResyncPump {
        ResyncPump {
            total: pending.count(),
            pending,
            cursor: 0,
            reading: BTreeSet::new(),
            in_flight: BTreeSet::new(),
            redo: BTreeSet::new(),
            pacer: Pacer::new(region_size, now),
            done_sent: false,
        }
    }

    /// Regions to copy, in all.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// Regions not yet copied.
    pub(crate) fn remaining(&self) -> u64 {
        self.pending.count()
    }

    /// The regions being read (host writes over them wait).
    pub(crate) fn reading(&self) -> impl Iterator<Item = Region> + '_ {
        self.reading.iter().copied()
    }

    /// The regions to read now, as the pace allows: the next marked ones
    /// from where the last search stopped (wrapping once), skipping those
    /// under way and those `busy` with a host write.
    pub(crate) fn next_reads(
        &mut self,
        now: Instant,
        pace: Pace,
        busy: impl Fn(Region) -> bool,
    ) -> Vec<Region> {
        let rs = pace.region_size;
        self.pacer.refill(now, pace.rate, pace.burst());
        let mut reads = Vec::new();
        // Reads and chunks on the wire together stay within the limit.
        while self.reading.len() + self.in_flight.len() < pace.max_in_flight && self.pacer.has(rs) {
            let Some(r) = self.next_candidate(&busy) else {
                break;
            };
            self.reading.insert(r);
            self.cursor = r.0 + 1;
            self.pacer.spend(rs);
            reads.push(r);
        }
        reads
    }

    fn next_candidate(&self, busy: &impl Fn(Region) -> bool) -> Option<Region> {
        for from in [self.cursor, 0] {
            let mut i = from;
            while let Some(j) = self.pending.next_set(i) {
                let r = Region(j);
                if !self.in_flight.contains(&r) && !self.reading.contains(&r) && !busy(r) {
                    return Some(r);
                }
                i = j + 1;
            }
        }
        None
    }

    /// The read of `r` finished: `ok` if its chunk goes on the wire now
    /// (else it is read again later). False if `r` was not being read.
    pub(crate) fn on_read(&mut self, r: Region, ok: bool) -> bool {
        if !self.reading.remove(&r) {
            return false;
        }
        if ok {
            self.in_flight.insert(r);
        }
        true
    }

    /// The peer acknowledged the chunk of `r` (`ok`: it is on the peer's
    /// disk). True if `r` is copied: its mark may go unless a host write
    /// covers it.
    pub(crate) fn on_ack(&mut self, r: Region, ok: bool) -> bool {
        if !self.in_flight.remove(&r) {
            return false;
        }
        // The chunk predates a write the peer refused: the region stays
        // marked, to be copied again.
        if self.redo.remove(&r) || !ok {
            return false;
        }
        self.pending.clear(r.0);
        true
    }

    /// `r` must be copied (again): a write to it did not reach the peer.
    pub(crate) fn remark(&mut self, r: Region) {
        if self.pending.set(r.0) {
            self.total += 1;
        }
        if self.in_flight.contains(&r) {
            self.redo.insert(r);
        }
        self.done_sent = false;
    }

    /// Every region copied and acknowledged, and not yet announced.
    pub(crate) fn finished(&self) -> bool {
        self.pending.count() == 0
            && self.in_flight.is_empty()
            && self.reading.is_empty()
            && !self.done_sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Duration;

    const RS: u64 = 65536;

    fn at(ms: u64) -> Instant {
        Instant::from_micros(ms * 1000)
    }

    fn pump(regions: &[u64], len: u64) -> ResyncPump {
        let mut b = Bitmap::new(len);
        for &r in regions {
            b.set(r);
        }
        ResyncPump::new(b, RS, at(0))
    }

    /// Fast enough that only the in-flight bound limits.
    fn fast(max_in_flight: usize) -> Pace {
        Pace {
            rate: 1 << 40,
            max_in_flight,
            region_size: RS,
        }
    }

    fn idle(_: Region) -> bool {
        false
    }

    fn regions(v: &[u64]) -> Vec<Region> {
        v.iter().map(|&r| Region(r)).collect()
    }

    #[test]
    fn marked_regions_are_read_in_order_within_the_in_flight_bound() {
        let mut p = pump(&[2, 5, 7, 9], 16);
        assert_eq!(p.total(), 4);
        assert_eq!(p.next_reads(at(1), fast(3), idle), regions(&[2, 5, 7]));
        assert_eq!(p.next_reads(at(2), fast(3), idle), []);
        assert!(p.on_read(Region(2), true));
        assert_eq!(
            p.next_reads(at(3), fast(3), idle),
            [],
            "its chunk is on the wire"
        );
        assert!(p.on_ack(Region(2), true));
        assert_eq!(p.next_reads(at(4), fast(3), idle), regions(&[9]));
        assert_eq!(p.remaining(), 3);
    }

    #[test]
    fn the_rate_paces_the_reads() {
        let mut p = pump(&[0, 1, 2, 3, 4, 5], 8);
        // Ten regions a second: one every 100 ms.
        let pace = Pace {
            rate: 10 * RS,
            max_in_flight: 8,
            region_size: RS,
        };
        assert_eq!(
            p.next_reads(at(0), pace, idle),
            regions(&[0]),
            "one to start"
        );
        assert_eq!(p.next_reads(at(50), pace, idle), []);
        assert_eq!(p.next_reads(at(100), pace, idle), regions(&[1]));
        // Saved up while idle, at most the burst: one slot per region in
        // flight (8 regions), more than 6 marked.
        let later = at(100) + Duration::from_millis(10_000);
        assert_eq!(p.next_reads(later, pace, idle), regions(&[2, 3, 4, 5]));
    }

    #[test]
    fn a_region_under_a_host_write_waits_and_is_found_again() {
        let mut p = pump(&[1, 3], 8);
        let busy = |r: Region| r == Region(1);
        assert_eq!(p.next_reads(at(1), fast(4), busy), regions(&[3]));
        p.on_read(Region(3), true);
        p.on_ack(Region(3), true);
        // The search went on past 3: it wraps to find 1.
        assert_eq!(p.next_reads(at(2), fast(4), idle), regions(&[1]));
    }

    #[test]
    fn a_failed_read_or_chunk_is_copied_again() {
        let mut p = pump(&[4], 8);
        assert_eq!(p.next_reads(at(1), fast(1), idle), regions(&[4]));
        assert!(p.on_read(Region(4), false));
        assert!(!p.on_read(Region(4), true), "not being read any more");
        assert_eq!(p.next_reads(at(2), fast(1), idle), regions(&[4]));
        p.on_read(Region(4), true);
        assert!(!p.on_ack(Region(4), false), "the peer's disk failed");
        assert!(!p.finished());
        assert_eq!(p.next_reads(at(3), fast(1), idle), regions(&[4]));
        p.on_read(Region(4), true);
        assert!(p.on_ack(Region(4), true));
        assert!(p.finished());
    }

    #[test]
    fn a_region_marked_again_while_its_chunk_is_on_the_wire_is_copied_again() {
        let mut p = pump(&[6], 8);
        p.next_reads(at(1), fast(1), idle);
        p.on_read(Region(6), true);
        p.remark(Region(6));
        assert_eq!(p.total(), 1, "still marked: counted once");
        assert!(
            !p.on_ack(Region(6), true),
            "the chunk is older than the write"
        );
        assert_eq!(p.remaining(), 1);
        assert_eq!(p.next_reads(at(2), fast(1), idle), regions(&[6]));
        p.on_read(Region(6), true);
        assert!(p.on_ack(Region(6), true));
        assert!(p.finished());
    }

    #[test]
    fn a_resync_is_finished_once_every_chunk_is_acknowledged() {
        let mut p = pump(&[0, 1], 4);
        assert!(!p.finished());
        p.next_reads(at(1), fast(4), idle);
        p.on_read(Region(0), true);
        p.on_read(Region(1), true);
        p.on_ack(Region(0), true);
        assert!(!p.finished(), "one on the wire");
        p.on_ack(Region(1), true);
        assert!(p.finished());
        p.done_sent = true;
        assert!(!p.finished(), "announced once");
        p.remark(Region(3));
        assert_eq!(p.total(), 3);
        assert!(!p.done_sent, "more to copy: announced again later");
        assert!(!p.on_ack(Region(2), true), "never sent");
        assert!(pump(&[], 4).finished(), "nothing to copy");
    }
}
