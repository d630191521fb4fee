//! The own-address gate (`tandem_ha::announce::OwnAddressGate`, rule 7 of
//! `docs/ha-protocol.md` §16) driven by a data node's real status in the
//! simulator: a primary paused past its peer's takeover and resumed (its
//! clock stood still, its lease looks fresh) does not answer for its
//! address until it knows it was deposed; a primary that is still primary
//! speaks again after one lease round; a node that hears nobody stays quiet.

mod sim;
use sim::*;
use tandem_ha::announce::{GateView, OwnAddressGate};
use tandem_ha::{NodeId, Role};

fn started(seed: u64) -> Sim {
    let mut s = Sim::new(seed);
    s.wait_primary(3_000 * MS);
    assert!(
        s.run_until(3_000 * MS, |s| s.in_sync()),
        "pair never in sync\n{}",
        s.log_tail()
    );
    s.host.enabled = true;
    s.run_for(300 * MS);
    s
}

/// One look of the gate at node `n`'s status: (opened now, role, epoch).
fn look(s: &mut Sim, n: NodeId, gate: &mut OwnAddressGate) -> (bool, Role, u64) {
    s.with_data(n, |node, now| {
        let status = node.status(now);
        let links = (status.links as usize).min(status.peer_heard.len());
        let mut heard = status.peer_heard[..links].to_vec();
        heard.extend_from_slice(&status.witness_heard[..links]);
        let view = GateView {
            role: status.role,
            lease_age: status.lease_age,
            members_heard: &heard,
        };
        (gate.update(now, view), status.role, status.epoch)
    })
}

fn conflict(s: &mut Sim, n: NodeId, gate: &mut OwnAddressGate) {
    s.with_data(n, |_, now| gate.on_conflict(now));
}

#[test]
fn a_resumed_old_primary_opens_only_once_deposed_and_the_peer_heard() {
    for seed in 20..26 {
        let mut s = started(seed);
        let p = s.primary().unwrap();
        let q = p.peer();
        s.pause(p);
        assert!(
            s.run_until(3_000 * MS, |s| s.primary() == Some(q)),
            "{}",
            s.log_tail()
        );
        let took_over_epoch = s.data(q).status(tandem_ha::Instant::ZERO).epoch;
        s.run_for(500 * MS);
        // The survivor's announcement waits in the paused node's queue and
        // quiets the address; the heartbeats that tell the node it was
        // deposed come 30 ms later (the worst order): meanwhile it is
        // primary by its own reckoning, with a lease that looks fresh.
        let mut gate = OwnAddressGate::new();
        s.resume_host_first(p, 30 * MS);
        conflict(&mut s, p, &mut gate);
        assert_eq!(
            s.data(p).role(),
            Role::Primary,
            "seed {seed}: still primary by its own reckoning"
        );
        let mut opened = None;
        for step in 0..2_000 {
            let (open, role, epoch) = look(&mut s, p, &mut gate);
            if open {
                opened = Some((step, role, epoch));
                break;
            }
            s.run_for(MS);
        }
        let Some((step, role, epoch)) = opened else {
            panic!("seed {seed}: never opened\n{}", s.log_tail())
        };
        assert_ne!(
            role,
            Role::Primary,
            "seed {seed}: opened while primary (step {step})"
        );
        assert!(
            epoch >= took_over_epoch,
            "seed {seed}: opened in epoch {epoch}, the takeover's is {took_over_epoch}"
        );
        assert!(
            step < 1_000,
            "seed {seed}: quiet for {step} ms after the resume"
        );
    }
}

#[test]
fn a_primary_still_primary_speaks_again_after_one_lease_round() {
    let mut s = started(31);
    let p = s.primary().unwrap();
    let mut gate = OwnAddressGate::new();
    // A forged announcement of the primary's address.
    conflict(&mut s, p, &mut gate);
    let (open, _, _) = look(&mut s, p, &mut gate);
    assert!(!open, "its newest grant is older than the conflict");
    let mut waited = 0;
    loop {
        s.run_for(MS);
        waited += 1;
        let (open, role, _) = look(&mut s, p, &mut gate);
        assert_eq!(role, Role::Primary);
        if open {
            break;
        }
        assert!(
            waited < 500,
            "still quiet after {waited} ms\n{}",
            s.log_tail()
        );
    }
    assert_eq!(s.primary(), Some(p), "no role change");
}

#[test]
fn a_node_cut_off_from_both_members_stays_quiet() {
    let mut s = started(32);
    let p = s.primary().unwrap();
    s.isolate(p);
    let mut gate = OwnAddressGate::new();
    conflict(&mut s, p, &mut gate);
    for _ in 0..3_000 {
        let (open, _, _) = look(&mut s, p, &mut gate);
        assert!(!open, "opened while cut off\n{}", s.log_tail());
        s.run_for(MS);
    }
    s.heal();
    assert!(
        (0..3_000).any(|_| {
            s.run_for(MS);
            look(&mut s, p, &mut gate).0
        }),
        "never opened after the links came back\n{}",
        s.log_tail()
    );
}
