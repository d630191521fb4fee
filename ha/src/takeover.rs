//! When a data node takes over its silent peer's front-end addresses, and
//! when it gives them back (`docs/ha-protocol.md` §16). Pure: the kernel
//! feeds it the node's role and the ages of the peer's last datagrams per
//! link, and carries out what it decides (claim the addresses, announce them
//! with gratuitous ARP, tickle the hosts' connections, release).
//!
//! A node claims while it is primary and serving and has heard nothing from
//! its peer on any link for the failure timeout, or while its peer, heard,
//! reports that its front-end is lost (its host path, §17: hosts cannot
//! reach it, and their connections to it hang until reset); it releases as
//! soon as the peer is heard again on any link with a front-end, or when it
//! stops being primary. After a
//! claim it works in rounds spaced out over a few seconds: Linux answers an
//! out-of-window segment at most once per `tcp_invalid_ratelimit` (500 ms)
//! per connection, and a first round may find a host's MAC address unknown.

use crate::time::{Duration, Instant};
use crate::types::Role;

/// When the rounds after a claim happen, from the claim. Round 0 only asks
/// the hosts for their MAC addresses (ARP from the claimed address, which
/// also fills smoltcp's neighbour cache for the resets it will send); the
/// others tickle. After the first tickle a host answers again only once
/// `tcp_invalid_ratelimit` has passed: later rounds are 500 ms and more apart.
pub const ROUND_OFFSETS_MS: [u64; 5] = [0, 50, 600, 1200, 2500];

/// When a node announces its own addresses after a role change or after
/// hearing its peer again (from then): repeated, because a survivor that
/// held this node's addresses may announce them a last time before it hears
/// this node and releases them.
pub const ANNOUNCE_OFFSETS_MS: [u64; 3] = [0, 300, 1000];

/// What the node knows, as `DataNode::status` tells it.
#[derive(Clone, Copy, Debug)]
pub struct PeerView<'a> {
    pub role: Role,
    pub serving: bool,
    /// Time since the peer was last heard on each configured link (`None`:
    /// never since this node started).
    pub peer_heard: &'a [Option<crate::Duration>],
    /// The peer is heard and reports its front-end lost.
    pub peer_host_path_lost: bool,
    /// This node's own front-end is lost (when it comes back, the node
    /// announces its addresses).
    pub host_path_lost: bool,
}

/// What to do now; several may be set at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Take the peer's addresses.
    pub claim: bool,
    /// Give them back (and drop every connection on them).
    pub release: bool,
    /// Run round `n` after the claim: gratuitous ARP for the claimed
    /// addresses and tickles for the peer's reported connections.
    pub round: Option<usize>,
    /// Announce the node's own addresses (gratuitous ARP), so that hosts
    /// whose ARP caches a takeover redirected come back: after a role change
    /// and after the peer is heard again (or for the first time), at
    /// [`ANNOUNCE_OFFSETS_MS`].
    pub announce_own: bool,
}

#[derive(Clone, Debug)]
pub struct Takeover {
    failure_timeout: Duration,
    started: Instant,
    claimed_at: Option<Instant>,
    next_round: usize,
    last_role: Option<Role>,
    peer_was_heard: bool,
    host_path_was_lost: bool,
    announce_from: Option<Instant>,
    next_announce: usize,
}

impl Takeover {
    pub fn new(failure_timeout: Duration, now: Instant) -> Self {
        Self {
            failure_timeout,
            started: now,
            claimed_at: None,
            next_round: 0,
            last_role: None,
            peer_was_heard: false,
            host_path_was_lost: false,
            announce_from: None,
            next_announce: 0,
        }
    }

    /// Announce the node's own addresses again, on the schedule of
    /// [`ANNOUNCE_OFFSETS_MS`]: its front-end NIC's link came back, and the
    /// peer may hold its addresses (claimed while the host path was lost),
    /// which would keep the witness's and the hosts' frames away from it.
    pub fn announce_from(&mut self, now: Instant) {
        self.announce_from = Some(now);
        self.next_announce = 0;
    }

    pub fn claimed(&self) -> bool {
        self.claimed_at.is_some()
    }

    pub fn claimed_at(&self) -> Option<Instant> {
        self.claimed_at
    }

    /// Whether the peer has been silent on every link for the failure
    /// timeout (a link never heard counts from this node's start).
    pub fn peer_silent(&self, now: Instant, peer_heard: &[Option<Duration>]) -> bool {
        let since_start = now.saturating_since(self.started);
        peer_heard
            .iter()
            .all(|age| age.unwrap_or(since_start) >= self.failure_timeout)
    }

    pub fn update(&mut self, now: Instant, view: PeerView<'_>) -> Decision {
        let mut decision = Decision::default();
        let heard = view
            .peer_heard
            .iter()
            .any(|age| age.is_some_and(|age| age < self.failure_timeout));
        let front_end_back = self.host_path_was_lost && !view.host_path_lost;
        self.host_path_was_lost = view.host_path_lost;
        if self.last_role.is_some_and(|role| role != view.role)
            || (heard && !self.peer_was_heard)
            || front_end_back
        {
            self.announce_from = Some(now);
            self.next_announce = 0;
        }
        self.last_role = Some(view.role);
        self.peer_was_heard = heard;
        if let Some(from) = self.announce_from {
            let elapsed = now.saturating_since(from).as_millis();
            let due = ANNOUNCE_OFFSETS_MS
                .iter()
                .take_while(|offset| **offset <= elapsed)
                .count();
            if due > self.next_announce {
                decision.announce_own = true;
                self.next_announce = due;
            }
            if due == ANNOUNCE_OFFSETS_MS.len() {
                self.announce_from = None;
            }
        }
        let silent = self.peer_silent(now, view.peer_heard) || view.peer_host_path_lost;
        match self.claimed_at {
            None => {
                if view.role == Role::Primary && view.serving && silent {
                    self.claimed_at = Some(now);
                    self.next_round = 0;
                    decision.claim = true;
                }
            }
            Some(_) => {
                if !silent || view.role != Role::Primary {
                    self.claimed_at = None;
                    decision.release = true;
                    return decision;
                }
            }
        }
        if let Some(claimed_at) = self.claimed_at {
            let elapsed = now.saturating_since(claimed_at).as_millis();
            // One round per call at most; a late call catches up with the
            // latest round due and skips the ones it missed.
            let due = ROUND_OFFSETS_MS
                .iter()
                .take_while(|offset| **offset <= elapsed)
                .count();
            if due > self.next_round {
                decision.round = Some(due - 1);
                self.next_round = due;
            }
        }
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(2000);

    fn ms(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn view(role: Role, heard: &[Option<Duration>]) -> PeerView<'_> {
        PeerView {
            role,
            serving: true,
            peer_heard: heard,
            peer_host_path_lost: false,
            host_path_lost: false,
        }
    }

    fn ages(a: u64, b: u64) -> [Option<Duration>; 2] {
        [
            Some(Duration::from_millis(a)),
            Some(Duration::from_millis(b)),
        ]
    }

    #[test]
    fn claims_only_when_primary_serving_and_the_peer_is_silent_on_every_link() {
        let mut t = Takeover::new(TIMEOUT, ms(0));
        assert!(
            !t.update(ms(10_000), view(Role::Primary, &ages(1999, 5000)))
                .claim
        );
        assert!(
            !t.update(ms(10_000), view(Role::Primary, &ages(5000, 1999)))
                .claim
        );
        assert!(
            !t.update(ms(10_000), view(Role::Secondary, &ages(5000, 5000)))
                .claim
        );
        let silent = ages(5000, 5000);
        let not_serving = PeerView {
            serving: false,
            ..view(Role::Primary, &silent)
        };
        assert!(!t.update(ms(10_000), not_serving).claim);
        let decision = t.update(ms(10_000), view(Role::Primary, &ages(2000, 2500)));
        assert!(decision.claim && !decision.release);
        assert_eq!(decision.round, Some(0));
        assert!(t.claimed());
        assert!(
            !t.update(ms(10_001), view(Role::Primary, &ages(2001, 2501)))
                .claim,
            "claims once"
        );
    }

    #[test]
    fn a_link_never_heard_counts_from_the_start() {
        let mut t = Takeover::new(TIMEOUT, ms(1000));
        let never = [None, None];
        assert!(!t.update(ms(2999), view(Role::Primary, &never)).claim);
        assert!(t.update(ms(3000), view(Role::Primary, &never)).claim);
    }

    #[test]
    fn rounds_follow_the_schedule_once_each() {
        let mut t = Takeover::new(TIMEOUT, ms(0));
        let silent = ages(9000, 9000);
        assert_eq!(
            t.update(ms(5000), view(Role::Primary, &silent)).round,
            Some(0)
        );
        assert_eq!(t.update(ms(5040), view(Role::Primary, &silent)).round, None);
        assert_eq!(
            t.update(ms(5050), view(Role::Primary, &silent)).round,
            Some(1)
        );
        assert_eq!(t.update(ms(5060), view(Role::Primary, &silent)).round, None);
        // A late call runs the latest round due, once.
        assert_eq!(
            t.update(ms(6300), view(Role::Primary, &silent)).round,
            Some(3)
        );
        assert_eq!(t.update(ms(7499), view(Role::Primary, &silent)).round, None);
        assert_eq!(
            t.update(ms(7500), view(Role::Primary, &silent)).round,
            Some(4)
        );
        assert_eq!(
            t.update(ms(60_000), view(Role::Primary, &silent)).round,
            None
        );
    }

    #[test]
    fn releases_when_the_peer_is_heard_on_any_link_or_the_role_is_lost() {
        let mut t = Takeover::new(TIMEOUT, ms(0));
        assert!(
            t.update(ms(5000), view(Role::Primary, &ages(3000, 3000)))
                .claim
        );
        let heard = t.update(ms(5500), view(Role::Primary, &ages(3500, 10)));
        assert!(heard.release && !heard.claim && heard.round.is_none());
        assert!(heard.announce_own, "the peer heard again");
        assert!(!t.claimed());
        // Silent again later: a new claim with its own rounds.
        let again = t.update(ms(9000), view(Role::Primary, &ages(3500, 3500)));
        assert!(again.claim);
        assert_eq!(again.round, Some(0));
        let demoted = t.update(ms(9100), view(Role::Fenced, &ages(3600, 3600)));
        assert!(demoted.release);
        assert!(
            !t.update(ms(9200), view(Role::Fenced, &ages(3700, 3700)))
                .claim
        );
    }

    #[test]
    fn role_changes_announce_the_node_s_own_addresses_repeatedly() {
        let mut t = Takeover::new(TIMEOUT, ms(0));
        let heard = ages(10, 10);
        assert!(
            t.update(ms(1), view(Role::Secondary, &heard)).announce_own,
            "the peer heard for the first time"
        );
        // The rest of that schedule (300 ms, 1000 ms).
        assert!(!t.update(ms(2), view(Role::Secondary, &heard)).announce_own);
        assert!(
            t.update(ms(301), view(Role::Secondary, &heard))
                .announce_own
        );
        assert!(
            t.update(ms(1001), view(Role::Secondary, &heard))
                .announce_own
        );
        assert!(
            !t.update(ms(5000), view(Role::Secondary, &heard))
                .announce_own
        );
        assert!(
            t.update(ms(6000), view(Role::Primary, &heard)).announce_own,
            "a role change"
        );
        assert!(!t.update(ms(6001), view(Role::Primary, &heard)).announce_own);
        assert!(t.update(ms(6300), view(Role::Primary, &heard)).announce_own);
        assert!(t.update(ms(7000), view(Role::Primary, &heard)).announce_own);
        assert!(!t.update(ms(9000), view(Role::Primary, &heard)).announce_own);
    }

    #[test]
    fn the_peer_heard_again_announces_the_node_s_own_addresses() {
        let mut t = Takeover::new(TIMEOUT, ms(0));
        assert!(
            !t.update(ms(1), view(Role::Secondary, &[None, None]))
                .announce_own,
            "nothing heard yet"
        );
        assert!(
            t.update(ms(100), view(Role::Secondary, &ages(5, 5000)))
                .announce_own,
            "heard on one link"
        );
        for at in [300u64, 2000, 4000] {
            t.update(ms(100 + at), view(Role::Secondary, &ages(5, 5)));
        }
        assert!(
            !t.update(ms(9000), view(Role::Secondary, &ages(2500, 2500)))
                .announce_own,
            "silence announces nothing"
        );
        assert!(
            t.update(ms(9100), view(Role::Secondary, &ages(1, 2600)))
                .announce_own,
            "heard again"
        );
    }

    #[test]
    fn a_heard_peer_that_lost_its_front_end_is_claimed_until_it_has_one_again() {
        let mut t = Takeover::new(TIMEOUT, ms(0));
        let heard = ages(10, 3000);
        assert!(!t.update(ms(5000), view(Role::Primary, &heard)).claim);
        let lost = PeerView {
            peer_host_path_lost: true,
            ..view(Role::Primary, &heard)
        };
        let claim = t.update(ms(5010), lost);
        assert!(claim.claim);
        assert_eq!(claim.round, Some(0));
        assert_eq!(t.update(ms(5060), lost).round, Some(1), "tickles follow");
        assert!(!t.update(ms(5070), lost).release);
        let back = t.update(ms(9000), view(Role::Primary, &ages(10, 10)));
        assert!(back.release && !t.claimed());
    }

    #[test]
    fn a_node_whose_front_end_returns_announces_its_addresses() {
        let mut t = Takeover::new(TIMEOUT, ms(0));
        let heard = ages(10, 10);
        t.update(ms(1), view(Role::Secondary, &heard));
        for at in [301, 1001, 2000] {
            t.update(ms(at), view(Role::Secondary, &heard));
        }
        let lost = PeerView {
            host_path_lost: true,
            ..view(Role::Secondary, &heard)
        };
        assert!(!t.update(ms(3000), lost).announce_own);
        assert!(!t.update(ms(4000), lost).announce_own);
        assert!(
            t.update(ms(5000), view(Role::Secondary, &heard))
                .announce_own
        );
        assert!(
            t.update(ms(5300), view(Role::Secondary, &heard))
                .announce_own
        );
    }

    #[test]
    fn an_announcement_can_be_asked_for() {
        let mut t = Takeover::new(TIMEOUT, ms(0));
        let heard = ages(10, 10);
        for at in [1, 301, 1001, 3000] {
            t.update(ms(at), view(Role::Secondary, &heard));
        }
        assert!(
            !t.update(ms(4000), view(Role::Secondary, &heard))
                .announce_own
        );
        t.announce_from(ms(5000));
        assert!(
            t.update(ms(5000), view(Role::Secondary, &heard))
                .announce_own
        );
        assert!(
            t.update(ms(5300), view(Role::Secondary, &heard))
                .announce_own
        );
        assert!(
            t.update(ms(6000), view(Role::Secondary, &heard))
                .announce_own
        );
    }
}
