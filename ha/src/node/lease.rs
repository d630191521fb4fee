//! The primary's lease: the time until which it may serve without hearing
//! from anyone, extended by grants to its lease rounds.
//!
//! A round is a LeaseRequest sent to the peer and the witness; a grant of
//! round `n` extends the lease to the time round `n` was *sent* plus the
//! lease duration (the granter promised, from the time it answered, not
//! to vote for anyone else for longer than that). Host reads take a ticket:
//! they complete only once a round started after they arrived was granted,
//! so a primary that was paused cannot answer a read from stale data.

use alloc::collections::VecDeque;

use crate::time::{Duration, Instant};

/// Rounds remembered, at most (older grants are ignored).
const MAX_ROUNDS: usize = 64;

/// A lease round sent: its number, when, and under which record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LeaseRound {
    pub(crate) round: u64,
    pub(crate) sent: Instant,
    /// The epoch of the record the request carried.
    pub(crate) epoch: u64,
}

#[derive(Debug)]
pub(crate) struct Lease {
    until: Option<Instant>,
    rounds: VecDeque<LeaseRound>,
    next_round: u64,
    /// The newest round granted (reads with a ticket up to it complete).
    confirmed: u64,
    /// When the newest granted round was sent (`status`).
    last_grant: Option<Instant>,
    /// A read waits for a round: start one when the outstanding one ends.
    want_round: bool,
}

impl Default for Lease {
    fn default() -> Lease {
        Lease {
            until: None,
            rounds: VecDeque::new(),
            next_round: 1,
            confirmed: 0,
            last_grant: None,
            want_round: false,
        }
    }
}

impl Lease {
    /// The lease's end, if it has one.
    pub(crate) fn until(&self) -> Option<Instant> {
        self.until
    }

    /// The lease holds at `now`.
    pub(crate) fn valid(&self, now: Instant) -> bool {
        self.until.is_some_and(|u| now < u)
    }

    pub(crate) fn last_grant(&self) -> Option<Instant> {
        self.last_grant
    }

    /// The newest round granted.
    pub(crate) fn confirmed(&self) -> u64 {
        self.confirmed
    }

    /// A read is waiting for a round to start.
    pub(crate) fn wants_round(&self) -> bool {
        self.want_round
    }

    /// Starts the next round, under the record of `epoch`; returns
    /// its number.
    pub(crate) fn start_round(&mut self, now: Instant, epoch: u64) -> u64 {
        let round = self.next_round;
        self.next_round += 1;
        self.want_round = false;
        self.rounds.push_back(LeaseRound {
            round,
            sent: now,
            epoch,
        });
        while self.rounds.len() > MAX_ROUNDS {
            self.rounds.pop_front();
        }
        round
    }

    /// Round `round`, if it is remembered.
    pub(crate) fn round(&self, round: u64) -> Option<LeaseRound> {
        self.rounds.iter().find(|r| r.round == round).copied()
    }

    /// `round` was granted: the lease extends to its sending plus
    /// `duration` (never shortens).
    pub(crate) fn granted(&mut self, round: LeaseRound, duration: Duration) {
        let until = round.sent + duration;
        if self.until.is_none_or(|u| until > u) {
            self.until = Some(until);
        }
        if self.last_grant.is_none_or(|g| round.sent > g) {
            self.last_grant = Some(round.sent);
        }
        self.confirmed = self.confirmed.max(round.round);
    }

    /// The ticket of a host read arriving at `now` (the next round to be
    /// started: only a round started after the read can confirm it), and
    /// whether to start a round for it now: not if one was started less
    /// than `spacing` ago and is still unanswered (the read then asks for
    /// the next one).
    pub(crate) fn read_ticket(&mut self, now: Instant, spacing: Duration) -> (u64, bool) {
        let ticket = self.next_round;
        let recent_outstanding = self
            .rounds
            .back()
            .is_some_and(|r| r.round > self.confirmed && now.saturating_since(r.sent) < spacing);
        if recent_outstanding {
            self.want_round = true;
        }
        (ticket, !recent_outstanding)
    }

    /// An election made this node primary: the votes are grants, each
    /// promised at or after `asked` (when the first request was sent).
    pub(crate) fn granted_by_election(&mut self, asked: Instant, duration: Duration) {
        self.until = Some(asked + duration);
        self.confirmed = self.next_round.saturating_sub(1);
    }

    /// The node stops being primary.
    pub(crate) fn end(&mut self) {
        self.until = None;
        self.want_round = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::from_micros(ms * 1000)
    }

    const LEASE: Duration = Duration::from_millis(1000);

    #[test]
    fn a_grant_extends_the_lease_from_the_rounds_sending() {
        let mut l = Lease::default();
        assert!(!l.valid(at(0)));
        let r = l.start_round(at(100), 1);
        assert_eq!(r, 1);
        let round = l.round(r).unwrap();
        assert_eq!(round.epoch, 1);
        // Answered late: the lease still counts from the request.
        l.granted(round, LEASE);
        assert_eq!(l.until(), Some(at(1100)));
        assert!(l.valid(at(1099)));
        assert!(!l.valid(at(1100)));
        assert_eq!(l.confirmed(), 1);
        assert_eq!(l.last_grant(), Some(at(100)));
    }

    #[test]
    fn an_older_grant_never_shortens_the_lease() {
        let mut l = Lease::default();
        let r1 = l.start_round(at(0), 1);
        let r2 = l.start_round(at(500), 1);
        l.granted(l.round(r2).unwrap(), LEASE);
        l.granted(l.round(r1).unwrap(), LEASE);
        assert_eq!(l.until(), Some(at(1500)));
        assert_eq!(l.confirmed(), 2);
        assert_eq!(l.last_grant(), Some(at(500)));
    }

    #[test]
    fn only_recent_rounds_are_remembered() {
        let mut l = Lease::default();
        for i in 0..100 {
            l.start_round(at(i), 1);
        }
        assert_eq!(l.round(36), None);
        assert_eq!(l.round(37).map(|r| r.sent), Some(at(36)));
        assert_eq!(l.round(101), None, "not yet sent");
    }

    #[test]
    fn a_read_waits_for_a_round_started_after_it() {
        let mut l = Lease::default();
        let spacing = Duration::from_millis(100);
        let r1 = l.start_round(at(0), 1);
        // A round went out 10 ms ago, unanswered: the read takes the next
        // one, started when asked for.
        let (ticket, start_now) = l.read_ticket(at(10), spacing);
        assert_eq!(ticket, r1 + 1);
        assert!(!start_now);
        assert!(l.wants_round());
        l.granted(l.round(r1).unwrap(), LEASE);
        assert!(l.confirmed() < ticket, "the older round confirms nothing");
        let r2 = l.start_round(at(20), 1);
        assert!(!l.wants_round());
        l.granted(l.round(r2).unwrap(), LEASE);
        assert!(l.confirmed() >= ticket);
        // Nothing outstanding: a round starts at once.
        let (ticket, start_now) = l.read_ticket(at(30), spacing);
        assert_eq!(ticket, 3);
        assert!(start_now);
        // Outstanding but old: a new one starts at once too.
        l.start_round(at(30), 1);
        assert!(l.read_ticket(at(130), spacing).1);
    }

    #[test]
    fn an_election_grants_the_lease_and_confirms_every_earlier_round() {
        let mut l = Lease::default();
        l.start_round(at(0), 1);
        l.start_round(at(10), 1);
        l.granted_by_election(at(50), LEASE);
        assert_eq!(l.until(), Some(at(1050)));
        assert_eq!(l.confirmed(), 2);
        l.read_ticket(at(60), Duration::from_millis(100));
        l.end();
        assert!(!l.valid(at(60)));
        assert!(!l.wants_round());
    }
}
