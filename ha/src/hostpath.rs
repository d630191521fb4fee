//! Host-path awareness: whether a data node can serve hosts, with
//! hysteresis (`docs/ha-protocol.md` §17).
//!
//! A node serves hosts through its front-end links. It judges them from two
//! signals: the link state of its front-end NIC (the kernel reports it, from
//! virtio-net's status field), and whether the members it used to hear on the
//! front-end still speak there. A member heard on the front-end since boot
//! that is still heard on another link but has gone silent on the front-end
//! is evidence that this node's front-end is broken even with the NIC's link
//! up (a dead switch port, a cut upstream). A member silent everywhere says
//! nothing about the front-end: it may simply be down.
//!
//! The raw judgement becomes the node's verdict only after it has held for a
//! while: a loss after [`HostPathTiming::lose_after`], a recovery after the
//! longer [`HostPathTiming::regain_after`], so a flapping link is taken as
//! lost until it has been steady. The verdict travels in every heartbeat
//! ([`crate::wire::control::HostPathReport`]); the rules that use it (a
//! primary without a front-end hands over to a peer with one, a secondary
//! without one never stands) are in [`crate::node`].

use crate::time::{Duration, Instant};
use crate::types::{LinkId, MAX_LINKS};
use crate::voter::Knowledge;
use crate::wire::control::HostPathReport;

/// The hysteresis of the host-path verdict and the spacing of the
/// handovers it causes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostPathTiming {
    /// The raw judgement must say "lost" this long before the verdict does.
    pub lose_after: Duration,
    /// The raw judgement must say "can serve" this long before a lost
    /// verdict is lifted: a flapping link stays lost.
    pub regain_after: Duration,
    /// A primary hands over for its host path only after it has been primary
    /// this long: two such handovers in a row are at least this far apart.
    pub handover_spacing: Duration,
}

impl HostPathTiming {
    /// Derived from the pair's timers: a loss is believed after two
    /// heartbeat intervals (the NIC's link state is a direct signal; the
    /// silence of the members already took the failure timeout), a recovery
    /// after twice the failure timeout, and handovers are at least ten
    /// failure timeouts apart (5 s at the default timing).
    pub fn derived(heartbeat_interval: Duration, failure_timeout: Duration) -> Self {
        HostPathTiming {
            lose_after: Duration::from_micros(2 * heartbeat_interval.as_micros()),
            regain_after: Duration::from_micros(2 * failure_timeout.as_micros()),
            handover_spacing: Duration::from_micros(10 * failure_timeout.as_micros()),
        }
    }
}

/// What the node saw of its front-end at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrontEndSample {
    pub nic_up: bool,
    /// The peer was heard on a front-end link within the failure timeout.
    pub hears_peer: bool,
    /// The witness was heard on a front-end link within the failure timeout.
    pub hears_witness: bool,
    /// A member heard on the front-end since boot is still heard on another
    /// link, but on no front-end link.
    pub silence_is_evidence: bool,
}

impl FrontEndSample {
    /// Takes the sample from what the node heard. `front_end` is the mask of
    /// front-end links; `peer` and `witness` what was heard from them.
    pub fn take(
        now: Instant,
        failure_timeout: Duration,
        front_end: u8,
        nic_up: bool,
        peer: &Knowledge,
        witness: &Knowledge,
    ) -> FrontEndSample {
        let recent =
            |t: Option<Instant>| t.is_some_and(|t| now.saturating_since(t) < failure_timeout);
        let is_front = |l: usize| front_end & (1 << l) != 0;
        let hears_on_front =
            |k: &Knowledge| (0..MAX_LINKS).any(|l| is_front(l) && recent(k.last_heard[l]));
        let evidence = |k: &Knowledge| {
            (0..MAX_LINKS).any(|l| is_front(l) && k.last_heard[l].is_some())
                && (0..MAX_LINKS).any(|l| !is_front(l) && recent(k.last_heard[l]))
                && !hears_on_front(k)
        };
        FrontEndSample {
            nic_up,
            hears_peer: hears_on_front(peer),
            hears_witness: hears_on_front(witness),
            silence_is_evidence: evidence(peer) || evidence(witness),
        }
    }

    /// The raw judgement: the NIC's link is up, and either a member speaks
    /// on the front-end or nothing shows that it is broken.
    pub fn can_serve(&self) -> bool {
        self.nic_up && (self.hears_peer || self.hears_witness || !self.silence_is_evidence)
    }
}

/// The node's judgement of its own host path, over time.
#[derive(Clone, Copy, Debug)]
pub struct HostPathMonitor {
    timing: HostPathTiming,
    /// The kernel reports the front-end NIC's link: without that the node
    /// judges nothing and reports nothing (the rules then never apply).
    monitored: bool,
    nic_up: bool,
    last: Option<FrontEndSample>,
    raw: bool,
    raw_since: Instant,
    verdict: bool,
    verdict_since: Instant,
    /// Verdict changes since boot, for `status`.
    losses: u64,
}

impl HostPathMonitor {
    pub fn new(timing: HostPathTiming, now: Instant) -> Self {
        HostPathMonitor {
            timing,
            monitored: false,
            nic_up: true,
            last: None,
            raw: true,
            raw_since: now,
            verdict: true,
            verdict_since: now,
            losses: 0,
        }
    }

    pub fn timing(&self) -> HostPathTiming {
        self.timing
    }

    /// The kernel's report of the front-end NIC's link state.
    pub fn set_nic_up(&mut self, up: bool) {
        self.monitored = true;
        self.nic_up = up;
    }

    pub fn nic_up(&self) -> bool {
        self.nic_up
    }

    pub fn monitored(&self) -> bool {
        self.monitored
    }

    /// Feeds a sample; the verdict follows the raw judgement with the
    /// hysteresis.
    pub fn update(&mut self, now: Instant, sample: FrontEndSample) {
        if !self.monitored {
            return;
        }
        self.last = Some(sample);
        // Silence can make the path lost but not keep it lost: while this
        // node's path is lost its peer holds its front-end addresses (§16),
        // so the members' frames to it go to the peer and their silence
        // says nothing. Once the NIC's link has been up for regain_after the
        // path is taken back; a front-end still broken is silent again and
        // lost again a failure timeout later.
        let raw = if self.verdict {
            sample.can_serve()
        } else {
            sample.nic_up
        };
        if raw != self.raw {
            self.raw = raw;
            self.raw_since = now;
        }
        let held = now.saturating_since(self.raw_since);
        if self.verdict && !raw && held >= self.timing.lose_after {
            self.verdict = false;
            self.verdict_since = now;
            self.losses += 1;
        } else if !self.verdict && raw && held >= self.timing.regain_after {
            self.verdict = true;
            self.verdict_since = now;
        }
    }

    /// The verdict: true unless the host path is known lost.
    pub fn can_serve(&self) -> bool {
        !self.monitored || self.verdict
    }

    /// Known lost (monitored, and the verdict says so).
    pub fn lost(&self) -> bool {
        !self.can_serve()
    }

    /// Since when the verdict holds.
    pub fn verdict_since(&self) -> Instant {
        self.verdict_since
    }

    pub fn losses(&self) -> u64 {
        self.losses
    }

    /// The heartbeat field: `None` while not monitored.
    pub fn report(&self) -> Option<HostPathReport> {
        if !self.monitored {
            return None;
        }
        let s = self.last.unwrap_or(FrontEndSample {
            nic_up: self.nic_up,
            hears_peer: false,
            hears_witness: false,
            silence_is_evidence: false,
        });
        Some(HostPathReport {
            can_serve: self.verdict,
            nic_up: s.nic_up,
            hears_peer: s.hears_peer,
            hears_witness: s.hears_witness,
        })
    }
}

/// The `status` line: `  host-path: serving (nic:up peer:heard witness:heard); b: lost (nic:down ...)`.
pub fn fmt_status(
    f: &mut core::fmt::Formatter<'_>,
    me: crate::types::NodeId,
    own: Option<HostPathReport>,
    peer: Option<HostPathReport>,
) -> core::fmt::Result {
    fn one(f: &mut core::fmt::Formatter<'_>, r: Option<HostPathReport>) -> core::fmt::Result {
        let heard = |b: bool| if b { "heard" } else { "silent" };
        match r {
            None => f.write_str("unknown"),
            Some(r) => write!(
                f,
                "{} (nic:{} peer:{} witness:{})",
                if r.can_serve { "ok" } else { "lost" },
                if r.nic_up { "up" } else { "down" },
                heard(r.hears_peer),
                heard(r.hears_witness)
            ),
        }
    }
    write!(f, "  host-path: ")?;
    one(f, own)?;
    write!(f, "; {}: ", me.peer())?;
    one(f, peer)?;
    writeln!(f)
}

/// The front-end links of a pair whose links are numbered as the kernel does
/// (link 0 replication, link 1 front-end): every link but 0, or link 0 alone
/// when it is the only one.
pub fn default_front_end_links(links: u8) -> u8 {
    if links <= 1 {
        1
    } else {
        let all = if links >= 8 { 0xff } else { (1u8 << links) - 1 };
        all & !1
    }
}

/// True when `link` is in the mask.
pub fn is_front_end(mask: u8, link: LinkId) -> bool {
    link.0 < 8 && mask & (1 << link.0) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const HB: Duration = Duration::from_millis(50);
    const TIMEOUT: Duration = Duration::from_millis(500);

    fn ms(v: u64) -> Instant {
        Instant::from_millis(v)
    }

    fn heard(links: &[(usize, u64)]) -> Knowledge {
        let mut k = Knowledge::default();
        for &(l, at) in links {
            k.last_heard[l] = Some(ms(at));
        }
        k
    }

    fn sample(nic_up: bool, peer: &Knowledge, witness: &Knowledge, now: u64) -> FrontEndSample {
        FrontEndSample::take(ms(now), TIMEOUT, 0b10, nic_up, peer, witness)
    }

    #[test]
    fn the_nic_link_down_is_lost_whatever_is_heard() {
        let both = heard(&[(0, 1000), (1, 1000)]);
        assert!(!sample(false, &both, &both, 1000).can_serve());
        assert!(sample(true, &both, &both, 1000).can_serve());
    }

    #[test]
    fn silence_on_the_front_end_of_members_heard_elsewhere_is_a_lost_path() {
        // Both were heard on the front-end before, and are now heard only
        // on the replication link.
        let peer = heard(&[(0, 2000), (1, 1000)]);
        let witness = heard(&[(0, 2000), (1, 1000)]);
        let s = sample(true, &peer, &witness, 2000);
        assert!(s.silence_is_evidence && !s.can_serve());
        // One member still speaks on the front-end: the path works (it is
        // the other member's front-end that broke).
        let witness_front = heard(&[(0, 2000), (1, 1990)]);
        assert!(sample(true, &peer, &witness_front, 2000).can_serve());
    }

    #[test]
    fn members_silent_everywhere_or_never_on_the_front_end_say_nothing() {
        // The peer is dead (silent on every link), the witness is on the
        // replication link only: nothing shows the front-end is broken.
        let dead = heard(&[(0, 100), (1, 100)]);
        let witness_repl_only = heard(&[(0, 2000)]);
        assert!(sample(true, &dead, &witness_repl_only, 2000).can_serve());
        // Just booted: nothing heard at all.
        let nothing = Knowledge::default();
        assert!(sample(true, &nothing, &nothing, 10).can_serve());
    }

    fn timing() -> HostPathTiming {
        HostPathTiming::derived(HB, TIMEOUT)
    }

    fn lost_sample() -> FrontEndSample {
        FrontEndSample {
            nic_up: false,
            hears_peer: false,
            hears_witness: false,
            silence_is_evidence: false,
        }
    }

    fn good_sample() -> FrontEndSample {
        FrontEndSample {
            nic_up: true,
            hears_peer: true,
            hears_witness: true,
            silence_is_evidence: false,
        }
    }

    #[test]
    fn derived_timing() {
        let t = timing();
        assert_eq!(t.lose_after, Duration::from_millis(100));
        assert_eq!(t.regain_after, Duration::from_millis(1000));
        assert_eq!(t.handover_spacing, Duration::from_millis(5000));
    }

    #[test]
    fn unmonitored_it_can_always_serve_and_reports_nothing() {
        let mut m = HostPathMonitor::new(timing(), ms(0));
        m.update(ms(1000), lost_sample());
        m.update(ms(5000), lost_sample());
        assert!(m.can_serve());
        assert_eq!(m.report(), None);
    }

    #[test]
    fn a_loss_is_believed_after_lose_after_and_a_recovery_after_regain_after() {
        let mut m = HostPathMonitor::new(timing(), ms(0));
        m.set_nic_up(false);
        m.update(ms(1000), lost_sample());
        m.update(ms(1099), lost_sample());
        assert!(m.can_serve(), "not yet");
        m.update(ms(1100), lost_sample());
        assert!(m.lost());
        assert_eq!(m.losses(), 1);
        assert_eq!(m.report().map(|r| r.can_serve), Some(false));
        m.set_nic_up(true);
        m.update(ms(1200), good_sample());
        m.update(ms(2199), good_sample());
        assert!(m.lost(), "a recovery must hold for regain_after");
        m.update(ms(2200), good_sample());
        assert!(m.can_serve());
        assert_eq!(m.verdict_since(), ms(2200));
    }

    #[test]
    fn a_flapping_link_stays_lost() {
        let mut m = HostPathMonitor::new(timing(), ms(0));
        m.set_nic_up(false);
        m.update(ms(0), lost_sample());
        m.update(ms(100), lost_sample());
        assert!(m.lost());
        // Up for 900 ms, down for 50 ms, again and again: never steady.
        let mut t = 100;
        for _ in 0..10 {
            t += 1;
            m.update(ms(t), good_sample());
            t += 899;
            m.update(ms(t), good_sample());
            assert!(m.lost());
            t += 1;
            m.update(ms(t), lost_sample());
            t += 49;
            m.update(ms(t), lost_sample());
        }
        assert_eq!(m.losses(), 1, "one loss, held");
    }

    #[test]
    fn a_path_lost_to_silence_is_taken_back_once_the_nic_has_been_up_for_regain_after() {
        let mut m = HostPathMonitor::new(timing(), ms(0));
        m.set_nic_up(true);
        let silent = FrontEndSample {
            nic_up: true,
            hears_peer: false,
            hears_witness: false,
            silence_is_evidence: true,
        };
        m.update(ms(0), silent);
        m.update(ms(100), silent);
        assert!(m.lost());
        m.update(ms(101), silent);
        m.update(ms(1100), silent);
        assert!(m.lost());
        m.update(ms(1101), silent);
        assert!(m.can_serve(), "taken back, to be judged again");
        m.update(ms(1150), silent);
        m.update(ms(1250), silent);
        assert!(m.lost(), "still silent: lost again");
        assert_eq!(m.losses(), 2);
    }

    #[test]
    fn a_short_blip_is_not_a_loss() {
        let mut m = HostPathMonitor::new(timing(), ms(0));
        m.set_nic_up(true);
        m.update(ms(10), good_sample());
        m.update(ms(20), lost_sample());
        m.update(ms(110), lost_sample());
        m.update(ms(115), good_sample());
        m.update(ms(2000), good_sample());
        assert!(m.can_serve());
        assert_eq!(m.losses(), 0);
    }

    #[test]
    fn front_end_link_masks() {
        assert_eq!(default_front_end_links(1), 0b1);
        assert_eq!(default_front_end_links(2), 0b10);
        assert_eq!(default_front_end_links(4), 0b1110);
        assert!(is_front_end(0b10, LinkId(1)));
        assert!(!is_front_end(0b10, LinkId(0)));
        assert!(!is_front_end(0b10, LinkId(9)));
    }
}
