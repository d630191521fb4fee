//! The failure scenarios, run in the deterministic simulator with a
//! host that checks every acknowledged write and every read.

mod sim;
use sim::*;
use tandem_ha::{AnaState, DataState, NodeId, Role};

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
    assert!(
        s.host.writes_acked > 20,
        "host made no progress: {}\n{}",
        s.host.writes_acked,
        s.log_tail()
    );
    s
}

#[test]
fn fresh_pair_elects_one_primary_and_replicates() {
    let mut s = started(1);
    let p = s.primary().unwrap();
    assert_eq!(s.data(p).role(), Role::Primary);
    assert_eq!(s.data(p.peer()).role(), Role::Secondary);
    assert_eq!(s.nodes[p.peer().index()].ana, AnaState::Inaccessible);
    s.run_for(1_000 * MS);
    assert!(s.host.reads_ok > 20);
    // Both sides account for the replicated writes' time (`status`).
    let now = tandem_ha::Instant::from_micros(s.now);
    let primary_times = s.data(p).status(now).write_times;
    let secondary_times = s.data(p.peer()).status(now).write_times;
    assert!(primary_times.peer.count() > 0, "{primary_times:?}");
    assert_eq!(primary_times.local.count(), primary_times.peer.count());
    assert!(primary_times.peer.max() >= primary_times.peer.mean());
    assert_eq!(secondary_times.applied.count(), primary_times.peer.count());
    assert_eq!(secondary_times.peer.count(), 0);
    s.final_verify();
}

#[test]
fn planned_switchover_both_ways_without_io_error() {
    let mut s = started(2);
    for _ in 0..2 {
        let p = s.primary().unwrap();
        let q = p.peer();
        s.host.stall_window_start = Some(s.now);
        s.host.max_stall = 0;
        s.with_data(p, |d, now| d.demote(now)).unwrap();
        assert!(
            s.run_until(500 * MS, |s| s.primary() == Some(q)),
            "switchover did not complete\n{}",
            s.log_tail()
        );
        s.run_for(500 * MS);
        s.host.stall_window_start = None;
        assert!(
            s.host.max_stall < 100 * MS,
            "I/O stalled {}ms during switchover",
            s.host.max_stall / MS
        );
        assert_eq!(s.data(p).role(), Role::Secondary);
        assert_eq!(
            s.data(q).record().outdated,
            None,
            "a planned switchover outdates nobody"
        );
        let last = s.data(q).history().last().unwrap().to_string();
        assert!(
            last.starts_with("tandem: role primary epoch ") && last.ends_with("reason switchover"),
            "{last}"
        );
    }
    s.final_verify();
}

#[test]
fn promote_on_secondary_requests_a_switchover() {
    let mut s = started(3);
    let p = s.primary().unwrap();
    s.with_data(p.peer(), |d, now| d.promote(now)).unwrap();
    assert!(
        s.run_until(500 * MS, |s| s.primary() == Some(p.peer())),
        "{}",
        s.log_tail()
    );
    s.final_verify();
}

#[test]
fn primary_crash_then_restart_resyncs_only_dirty_regions() {
    let mut s = started(4);
    let p = s.primary().unwrap();
    let q = p.peer();
    s.kill(p);
    let t0 = s.now;
    assert!(
        s.run_until(2_000 * MS, |s| s.primary() == Some(q)),
        "no takeover\n{}",
        s.log_tail()
    );
    let takeover = s.now - t0;
    assert!(takeover < 1_000 * MS, "takeover took {}ms", takeover / MS);
    assert_eq!(s.data(q).record().outdated, Some(p));
    s.run_for(600 * MS);
    s.restart(p);
    let total = s.data(q).layout().region_count;
    let mut seen_total = None;
    assert!(
        s.run_until(5_000 * MS, |s| {
            if let Some(r) = s.data(q).status(tandem_ha::Instant::ZERO).resync {
                seen_total.get_or_insert(r.total_regions);
            }
            s.in_sync()
        }),
        "no resync\n{}",
        s.log_tail()
    );
    let resynced = seen_total.expect("a resync ran");
    assert!(
        resynced > 0 && resynced < total,
        "resync copied {resynced} of {total} regions: not incremental"
    );
    if resynced > 1 {
        assert!(
            s.max_resync_reads > 1,
            "resync read one region at a time ({resynced} regions)"
        );
    }
    assert_eq!(s.data(p).role(), Role::Secondary);
    assert_eq!(s.data(p).data_state(), DataState::UpToDate);
    s.final_verify();
}

#[test]
fn replication_link_down_keeps_one_primary_then_catches_up() {
    let mut s = started(5);
    let p = s.primary().unwrap();
    s.set_link(0, NodeId::A, NodeId::B, false);
    let before = s.host.writes_acked;
    for _ in 0..100 {
        s.run_for(10 * MS);
        assert!(s.serving().len() <= 1);
    }
    s.run_for(1_000 * MS);
    assert_eq!(
        s.primary(),
        Some(p),
        "the front-end heartbeats keep the same primary\n{}",
        s.log_tail()
    );
    assert!(
        s.host.writes_acked > before + 50,
        "writes continue degraded"
    );
    assert_eq!(s.data(p).record().outdated, Some(p.peer()));
    assert_ne!(s.data(p.peer()).data_state(), DataState::UpToDate);
    s.set_link(0, NodeId::A, NodeId::B, true);
    assert!(
        s.run_until(5_000 * MS, |s| s.in_sync()),
        "no catch-up\n{}",
        s.log_tail()
    );
    s.final_verify();
}

#[test]
fn isolated_primary_fences_itself_before_takeover() {
    let mut s = started(6);
    let p = s.primary().unwrap();
    let q = p.peer();
    s.isolate(p);
    let mut p_stopped_at = None;
    let mut q_started_at = None;
    for _ in 0..2_000 {
        s.run_for(MS);
        if p_stopped_at.is_none() && s.nodes[p.index()].ana != AnaState::Optimized {
            p_stopped_at = Some(s.now);
        }
        if q_started_at.is_none() && s.nodes[q.index()].ana == AnaState::Optimized {
            q_started_at = Some(s.now);
        }
    }
    let (ps, qs) = (
        p_stopped_at.expect("isolated primary kept serving"),
        q_started_at.expect("no takeover"),
    );
    assert!(
        ps < qs,
        "old primary inaccessible at {ps}, new optimized at {qs}"
    );
    assert_eq!(s.data(p).role(), Role::Fenced);
    s.heal();
    assert!(s.run_until(5_000 * MS, |s| s.in_sync()), "{}", s.log_tail());
    assert_eq!(s.primary(), Some(q));
    s.final_verify();
}

#[test]
fn paused_primary_resumed_after_takeover_acknowledges_nothing_and_serves_no_stale_read() {
    let mut s = started(7);
    let p = s.primary().unwrap();
    let q = p.peer();
    s.pause(p);
    // The host's multipath gives up on the stalled path (its commands
    // there time out); the commands it already sent stay queued. It sends
    // nothing until a path is optimized again.
    s.host.enabled = false;
    s.nodes[p.index()].ana = AnaState::Inaccessible;
    assert!(
        s.run_until(2_000 * MS, |s| s.primary() == Some(q)),
        "{}",
        s.log_tail()
    );
    s.host.enabled = true;
    // The new primary acknowledges writes the paused node never saw, while
    // the host keeps sending some commands down the stale path.
    let acked_before = s.host.writes_acked;
    let versions = s.acked_versions();
    s.run_for(1_000 * MS);
    assert!(s.host.writes_acked > acked_before + 50);
    // Reads of blocks the new primary changed, and new writes, sent down
    // the stale path: a stale read or an acknowledged write would be caught.
    s.host.enabled = false;
    s.run_for(50 * MS);
    let changed = s.blocks_acked_since(&versions);
    let writes = (0..HOST_BLOCKS)
        .filter(|&b| s.host_write_via(p, b))
        .take(5)
        .count();
    let reads = changed.iter().filter(|&&b| s.host_read_via(p, b)).count();
    assert!(
        reads >= 3 && writes >= 3,
        "reads {reads} writes {writes} changed {} busy {}",
        changed.len(),
        s.busy_blocks()
    );
    s.run_for(MS);
    let queued = s.queued_host_commands(p);
    assert!(
        queued >= reads + writes,
        "the paused node did not queue the host's commands"
    );
    s.host.enabled = true;
    s.resume_host_first(p, 20 * MS);
    // Every queued command was checked on completion (stale reads and lost
    // writes panic): the resumed node, whose clock says its lease is still
    // valid, must not complete any of them.
    s.run_for(500 * MS);
    assert_ne!(s.data(p).role(), Role::Primary, "{}", s.log_tail());
    assert!(s.run_until(5_000 * MS, |s| s.in_sync()), "{}", s.log_tail());
    assert_eq!(s.data(p).role(), Role::Secondary);
    s.final_verify();
}

#[test]
fn witness_down_pair_keeps_serving_then_secondary_down_primary_fences() {
    let mut s = started(8);
    let p = s.primary().unwrap();
    s.kill(NodeId::Witness);
    let before = s.host.writes_acked;
    s.run_for(1_000 * MS);
    assert_eq!(s.primary(), Some(p), "witness loss changes nothing");
    assert!(s.host.writes_acked > before + 50);
    s.kill(p.peer());
    s.run_for(1_000 * MS);
    // Documented behaviour: without a majority the primary cannot tell a
    // dead peer from its own isolation, so it fences itself.
    assert!(s.serving().is_empty());
    assert_eq!(s.data(p).role(), Role::Fenced);
    assert_eq!(s.nodes[p.index()].ana, AnaState::Inaccessible);
    // The secondary comes back: majority again, service resumes.
    s.restart(p.peer());
    s.wait_primary(3_000 * MS);
    s.final_verify();
}

#[test]
fn witness_restart_forgets_nothing_that_matters() {
    let mut s = started(9);
    let p = s.primary().unwrap();
    s.kill(p.peer());
    s.run_for(1_000 * MS);
    assert_eq!(
        s.data(p).record().outdated,
        Some(p.peer()),
        "primary continues alone with the witness"
    );
    // The witness restarts and forgets; then the primary dies. The stale
    // secondary comes back: it must not become primary.
    s.restart(NodeId::Witness);
    s.kill(p);
    s.restart(p.peer());
    s.run_for(3_000 * MS);
    assert!(
        s.serving().is_empty(),
        "an outdated node became primary\n{}",
        s.log_tail()
    );
    s.restart(p);
    s.wait_primary(3_000 * MS);
    assert_eq!(s.primary(), Some(p));
    s.final_verify();
}

#[test]
fn whole_pair_power_loss_restarts_from_metadata() {
    let mut s = started(10);
    s.run_for(500 * MS);
    for n in NodeId::ALL {
        s.kill(n);
    }
    s.run_for(100 * MS);
    for n in NodeId::ALL {
        s.restart(n);
    }
    let p = s.wait_primary(3_000 * MS);
    assert!(s.data(p).epoch() >= 2, "a new epoch after the restart");
    s.run_for(1_000 * MS);
    s.final_verify();
}

#[test]
fn lossy_duplicating_reordering_links_still_serve() {
    let mut s = Sim::new(11);
    for l in 0..LINKS as usize {
        s.params[l] = LinkParams {
            drop_per_mille: 200,
            dup_per_mille: 200,
            min_delay: 50 * US,
            max_delay: 5 * MS,
        };
    }
    s.wait_primary(5_000 * MS);
    s.host.enabled = true;
    s.run_for(3_000 * MS);
    assert_eq!(s.serving().len(), 1, "{}", s.log_tail());
    assert!(s.host.writes_acked > 300, "{}", s.host.writes_acked);
    s.final_verify();
}

#[test]
fn default_timing_meets_the_failover_and_switchover_goals() {
    let mut s = Sim::with_timing(12, tandem_ha::node::Timing::DEFAULT);
    s.wait_primary(5_000 * MS);
    assert!(s.run_until(5_000 * MS, |s| s.in_sync()));
    s.host.enabled = true;
    s.run_for(500 * MS);
    // Planned switchover: the host's longest gap between completions.
    let p = s.primary().unwrap();
    s.host.stall_window_start = Some(s.now);
    s.host.max_stall = 0;
    s.with_data(p, |d, now| d.demote(now)).unwrap();
    assert!(s.run_until(1_000 * MS, |s| s.primary() == Some(p.peer())));
    s.run_for(500 * MS);
    let switchover_stall = s.host.max_stall;
    assert!(
        switchover_stall <= 100 * MS,
        "switchover stall {}ms",
        switchover_stall / MS
    );
    // Crash of the primary: time until the other node serves.
    let p = s.primary().unwrap();
    s.kill(p);
    let t0 = s.now;
    assert!(s.run_until(2_000 * MS, |s| s.primary() == Some(p.peer())));
    let takeover = s.now - t0;
    assert!(takeover <= 1_000 * MS, "takeover {}ms", takeover / MS);
    eprintln!(
        "default timing: switchover stall {}ms, crash takeover {}ms",
        switchover_stall / MS,
        takeover / MS
    );
    s.final_verify();
}

/// Node b stands later than a (the stagger) only while a could be standing
/// too: a dead peer cannot, so either node takes over from it equally fast.
#[test]
fn either_node_takes_over_from_a_dead_peer_equally_fast() {
    let takeover = |survivor: NodeId| -> u64 {
        let mut s = Sim::with_timing(21, tandem_ha::node::Timing::DEFAULT);
        s.wait_primary(5_000 * MS);
        assert!(s.run_until(5_000 * MS, |s| s.in_sync()));
        if s.primary() == Some(survivor) {
            s.with_data(survivor, |d, now| d.demote(now)).unwrap();
            assert!(s.run_until(1_000 * MS, |s| s.primary() == Some(survivor.peer())));
            assert!(s.run_until(5_000 * MS, |s| s.in_sync()));
        }
        s.kill(survivor.peer());
        let t0 = s.now;
        assert!(
            s.run_until(2_000 * MS, |s| s.primary() == Some(survivor)),
            "{}",
            s.log_tail()
        );
        s.now - t0
    };
    let (by_a, by_b) = (takeover(NodeId::A), takeover(NodeId::B));
    let heartbeat = tandem_ha::node::Timing::DEFAULT
        .heartbeat_interval
        .as_micros();
    assert!(
        by_a.abs_diff(by_b) <= 2 * heartbeat,
        "a took over in {} ms, b in {} ms",
        by_a / MS,
        by_b / MS
    );
}

#[test]
fn losing_one_link_is_not_a_dead_peer() {
    let mut s = started(13);
    let p = s.primary().unwrap();
    let epoch = s.data(p).epoch();
    // The front-end network between the data nodes fails; the witness's
    // replication-link path fails too. Every member still hears every
    // other on some link.
    s.set_link(1, NodeId::A, NodeId::B, false);
    s.set_link(0, p, NodeId::Witness, false);
    s.run_for(2_000 * MS);
    assert_eq!(s.primary(), Some(p));
    assert_eq!(s.data(p).epoch(), epoch, "no election, no outdating");
    let st = s.data(p).status(tandem_ha::Instant::from_micros(s.now));
    assert!(st.peer_reachable && st.witness_reachable);
    assert!(st.peer_heard[0].unwrap().as_millis() < 100);
    assert!(st.peer_heard[1].unwrap().as_millis() >= 1_900, "{st}");
    assert!(st.witness_heard[0].unwrap().as_millis() >= 1_900);
    s.final_verify();
}

#[test]
fn resync_is_rate_limited_and_reports_progress() {
    let mut s = Sim::new(14);
    s.resync_rate = 256 << 10;
    for n in NodeId::ALL {
        s.restart(n);
    }
    s.wait_primary(3_000 * MS);
    assert!(s.run_until(3_000 * MS, |s| s.in_sync()), "{}", s.log_tail());
    let p = s.primary().unwrap();
    let q = p.peer();
    s.kill(q);
    s.host.enabled = true;
    s.run_for(1_500 * MS);
    s.host.enabled = false;
    s.run_for(200 * MS);
    let dirty = s.data(p).dirty_regions();
    assert!(dirty >= 4, "{dirty}");
    s.restart(q);
    let t0 = s.now;
    let mut progress = Vec::new();
    assert!(s.run_until(20_000 * MS, |s| {
        if let Some(r) = s.data(p).status(tandem_ha::Instant::ZERO).resync
            && progress.last() != Some(&r.per_mille())
        {
            progress.push(r.per_mille());
        }
        s.in_sync()
    }));
    let took = s.now - t0;
    let bytes = dirty * 65536;
    let min = bytes * 1_000_000 / (256 << 10) / 2;
    assert!(
        took >= min,
        "resync of {bytes} bytes took {}ms at 256 KiB/s",
        took / MS
    );
    assert!(
        progress.len() >= 3 && progress.windows(2).all(|w| w[0] < w[1]),
        "{progress:?}"
    );
    s.final_verify();
}

#[test]
fn switchover_to_a_peer_that_dies_falls_back_to_the_old_primary() {
    let mut s = started(15);
    let p = s.primary().unwrap();
    let q = p.peer();
    // The peer dies right when the handover is sent: nobody takes over.
    s.with_data(p, |d, now| d.demote(now)).unwrap();
    s.kill(q);
    assert!(
        s.run_until(3_000 * MS, |s| s
            .data(p)
            .history()
            .any(|c| c.reason == "switchover-failed")),
        "{}",
        s.log_tail()
    );
    // The old primary is UpToDate and has the witness: it stands again and
    // records the dead peer Outdated.
    assert!(
        s.run_until(3_000 * MS, |s| s.primary() == Some(p)),
        "{}",
        s.log_tail()
    );
    assert_eq!(s.data(p).record().outdated, Some(q));
    s.final_verify();
}

#[test]
fn takeover_waits_for_the_lease_even_with_a_short_failure_timeout() {
    // Failure detection faster than the lease: only the granters' promises
    // keep the new primary from starting while the old one still serves.
    let timing = tandem_ha::node::Timing {
        heartbeat_interval: tandem_ha::Duration::from_millis(20),
        failure_timeout: tandem_ha::Duration::from_millis(60),
        lease_duration: tandem_ha::Duration::from_millis(300),
        lease_margin: tandem_ha::Duration::from_millis(40),
        clock_drift_ppm: 1000,
    };
    let mut s = Sim::with_timing(16, timing);
    let p = s.wait_primary(3_000 * MS);
    assert!(s.run_until(3_000 * MS, |s| s.in_sync()));
    s.host.enabled = true;
    s.run_for(300 * MS);
    s.isolate(p);
    let t0 = s.now;
    // The simulator fails the test if both serve at the same time.
    assert!(
        s.run_until(2_000 * MS, |s| s.primary() == Some(p.peer())),
        "{}",
        s.log_tail()
    );
    assert!(
        s.now - t0 >= 300 * MS,
        "took over after {}ms, before the lease could end",
        (s.now - t0) / MS
    );
    s.final_verify();
}

#[test]
fn witness_down_and_replication_link_down_the_peer_agrees_to_be_outdated() {
    let mut s = started(17);
    let p = s.primary().unwrap();
    s.kill(NodeId::Witness);
    s.run_for(300 * MS);
    s.set_link(0, NodeId::A, NodeId::B, false);
    s.run_for(1_000 * MS);
    let before = s.host.writes_acked;
    s.run_for(1_000 * MS);
    assert_eq!(s.primary(), Some(p), "{}", s.log_tail());
    assert!(
        s.host.writes_acked > before + 100,
        "writes continue without the witness"
    );
    assert_eq!(s.data(p).record().outdated, Some(p.peer()));
    assert_eq!(s.data(p.peer()).data_state(), DataState::Outdated);
    s.final_verify();
}

/// In sync, busy regions stay marked (a write to one costs no metadata
/// write), host flushes complete, and once the host stops, clean cycles
/// (both disks flushed) clear every bit.
#[test]
fn group_commit_keeps_hot_regions_marked_and_clean_cycles_clear_idle_ones() {
    let mut s = started(21);
    s.run_for(2_000 * MS);
    let p = s.primary().unwrap();
    let acked = s.host.writes_acked;
    let persists = s.data(p).counters().bitmap_persists;
    assert!(
        s.host.flushes_ok > 5,
        "flushes completed: {}",
        s.host.flushes_ok
    );
    assert!(
        persists * 5 < acked,
        "{persists} bitmap persists for {acked} writes"
    );
    assert!(s.data(p).dirty_regions() > 0, "hot regions stay marked");
    s.host.enabled = false;
    s.run_for(1_000 * MS);
    assert_eq!(
        s.data(p).dirty_regions(),
        0,
        "idle regions are cleared\n{}",
        s.log_tail()
    );
    assert!(s.data(p).counters().regions_cleaned > 0);
    s.final_verify();
}

/// A planned switchover leaves nothing to resync (both disks were flushed
/// before the handover and the old primary dropped its marks), so switching
/// back is possible at once; with I/O running throughout.
#[test]
fn switching_back_right_after_a_switchover_is_accepted() {
    let mut s = started(22);
    let p = s.primary().unwrap();
    let q = p.peer();
    assert!(s.data(p).dirty_regions() > 0, "hot regions are marked");
    s.with_data(p, |d, now| d.demote(now)).unwrap();
    assert!(
        s.run_until(500 * MS, |s| s.primary() == Some(q)),
        "{}",
        s.log_tail()
    );
    assert_eq!(
        s.data(p).dirty_regions(),
        0,
        "the handover cleared the marks"
    );
    let t0 = s.now;
    let mut accepted = false;
    for _ in 0..30 {
        s.run_for(10 * MS);
        if s.primary() == Some(q) && s.with_data(q, |d, now| d.demote(now)).is_ok() {
            accepted = true;
            break;
        }
    }
    assert!(
        accepted,
        "switch back refused for 300 ms: {}",
        s.data(q).status(tandem_ha::Instant::from_micros(s.now))
    );
    assert!(
        s.run_until(500 * MS, |s| s.primary() == Some(p)),
        "{}",
        s.log_tail()
    );
    eprintln!(
        "switch back accepted {} ms after the switchover",
        (s.now - t0) / MS
    );
    s.final_verify();
}

/// `promote` on a secondary cut off from the primary's replication stream
/// says why instead of asking for a handover the primary would refuse.
#[test]
fn promote_refuses_when_not_in_sync_with_the_primary() {
    let mut s = started(23);
    let p = s.primary().unwrap();
    let q = p.peer();
    s.set_link(0, NodeId::A, NodeId::B, false);
    assert!(
        s.run_until(1_000 * MS, |s| s
            .data(q)
            .status(tandem_ha::Instant::ZERO)
            .replication
            == tandem_ha::node::ReplicationState::Disconnected),
        "{}",
        s.log_tail()
    );
    let r = s.with_data(q, |d, now| d.promote(now));
    assert_eq!(r, Err(tandem_ha::node::CommandError::NotInSync));
}
