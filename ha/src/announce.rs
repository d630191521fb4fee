//! How a front-end address moves between the two data nodes on the hosts'
//! segment (`docs/ha-protocol.md` §16): when the ARP that points the hosts'
//! neighbour entries at a node goes out ([`ArpSchedule`]), and when a node
//! that may have been deposed while it could not run may answer ARP for its
//! own address again ([`OwnAddressGate`]). Pure: the kernel sends the frames
//! and filters its NIC's ARP.
//!
//! Linux's neighbour table (net/core/neighbour.c, net/ipv4/arp.c) takes a new
//! MAC address for an entry it holds from an ARP request or reply only when
//! the entry's last change is more than `locktime` old (1 s by default), or
//! when the ARP is gratuitous: sender and target address equal, and, for a
//! reply, target and sender MAC address equal (Linux 4.13 and later).
//! `drop_gratuitous_arp` drops gratuitous ARP altogether; other hosts heed
//! requests or replies only. So every announcement is a gratuitous request,
//! a gratuitous reply and an ordinary ARP request to each host known to hold
//! a connection, and announcements repeat at more than `locktime` apart: a
//! host whose entry some other station changed just before (the old owner
//! answering an ARP request before it hung, or after it resumed) takes the
//! next one, whichever kind it heeds.

use crate::time::{Duration, Instant};
use crate::types::Role;

/// Linux's default `net.ipv4.neigh.*.locktime` (100 jiffies at any `HZ`).
pub const LINUX_LOCKTIME: Duration = Duration::from_millis(1000);

/// Past `locktime`: jiffies round up, and the frames queue on a loaded
/// host.
pub const LOCKTIME_MARGIN: Duration = Duration::from_millis(200);

/// A second announcement right after the first, for a frame lost on the
/// way (well inside `locktime`: it helps only hosts that missed the first).
pub const LOSS_REPEAT: Duration = Duration::from_millis(50);

/// Announcements after the first that are spaced more than `locktime` apart.
pub const SPACED_REPEATS: u64 = 2;

/// The offsets (from the start of an announcement) at which ARP for an
/// address goes out: `0`, [`LOSS_REPEAT`], then [`SPACED_REPEATS`] more,
/// each `locktime + margin` after the one before the loss repeat's pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpSchedule {
    offsets: [Duration; 2 + SPACED_REPEATS as usize],
}

impl ArpSchedule {
    pub fn new(locktime: Duration) -> Self {
        let step = locktime.as_micros() + LOCKTIME_MARGIN.as_micros();
        let mut offsets = [Duration::ZERO; 2 + SPACED_REPEATS as usize];
        offsets[1] = LOSS_REPEAT;
        for (i, offset) in offsets.iter_mut().enumerate().skip(2) {
            *offset = Duration::from_micros(step * (i as u64 - 1));
        }
        Self { offsets }
    }

    /// The schedule against Linux's default `locktime`.
    pub fn linux_default() -> Self {
        Self::new(LINUX_LOCKTIME)
    }

    pub fn offsets(&self) -> &[Duration] {
        &self.offsets
    }

    /// How long the announcements last.
    pub fn span(&self) -> Duration {
        self.offsets[self.offsets.len() - 1]
    }
}

/// One run of announcements on an [`ArpSchedule`]: [`Announcement::poll`]
/// says when one is due, once per offset (a late poll sends one for all the
/// offsets it missed).
#[derive(Clone, Copy, Debug)]
pub struct Announcement {
    schedule: ArpSchedule,
    from: Instant,
    sent: usize,
}

impl Announcement {
    pub fn start(schedule: ArpSchedule, now: Instant) -> Self {
        Self {
            schedule,
            from: now,
            sent: 0,
        }
    }

    /// True when an announcement is due now.
    pub fn poll(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_since(self.from);
        let due = self
            .schedule
            .offsets()
            .iter()
            .take_while(|offset| **offset <= elapsed)
            .count();
        let send = due > self.sent;
        self.sent = due;
        send
    }

    pub fn finished(&self) -> bool {
        self.sent == self.schedule.offsets().len()
    }
}

/// Why a node stopped answering ARP for its own address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuietReason {
    /// Another station announced the address (the peer took it over while
    /// this node was paused, hung or cut off; or a forgery).
    Conflict,
    /// This node did not run for at least the failure timeout (a hung
    /// kernel, a starved machine): its peer may have taken over meanwhile.
    Stalled,
}

/// What the gate needs to know of the node, as `DataNode::status` tells it.
#[derive(Clone, Copy, Debug)]
pub struct GateView<'a> {
    pub role: Role,
    /// Time since the send of the newest granted lease request.
    pub lease_age: Option<Duration>,
    /// Time since the peer and the witness were last heard, on every link.
    pub members_heard: &'a [Option<Duration>],
}

/// Whether a node answers ARP for (and announces) its own front-end
/// addresses. A node that may have been deposed while it could not run —
/// paused, hung, cut off — answers only once it has learned the pair's
/// current record: a paused machine's clock may not have advanced, so it
/// cannot tell by itself how long it was away, and its ARP would take the
/// hosts' neighbour entries back from the survivor while it still believes
/// itself primary. It goes quiet when another station announces its address
/// or when it notices it did not run for the failure timeout; it speaks
/// again (and announces its addresses, so the hosts come back through the
/// pair's rule) when
/// - it is primary and a lease request sent after it went quiet has been
///   granted (still primary in the current epoch: a granter refuses a
///   deposed primary), or
/// - it is not primary and has heard its peer or the witness since it went
///   quiet (their heartbeats carry the current record, which it has taken,
///   and its peer releases the address on hearing it).
///
/// A forged announcement from the segment silences a primary's ARP for one
/// lease round at most.
#[derive(Clone, Copy, Debug, Default)]
pub struct OwnAddressGate {
    quiet: Option<(Instant, QuietReason)>,
    conflicts: u64,
    stalls: u64,
}

impl OwnAddressGate {
    pub fn new() -> Self {
        Self::default()
    }

    /// Another station announced one of this node's own addresses.
    pub fn on_conflict(&mut self, now: Instant) {
        self.conflicts += 1;
        self.quiet = Some((now, QuietReason::Conflict));
    }

    /// The node did not run for `gap`; it goes quiet if that is at least
    /// `failure_timeout` (its peer may have taken over).
    pub fn on_gap(&mut self, now: Instant, gap: Duration, failure_timeout: Duration) {
        if gap >= failure_timeout {
            self.stalls += 1;
            self.quiet = Some((now, QuietReason::Stalled));
        }
    }

    /// True (once) when the node may answer for its addresses again; the
    /// caller then announces them.
    pub fn update(&mut self, now: Instant, view: GateView<'_>) -> bool {
        let Some((since, _)) = self.quiet else {
            return false;
        };
        let quiet_for = now.saturating_since(since);
        let current = match view.role {
            Role::Primary => view.lease_age.is_some_and(|age| age < quiet_for),
            _ => view
                .members_heard
                .iter()
                .flatten()
                .any(|age| *age < quiet_for),
        };
        if current {
            self.quiet = None;
        }
        current
    }

    pub fn open(&self) -> bool {
        self.quiet.is_none()
    }

    pub fn quiet(&self) -> Option<(Instant, QuietReason)> {
        self.quiet
    }

    /// Announcements of this node's addresses by other stations, and runs
    /// of the failure timeout without running, since start.
    pub fn counts(&self) -> (u64, u64) {
        (self.conflicts, self.stalls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn d(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    /// A Linux neighbour entry for one address, as net/ipv4/arp.c updates
    /// it (arp_process: `override = time_after(jiffies, n->updated +
    /// locktime) || is_garp`; an update that changes nothing does not move
    /// `updated`).
    struct LinuxNeighbour {
        mac: u8,
        updated: Instant,
        /// `drop_gratuitous_arp`, or a kernel before 4.13: gratuitous ARP
        /// gets no override (or none at all).
        gratuitous_override: bool,
    }

    impl LinuxNeighbour {
        fn arp(&mut self, now: Instant, mac: u8, gratuitous: bool) {
            let unlocked = now.saturating_since(self.updated) > LINUX_LOCKTIME;
            if mac != self.mac && (unlocked || (gratuitous && self.gratuitous_override)) {
                self.mac = mac;
                self.updated = now;
            }
        }
    }

    const OLD: u8 = 1;
    const NEW: u8 = 2;

    /// Every announcement of the schedule from `start`, as a host sees it:
    /// gratuitous request and reply, then an ordinary request.
    fn announce(
        entry: &mut LinuxNeighbour,
        schedule: &ArpSchedule,
        start: Instant,
        until: Instant,
    ) {
        let mut run = Announcement::start(*schedule, start);
        let mut t = start;
        while t <= until {
            if run.poll(t) {
                entry.arp(t, NEW, true);
                entry.arp(t, NEW, true);
                entry.arp(t, NEW, false);
            }
            t = t + d(1);
        }
    }

    #[test]
    fn the_schedule_repeats_past_locktime() {
        let schedule = ArpSchedule::linux_default();
        let offsets: Vec<u64> = schedule.offsets().iter().map(|o| o.as_millis()).collect();
        assert_eq!(offsets, [0, 50, 1200, 2400]);
        assert!(schedule.offsets().windows(2).all(|w| w[0] < w[1]));
        assert_eq!(schedule.span(), d(2400));
        let longer = ArpSchedule::new(d(2000));
        assert_eq!(longer.offsets()[2], d(2200));
    }

    #[test]
    fn an_announcement_is_due_once_per_offset_and_a_late_poll_catches_up() {
        let mut run = Announcement::start(ArpSchedule::linux_default(), ms(100));
        assert!(run.poll(ms(100)));
        assert!(!run.poll(ms(120)));
        assert!(run.poll(ms(150)));
        assert!(!run.poll(ms(1299)));
        assert!(run.poll(ms(5000)), "late: one for both offsets missed");
        assert!(run.finished());
        assert!(!run.poll(ms(9000)));
    }

    /// The old owner's last word (an ARP reply before it hung, or after it
    /// resumed) at any moment from a second before the first announcement
    /// to just before the last one: a Linux host ends up pointing at the new
    /// owner, whether it takes gratuitous ARP at once or only ordinary ARP
    /// past locktime.
    #[test]
    fn a_competing_update_at_any_moment_is_overridden_by_the_schedule() {
        let schedule = ArpSchedule::linux_default();
        let start = ms(10_000);
        let last = start + schedule.span();
        let latest = Instant::from_micros(
            start.as_micros() + schedule.span().as_micros() - LINUX_LOCKTIME.as_micros(),
        );
        for gratuitous_override in [true, false] {
            let mut competitor = ms(9_000);
            while competitor < latest {
                // Before the first announcement, the old owner's update made
                // the entry what it is; after it, the update tries to take
                // the entry back.
                let mut entry = LinuxNeighbour {
                    mac: OLD,
                    updated: competitor.min(start),
                    gratuitous_override,
                };
                let mut run = Announcement::start(schedule, start);
                let mut t = start;
                while t <= last {
                    if t == competitor {
                        entry.arp(t, OLD, false);
                    }
                    if run.poll(t) {
                        entry.arp(t, NEW, true);
                        entry.arp(t, NEW, true);
                        entry.arp(t, NEW, false);
                    }
                    t = t + d(1);
                }
                assert_eq!(
                    entry.mac,
                    NEW,
                    "competing update at {} ms, gratuitous override {gratuitous_override}",
                    competitor.as_micros() / 1000
                );
                competitor = competitor + d(7);
            }
        }
    }

    /// Without the spaced repeats (everything within locktime of the first)
    /// a host that takes only ordinary ARP keeps the old owner: the test
    /// above depends on the spacing.
    #[test]
    fn announcements_within_locktime_do_not_override_a_recent_update() {
        let start = ms(10_000);
        let mut entry = LinuxNeighbour {
            mac: OLD,
            updated: ms(9_900),
            gratuitous_override: false,
        };
        let tight = ArpSchedule {
            offsets: [d(0), d(50), d(300), d(900)],
        };
        announce(&mut entry, &tight, start, start + d(3000));
        assert_eq!(entry.mac, OLD);
        let mut entry = LinuxNeighbour {
            mac: OLD,
            updated: ms(9_900),
            gratuitous_override: false,
        };
        announce(
            &mut entry,
            &ArpSchedule::linux_default(),
            start,
            start + d(3000),
        );
        assert_eq!(entry.mac, NEW);
        // With gratuitous override (Linux's default) the first one is enough.
        let mut entry = LinuxNeighbour {
            mac: OLD,
            updated: ms(9_990),
            gratuitous_override: true,
        };
        entry.arp(start, NEW, true);
        assert_eq!(entry.mac, NEW);
    }

    fn view(role: Role, lease_age: Option<u64>, heard: &[Option<Duration>]) -> GateView<'_> {
        GateView {
            role,
            lease_age: lease_age.map(d),
            members_heard: heard,
        }
    }

    #[test]
    fn the_gate_is_open_until_a_conflict() {
        let mut gate = OwnAddressGate::new();
        assert!(gate.open());
        let heard = [Some(d(5)), Some(d(5))];
        assert!(
            !gate.update(ms(100), view(Role::Primary, Some(10), &heard)),
            "nothing to reopen"
        );
        gate.on_conflict(ms(200));
        assert!(!gate.open());
        assert_eq!(gate.quiet(), Some((ms(200), QuietReason::Conflict)));
        assert_eq!(gate.counts(), (1, 0));
    }

    /// The resumed old primary: its clock did not advance while it was
    /// paused, so its lease still looks fresh; the survivor's announcement
    /// reaches it first. It stays quiet as long as its newest grant is from
    /// before the conflict, and as it learns the new record it becomes
    /// Secondary, which opens the gate only once the peer is heard after the
    /// conflict.
    #[test]
    fn a_resumed_old_primary_stays_quiet_until_it_knows_the_current_record() {
        let mut gate = OwnAddressGate::new();
        gate.on_conflict(ms(1000));
        let stale = [Some(d(60)), Some(d(60)), Some(d(60)), Some(d(60))];
        // Still primary by its own reckoning: the newest grant is older
        // than the conflict.
        assert!(!gate.update(ms(1010), view(Role::Primary, Some(80), &stale)));
        assert!(!gate.update(ms(1040), view(Role::Primary, Some(110), &stale)));
        // Deposed (a refusal, or the peer's newer record): Fenced, then
        // Secondary; not open while the members were last heard before the
        // conflict.
        let old = [Some(d(100)), Some(d(120)), None, None];
        assert!(!gate.update(ms(1050), view(Role::Fenced, None, &old)));
        // The peer heard after the conflict: the node holds the record the
        // peer sent.
        let fresh = [Some(d(100)), Some(d(3)), None, None];
        assert!(gate.update(ms(1060), view(Role::Secondary, None, &fresh)));
        assert!(gate.open());
        assert!(
            !gate.update(ms(1070), view(Role::Secondary, None, &fresh)),
            "opens once"
        );
    }

    /// A forged announcement against a primary that is still primary: quiet
    /// until a lease round sent after it is granted.
    #[test]
    fn a_current_primary_speaks_again_after_one_granted_round() {
        let mut gate = OwnAddressGate::new();
        gate.on_conflict(ms(5000));
        let heard = [Some(d(1)), Some(d(1))];
        assert!(
            !gate.update(ms(5020), view(Role::Primary, Some(30), &heard)),
            "heard is not enough for a primary"
        );
        assert!(!gate.update(ms(5040), view(Role::Primary, None, &heard)));
        assert!(
            gate.update(ms(5060), view(Role::Primary, Some(40), &heard)),
            "a grant for a round sent at 5020"
        );
    }

    #[test]
    fn a_gap_of_the_failure_timeout_quiets_the_node() {
        let mut gate = OwnAddressGate::new();
        gate.on_gap(ms(3000), d(499), d(500));
        assert!(gate.open(), "a shorter gap is not a stall");
        gate.on_gap(ms(3000), d(500), d(500));
        assert_eq!(gate.quiet(), Some((ms(3000), QuietReason::Stalled)));
        assert_eq!(gate.counts(), (0, 1));
        assert!(!gate.update(ms(3001), view(Role::Secondary, None, &[Some(d(2))])));
        assert!(gate.update(ms(3010), view(Role::Secondary, None, &[Some(d(2))])));
    }

    #[test]
    fn a_node_that_hears_nobody_stays_quiet() {
        let mut gate = OwnAddressGate::new();
        gate.on_conflict(ms(100));
        let never = [None, None, None, None];
        for t in [200, 2000, 60_000] {
            assert!(!gate.update(ms(t), view(Role::Fenced, None, &never)));
        }
        assert!(!gate.open());
    }
}
