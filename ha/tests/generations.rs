//! Data generations in the simulator: a blank, reverted or diverged disk is
//! never taken for up to date, with a host checking every acknowledged write.

mod sim;
use sim::*;
use tandem_ha::generations::{Decision, Refusal, Side};
use tandem_ha::metadata::{BLOCK_SIZE, FORMAT_VERSION, Layout, SUPERBLOCK_LEN, Superblock};
use tandem_ha::node::{Action, Config, DataNode, InitialData};
use tandem_ha::{AnaState, DataState, Instant, NodeId, Role};

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
    assert!(s.host.writes_acked > 20, "{}", s.log_tail());
    s
}

fn decision(s: &Sim, n: NodeId) -> Option<Decision> {
    s.data(n)
        .status(Instant::ZERO)
        .handshake
        .map(|v| v.decision)
}

/// Runs until the pair is in sync, and checks both replicas.
fn settle(s: &mut Sim) {
    assert!(
        s.run_until(30_000 * MS, |s| s.in_sync()),
        "no resync\n{}",
        s.log_tail()
    );
    s.final_verify();
}

#[test]
fn a_replaced_blank_disk_takes_a_full_resync_and_never_stands_before_it_ends() {
    let mut s = started(31);
    let p = s.primary().unwrap();
    let q = p.peer();
    s.run_for(1_000 * MS);
    s.kill(q);
    s.run_for(1_000 * MS);
    assert_eq!(s.data(p).record().outdated, Some(q));
    // Slow enough to catch the copy half-way.
    s.resync_rate = 128 << 10;
    s.replace_disk_blank(q);
    assert!(
        s.run_until(3_000 * MS, |s| s
            .data(p)
            .status(Instant::ZERO)
            .resync
            .is_some_and(|r| r.remaining_regions < r.total_regions)),
        "no resync started\n{}",
        s.log_tail()
    );
    assert_eq!(
        decision(&s, q),
        Some(Decision::FullResync { source: Side::Peer })
    );
    let st = s.data(p).status(Instant::ZERO);
    assert!(st.full_resync);
    assert_eq!(
        st.resync.unwrap().total_regions,
        s.data(p).layout().region_count
    );
    assert_eq!(s.data(q).data_state(), DataState::Inconsistent);
    assert_eq!(s.nodes[q.index()].ana, AnaState::Inaccessible);
    // The source dies in the middle of the copy: the half-copied node
    // never stands (the host waits), and every write stays checked.
    s.kill(p);
    s.run_for(3_000 * MS);
    assert_eq!(s.primary(), None, "{}", s.log_tail());
    assert_ne!(s.data(q).role(), Role::Primary);
    assert_eq!(s.data(q).data_state(), DataState::Inconsistent);
    // The source returns: the copy resumes from its persisted bitmap.
    s.resync_rate = 100 << 20;
    s.restart(p);
    settle(&mut s);
    assert_eq!(s.data(q).data_state(), DataState::UpToDate);
    assert_eq!(
        s.data(q).generations().current,
        s.data(p).generations().current
    );
}

#[test]
fn a_full_resync_resumes_after_the_target_restarts() {
    let mut s = started(32);
    let p = s.primary().unwrap();
    let q = p.peer();
    s.resync_rate = 128 << 10;
    s.replace_disk_blank(q);
    let total = s.data(p).layout().region_count;
    assert!(s.run_until(10_000 * MS, |s| {
        s.data(p)
            .status(Instant::ZERO)
            .resync
            .is_some_and(|r| r.remaining_regions < total / 2)
    }));
    s.run_for(50 * MS);
    s.host.enabled = false;
    s.restart(q);
    let mut resumed = None;
    assert!(s.run_until(10_000 * MS, |s| {
        // The resync of the new connection (q's handshake is since its boot).
        if decision(s, q).is_some()
            && let Some(r) = s.data(p).status(Instant::ZERO).resync
        {
            resumed.get_or_insert(r.total_regions);
        }
        s.in_sync()
    }));
    let resumed = resumed.expect("the copy resumed");
    assert!(
        resumed < total,
        "the copy started over: {resumed} of {total}"
    );
    assert_eq!(
        decision(&s, q),
        Some(Decision::BitmapResync { source: Side::Peer })
    );
    s.final_verify();
}

#[test]
fn a_node_restarted_on_an_older_copy_of_its_disk_is_resynced_in_full() {
    let mut s = started(33);
    let p = s.primary().unwrap();
    let q = p.peer();
    s.kill(q);
    s.run_for(800 * MS);
    let old = s.disk_image(q);
    s.restart(q);
    assert!(
        s.run_until(10_000 * MS, |s| s.in_sync()),
        "{}",
        s.log_tail()
    );
    // Written while both were in sync: no bitmap remembers these regions
    // once the clean cycles ran.
    s.run_for(2_000 * MS);
    s.restart_on_image(q, &old);
    assert!(s.run_until(3_000 * MS, |s| decision(s, q).is_some()));
    assert_eq!(
        decision(&s, q),
        Some(Decision::FullResync { source: Side::Peer }),
        "{}",
        s.log_tail()
    );
    settle(&mut s);
}

#[test]
fn split_brain_is_refused_until_the_operator_discards_one_side() {
    let mut s = started(36);
    let p = s.primary().unwrap();
    let q = p.peer();
    // A second history of the same pair, in which q wrote alone since the
    // generation both started from.
    let mut other = started(35);
    other.kill(p);
    assert!(other.run_until(3_000 * MS, |s| s.primary() == Some(q)));
    other.run_for(800 * MS);
    let diverged = other.disk_image(q);
    // The pair's own history is the longer one (as a real split brain's
    // would be: epochs grow across the pair): two switchovers here.
    for from in [p, q] {
        s.with_data(from, |d, now| d.demote(now)).unwrap();
        assert!(s.run_until(3_000 * MS, |s| s.primary() == Some(from.peer())));
        assert!(s.run_until(3_000 * MS, |s| s.in_sync()));
    }
    assert!(s.data(p).epoch() > other.data(q).epoch());
    // Here p writes alone too.
    s.kill(q);
    s.run_for(800 * MS);
    s.restart_on_image(q, &diverged);
    assert!(s.run_until(3_000 * MS, |s| decision(s, p).is_some()));
    s.run_for(1_000 * MS);
    assert_eq!(
        decision(&s, p),
        Some(Decision::Refuse(Refusal::SplitBrain)),
        "{}",
        s.log_tail()
    );
    // The running primary keeps serving.
    assert_eq!(s.primary(), Some(p));
    let acked = s.host.writes_acked;
    s.run_for(500 * MS);
    assert!(s.host.writes_acked > acked);
    assert!(
        s.log.iter().any(|l| l.contains("discard-my-data")),
        "the operator is told how to resolve it"
    );
    // The primary dies: the refused node does not take over with its
    // diverged data.
    s.kill(p);
    s.run_for(3_000 * MS);
    assert_eq!(s.primary(), None, "{}", s.log_tail());
    s.restart(p);
    assert!(
        s.run_until(5_000 * MS, |s| s.primary() == Some(p)),
        "{}",
        s.log_tail()
    );
    s.with_data(q, |d, now| d.invalidate(now)).unwrap();
    settle(&mut s);
}

#[test]
fn invalidate_on_the_secondary_copies_everything_then_a_switchover_loses_nothing() {
    let mut s = started(37);
    let p = s.primary().unwrap();
    let q = p.peer();
    assert!(s.with_data(p, |d, now| d.invalidate(now)).is_err());
    s.with_data(q, |d, now| d.invalidate(now)).unwrap();
    assert!(s.run_until(3_000 * MS, |s| s.data(p).status(Instant::ZERO).full_resync));
    assert!(
        s.run_until(20_000 * MS, |s| s.in_sync()),
        "{}",
        s.log_tail()
    );
    s.with_data(p, |d, now| d.demote(now)).unwrap();
    assert!(s.run_until(2_000 * MS, |s| s.primary() == Some(q)));
    s.final_verify();
}

#[test]
fn two_blank_disks_make_a_new_pair_without_a_resync() {
    let mut s = Sim::new(38);
    for n in [NodeId::A, NodeId::B] {
        s.replace_disk_blank(n);
    }
    s.wait_primary(5_000 * MS);
    assert!(s.run_until(3_000 * MS, |s| s.in_sync()), "{}", s.log_tail());
    for n in [NodeId::A, NodeId::B] {
        assert_eq!(decision(&s, n), Some(Decision::NewPair));
        assert!(!s.data(n).status(Instant::ZERO).blank);
    }
    assert_eq!(
        s.data(NodeId::A).generations(),
        s.data(NodeId::B).generations()
    );
    assert_ne!(s.data(NodeId::A).generations().current, 0);
    s.host.enabled = true;
    s.run_for(500 * MS);
    s.final_verify();
}

#[test]
fn a_blank_disk_alone_never_stands() {
    let mut s = Sim::new(39);
    s.kill(NodeId::B);
    s.replace_disk_blank(NodeId::A);
    s.run_for(3_000 * MS);
    assert_eq!(s.primary(), None);
    assert_eq!(s.data(NodeId::A).data_state(), DataState::Inconsistent);
}

#[test]
fn a_version_1_disk_is_upgraded_in_place_when_opened() {
    let cfg = Config::new(NodeId::A, 77, 1);
    let layout = Layout::new(4 << 20, 65536).unwrap();
    let mut n =
        DataNode::format_with_layout(cfg.clone(), layout, InitialData::UpToDate, Instant::ZERO)
            .unwrap();
    let mut disk = std::collections::BTreeMap::new();
    for a in n.drain_actions() {
        if let Action::PersistMetadata { offset, bytes } = a {
            disk.insert(offset, bytes);
        }
    }
    // Rewrite both slots as version 1 wrote them.
    for slot in 0..2 {
        let b = disk.get_mut(&layout.superblock_offset(slot)).unwrap();
        b[8..10].copy_from_slice(&1u16.to_be_bytes());
        b[104..SUPERBLOCK_LEN].fill(0);
        b[12..16].fill(0);
        let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI).checksum(&b[..SUPERBLOCK_LEN]);
        b[12..16].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(Superblock::parse(b).unwrap().version, 1);
    }
    let get = |o: u64| disk.get(&o).cloned().unwrap_or(vec![0; BLOCK_SIZE]);
    let mut opened = DataNode::open(
        cfg,
        &get(layout.superblock_offset(0)),
        &get(layout.superblock_offset(1)),
        &get(layout.bitmap_block_offset(0)),
        Instant::ZERO,
    )
    .unwrap();
    let written: Vec<(u64, Vec<u8>)> = opened
        .drain_actions()
        .filter_map(|a| match a {
            Action::PersistMetadata { offset, bytes } => Some((offset, bytes)),
            _ => None,
        })
        .collect();
    assert_eq!(written.len(), 1, "one superblock write upgrades the disk");
    let sb = Superblock::parse(&written[0].1).unwrap();
    assert_eq!(sb.version, FORMAT_VERSION);
    assert_eq!(
        sb.generations,
        tandem_ha::generations::Generations::initial(77)
    );
    assert_eq!(sb.data_state, DataState::UpToDate);
}

#[test]
fn verify_finds_a_region_changed_behind_the_pairs_back_and_the_resync_repairs_it() {
    let mut s = started(40);
    let p = s.primary().unwrap();
    let q = p.peer();
    assert!(
        s.with_data(q, |d, now| d.verify(now)).is_err(),
        "verify runs on the primary"
    );
    // Nothing differs: verification finds nothing.
    s.with_data(p, |d, now| d.verify(now)).unwrap();
    assert!(
        s.with_data(p, |d, now| d.verify(now)).is_err(),
        "one at a time"
    );
    assert!(
        s.run_until(10_000 * MS, |s| s
            .data(p)
            .status(Instant::ZERO)
            .verify
            .is_some_and(|v| !v.running)),
        "{}",
        s.log_tail()
    );
    let v = s.data(p).status(Instant::ZERO).verify.unwrap();
    assert_eq!((v.differing_regions, v.interrupted), (0, false), "{v:?}");
    assert_eq!(v.checked_regions, s.data(p).layout().region_count);
    // Change one block of the secondary's disk behind the pair's back.
    s.host.enabled = false;
    s.run_for(500 * MS);
    let victim = 5 * BLOCK;
    s.nodes[q.index()]
        .disk
        .insert(victim, vec![0xa5; BLOCK as usize]);
    s.with_data(p, |d, now| d.verify(now)).unwrap();
    assert!(s.run_until(10_000 * MS, |s| {
        s.data(p)
            .status(Instant::ZERO)
            .verify
            .is_some_and(|v| !v.running)
    }));
    let v = s.data(p).status(Instant::ZERO).verify.unwrap();
    assert_eq!(v.differing_regions, 1, "{v:?}\n{}", s.log_tail());
    assert!(s.log.iter().any(|l| l.contains("verify done: 1 of")));
    // The resync repairs it: both replicas identical (final_verify).
    s.host.enabled = true;
    settle(&mut s);
}

/// The namespace size of a pair on disks of `DISK_BYTES`.
fn pair_size() -> u64 {
    Layout::new(DISK_BYTES, 65536).unwrap().data_bytes
}

#[test]
fn a_larger_replacement_disk_joins_and_serves_the_pairs_size() {
    let mut s = started(41);
    let p = s.primary().unwrap();
    let q = p.peer();
    assert_eq!(s.data(p).namespace_bytes(), Some(pair_size()));
    s.replace_disk_blank_sized(q, DISK_BYTES + (1 << 20));
    // Before it met its peer, its namespace size is not known.
    assert_eq!(s.data(q).namespace_bytes(), None);
    settle(&mut s);
    assert_eq!(
        decision(&s, q),
        Some(Decision::FullResync { source: Side::Peer })
    );
    for n in [p, q] {
        assert_eq!(s.data(n).namespace_bytes(), Some(pair_size()), "{n}");
        assert_eq!(s.data(n).data_bytes(), pair_size(), "{n}");
    }
    assert!(s.data(q).layout().data_bytes > pair_size());
    // Only the pair's regions were copied.
    let st = s.data(q).status(Instant::ZERO).to_string();
    assert!(
        st.contains(&format!(
            "size:{}B disk-size:{}B",
            pair_size(),
            s.data(q).layout().data_bytes
        )),
        "{st}"
    );
    // It survives a restart (the size is in its metadata), and serves as
    // primary at the pair's size.
    s.restart(q);
    settle(&mut s);
    assert_eq!(s.data(q).namespace_bytes(), Some(pair_size()));
    s.host.enabled = true;
    s.kill(p);
    assert_eq!(s.wait_primary(3_000 * MS), q);
    let acked = s.host.writes_acked;
    s.run_for(1_000 * MS);
    assert!(s.host.writes_acked > acked, "{}", s.log_tail());
    s.restart(p);
    settle(&mut s);
}

#[test]
fn a_smaller_replacement_disk_is_refused_and_the_primary_keeps_serving() {
    let mut s = started(42);
    let p = s.primary().unwrap();
    let q = p.peer();
    s.replace_disk_blank_sized(q, DISK_BYTES - (256 << 10));
    s.run_for(2_000 * MS);
    assert_eq!(
        decision(&s, q),
        Some(Decision::Refuse(Refusal::DiskTooSmall)),
        "{}",
        s.log_tail()
    );
    assert_eq!(
        decision(&s, p),
        Some(Decision::Refuse(Refusal::DiskTooSmall))
    );
    let line = s
        .log
        .iter()
        .find(|l| {
            l.contains(&format!(
                "{q}: tandem: handshake with {p}: refused disk-too-small"
            ))
        })
        .unwrap_or_else(|| panic!("no console line\n{}", s.log_tail()));
    assert!(
        line.contains("this node's disk is smaller than the pair's namespace"),
        "{line}"
    );
    assert!(
        line.contains(&format!("namespace {} bytes", pair_size())),
        "{line}"
    );
    assert!(line.contains("to resolve"), "{line}");
    // Nothing changed: the primary serves, the small disk never stands.
    assert_eq!(s.primary(), Some(p));
    assert_eq!(s.data(q).namespace_bytes(), None);
    assert_eq!(s.data(q).data_state(), DataState::Inconsistent);
    let acked = s.host.writes_acked;
    s.run_for(500 * MS);
    assert!(s.host.writes_acked > acked);
    s.kill(p);
    s.run_for(2_000 * MS);
    assert_eq!(s.primary(), None, "{}", s.log_tail());
    // A disk of the right size resolves it.
    s.restart(p);
    s.replace_disk_blank_sized(q, DISK_BYTES);
    settle(&mut s);
}

#[test]
fn two_blank_disks_of_different_sizes_make_a_pair_of_the_smaller_size() {
    let mut s = Sim::new(43);
    s.kill(NodeId::A);
    s.kill(NodeId::B);
    s.replace_disk_blank_sized(NodeId::A, DISK_BYTES + (512 << 10));
    s.replace_disk_blank_sized(NodeId::B, DISK_BYTES);
    s.wait_primary(5_000 * MS);
    assert!(s.run_until(3_000 * MS, |s| s.in_sync()), "{}", s.log_tail());
    assert_eq!(decision(&s, NodeId::A), Some(Decision::NewPair));
    for n in [NodeId::A, NodeId::B] {
        assert_eq!(s.data(n).namespace_bytes(), Some(pair_size()), "{n}");
    }
    s.host.enabled = true;
    s.run_for(500 * MS);
    settle(&mut s);
}
