//! A data node's candidacy: standing for primary in a new epoch, counting
//! the votes of the peer and the witness.
//!
//! One vote is enough (the candidate's own makes two of three), except
//! when the candidate asks to record its peer UpToDate again (after a
//! resync): then the peer itself must agree, since only it knows that it
//! holds every write.

use crate::time::{Duration, Instant};
use crate::types::NodeId;
use crate::wire::control::ElectionReason;

#[derive(Clone, Copy, Debug)]
pub(crate) struct Candidacy {
    /// The epoch stood for.
    pub(crate) epoch: u64,
    /// The member the new record names Outdated.
    pub(crate) outdated: Option<NodeId>,
    pub(crate) reason: ElectionReason,
    /// When the first vote request went out: the votes' promises run from
    /// then at the earliest.
    pub(crate) started: Instant,
    pub(crate) last_sent: Instant,
    /// One bit per member that granted its vote.
    votes: u8,
}

impl Candidacy {
    pub(crate) fn new(
        epoch: u64,
        outdated: Option<NodeId>,
        reason: ElectionReason,
        now: Instant,
    ) -> Candidacy {
        Candidacy {
            epoch,
            outdated,
            reason,
            started: now,
            last_sent: now,
            votes: 0,
        }
    }

    /// No majority within `timeout` of standing: give up.
    pub(crate) fn expired(&self, now: Instant, timeout: Duration) -> bool {
        now.saturating_since(self.started) >= timeout
    }

    /// `from` granted its vote in `epoch`; false (not counted) if that is
    /// not the epoch stood for.
    pub(crate) fn count_vote(&mut self, from: NodeId, epoch: u64) -> bool {
        if epoch != self.epoch {
            return false;
        }
        self.votes |= 1 << from.index();
        true
    }

    /// The votes counted so far make this candidate primary (`peer`: the
    /// other data node).
    pub(crate) fn elected(&self, peer: NodeId) -> bool {
        if self.reason == ElectionReason::PeerRecovered {
            self.votes & (1 << peer.index()) != 0
        } else {
            self.votes != 0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::from_micros(ms * 1000)
    }

    #[test]
    fn one_vote_of_the_stood_epoch_elects() {
        let mut c = Candidacy::new(7, Some(NodeId::B), ElectionReason::Failover, at(0));
        assert!(!c.elected(NodeId::B));
        assert!(!c.count_vote(NodeId::Witness, 6), "an older epoch's vote");
        assert!(!c.elected(NodeId::B));
        assert!(c.count_vote(NodeId::Witness, 7));
        assert!(c.elected(NodeId::B));
    }

    #[test]
    fn recording_the_peer_recovered_needs_the_peers_own_vote() {
        let mut c = Candidacy::new(3, None, ElectionReason::PeerRecovered, at(0));
        assert!(c.count_vote(NodeId::Witness, 3));
        assert!(!c.elected(NodeId::B), "the witness cannot know");
        assert!(c.count_vote(NodeId::B, 3));
        assert!(c.elected(NodeId::B));
        let mut c = Candidacy::new(3, None, ElectionReason::PeerRecovered, at(0));
        c.count_vote(NodeId::A, 3);
        assert!(c.elected(NodeId::A), "a's peer");
        assert!(!c.elected(NodeId::B));
    }

    #[test]
    fn a_candidacy_expires_after_the_timeout() {
        let c = Candidacy::new(1, None, ElectionReason::NoPrimary, at(100));
        let t = Duration::from_millis(300);
        assert!(!c.expired(at(399), t));
        assert!(c.expired(at(400), t));
        assert!(!c.expired(at(50), t), "a clock read before standing");
    }
}
