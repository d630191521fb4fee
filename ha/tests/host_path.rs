//! Host-path awareness in the simulator (`docs/ha-protocol.md` §17): a
//! primary that loses its front-end hands over to a peer that has one,
//! without losing an acknowledged write; a secondary without a front-end
//! never stands; with neither able to serve nothing changes; a flapping
//! front-end causes no more than one handover per spacing.

mod sim;
use sim::*;
use tandem_ha::node::{CommandError, Timing};
use tandem_ha::{Instant, NodeId, Role};

/// A pair in sync, with the host writing and reading, and its primary past
/// the handover spacing (ten failure timeouts).
fn steady_at(seed: u64, timing: Timing) -> Sim {
    let mut s = Sim::with_timing(seed, timing);
    s.wait_primary(5_000 * MS);
    assert!(s.run_until(5_000 * MS, |s| s.in_sync()), "{}", s.log_tail());
    s.host.enabled = true;
    s.run_for(12 * timing.failure_timeout.as_micros());
    assert!(
        s.host.writes_acked > 100,
        "host made no progress\n{}",
        s.log_tail()
    );
    s
}

/// At the simulator's quick timing (failure timeout 200 ms).
fn steady(seed: u64) -> Sim {
    steady_at(seed, sim::timing())
}

fn failure_timeout(s: &Sim) -> u64 {
    s.timing.failure_timeout.as_micros()
}

fn history_has(s: &Sim, n: NodeId, reason: &str) -> bool {
    s.data(n).history().any(|c| c.reason == reason)
}

fn local_now(s: &Sim) -> Instant {
    Instant::from_micros(s.now)
}

#[test]
fn primary_that_loses_its_front_end_hands_over_sooner_than_a_kill_would() {
    let mut s = steady_at(41, Timing::DEFAULT);
    let p = s.primary().unwrap();
    let q = p.peer();
    let epoch = s.data(p).epoch();
    s.host.stall_window_start = Some(s.now);
    s.host.max_stall = 0;
    s.set_front_end(p, false);
    let t0 = s.now;
    assert!(
        s.run_until(2_000 * MS, |s| s.primary() == Some(q)),
        "{}",
        s.log_tail()
    );
    let handover = s.now - t0;
    s.run_for(1_000 * MS);
    let stall = s.host.max_stall;
    // A planned switchover, not a failover: nobody recorded Outdated, the
    // old primary is a Secondary in sync, the reason says why.
    assert_eq!(s.data(p).role(), Role::Secondary);
    assert!(s.data(q).record().outdated.is_none());
    assert!(s.data(q).epoch() > epoch);
    assert!(history_has(&s, p, "host-path-lost"), "{}", s.log_tail());
    assert!(s.in_sync(), "{}", s.log_tail());
    let st = s.data(q).status(local_now(&s));
    assert!(st.peer_host_path_lost, "{st}");
    // The loss is believed after two heartbeat intervals; the switchover
    // takes a few milliseconds: well before the failure timeout a kill needs.
    let timeout = Timing::DEFAULT.failure_timeout.as_micros();
    assert!(
        handover < timeout / 2,
        "handover after {} ms",
        handover / MS
    );
    assert!(stall < timeout, "host stall {} ms", stall / MS);

    // The front-end comes back: nothing moves (no failback), and the old
    // primary reports a host path again once it held for regain_after.
    s.set_front_end(p, true);
    s.run_for(3_000 * MS);
    assert_eq!(s.primary(), Some(q));
    let st = s.data(q).status(local_now(&s));
    assert!(
        !st.peer_host_path_lost && st.peer_host_path.is_some_and(|h| h.can_serve),
        "{st}"
    );
    eprintln!(
        "front-end cut: handover after {} ms, host stall {} ms",
        handover / MS,
        stall / MS
    );
    s.final_verify();
}

#[test]
fn a_permanent_cut_leaves_the_host_working_on_the_other_node() {
    let mut s = steady(42);
    let p = s.primary().unwrap();
    s.set_front_end(p, false);
    assert!(s.run_until(2_000 * MS, |s| s.primary() == Some(p.peer())));
    let acked = s.host.writes_acked;
    s.run_for(8_000 * MS);
    assert_eq!(s.primary(), Some(p.peer()));
    assert!(s.host.writes_acked > acked + 1000, "{}", s.log_tail());
    // The node without a front-end stays an in-sync secondary.
    assert!(s.in_sync());
    s.final_verify();
}

#[test]
fn a_secondary_without_a_front_end_never_stands() {
    let mut s = steady(43);
    let p = s.primary().unwrap();
    let q = p.peer();
    s.set_front_end(q, false);
    s.run_for(1_000 * MS);
    assert_eq!(s.primary(), Some(p), "the primary keeps its role");
    assert!(s.data(q).host_path_lost());
    // A planned switchover to it is refused, on either side.
    assert_eq!(
        s.with_data(p, |d, now| d.demote(now)),
        Err(CommandError::PeerHasNoHostPath)
    );
    assert_eq!(
        s.with_data(q, |d, now| d.promote(now)),
        Err(CommandError::NoHostPath)
    );
    // The primary dies: the survivor cannot serve hosts, so it does not
    // stand.
    s.kill(p);
    s.run_for(5_000 * MS);
    assert_eq!(s.primary(), None);
    assert_ne!(s.data(q).role(), Role::Primary);
    // Its front-end returns: after regain_after it stands and serves.
    s.set_front_end(q, true);
    let t0 = s.now;
    assert!(
        s.run_until(5_000 * MS, |s| s.primary() == Some(q)),
        "{}",
        s.log_tail()
    );
    let regain = failure_timeout(&s) * 2;
    assert!(
        s.now - t0 >= regain,
        "stood {} ms after its front-end returned",
        (s.now - t0) / MS
    );
    s.restart(p);
    assert!(
        s.run_until(10_000 * MS, |s| s.in_sync()),
        "{}",
        s.log_tail()
    );
    s.final_verify();
}

#[test]
fn with_neither_able_to_serve_nothing_changes() {
    let mut s = steady(44);
    let p = s.primary().unwrap();
    let epoch = s.data(p).epoch();
    s.set_front_end(p.peer(), false);
    s.run_for(500 * MS);
    s.set_front_end(p, false);
    s.run_for(3_000 * MS);
    assert_eq!(s.data(p).role(), Role::Primary, "{}", s.log_tail());
    assert_eq!(s.data(p).epoch(), epoch, "no election");
    assert!(s.data(p).host_path_lost() && s.data(p.peer()).host_path_lost());
    s.set_front_end(p, true);
    s.set_front_end(p.peer(), true);
    s.run_for(3_000 * MS);
    assert_eq!(s.primary(), Some(p));
    assert_eq!(s.data(p).epoch(), epoch);
    s.final_verify();
}

#[test]
fn flapping_front_ends_hand_over_at_most_once_per_spacing() {
    let mut s = steady(45);
    let a = s.primary().unwrap();
    let b = a.peer();
    let spacing = 10 * failure_timeout(&s);
    // a's front-end flaps: down 150 ms, up 300 ms (less than regain_after,
    // twice the failure timeout). One handover, to b; a's verdict stays lost
    // while it flaps.
    let t0 = s.now;
    for _ in 0..3 {
        s.set_front_end(a, false);
        s.run_for(150 * MS);
        s.set_front_end(a, true);
        s.run_for(300 * MS);
    }
    assert_eq!(s.primary(), Some(b), "{}", s.log_tail());
    assert!(
        s.data(a).host_path_lost(),
        "a flapping front-end stays lost"
    );
    let handovers = |s: &Sim| {
        [a, b]
            .iter()
            .map(|&n| {
                s.data(n)
                    .history()
                    .filter(|c| c.reason == "host-path-lost")
                    .count()
            })
            .sum::<usize>()
    };
    assert_eq!(handovers(&s), 1);
    // a's front-end steadies; b's now fails: b has been primary for less
    // than the spacing, so it keeps the role until the spacing has passed.
    s.run_for(500 * MS);
    assert!(!s.data(a).host_path_lost());
    let b_since = s
        .data(b)
        .history()
        .filter(|c| c.role == Role::Primary)
        .last()
        .unwrap()
        .at;
    s.set_front_end(b, false);
    let cut = s.now;
    assert!(
        s.run_until(10_000 * MS, |s| s.primary() == Some(a)),
        "{}",
        s.log_tail()
    );
    let handed_back = s.now;
    s.run_for(100 * MS);
    assert_eq!(handovers(&s), 2, "{}", s.log_tail());
    let back = s
        .data(b)
        .history()
        .filter(|c| c.reason == "host-path-lost")
        .last()
        .unwrap()
        .at;
    assert!(
        back.saturating_since(b_since).as_micros() >= spacing,
        "b handed back {} ms after it became primary",
        back.saturating_since(b_since).as_millis()
    );
    assert!(
        handed_back - cut < spacing,
        "not later than the spacing needed"
    );
    eprintln!(
        "second handover {} ms after the first began",
        (handed_back - t0) / MS
    );
    s.final_verify();
}
