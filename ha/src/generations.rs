//! Data generation identifiers and the decision two data nodes take when
//! they meet (in the manner of DRBD's UUIDs and its resync handshake).
//!
//! Every disk carries the identifier of the **current** generation of its
//! data, the generation its dirty bitmap counts from (**bitmap**, 0 when the
//! bitmap tracks nothing on its own), and a short **history** of older
//! generations. A primary that starts writing without its peer opens a new
//! generation (a fresh random identifier): from then on the two disks hold
//! different data, and the identifiers tell which is newer, whether the
//! bitmap covers the difference, or whether the two histories have nothing
//! in common.
//!
//! [`decide`] is a pure function of what both nodes know about themselves
//! (exchanged in the replication stream's Hello); both sides compute it and
//! reach the mirror-image verdict. The table it implements is in
//! `docs/on-disk-format.md` ("Resync decision").

use core::fmt;

use crate::types::DataState;

/// Length of the generation history kept on disk.
pub const HISTORY_LEN: usize = 2;

/// The generation identifiers of one disk. 0 means "none".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Generations {
    /// The generation of the data on this disk; 0: the disk holds no data of
    /// any generation (blank, or discarded by the operator).
    pub current: u64,
    /// The generation the bitmap counts from: every region written since
    /// that generation is marked. 0 while the pair is in sync.
    pub bitmap: u64,
    /// Older generations, newest first.
    pub history: [u64; HISTORY_LEN],
}

impl Generations {
    /// A disk with no data.
    pub const NONE: Generations = Generations {
        current: 0,
        bitmap: 0,
        history: [0; HISTORY_LEN],
    };

    /// The generation of a pair formatted with both disks known identical
    /// (or upgraded from metadata version 1, which had no generations): the
    /// same on both nodes, derived from the pair id.
    pub fn initial(pair_id: u64) -> Generations {
        Generations {
            current: initial_generation(pair_id),
            ..Generations::NONE
        }
    }

    /// This node starts writing without its peer: a new current generation,
    /// `fresh` (random, non-zero). The bitmap counts from the generation the
    /// peer still has; if it already did, the generation being left is kept
    /// in the history (the bitmap covers it too).
    pub fn start_new_current(&mut self, fresh: u64) {
        if self.current == 0 {
            return;
        }
        if self.bitmap == 0 {
            self.bitmap = self.current;
        } else {
            self.push_history(self.current);
        }
        self.current = fresh;
    }

    /// The peer caught up (resync finished): the bitmap generation becomes
    /// history.
    pub fn retire_bitmap(&mut self) {
        if self.bitmap != 0 {
            let b = self.bitmap;
            self.push_history(b);
            self.bitmap = 0;
        }
    }

    fn push_history(&mut self, g: u64) {
        if g == 0 || self.history[0] == g {
            return;
        }
        for i in (1..HISTORY_LEN).rev() {
            self.history[i] = self.history[i - 1];
        }
        self.history[0] = g;
    }

    fn in_history(&self, g: u64) -> bool {
        g != 0 && self.history.contains(&g)
    }

    /// Every generation this disk's data has been part of other than the
    /// current one (bitmap and history).
    fn ancestors(&self) -> impl Iterator<Item = u64> + '_ {
        core::iter::once(self.bitmap)
            .chain(self.history.iter().copied())
            .filter(|g| *g != 0)
    }
}

/// The generation both nodes of a pair start from when formatted identical.
pub fn initial_generation(pair_id: u64) -> u64 {
    // Any fixed mix of the pair id; never 0.
    let mut x = pair_id ^ 0x7461_6e64_656d_6731; // "tandemg1"
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x.max(1)
}

/// What one node tells the other about its data when they meet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataView {
    pub generations: Generations,
    pub data_state: DataState,
    /// Formatted on an empty disk and never paired since.
    pub blank: bool,
    /// Currently primary.
    pub primary: bool,
}

/// Which node copies to which.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Me,
    Peer,
}

impl Side {
    fn mirror(self) -> Side {
        match self {
            Side::Me => Side::Peer,
            Side::Peer => Side::Me,
        }
    }
}

/// Why two nodes refuse to pair up. Each leaves both nodes as they were.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Both wrote without the other since their last common generation.
    SplitBrain,
    /// The two disks share no generation: another pair's or unrelated data.
    Unrelated,
    /// Neither disk holds consistent data to copy from.
    NoConsistentData,
    /// The node that would have to receive data is serving as primary.
    PrimaryIsBehind,
    /// The peer's disk carries another pair's id.
    OtherPair,
    /// The disks' geometries differ (region size), or the two nodes served
    /// namespaces of different sizes.
    Geometry,
    /// A disk is smaller than the pair's agreed namespace size.
    DiskTooSmall,
}

impl Refusal {
    pub fn name(self) -> &'static str {
        match self {
            Refusal::SplitBrain => "split-brain",
            Refusal::Unrelated => "unrelated-data",
            Refusal::NoConsistentData => "no-consistent-data",
            Refusal::PrimaryIsBehind => "primary-is-behind",
            Refusal::OtherPair => "other-pair",
            Refusal::Geometry => "disk-geometry",
            Refusal::DiskTooSmall => "disk-too-small",
        }
    }
}

/// What to do when two nodes meet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Two blank disks: one new pair, no copy needed.
    NewPair,
    /// Same generation: nothing beyond the regions both bitmaps mark (what a
    /// crash may have left differing).
    InSync,
    /// Copy the regions the source's bitmap marks (and the target's).
    BitmapResync {
        source: Side,
    },
    /// Copy every region.
    FullResync {
        source: Side,
    },
    Refuse(Refusal),
}

impl Decision {
    /// The same decision seen from the peer.
    pub fn mirror(self) -> Decision {
        match self {
            Decision::BitmapResync { source } => Decision::BitmapResync {
                source: source.mirror(),
            },
            Decision::FullResync { source } => Decision::FullResync {
                source: source.mirror(),
            },
            d => d,
        }
    }

    /// The node that copies, if any.
    pub fn source(self) -> Option<Side> {
        match self {
            Decision::BitmapResync { source } | Decision::FullResync { source } => Some(source),
            _ => None,
        }
    }
}

/// A decision and the rule that led to it (printed on the console and in
/// `status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub decision: Decision,
    pub reason: &'static str,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.decision {
            Decision::NewPair => f.write_str("new-pair")?,
            Decision::InSync => f.write_str("in-sync")?,
            Decision::BitmapResync { source: Side::Me } => f.write_str("bitmap-resync to-peer")?,
            Decision::BitmapResync { source: Side::Peer } => {
                f.write_str("bitmap-resync from-peer")?
            }
            Decision::FullResync { source: Side::Me } => f.write_str("full-resync to-peer")?,
            Decision::FullResync { source: Side::Peer } => f.write_str("full-resync from-peer")?,
            Decision::Refuse(r) => write!(f, "refused {}", r.name())?,
        }
        write!(f, " ({})", self.reason)
    }
}

fn verdict(decision: Decision, reason: &'static str) -> Verdict {
    Verdict { decision, reason }
}

/// Decides what two nodes do when they meet, from `me`'s point of view.
/// `decide(a, b)` is always the mirror of `decide(b, a)`.
pub fn decide(me: &DataView, peer: &DataView) -> Verdict {
    let v = decide_by_generations(me, peer);
    // Only consistent data is copied, and never onto a serving primary.
    match v.decision.source() {
        Some(source) => {
            let (src, dst) = match source {
                Side::Me => (me, peer),
                Side::Peer => (peer, me),
            };
            if src.data_state == DataState::Inconsistent {
                return verdict(
                    Decision::Refuse(Refusal::NoConsistentData),
                    "the newer disk is itself inconsistent (its resync did not finish)",
                );
            }
            if dst.primary {
                return verdict(
                    Decision::Refuse(Refusal::PrimaryIsBehind),
                    "the primary's data is older than its peer's",
                );
            }
            v
        }
        None => v,
    }
}

fn decide_by_generations(me: &DataView, peer: &DataView) -> Verdict {
    let (m, p) = (&me.generations, &peer.generations);
    use Decision::*;
    // 1. Blank disks.
    if m.current == 0 && p.current == 0 {
        if me.blank && peer.blank {
            return verdict(NewPair, "both disks blank: a new pair");
        }
        return verdict(
            Refuse(Refusal::NoConsistentData),
            "neither disk holds data of any generation",
        );
    }
    if m.current == 0 {
        return verdict(
            FullResync { source: Side::Peer },
            "this disk holds no data: full copy from the peer",
        );
    }
    if p.current == 0 {
        return verdict(
            FullResync { source: Side::Me },
            "the peer's disk holds no data: full copy to it",
        );
    }
    // 2. Same generation.
    if m.current == p.current {
        let me_behind = me.data_state != DataState::UpToDate;
        let peer_behind = peer.data_state != DataState::UpToDate;
        return match (me_behind, peer_behind) {
            (true, false) => verdict(
                BitmapResync { source: Side::Peer },
                "same generation, this disk not up to date: copy the marked regions",
            ),
            (false, true) => verdict(
                BitmapResync { source: Side::Me },
                "same generation, the peer's disk not up to date: copy the marked regions",
            ),
            _ => verdict(InSync, "same generation"),
        };
    }
    // 3. One wrote without the other, and its bitmap covers the difference.
    let me_ahead = m.bitmap != 0 && m.bitmap == p.current;
    let peer_ahead = p.bitmap != 0 && p.bitmap == m.current;
    if me_ahead && peer_ahead {
        return verdict(
            Refuse(Refusal::SplitBrain),
            "each node's bitmap counts from the other's generation",
        );
    }
    if me_ahead {
        return verdict(
            BitmapResync { source: Side::Me },
            "this node wrote without the peer since the peer's generation: copy the marked regions",
        );
    }
    if peer_ahead {
        return verdict(
            BitmapResync { source: Side::Peer },
            "the peer wrote without this node since this disk's generation: copy the marked regions",
        );
    }
    // 4. One disk holds an older generation of the other's data that no
    // bitmap covers any more (a reverted copy, a long absence). Before the
    // common-ancestor rule: a disk whose current generation is in the
    // other's history has not written since, even when the two also share
    // an older generation (an earlier outage of either node).
    if m.in_history(p.current) && p.in_history(m.current) {
        return verdict(
            Refuse(Refusal::SplitBrain),
            "each disk's generation is in the other's history",
        );
    }
    if m.in_history(p.current) {
        return verdict(
            FullResync { source: Side::Me },
            "the peer's disk holds an older generation of this data: full copy to it",
        );
    }
    if p.in_history(m.current) {
        return verdict(
            FullResync { source: Side::Peer },
            "this disk holds an older generation of the peer's data: full copy from the peer",
        );
    }
    // 5. Both wrote without the other since a common generation.
    if m.ancestors().any(|g| p.ancestors().any(|h| h == g)) {
        return verdict(
            Refuse(Refusal::SplitBrain),
            "both nodes wrote without the other since their last common generation",
        );
    }
    verdict(
        Refuse(Refusal::Unrelated),
        "the two disks share no generation",
    )
}

/// What the operator can do about a refusal (printed with it).
pub fn resolution(refusal: Refusal) -> &'static str {
    match refusal {
        Refusal::SplitBrain | Refusal::Unrelated => {
            "run discard-my-data on the node whose data is to be thrown away (it then takes a full copy from its peer)"
        }
        Refusal::NoConsistentData => {
            "no node holds consistent data: restore a disk from backup, or start both nodes on blank disks"
        }
        Refusal::OtherPair => {
            "check pair_id= on both nodes, or run discard-my-data on the node whose disk came from another pair"
        }
        Refusal::Geometry => {
            "the disks differ in region size, or the two nodes served namespaces of different sizes: give the node whose data is to be thrown away a blank disk (it takes the pair's size and a full copy)"
        }
        Refusal::DiskTooSmall => {
            "give the node with the smaller disk one at least as large as the pair's namespace (status shows size: and peer-size:); the namespace the hosts see never shrinks"
        }
        Refusal::PrimaryIsBehind => {
            "the peer holds newer data than the primary: demote or fence the primary, or run discard-my-data on the peer to keep the primary's data"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Decision::*;
    use alloc::vec::Vec;

    fn view(current: u64, bitmap: u64, history: [u64; 2], state: DataState) -> DataView {
        DataView {
            generations: Generations {
                current,
                bitmap,
                history,
            },
            data_state: state,
            blank: false,
            primary: false,
        }
    }
    const U: DataState = DataState::UpToDate;
    const O: DataState = DataState::Outdated;
    const I: DataState = DataState::Inconsistent;

    /// Every combination of a small alphabet of generations and states.
    fn all_views() -> Vec<DataView> {
        let gens = [0u64, 1, 2, 3, 4];
        let mut v = Vec::new();
        for c in gens {
            for b in gens {
                for h0 in gens {
                    for h1 in [0u64, 4] {
                        for s in [U, O, I] {
                            for blank in [false, true] {
                                for primary in [false, true] {
                                    if blank && (c != 0 || b != 0 || h0 != 0 || h1 != 0) {
                                        continue;
                                    }
                                    let mut x = view(c, b, [h0, h1], s);
                                    x.blank = blank;
                                    x.primary = primary;
                                    v.push(x);
                                }
                            }
                        }
                    }
                }
            }
        }
        v
    }

    #[test]
    fn both_sides_always_reach_the_mirror_decision() {
        let views = all_views();
        for a in &views {
            for b in &views {
                let ab = decide(a, b);
                let ba = decide(b, a);
                assert_eq!(ab.decision, ba.decision.mirror(), "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn data_is_only_copied_from_consistent_data_and_never_onto_a_primary() {
        let views = all_views();
        for a in &views {
            for b in &views {
                let d = decide(a, b).decision;
                match d.source() {
                    Some(Side::Me) => {
                        assert_ne!(a.data_state, I, "{a:?} vs {b:?}");
                        assert!(!b.primary, "{a:?} vs {b:?}");
                    }
                    Some(Side::Peer) => {
                        assert_ne!(b.data_state, I, "{a:?} vs {b:?}");
                        assert!(!a.primary, "{a:?} vs {b:?}");
                    }
                    None => {}
                }
                // A disk with no data never counts as in sync with one that
                // has some, and is never a source.
                if a.generations.current == 0 && b.generations.current != 0 {
                    assert!(
                        matches!(d, FullResync { source: Side::Peer } | Refuse(_)),
                        "{a:?} vs {b:?}: {d:?}"
                    );
                }
                if d == NewPair {
                    assert!(a.blank && b.blank);
                }
                if d == InSync {
                    assert_eq!(a.generations.current, b.generations.current);
                }
            }
        }
    }

    #[test]
    fn the_table() {
        let blank = DataView {
            blank: true,
            ..view(0, 0, [0, 0], I)
        };
        let cases: &[(DataView, DataView, Decision)] = &[
            // Two blank disks: a new pair.
            (blank, blank, NewPair),
            // A blank (replaced) disk meets a peer with history.
            (
                blank,
                view(7, 5, [0, 0], U),
                FullResync { source: Side::Peer },
            ),
            (
                view(7, 0, [0, 0], U),
                blank,
                FullResync { source: Side::Me },
            ),
            // Discarded data (invalidate) on both: nothing to copy from.
            (
                view(0, 0, [0, 0], I),
                view(0, 0, [0, 0], I),
                Refuse(Refusal::NoConsistentData),
            ),
            // Same generation.
            (view(7, 0, [5, 0], U), view(7, 0, [5, 0], U), InSync),
            (
                view(7, 0, [0, 0], O),
                view(7, 0, [0, 0], U),
                BitmapResync { source: Side::Peer },
            ),
            (
                view(7, 0, [0, 0], I),
                view(7, 5, [0, 0], U),
                BitmapResync { source: Side::Peer },
            ),
            (view(7, 0, [0, 0], I), view(7, 0, [0, 0], I), InSync),
            // The peer wrote alone since our generation.
            (
                view(5, 0, [0, 0], O),
                view(7, 5, [0, 0], U),
                BitmapResync { source: Side::Peer },
            ),
            (
                view(7, 5, [0, 0], U),
                view(5, 0, [0, 0], U),
                BitmapResync { source: Side::Me },
            ),
            // A restarted full-resync target resumes from the bitmap.
            (
                view(5, 0, [0, 0], I),
                view(7, 5, [0, 0], U),
                BitmapResync { source: Side::Peer },
            ),
            // An older copy of our own disk, behind the bitmap.
            (
                view(3, 0, [0, 0], U),
                view(7, 5, [3, 0], U),
                FullResync { source: Side::Peer },
            ),
            (
                view(7, 5, [3, 1], U),
                view(1, 0, [0, 0], O),
                FullResync { source: Side::Me },
            ),
            // An older copy of our own disk after an earlier outage: the
            // two also share that outage's generation, but our current one
            // is in the peer's history, so only we are behind.
            (
                view(3, 0, [1, 0], U),
                view(9, 7, [3, 1], U),
                FullResync { source: Side::Peer },
            ),
            // Both wrote since a common generation.
            (
                view(8, 5, [0, 0], U),
                view(7, 5, [0, 0], U),
                Refuse(Refusal::SplitBrain),
            ),
            (
                view(8, 6, [5, 0], U),
                view(7, 5, [0, 0], U),
                Refuse(Refusal::SplitBrain),
            ),
            // Nothing in common.
            (
                view(8, 6, [5, 0], U),
                view(7, 4, [3, 0], U),
                Refuse(Refusal::Unrelated),
            ),
            (
                view(8, 0, [0, 0], U),
                view(7, 0, [0, 0], U),
                Refuse(Refusal::Unrelated),
            ),
            // The newer data is itself incomplete.
            (
                view(5, 0, [0, 0], U),
                view(7, 5, [0, 0], I),
                Refuse(Refusal::NoConsistentData),
            ),
            (
                blank,
                view(7, 0, [0, 0], I),
                Refuse(Refusal::NoConsistentData),
            ),
        ];
        for (a, b, want) in cases {
            assert_eq!(decide(a, b).decision, *want, "{a:?} vs {b:?}");
            assert_eq!(decide(b, a).decision, want.mirror(), "{b:?} vs {a:?}");
        }
        // A serving primary is never made a target.
        let mut p = view(5, 0, [0, 0], U);
        p.primary = true;
        assert_eq!(
            decide(&p, &view(7, 5, [0, 0], U)).decision,
            Refuse(Refusal::PrimaryIsBehind)
        );
    }

    #[test]
    fn new_generations_keep_what_the_bitmap_covers() {
        let mut g = Generations::initial(9);
        let g0 = g.current;
        g.start_new_current(11);
        assert_eq!((g.current, g.bitmap), (11, g0));
        // Still alone: the bitmap keeps counting from g0.
        g.start_new_current(12);
        assert_eq!((g.current, g.bitmap, g.history), (12, g0, [11, 0]));
        g.retire_bitmap();
        assert_eq!((g.current, g.bitmap, g.history), (12, 0, [g0, 11]));
        // A disk without data opens no generation.
        let mut none = Generations::NONE;
        none.start_new_current(5);
        assert_eq!(none, Generations::NONE);
        assert_ne!(initial_generation(0), 0);
        assert_eq!(Generations::initial(7), Generations::initial(7));
        assert_ne!(initial_generation(7), initial_generation(8));
    }
}
