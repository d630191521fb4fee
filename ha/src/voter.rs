//! The voting and lease-granting rules, shared by the data nodes and the
//! witness. A grant is a promise: the granter will help no other candidate
//! into a new epoch until the lease it granted has surely expired on the
//! grantee's clock ([`crate::node::Timing::promise_horizon`] after the grant,
//! measured on the granter's own clock).
//!
//! The safety argument is in `docs/ha-protocol.md` ("Why it is safe").

use crate::time::{Duration, Instant};
use crate::types::{DataState, EpochRecord, MAX_LINKS, NodeId};
use crate::wire::control::{ElectionReason, Heartbeat, Refusal};

/// What a member has learned about another member since it (re)started.
#[derive(Clone, Copy, Debug, Default)]
pub struct Knowledge {
    /// Last datagram received from the member, per link.
    pub last_heard: [Option<Instant>; MAX_LINKS],
    /// The member's last heartbeat (carries its persisted state).
    pub heartbeat: Option<Heartbeat>,
    /// The highest epoch in that member's messages.
    pub epoch: u64,
}

impl Knowledge {
    /// Most recent datagram on any link.
    pub fn last_heard_any(&self) -> Option<Instant> {
        self.last_heard.iter().flatten().max().copied()
    }
    /// True when heard on at least one link within `timeout` before `now`.
    pub fn alive(&self, now: Instant, timeout: Duration) -> bool {
        self.last_heard_any()
            .is_some_and(|t| now.saturating_since(t) < timeout)
    }
    pub fn heard_since_boot(&self) -> bool {
        self.heartbeat.is_some()
    }
}

/// A vote request as the voter sees it.
#[derive(Clone, Copy, Debug)]
pub struct VoteAsk {
    pub candidate: NodeId,
    pub epoch: u64,
    pub outdated: Option<NodeId>,
    pub data_state: DataState,
    pub reason: ElectionReason,
    pub record: EpochRecord,
}

/// The voter's state. For a data node, `epoch`, `voted_for`, `vote_outdated`
/// and `record` are persisted in the superblock before any reply leaves.
#[derive(Clone, Debug)]
pub struct Voter {
    pub me: NodeId,
    pub epoch: u64,
    pub voted_for: Option<NodeId>,
    pub vote_outdated: Option<NodeId>,
    pub record: EpochRecord,
    /// The last lease or vote this member granted: to whom and when (local
    /// clock). Volatile: replaced by `promise_floor` after a restart.
    pub promise: Option<(NodeId, Instant)>,
    /// No vote for anyone before this instant: covers the promises made
    /// before a restart, which were not persisted.
    pub promise_floor: Instant,
    /// Highest epoch of a proposal this member voted for (since boot) that
    /// recorded each data node Outdated.
    pub outdating_vote: [u64; 2],
    /// What was heard from each member since boot.
    pub knowledge: [Knowledge; 3],
}

impl Voter {
    pub fn new(
        me: NodeId,
        epoch: u64,
        voted_for: Option<NodeId>,
        vote_outdated: Option<NodeId>,
        record: EpochRecord,
        boot: Instant,
        horizon: Duration,
    ) -> Voter {
        Voter {
            me,
            epoch,
            voted_for,
            vote_outdated,
            record,
            promise: None,
            promise_floor: boot + horizon,
            outdating_vote: [0; 2],
            knowledge: [Knowledge::default(); 3],
        }
    }

    /// Moves to a higher epoch seen in a message (without voting in it).
    /// Returns true if the state changed (a data node must persist it).
    pub fn observe_epoch(&mut self, epoch: u64) -> bool {
        if epoch > self.epoch {
            self.epoch = epoch;
            self.voted_for = None;
            self.vote_outdated = None;
            true
        } else {
            false
        }
    }

    /// Adopts a newer committed record. Returns true if it changed.
    pub fn observe_record(&mut self, record: EpochRecord) -> bool {
        if record.epoch > self.record.epoch {
            self.observe_epoch(record.epoch);
            self.record = record;
            true
        } else {
            false
        }
    }

    /// True while a lease this member granted to someone other than `except`
    /// may still be running on the grantee's clock.
    pub fn promise_outstanding(&self, now: Instant, horizon: Duration, except: NodeId) -> bool {
        if now < self.promise_floor {
            return true;
        }
        matches!(self.promise, Some((holder, at)) if holder != except && now < at + horizon)
    }

    /// Decides a vote. `own_data` is `Some` for a data node voter (its data
    /// state and whether it finished a resync in the candidate's record epoch);
    /// `waive_promise_to` names a lease holder that handed over.
    pub fn decide_vote(
        &self,
        now: Instant,
        horizon: Duration,
        ask: &VoteAsk,
        own: Option<OwnView>,
    ) -> Result<(), Refusal> {
        let c = ask.candidate;
        if !c.is_data_node() || c == self.me {
            return Err(Refusal::NotEligible);
        }
        if ask.epoch < self.epoch {
            return Err(Refusal::StaleEpoch);
        }
        if ask.epoch == self.epoch {
            match self.voted_for {
                Some(v) if v != c => return Err(Refusal::AlreadyVoted),
                Some(_) if self.vote_outdated != ask.outdated => return Err(Refusal::AlreadyVoted),
                _ => {}
            }
        }
        if ask.data_state != DataState::UpToDate
            || ask.outdated == Some(c)
            || ask.record.outdated == Some(c)
        {
            return Err(Refusal::NotEligible);
        }
        if ask.record.epoch < self.record.epoch {
            return Err(Refusal::StaleRecord);
        }
        if self.outdating_vote[c.index()] > ask.record.epoch {
            return Err(Refusal::NotEligible);
        }
        match own {
            Some(view) => {
                // A data node voter is the candidate's peer: it knows its own
                // state first-hand.
                if view.serving && ask.reason != ElectionReason::Switchover {
                    return Err(Refusal::ResponderIsPrimary);
                }
                if ask.outdated == Some(self.me) && !view.accepts_outdate {
                    return Err(Refusal::NotEligible);
                }
                if ask.outdated != Some(self.me)
                    && view.data_state != DataState::UpToDate
                    && !view.resynced
                {
                    return Err(Refusal::NotEligible);
                }
                let waived = view.handed_over_to == Some(c);
                if !waived && self.promise_outstanding(now, horizon, c) {
                    return Err(Refusal::LeaseOutstanding);
                }
            }
            None => {
                // The witness must know what the candidate's peer recorded
                // before it can vote: after a restart it has forgotten.
                let peer = &self.knowledge[c.peer().index()];
                let Some(hb) = peer.heartbeat else {
                    return Err(Refusal::PeerStateUnknown);
                };
                if ask.epoch < peer.epoch
                    || (ask.epoch == peer.epoch && hb.voted_for.is_some_and(|v| v != c))
                {
                    return Err(Refusal::AlreadyVoted);
                }
                if hb.record.epoch > ask.record.epoch {
                    return Err(Refusal::StaleRecord);
                }
                let pending_outdates_c = hb.voted_for == Some(c.peer())
                    && hb.vote_outdated == Some(c)
                    && peer.epoch > ask.record.epoch;
                if pending_outdates_c {
                    return Err(Refusal::NotEligible);
                }
                if ask.reason == ElectionReason::PeerRecovered {
                    // Only the peer itself can vouch for its resync.
                    return Err(Refusal::NotEligible);
                }
                if self.promise_outstanding(now, horizon, c) {
                    return Err(Refusal::LeaseOutstanding);
                }
            }
        }
        Ok(())
    }

    /// Records a granted vote (the caller persists, for a data node).
    pub fn grant_vote(&mut self, now: Instant, ask: &VoteAsk) {
        self.observe_record(ask.record);
        self.epoch = ask.epoch;
        self.voted_for = Some(ask.candidate);
        self.vote_outdated = ask.outdated;
        self.promise = Some((ask.candidate, now));
        if let Some(o) = ask.outdated.filter(|o| o.is_data_node()) {
            self.outdating_vote[o.index()] = self.outdating_vote[o.index()].max(ask.epoch);
        }
    }

    /// Decides a lease request (or read confirmation) from `requester`, whose
    /// header epoch is `epoch` and latest record `record`. The caller has
    /// already applied `observe_epoch`/`observe_record` for the message.
    /// `own_candidacy_active` tells whether this member's own vote for
    /// itself (if any) still belongs to a running candidacy.
    pub fn decide_lease(
        &self,
        requester: NodeId,
        epoch: u64,
        record: &EpochRecord,
        witness: bool,
        own_candidacy_active: bool,
    ) -> Result<(), Refusal> {
        if epoch < self.epoch {
            return Err(Refusal::StaleEpoch);
        }
        if record.epoch < self.record.epoch {
            return Err(Refusal::StaleRecord);
        }
        if record.primary != Some(requester) || self.record.primary != Some(requester) {
            return Err(Refusal::NotPrimary);
        }
        // An abandoned candidacy of our own promised nothing to anyone.
        let abandoned_self_vote = self.voted_for == Some(self.me) && !own_candidacy_active;
        if self.voted_for.is_some_and(|v| v != requester) && !abandoned_self_vote {
            return Err(Refusal::AlreadyVoted);
        }
        if witness {
            let peer = &self.knowledge[requester.peer().index()];
            if !peer.heard_since_boot() {
                return Err(Refusal::PeerStateUnknown);
            }
        }
        Ok(())
    }
}

/// A data node voter's view of itself.
#[derive(Clone, Copy, Debug)]
pub struct OwnView {
    pub data_state: DataState,
    /// Serving as primary right now.
    pub serving: bool,
    /// Finished a resync from the candidate in the candidate's record epoch.
    pub resynced: bool,
    /// Would accept being recorded Outdated (it knows it is behind).
    pub accepts_outdate: bool,
    /// This node drained and handed over to this candidate.
    pub handed_over_to: Option<NodeId>,
}
