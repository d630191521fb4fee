//! Message-level tests of single transitions: voting and lease rules (every
//! refusal), the fencing token on replicated writes, metadata persistence and
//! restart, commands, host I/O admission, events and ANA outputs.

use tandem_ha::generations::Generations;
use tandem_ha::metadata::{BLOCK_SIZE, Layout, Superblock};
use tandem_ha::node::{
    Action, CommandError, Config, DataNode, HostIoError, InitialData, IoResult, Timing,
};
use tandem_ha::voter::{OwnView, VoteAsk, Voter};
use tandem_ha::wire::control::{
    Datagram, ElectionReason, Heartbeat, HostPathReport, Message, Refusal,
};
use tandem_ha::wire::stream::{AckStatus, Body, Frame, Hello, HelloData, feature};
use tandem_ha::witness::{Witness, WitnessConfig};
use tandem_ha::{AnaState, DataState, Duration, EpochRecord, Error, Instant, LinkId, NodeId, Role};

const PAIR: u64 = 42;
const DISK: u64 = 4 << 20;

fn ms(v: u64) -> Instant {
    Instant::from_millis(v)
}

fn cfg(n: NodeId) -> Config {
    let mut c = Config::new(n, PAIR, 100 + n.index() as u64);
    c.timing = Timing {
        heartbeat_interval: Duration::from_millis(10),
        failure_timeout: Duration::from_millis(100),
        lease_duration: Duration::from_millis(80),
        lease_margin: Duration::from_millis(20),
        clock_drift_ppm: 1000,
    };
    c
}

fn fresh(n: NodeId) -> DataNode {
    let layout = Layout::new(DISK, 65536).unwrap();
    let mut d = DataNode::format_with_layout(cfg(n), layout, InitialData::UpToDate, ms(0)).unwrap();
    d.drain_actions().for_each(drop);
    d
}

/// The metadata area as a kernel would read it back after executing `actions`.
fn apply_metadata(meta: &mut std::collections::BTreeMap<u64, Vec<u8>>, actions: &[Action]) {
    for a in actions {
        match a {
            Action::PersistMetadata { offset, bytes } => {
                meta.insert(*offset, bytes.clone());
            }
            Action::PersistBitmap { blocks, .. } => {
                for (offset, bytes) in blocks {
                    meta.insert(*offset, bytes.clone());
                }
            }
            _ => {}
        }
    }
}

fn reopen(
    n: NodeId,
    meta: &std::collections::BTreeMap<u64, Vec<u8>>,
    now: Instant,
) -> Result<DataNode, Error> {
    let l = Layout::new(DISK, 65536).unwrap();
    let get = |o: u64| meta.get(&o).cloned().unwrap_or_else(|| vec![0; BLOCK_SIZE]);
    let mut bm = Vec::new();
    for b in 0..l.bitmap_blocks {
        bm.extend(get(l.bitmap_block_offset(b)));
    }
    DataNode::open(
        cfg(n),
        &get(l.superblock_offset(0)),
        &get(l.superblock_offset(1)),
        &bm,
        now,
    )
}

fn datagram(sender: NodeId, epoch: u64, message: Message) -> Vec<u8> {
    Datagram {
        sender,
        link: LinkId(0),
        epoch,
        message,
    }
    .emit()
}

fn sent(actions: &[Action]) -> Vec<(NodeId, Datagram)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SendDatagram { to, bytes, .. } => Some((*to, Datagram::parse(bytes).unwrap())),
            _ => None,
        })
        .collect()
}

fn hb(role: Role, record: EpochRecord, flags: u8) -> Heartbeat {
    Heartbeat {
        role,
        data_state: DataState::UpToDate,
        peer_state: DataState::UpToDate,
        flags,
        voted_for: None,
        vote_outdated: None,
        record,
        incarnation: 7,
        echo: 0,
        host_path: None,
    }
}

/// A, B and the witness over a perfect network, stepped by 1 ms.
struct Trio {
    a: DataNode,
    b: DataNode,
    w: Witness,
    now: u64,
    log: Vec<String>,
    /// Carry the replication stream between A and B (connected at once).
    stream: bool,
    /// Disk flushes the nodes asked for and nobody completed.
    disk_flushes: Vec<(NodeId, u64)>,
}

impl Trio {
    fn new() -> Trio {
        let mut wc = WitnessConfig::new(999);
        wc.timing = cfg(NodeId::A).timing;
        Trio {
            a: fresh(NodeId::A),
            b: fresh(NodeId::B),
            w: Witness::new(wc, ms(0)).unwrap(),
            now: 0,
            log: Vec::new(),
            stream: false,
            disk_flushes: Vec::new(),
        }
    }
    /// The disk flush `node` asked for.
    fn disk_flush_of(&self, node: NodeId) -> u64 {
        self.disk_flushes
            .iter()
            .find(|(n, _)| *n == node)
            .expect("a disk flush")
            .1
    }
    fn with_stream() -> Trio {
        let mut t = Trio::new();
        t.stream = true;
        t.a.on_stream_connected(ms(0));
        t.b.on_stream_connected(ms(0));
        t
    }
    fn step(&mut self, until: u64) {
        while self.now < until {
            self.now += 1;
            let now = ms(self.now);
            self.a.tick(now);
            self.b.tick(now);
            self.w.tick(now);
            for _ in 0..10 {
                let mut msgs = Vec::new();
                let mut stream = Vec::new();
                for (from, acts) in [
                    (NodeId::A, self.a.drain_actions().collect::<Vec<_>>()),
                    (NodeId::B, self.b.drain_actions().collect()),
                    (NodeId::Witness, self.w.drain_actions().collect()),
                ] {
                    for a in acts {
                        match a {
                            Action::SendDatagram { to, link, bytes } => {
                                msgs.push((to, link, bytes))
                            }
                            Action::RoleChanged(c) => self.log.push(format!("{from}: {c}")),
                            Action::SendStream { bytes } if self.stream => {
                                stream.push((from.peer(), bytes))
                            }
                            Action::FlushDisk { flush } => self.disk_flushes.push((from, flush)),
                            _ => {}
                        }
                    }
                }
                if msgs.is_empty() && stream.is_empty() {
                    break;
                }
                for (to, bytes) in stream {
                    match to {
                        NodeId::A => self.a.on_stream_bytes(now, &bytes),
                        _ => self.b.on_stream_bytes(now, &bytes),
                    }
                }
                for (to, link, bytes) in msgs {
                    match to {
                        NodeId::A => self.a.on_datagram(now, link, &bytes),
                        NodeId::B => self.b.on_datagram(now, link, &bytes),
                        NodeId::Witness => self.w.on_datagram(now, link, &bytes),
                    }
                }
            }
        }
    }
}

#[test]
fn format_then_reopen_restores_the_persistent_state() {
    let layout = Layout::new(DISK, 65536).unwrap();
    let mut d =
        DataNode::format_with_layout(cfg(NodeId::A), layout, InitialData::UpToDate, ms(0)).unwrap();
    let acts: Vec<Action> = d.drain_actions().collect();
    let persists = acts
        .iter()
        .filter(|a| matches!(a, Action::PersistMetadata { .. }))
        .count();
    assert_eq!(
        persists,
        2 + layout.bitmap_blocks as usize,
        "both superblock slots and every bitmap block"
    );
    assert_eq!(d.data_bytes(), layout.data_bytes);
    let mut meta = Default::default();
    apply_metadata(&mut meta, &acts);
    let r = reopen(NodeId::A, &meta, ms(5)).unwrap();
    assert_eq!(
        (r.epoch(), r.data_state(), r.role()),
        (0, DataState::UpToDate, Role::Secondary)
    );
    assert!(matches!(
        reopen(NodeId::B, &meta, ms(5)),
        Err(Error::MetadataMismatch(_))
    ));
    let mut other = cfg(NodeId::A);
    other.pair_id = 7;
    let l = Layout::new(DISK, 65536).unwrap();
    let s0 = meta[&l.superblock_offset(0)].clone();
    let s1 = meta[&l.superblock_offset(1)].clone();
    assert!(matches!(
        DataNode::open(other, &s0, &s1, &[], ms(0)),
        Err(Error::MetadataMismatch(_))
    ));
    assert_eq!(
        DataNode::open(cfg(NodeId::A), &[0; 4096], &[0; 4096], &[], ms(0)).err(),
        Some(Error::NoValidSuperblock)
    );
}

#[test]
fn inconsistent_format_can_never_stand() {
    let layout = Layout::new(DISK, 65536).unwrap();
    let mut d =
        DataNode::format_with_layout(cfg(NodeId::A), layout, InitialData::Inconsistent, ms(0))
            .unwrap();
    for t in 0..2000 {
        d.tick(ms(t));
    }
    let acts: Vec<Action> = d.drain_actions().collect();
    assert!(
        sent(&acts)
            .iter()
            .all(|(_, dg)| !matches!(dg.message, Message::VoteRequest { .. }))
    );
    assert_eq!(d.promote(ms(2000)), Err(CommandError::NotUpToDate));
}

#[test]
fn trio_elects_a_persists_before_replying_and_prints_role_lines() {
    let mut t = Trio::new();
    t.step(400);
    assert_eq!(t.a.role(), Role::Primary, "{:?}", t.log);
    assert_eq!(t.b.role(), Role::Secondary);
    assert_eq!(t.a.epoch(), 1);
    assert_eq!(t.w.epoch(), 1);
    assert_eq!(t.a.ana_state(), AnaState::Optimized);
    assert_eq!(t.b.ana_state(), AnaState::Inaccessible);
    assert!(
        t.log
            .iter()
            .any(|l| l == "a: tandem: role primary epoch 1 reason no-primary"),
        "{:?}",
        t.log
    );
    assert!(
        t.log
            .iter()
            .any(|l| l == "witness: tandem: role witness epoch 0 reason boot")
    );
    let h: Vec<String> = t.a.history().map(|c| c.to_string()).collect();
    assert_eq!(
        h.first().unwrap(),
        "tandem: role secondary epoch 0 reason boot"
    );
    let st = t.a.status(ms(t.now));
    assert!(st.serving && st.witness_reachable && st.peer_reachable);
    let text = st.to_string();
    assert!(
        text.contains("a role:primary epoch:1 disk:UpToDate ana:optimized"),
        "{text}"
    );
    let mut named = st.clone();
    named.link_names = ["repl", "front", "x", "y"];
    let text = named.to_string();
    assert!(
        text.contains(" repl:") && text.contains(" front:") && !text.contains("link0"),
        "{text}"
    );
}

#[test]
fn primary_that_loses_its_majority_fences_itself_and_fails_pending_io() {
    let mut t = Trio::new();
    t.step(400);
    let now = ms(t.now);
    t.a.host_write(now, 1, 0, 4096, false).unwrap();
    t.a.host_read(now, 2, 8192, 4096).unwrap();
    let acts: Vec<Action> = t.a.drain_actions().collect();
    // The bitmap bit is persisted before the local write is issued.
    assert!(
        !acts
            .iter()
            .any(|a| matches!(a, Action::SubmitLocalWrite { .. }))
    );
    let generation = acts
        .iter()
        .find_map(|a| match a {
            Action::PersistBitmap { generation, .. } => Some(*generation),
            _ => None,
        })
        .unwrap();
    t.a.on_bitmap_persisted(now, generation, true);
    let acts: Vec<Action> = t.a.drain_actions().collect();
    assert!(
        acts.iter()
            .any(|a| matches!(a, Action::SubmitLocalWrite { id: 1 }))
    );
    // Another write to the same region needs no persist: its bit is durable.
    t.a.host_write(now, 3, 16384, 4096, false).unwrap();
    let acts: Vec<Action> = t.a.drain_actions().collect();
    assert!(acts.contains(&Action::SubmitLocalWrite { id: 3 }));
    assert!(
        !acts
            .iter()
            .any(|a| matches!(a, Action::PersistBitmap { .. }))
    );
    // Nobody answers any more: the lease runs out on A's own clock.
    let mut fenced_at = None;
    for step in 1..200 {
        let now = ms(t.now + step);
        t.a.tick(now);
        let acts: Vec<Action> = t.a.drain_actions().collect();
        if acts
            .iter()
            .any(|a| matches!(a, Action::RoleChanged(c) if c.role == Role::Fenced))
        {
            fenced_at = Some(step);
            for id in [1, 3] {
                assert!(acts.contains(&Action::CompleteWrite {
                    id,
                    result: IoResult::PathError
                }));
            }
            assert!(acts.contains(&Action::CompleteRead {
                id: 2,
                result: IoResult::PathError
            }));
            assert!(acts.contains(&Action::AnaChanged(AnaState::Inaccessible)));
            break;
        }
    }
    let f = fenced_at.expect("fenced");
    assert!(f <= 80, "fenced {f}ms after the last grant, lease is 80ms");
    assert_eq!(
        t.a.host_write(ms(t.now + f), 3, 0, 4096, false),
        Err(HostIoError::NotServing(AnaState::Inaccessible))
    );
}

#[test]
fn host_io_is_refused_when_not_serving_or_out_of_range() {
    let mut t = Trio::new();
    assert_eq!(
        t.b.host_read(ms(1), 1, 0, 4096),
        Err(HostIoError::NotServing(AnaState::Inaccessible))
    );
    t.step(400);
    let n = ms(t.now);
    let size = t.a.data_bytes();
    assert_eq!(
        t.a.host_write(n, 1, size - 4096, 8192, false),
        Err(HostIoError::OutOfRange)
    );
    assert_eq!(
        t.a.host_read(n, 1, u64::MAX - 10, 4096),
        Err(HostIoError::OutOfRange)
    );
    assert_eq!(t.a.host_read(n, 1, 0, 0), Err(HostIoError::OutOfRange));
}

#[test]
fn reads_wait_for_a_lease_round_started_after_they_arrived() {
    let mut t = Trio::new();
    t.step(400);
    let now = ms(t.now);
    t.a.host_read(now, 9, 0, 4096).unwrap();
    let acts: Vec<Action> = t.a.drain_actions().collect();
    let round = sent(&acts)
        .into_iter()
        .find_map(|(_, dg)| match dg.message {
            Message::LeaseRequest { round, .. } => Some(round),
            _ => None,
        })
        .expect("a read starts a round");
    t.a.on_local_read_done(now, 9, true);
    let acts: Vec<Action> = t.a.drain_actions().collect();
    assert!(
        !acts
            .iter()
            .any(|a| matches!(a, Action::CompleteRead { .. })),
        "completed before confirmation"
    );
    // A grant for an older round does not confirm it.
    let epoch = t.a.promised_epoch();
    let old = datagram(
        NodeId::Witness,
        epoch,
        Message::LeaseReply {
            round: round - 1,
            granted: true,
            refusal: Refusal::None,
        },
    );
    t.a.on_datagram(now, LinkId(0), &old);
    assert!(
        !t.a.drain_actions()
            .any(|a| matches!(a, Action::CompleteRead { .. }))
    );
    let grant = datagram(
        NodeId::Witness,
        epoch,
        Message::LeaseReply {
            round,
            granted: true,
            refusal: Refusal::None,
        },
    );
    t.a.on_datagram(now, LinkId(1), &grant);
    assert!(t.a.drain_actions().any(|a| a
        == Action::CompleteRead {
            id: 9,
            result: IoResult::Ok
        }));
}

/// What a peer formatted together with the node under test says of its
/// data in its Hello.
fn in_sync_data() -> Option<HelloData> {
    Some(HelloData {
        pair_id: PAIR,
        generations: Generations::initial(PAIR),
        new_generation: 1,
        flags: 0,
        agreed_bytes: None,
    })
}

/// Elects A in a Trio, connects B's replication stream and gives it A's
/// Hello, as the primary would: B then takes replication from A.
fn secondary_b_hears_primary_a(t: &mut Trio) -> (Instant, EpochRecord) {
    t.step(400);
    let now = ms(t.now);
    let b = &mut t.b;
    b.on_stream_connected(now);
    b.drain_actions().for_each(drop);
    let rec = b.record();
    let hello = Frame {
        sender: NodeId::A,
        epoch: rec.epoch,
        seq: 0,
        body: Body::Hello(Hello {
            role: Role::Primary,
            data_state: DataState::UpToDate,
            record: rec,
            region_size: 65536,
            region_count: b.layout().region_count,
            data_bytes: b.data_bytes(),
            features: feature::GENERATIONS,
            data: in_sync_data(),
        }),
    };
    b.on_stream_bytes(now, &hello.emit());
    (now, rec)
}

#[test]
fn secondary_refuses_replication_from_a_lower_epoch_and_applies_the_current_one() {
    let mut t = Trio::new();
    let (now, rec) = secondary_b_hears_primary_a(&mut t);
    let b = &mut t.b;
    let stale = Frame {
        sender: NodeId::A,
        epoch: rec.epoch - 1,
        seq: 5,
        body: Body::Write {
            offset: 0,
            data: &[1; 512],
            force_unit_access: false,
        },
    };
    b.on_stream_bytes(now, &stale.emit());
    let acts: Vec<Action> = b.drain_actions().collect();
    let ack = acts.iter().find_map(|a| match a {
        Action::SendStream { bytes } => Frame::parse(bytes).ok().map(|f| (f.seq, f.body.clone())),
        _ => None,
    });
    assert_eq!(
        ack,
        Some((
            5,
            Body::WriteAck {
                status: AckStatus::Fenced
            }
        ))
    );
    assert!(
        !acts
            .iter()
            .any(|a| matches!(a, Action::ApplyReplicatedWrite { .. }))
    );
    assert_eq!(b.counters().fenced_writes_refused, 1);
    let good = Frame {
        sender: NodeId::A,
        epoch: rec.epoch,
        seq: 6,
        body: Body::Write {
            offset: 4096,
            data: &[2; 512],
            force_unit_access: false,
        },
    };
    b.on_stream_bytes(now, &good.emit());
    let acts: Vec<Action> = b.drain_actions().collect();
    assert!(acts.contains(&Action::ApplyReplicatedWrite {
        seq: 6,
        offset: 4096,
        data: vec![2; 512],
        force_unit_access: false,
    }));
    assert!(
        !acts.iter().any(|a| matches!(a, Action::SendStream { .. })),
        "no ack before the disk write"
    );
    b.on_replicated_write_done(now, 6, 4096, true);
    let acts: Vec<Action> = b.drain_actions().collect();
    let ack = acts.iter().find_map(|a| match a {
        Action::SendStream { bytes } => Frame::parse(bytes).ok().map(|f| (f.seq, f.body.clone())),
        _ => None,
    });
    assert_eq!(
        ack,
        Some((
            6,
            Body::WriteAck {
                status: AckStatus::Ok
            }
        ))
    );
    // An overlapping write waits for the one in flight (disk order = stream order).
    let w1 = Frame {
        sender: NodeId::A,
        epoch: rec.epoch,
        seq: 7,
        body: Body::Write {
            offset: 0,
            data: &[3; 4096],
            force_unit_access: false,
        },
    };
    let w2 = Frame {
        sender: NodeId::A,
        epoch: rec.epoch,
        seq: 8,
        body: Body::Write {
            offset: 2048,
            data: &[4; 4096],
            force_unit_access: false,
        },
    };
    b.on_stream_bytes(now, &[w1.emit(), w2.emit()].concat());
    let applied: Vec<u64> = b
        .drain_actions()
        .filter_map(|a| match a {
            Action::ApplyReplicatedWrite { seq, .. } => Some(seq),
            _ => None,
        })
        .collect();
    assert_eq!(applied, vec![7]);
    b.on_replicated_write_done(now, 7, 0, true);
    let applied: Vec<u64> = b
        .drain_actions()
        .filter_map(|a| match a {
            Action::ApplyReplicatedWrite { seq, .. } => Some(seq),
            _ => None,
        })
        .collect();
    assert_eq!(applied, vec![8]);
}

#[test]
fn garbage_on_any_input_never_panics() {
    let mut d = fresh(NodeId::A);
    let mut x = 0x9e37_79b9u64;
    for len in 0..300 {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        d.on_datagram(ms(1), LinkId((len % 6) as u8), &bytes);
    }
    assert_eq!(d.counters().bad_datagrams, 300);
    d.on_stream_connected(ms(1));
    d.drain_actions().for_each(drop);
    d.on_stream_bytes(ms(1), &[0xffu8; 64]);
    assert!(d.drain_actions().any(|a| a == Action::CloseStream));
    // A datagram claiming to be from ourselves is refused too.
    d.on_datagram(
        ms(2),
        LinkId(0),
        &datagram(NodeId::A, 1, Message::SwitchoverRequest),
    );
    assert_eq!(d.counters().bad_datagrams, 301);
}

#[test]
fn commands_refuse_what_would_lose_availability() {
    let mut t = Trio::new();
    assert_eq!(t.a.demote(ms(0)), Err(CommandError::NotPrimary));
    t.step(400);
    let now = ms(t.now);
    // No replication stream in this harness: a switchover would stall.
    assert_eq!(t.a.demote(now), Err(CommandError::PeerNotReady));
    assert_eq!(t.a.promote(now), Err(CommandError::AlreadyPrimary));
    t.b.fence(now);
    assert_eq!(t.b.role(), Role::Fenced);
    assert_eq!(t.b.promote(now), Err(CommandError::AdminFenced));
    let acts: Vec<Action> = t.b.drain_actions().collect();
    let mut meta = Default::default();
    apply_metadata(&mut meta, &acts);
    // The operator fence survives a restart (only the newest superblock
    // slot was rewritten here; the other still holds the formatted state).
    let l = Layout::new(DISK, 65536).unwrap();
    let newest = [0u64, 1]
        .iter()
        .filter_map(|s| {
            meta.get(&l.superblock_offset(*s))
                .and_then(|b| Superblock::parse(b).ok())
        })
        .max_by_key(|s| s.sequence)
        .unwrap();
    assert!(newest.admin_fenced);
    t.b.unfence(now);
    assert_eq!(t.b.role(), Role::Secondary);
}

fn ask(candidate: NodeId, epoch: u64, record: EpochRecord) -> VoteAsk {
    VoteAsk {
        candidate,
        epoch,
        outdated: None,
        data_state: DataState::UpToDate,
        reason: ElectionReason::Failover,
        record,
    }
}

fn own() -> OwnView {
    OwnView {
        data_state: DataState::UpToDate,
        serving: false,
        resynced: false,
        accepts_outdate: false,
        handed_over_to: None,
    }
}

#[test]
fn every_vote_refusal() {
    let h = Duration::from_millis(100);
    let rec1 = EpochRecord {
        epoch: 1,
        primary: Some(NodeId::A),
        outdated: None,
    };
    let mut v = Voter::new(NodeId::B, 3, None, None, rec1, ms(0), h);
    let now = ms(200);
    // Granted: fresh epoch, eligible candidate, no promise outstanding.
    assert_eq!(
        v.decide_vote(now, h, &ask(NodeId::A, 4, rec1), Some(own())),
        Ok(())
    );
    assert_eq!(
        v.decide_vote(now, h, &ask(NodeId::A, 2, rec1), Some(own())),
        Err(Refusal::StaleEpoch)
    );
    let mut not_utd = ask(NodeId::A, 4, rec1);
    not_utd.data_state = DataState::Outdated;
    assert_eq!(
        v.decide_vote(now, h, &not_utd, Some(own())),
        Err(Refusal::NotEligible)
    );
    let old = EpochRecord {
        epoch: 0,
        primary: None,
        outdated: None,
    };
    assert_eq!(
        v.decide_vote(now, h, &ask(NodeId::A, 4, old), Some(own())),
        Err(Refusal::StaleRecord)
    );
    let mut outdating_me = ask(NodeId::A, 4, rec1);
    outdating_me.outdated = Some(NodeId::B);
    assert_eq!(
        v.decide_vote(now, h, &outdating_me, Some(own())),
        Err(Refusal::NotEligible)
    );
    let serving = OwnView {
        serving: true,
        ..own()
    };
    assert_eq!(
        v.decide_vote(now, h, &ask(NodeId::A, 4, rec1), Some(serving)),
        Err(Refusal::ResponderIsPrimary)
    );
    // Before the restart horizon, and while a granted lease may run.
    assert_eq!(
        v.decide_vote(ms(50), h, &ask(NodeId::A, 4, rec1), Some(own())),
        Err(Refusal::LeaseOutstanding)
    );
    v.promise = Some((NodeId::Witness, ms(190)));
    assert_eq!(
        v.decide_vote(now, h, &ask(NodeId::A, 4, rec1), Some(own())),
        Err(Refusal::LeaseOutstanding)
    );
    let handed = OwnView {
        handed_over_to: Some(NodeId::A),
        ..own()
    };
    assert_eq!(
        v.decide_vote(now, h, &ask(NodeId::A, 4, rec1), Some(handed)),
        Ok(())
    );
    v.promise = None;
    // One vote per epoch.
    v.grant_vote(now, &ask(NodeId::A, 4, rec1));
    assert_eq!((v.epoch, v.voted_for), (4, Some(NodeId::A)));
    let mut other_proposal = ask(NodeId::A, 4, rec1);
    other_proposal.outdated = Some(NodeId::Witness);
    assert_eq!(
        v.decide_vote(now, h, &other_proposal, Some(own())),
        Err(Refusal::AlreadyVoted)
    );
    // A peer that is not UpToDate only accepts a recovery it completed.
    let mut w = Voter::new(NodeId::B, 3, None, None, rec1, ms(0), h);
    let behind = OwnView {
        data_state: DataState::Inconsistent,
        ..own()
    };
    let mut recover = ask(NodeId::A, 4, rec1);
    recover.outdated = None;
    recover.reason = ElectionReason::PeerRecovered;
    assert_eq!(
        w.decide_vote(now, h, &recover, Some(behind)),
        Err(Refusal::NotEligible)
    );
    let done = OwnView {
        resynced: true,
        ..behind
    };
    assert_eq!(w.decide_vote(now, h, &recover, Some(done)), Ok(()));
    w.grant_vote(now, &recover);
}

#[test]
fn witness_votes_only_knowing_the_candidates_peer() {
    let h = Duration::from_millis(100);
    let rec1 = EpochRecord {
        epoch: 1,
        primary: Some(NodeId::A),
        outdated: None,
    };
    let mut w = Voter::new(NodeId::Witness, 1, None, None, rec1, ms(0), h);
    let now = ms(500);
    assert_eq!(
        w.decide_vote(now, h, &ask(NodeId::B, 2, rec1), None),
        Err(Refusal::PeerStateUnknown)
    );
    // A's heartbeat (sent after the witness started) shows a pending
    // proposal that outdates B: B is not eligible.
    let mut hb_a = hb(Role::Primary, rec1, 0);
    hb_a.voted_for = Some(NodeId::A);
    hb_a.vote_outdated = Some(NodeId::B);
    w.knowledge[0].heartbeat = Some(hb_a);
    w.knowledge[0].epoch = 2;
    assert_eq!(
        w.decide_vote(now, h, &ask(NodeId::B, 3, rec1), None),
        Err(Refusal::NotEligible)
    );
    // A voted for itself in epoch 2: B cannot also win epoch 2.
    w.knowledge[0].heartbeat = Some(hb(Role::Primary, rec1, 0));
    assert_eq!(
        w.decide_vote(now, h, &ask(NodeId::B, 0, rec1), None),
        Err(Refusal::StaleEpoch)
    );
    w.knowledge[0].epoch = 3;
    assert_eq!(
        w.decide_vote(now, h, &ask(NodeId::B, 2, rec1), None),
        Err(Refusal::AlreadyVoted)
    );
    // A committed a newer record that B never saw.
    let rec2 = EpochRecord {
        epoch: 2,
        primary: Some(NodeId::A),
        outdated: None,
    };
    w.knowledge[0].heartbeat = Some(hb(Role::Primary, rec2, 0));
    w.knowledge[0].epoch = 2;
    assert_eq!(
        w.decide_vote(now, h, &ask(NodeId::B, 4, rec1), None),
        Err(Refusal::StaleRecord)
    );
    w.knowledge[0].heartbeat = Some(hb(Role::Primary, rec1, 0));
    w.knowledge[0].epoch = 1;
    assert_eq!(
        w.decide_vote(now, h, &ask(NodeId::B, 2, rec1), None),
        Ok(())
    );
    // Only the peer itself vouches for a recovery.
    let mut recover = ask(NodeId::A, 2, rec1);
    recover.outdated = None;
    recover.reason = ElectionReason::PeerRecovered;
    w.knowledge[1].heartbeat = Some(hb(Role::Secondary, rec1, 0));
    assert_eq!(
        w.decide_vote(now, h, &recover, None),
        Err(Refusal::NotEligible)
    );
}

#[test]
fn every_lease_refusal() {
    let h = Duration::from_millis(100);
    let rec2 = EpochRecord {
        epoch: 2,
        primary: Some(NodeId::A),
        outdated: None,
    };
    let mut v = Voter::new(NodeId::Witness, 3, None, None, rec2, ms(0), h);
    assert_eq!(
        v.decide_lease(NodeId::A, 3, &rec2, true, false),
        Err(Refusal::PeerStateUnknown)
    );
    v.knowledge[1].heartbeat = Some(hb(Role::Secondary, rec2, 0));
    assert_eq!(v.decide_lease(NodeId::A, 3, &rec2, true, false), Ok(()));
    assert_eq!(
        v.decide_lease(NodeId::A, 2, &rec2, true, false),
        Err(Refusal::StaleEpoch)
    );
    let rec1 = EpochRecord {
        epoch: 1,
        primary: Some(NodeId::A),
        outdated: None,
    };
    assert_eq!(
        v.decide_lease(NodeId::A, 3, &rec1, true, false),
        Err(Refusal::StaleRecord)
    );
    assert_eq!(
        v.decide_lease(NodeId::B, 3, &rec2, true, false),
        Err(Refusal::NotPrimary)
    );
    v.voted_for = Some(NodeId::B);
    assert_eq!(
        v.decide_lease(NodeId::A, 3, &rec2, true, false),
        Err(Refusal::AlreadyVoted)
    );
    // A data node's own abandoned candidacy does not block the primary; a
    // running one does.
    let b = Voter::new(NodeId::B, 3, Some(NodeId::B), None, rec2, ms(0), h);
    assert_eq!(b.decide_lease(NodeId::A, 3, &rec2, false, false), Ok(()));
    assert_eq!(
        b.decide_lease(NodeId::A, 3, &rec2, false, true),
        Err(Refusal::AlreadyVoted)
    );
}

#[test]
fn witness_ignores_heartbeats_sent_before_it_started() {
    let mut wc = WitnessConfig::new(555);
    wc.timing = cfg(NodeId::A).timing;
    let mut w = Witness::new(wc, ms(0)).unwrap();
    let rec = EpochRecord {
        epoch: 1,
        primary: Some(NodeId::A),
        outdated: None,
    };
    let mut old = hb(Role::Primary, rec, 0);
    old.echo = 554;
    w.on_datagram(
        ms(1),
        LinkId(0),
        &datagram(NodeId::A, 1, Message::Heartbeat(old)),
    );
    w.on_datagram(
        ms(1),
        LinkId(0),
        &datagram(
            NodeId::B,
            1,
            Message::Heartbeat(hb(Role::Secondary, rec, 0)),
        ),
    );
    assert!(!w.status(ms(500)).settled);
    let mut fresh = hb(Role::Primary, rec, 0);
    fresh.echo = 555;
    let mut fresh_b = hb(Role::Secondary, rec, 0);
    fresh_b.echo = 555;
    w.on_datagram(
        ms(2),
        LinkId(1),
        &datagram(NodeId::A, 1, Message::Heartbeat(fresh)),
    );
    w.on_datagram(
        ms(2),
        LinkId(1),
        &datagram(NodeId::B, 1, Message::Heartbeat(fresh_b)),
    );
    assert!(w.status(ms(500)).settled);
    assert_eq!(w.epoch(), 1);
    let text = w.status(ms(500)).to_string();
    assert!(
        text.starts_with("witness role:witness epoch:1 primary:a settled:true"),
        "{text}"
    );
    assert!(
        text.contains("  a reachable:false link0:499ms link1:498ms"),
        "{text}"
    );
    // Lease granted to the primary of the record, on the link it asked.
    w.drain_actions().for_each(drop);
    w.on_datagram(
        ms(3),
        LinkId(1),
        &datagram(
            NodeId::A,
            1,
            Message::LeaseRequest {
                round: 4,
                record: rec,
            },
        ),
    );
    let acts: Vec<Action> = w.drain_actions().collect();
    assert_eq!(acts.len(), 1);
    match &acts[0] {
        Action::SendDatagram {
            to: NodeId::A,
            link: LinkId(1),
            bytes,
        } => {
            assert_eq!(
                Datagram::parse(bytes).unwrap().message,
                Message::LeaseReply {
                    round: 4,
                    granted: true,
                    refusal: Refusal::None
                }
            );
        }
        other => panic!("{other:?}"),
    }
}

/// Valid but adversarial messages with extreme field values, in every role:
/// the state machines must never panic (overflow, out-of-range index).
#[test]
fn adversarial_valid_messages_never_panic() {
    struct R(u64);
    impl R {
        fn n(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn pick<T: Copy>(&mut self, v: &[T]) -> T {
            v[(self.n() % v.len() as u64) as usize]
        }
    }
    let mut r = R(0x1234_5678);
    let epochs = [0, 1, 2, 3, u64::MAX - 1, u64::MAX];
    let nodes = [
        None,
        Some(NodeId::A),
        Some(NodeId::B),
        Some(NodeId::Witness),
    ];
    let states = [
        DataState::UpToDate,
        DataState::Outdated,
        DataState::Inconsistent,
    ];
    let reasons = [
        ElectionReason::NoPrimary,
        ElectionReason::Failover,
        ElectionReason::Switchover,
        ElectionReason::OutdatePeer,
        ElectionReason::PeerRecovered,
    ];
    for round in 0..40u32 {
        let mut t = Trio::new();
        t.step(if round.is_multiple_of(2) { 400 } else { 5 });
        for i in 0..300u64 {
            let now = ms(t.now + i);
            let rec = EpochRecord {
                epoch: r.pick(&epochs),
                primary: r.pick(&nodes),
                outdated: r.pick(&nodes),
            };
            let sender = r.pick(&[NodeId::A, NodeId::B, NodeId::Witness]);
            let message = match r.n() % 7 {
                0 => Message::Heartbeat(Heartbeat {
                    role: r.pick(&[Role::Primary, Role::Secondary, Role::Fenced, Role::Witness]),
                    data_state: r.pick(&states),
                    peer_state: r.pick(&states),
                    flags: r.n() as u8,
                    voted_for: r.pick(&nodes),
                    vote_outdated: r.pick(&nodes),
                    record: rec,
                    incarnation: r.n(),
                    echo: [0, 999, 12345][(r.n() % 3) as usize],
                    host_path: [
                        None,
                        Some(HostPathReport {
                            can_serve: r.n() % 2 == 0,
                            nic_up: r.n() % 2 == 0,
                            hears_peer: r.n() % 2 == 0,
                            hears_witness: r.n() % 2 == 0,
                        }),
                    ][(r.n() % 2) as usize],
                }),
                1 => Message::LeaseRequest {
                    round: r.pick(&epochs),
                    record: rec,
                },
                2 => Message::LeaseReply {
                    round: r.n() % 40,
                    granted: r.n().is_multiple_of(2),
                    refusal: Refusal::NotPrimary,
                },
                3 => Message::VoteRequest {
                    outdated: r.pick(&nodes),
                    data_state: r.pick(&states),
                    reason: r.pick(&reasons),
                    record: rec,
                },
                4 => Message::VoteReply {
                    granted: r.n().is_multiple_of(2),
                    refusal: Refusal::None,
                    record: rec,
                },
                5 => Message::Handover { record: rec },
                _ => Message::SwitchoverRequest,
            };
            let bytes = datagram(sender, r.pick(&epochs), message);
            let link = LinkId((r.n() % 4) as u8);
            t.a.on_datagram(now, link, &bytes);
            t.b.on_datagram(now, link, &bytes);
            t.w.on_datagram(now, link, &bytes);
            if i.is_multiple_of(7) {
                t.a.tick(now);
                t.b.tick(now);
                t.w.tick(now);
                let _ = t.a.host_write(now, i, (r.n() % 64) * 4096, 4096, false);
                let _ = t.a.promote(now);
                let _ = t.b.demote(now);
            }
            t.a.drain_actions().for_each(drop);
            t.b.drain_actions().for_each(drop);
            t.w.drain_actions().for_each(drop);
        }
        // Stream frames with extreme values into a connected secondary.
        let now = ms(t.now + 400);
        t.b.on_stream_connected(now);
        for _ in 0..200 {
            let epoch = r.pick(&epochs);
            let off = r.pick(&[0, 4096, u64::MAX - 4095, u64::MAX, t.b.data_bytes() - 512]);
            let data = [7u8; 512];
            let body = match r.n() % 9 {
                0 => Body::Config(EpochRecord {
                    epoch,
                    primary: Some(NodeId::A),
                    outdated: r.pick(&nodes),
                }),
                1 => Body::Write {
                    offset: off,
                    data: &data,
                    force_unit_access: false,
                },
                2 => Body::WriteAck {
                    status: AckStatus::Fenced,
                },
                3 => Body::Bitmap {
                    first_region: r.pick(&epochs),
                    bit_count: 8,
                    bits: &[0xff],
                },
                4 => Body::BitmapDone,
                5 => Body::ResyncData {
                    offset: off,
                    data: &data,
                },
                6 => Body::ResyncAck {
                    offset: off,
                    len: 512,
                    status: AckStatus::Ok,
                },
                7 => Body::ResyncDone { current: 0 },
                _ => Body::Hello(Hello {
                    role: Role::Primary,
                    data_state: r.pick(&states),
                    record: EpochRecord {
                        epoch,
                        primary: Some(NodeId::A),
                        outdated: None,
                    },
                    region_size: 65536,
                    region_count: t.b.layout().region_count,
                    data_bytes: t.b.data_bytes(),
                    features: r.pick(&[0, 1, 0xff]),
                    data: in_sync_data(),
                }),
            };
            let f = Frame {
                sender: NodeId::A,
                epoch,
                seq: r.n(),
                body,
            };
            t.b.on_stream_bytes(now, &f.emit());
            t.a.on_stream_connected(now);
            t.a.on_stream_bytes(
                now,
                &Frame {
                    sender: NodeId::B,
                    epoch,
                    seq: r.n(),
                    body: f.body.clone(),
                }
                .emit(),
            );
            if r.n().is_multiple_of(5) {
                t.b.on_stream_connected(now);
            }
            t.a.drain_actions().for_each(drop);
            t.b.drain_actions().for_each(drop);
        }
        t.b.tick(ms(t.now + 10_000));
        t.a.tick(ms(t.now + 10_000));
        let _ = t.a.status(ms(t.now + 10_000)).to_string();
        let _ = t.b.status(ms(t.now + 10_000)).to_string();
    }
}

/// The secondary applies a write into its disk's cache unless the host asked
/// for forced unit access, and answers a Flush frame only after its own disk
/// flushed; a Flush from an older epoch is refused.
#[test]
fn secondary_flushes_on_the_primarys_flush_and_honours_forced_unit_access() {
    let mut t = Trio::new();
    let (now, rec) = secondary_b_hears_primary_a(&mut t);
    let b = &mut t.b;
    b.drain_actions().for_each(drop);
    let frame = |seq: u64, epoch: u64, body: Body<'static>| {
        Frame {
            sender: NodeId::A,
            epoch,
            seq,
            body,
        }
        .emit()
    };
    let writes = [
        frame(
            1,
            rec.epoch,
            Body::Write {
                offset: 0,
                data: &[5; 512],
                force_unit_access: false,
            },
        ),
        frame(
            2,
            rec.epoch,
            Body::Write {
                offset: 65536,
                data: &[6; 512],
                force_unit_access: true,
            },
        ),
    ]
    .concat();
    b.on_stream_bytes(now, &writes);
    let fua: Vec<(u64, bool)> = b
        .drain_actions()
        .filter_map(|a| match a {
            Action::ApplyReplicatedWrite {
                seq,
                force_unit_access,
                ..
            } => Some((seq, force_unit_access)),
            _ => None,
        })
        .collect();
    assert_eq!(fua, vec![(1, false), (2, true)]);
    b.on_stream_bytes(now, &frame(41, rec.epoch, Body::Flush));
    let acts: Vec<Action> = b.drain_actions().collect();
    let flush = acts
        .iter()
        .find_map(|a| match a {
            Action::FlushDisk { flush } => Some(*flush),
            _ => None,
        })
        .expect("the Flush frame flushes the disk");
    assert!(
        !acts.iter().any(|a| matches!(a, Action::SendStream { .. })),
        "no flush ack before the disk flushed"
    );
    b.on_disk_flush_done(now, flush, true);
    let acks: Vec<(u64, Body<'static>)> = b
        .drain_actions()
        .filter_map(|a| match a {
            Action::SendStream { bytes } => Frame::parse(&bytes)
                .ok()
                .map(|f| (f.seq, f.body.clone()))
                .map(|(s, body)| (s, body_static(body))),
            _ => None,
        })
        .collect();
    assert_eq!(
        acks,
        vec![(
            41,
            Body::FlushAck {
                status: AckStatus::Ok
            }
        )]
    );
    // A flush from a deposed primary's epoch: refused, nothing flushed.
    b.on_stream_bytes(now, &frame(42, rec.epoch - 1, Body::Flush));
    let acts: Vec<Action> = b.drain_actions().collect();
    assert!(!acts.iter().any(|a| matches!(a, Action::FlushDisk { .. })));
    assert!(acts.iter().any(|a| matches!(a, Action::SendStream { bytes }
        if Frame::parse(bytes).is_ok_and(|f| f.seq == 42
            && f.body == Body::FlushAck { status: AckStatus::Fenced }))));
}

fn body_static(body: Body<'_>) -> Body<'static> {
    match body {
        Body::FlushAck { status } => Body::FlushAck { status },
        Body::WriteAck { status } => Body::WriteAck { status },
        Body::Flush => Body::Flush,
        other => panic!("unexpected frame {other:?}"),
    }
}

/// A host flush on the primary completes only when the peer has flushed too;
/// with the peer gone it waits until the peer is recorded Outdated.
/// A switchover flushes both disks while the primary still serves, and
/// only then stops taking I/O, drains, flushes again (what was written
/// meanwhile) and hands over. A pre-flush that does not finish within the
/// failure timeout does not hold the switchover back.
#[test]
fn switchover_flushes_both_disks_before_it_stops_serving() {
    for preflush_completes in [true, false] {
        let mut t = Trio::with_stream();
        t.step(400);
        assert_eq!(
            (t.a.role(), t.b.role()),
            (Role::Primary, Role::Secondary),
            "{:?}",
            t.log
        );
        t.disk_flushes.clear();
        t.a.demote(ms(t.now)).unwrap();
        assert_eq!(
            t.a.demote(ms(t.now)),
            Err(CommandError::Busy),
            "one switchover at a time"
        );
        t.step(t.now + 5);
        let (pre_a, pre_b) = (t.disk_flush_of(NodeId::A), t.disk_flush_of(NodeId::B));
        assert!(
            t.a.is_serving(ms(t.now)),
            "host I/O flows during the pre-flush"
        );
        t.disk_flushes.clear();
        if preflush_completes {
            t.a.on_disk_flush_done(ms(t.now), pre_a, true);
            t.b.on_disk_flush_done(ms(t.now), pre_b, true);
            t.step(t.now + 5);
        } else {
            t.step(t.now + 90);
            assert!(
                t.a.is_serving(ms(t.now)),
                "still within the failure timeout"
            );
            t.step(t.now + 15);
        }
        assert!(!t.a.is_serving(ms(t.now)), "drained for the handover");
        assert_eq!(
            t.a.role(),
            Role::Primary,
            "the handover waits for its own flush"
        );
        let (last_a, last_b) = (t.disk_flush_of(NodeId::A), t.disk_flush_of(NodeId::B));
        assert!(
            last_a != pre_a && last_b != pre_b,
            "a second flush of both disks"
        );
        t.a.on_disk_flush_done(ms(t.now), last_a, true);
        t.b.on_disk_flush_done(ms(t.now), last_b, true);
        t.step(t.now + 50);
        assert_eq!(
            (t.a.role(), t.b.role()),
            (Role::Secondary, Role::Primary),
            "{:?}",
            t.log
        );
    }
}

/// The actions of a host write on `node`, once the bitmap persist its
/// first write in an activity extent needs has completed.
fn admitted(node: &mut DataNode, now: Instant) -> Vec<Action> {
    let mut acts: Vec<Action> = node.drain_actions().collect();
    while let Some(generation) = acts.iter().find_map(|a| match a {
        Action::PersistBitmap { generation, .. } => Some(*generation),
        _ => None,
    }) {
        acts.retain(|a| !matches!(a, Action::PersistBitmap { .. }));
        node.on_bitmap_persisted(now, generation, true);
        acts.extend(node.drain_actions());
    }
    acts
}

/// The stream frames among `actions`.
fn stream_frames(actions: &[Action]) -> Vec<Frame<'static>> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SendStream { bytes } => Frame::parse(bytes).ok().and_then(|f| {
                let body = match f.body {
                    Body::WriteZeroes { offset, len } => Body::WriteZeroes { offset, len },
                    Body::Deallocate { offset, len } => Body::Deallocate { offset, len },
                    Body::WriteAck { status } => Body::WriteAck { status },
                    // Hello, Config, bitmaps: not what these tests look at.
                    _ => return None,
                };
                Some(Frame {
                    sender: f.sender,
                    epoch: f.epoch,
                    seq: f.seq,
                    body,
                })
            }),
            _ => None,
        })
        .collect()
}

#[test]
fn write_zeroes_goes_as_one_frame_to_a_peer_that_announced_it() {
    let mut t = Trio::with_stream();
    t.step(400);
    assert_eq!(t.a.role(), Role::Primary);
    // B's Hello (a node of this version) announced WriteZeroes.
    let now = ms(t.now);
    t.a.host_write_zeroes(now, 7, 1 << 20, 1 << 20).unwrap();
    let acts = admitted(&mut t.a, now);
    assert!(acts.contains(&Action::SubmitLocalWrite { id: 7 }));
    assert!(
        !acts
            .iter()
            .any(|a| matches!(a, Action::ReplicateWrite { .. })),
        "no zero bytes on the stream"
    );
    let frames = stream_frames(&acts);
    let zeroes = frames
        .iter()
        .find(|f| matches!(f.body, Body::WriteZeroes { .. }))
        .expect("a WriteZeroes frame");
    assert_eq!(
        zeroes.body,
        Body::WriteZeroes {
            offset: 1 << 20,
            len: 1 << 20
        }
    );
    // B zeroes its disk and acknowledges like a write.
    t.b.on_stream_bytes(
        now,
        &Frame {
            body: zeroes.body.clone(),
            ..zeroes.clone()
        }
        .emit(),
    );
    let acts: Vec<Action> = t.b.drain_actions().collect();
    assert!(acts.contains(&Action::ApplyReplicatedZeroes {
        seq: zeroes.seq,
        offset: 1 << 20,
        len: 1 << 20
    }));
    assert!(stream_frames(&acts).is_empty(), "no ack before the disk");
    b_done_and_a_completes(&mut t, now, zeroes.seq, 1 << 20, 7);
}

/// B's disk finished replicated write `seq` at `offset`: its WriteAck
/// reaches A, whose local write `id` finishes too, and `id` completes.
fn b_done_and_a_completes(t: &mut Trio, now: Instant, seq: u64, offset: u64, id: u64) {
    t.b.on_replicated_write_done(now, seq, offset, true);
    let acks = stream_frames(&t.b.drain_actions().collect::<Vec<_>>());
    assert_eq!(
        acks.iter()
            .map(|f| (f.seq, f.body.clone()))
            .collect::<Vec<_>>(),
        [(
            seq,
            Body::WriteAck {
                status: AckStatus::Ok
            }
        )]
    );
    t.a.on_stream_bytes(now, &acks[0].emit());
    t.a.on_local_write_done(now, id, true);
    assert!(t.a.drain_actions().any(|a| a
        == Action::CompleteWrite {
            id,
            result: IoResult::Ok
        }));
}

/// B's Hello to A, announcing `features`.
fn hello_from_b(t: &Trio, features: u8) -> Vec<u8> {
    let rec = t.a.record();
    Frame {
        sender: NodeId::B,
        epoch: rec.epoch,
        seq: 0,
        body: Body::Hello(Hello {
            role: Role::Secondary,
            data_state: DataState::UpToDate,
            record: rec,
            region_size: 65536,
            region_count: t.a.layout().region_count,
            data_bytes: t.a.data_bytes(),
            features: features | feature::GENERATIONS,
            data: in_sync_data(),
        }),
    }
    .emit()
}

#[test]
fn deallocate_goes_as_one_frame_to_a_peer_that_announced_it() {
    let mut t = Trio::with_stream();
    t.step(400);
    assert_eq!(t.a.role(), Role::Primary);
    let now = ms(t.now);
    t.a.host_deallocate(now, 9, 65536, 131072).unwrap();
    let acts = admitted(&mut t.a, now);
    assert!(acts.contains(&Action::SubmitLocalWrite { id: 9 }));
    let frames = stream_frames(&acts);
    let frame = frames
        .iter()
        .find(|f| matches!(f.body, Body::Deallocate { .. }))
        .expect("a Deallocate frame");
    assert_eq!(
        frame.body,
        Body::Deallocate {
            offset: 65536,
            len: 131072
        }
    );
    t.b.on_stream_bytes(now, &frame.emit());
    let acts: Vec<Action> = t.b.drain_actions().collect();
    assert!(acts.contains(&Action::ApplyReplicatedDeallocate {
        seq: frame.seq,
        offset: 65536,
        len: 131072
    }));
    b_done_and_a_completes(&mut t, now, frame.seq, 65536, 9);
}

#[test]
fn deallocate_across_a_reconnection_waits_for_the_new_peers_hello_and_ack() {
    let mut t = Trio::with_stream();
    t.step(400);
    assert_eq!(t.a.role(), Role::Primary);
    let now = ms(t.now);
    t.a.host_deallocate(now, 9, 65536, 131072).unwrap();
    let acts = admitted(&mut t.a, now);
    assert!(acts.contains(&Action::SubmitLocalWrite { id: 9 }));
    // The stream breaks and comes back; B's Hello has not arrived yet.
    t.a.on_stream_closed(now);
    t.a.on_stream_connected(now);
    t.a.on_local_write_done(now, 9, true);
    let acts: Vec<Action> = t.a.drain_actions().collect();
    assert!(
        !acts
            .iter()
            .any(|a| matches!(a, Action::CompleteWrite { id: 9, .. })),
        "completed without the peer"
    );
    assert!(
        !stream_frames(&acts)
            .iter()
            .any(|f| matches!(f.body, Body::Deallocate { .. })),
        "sent before the peer said it takes Deallocate"
    );
    let rec = t.a.record();
    t.a.on_stream_bytes(now, &hello_from_b(&t, 3));
    let acts: Vec<Action> = t.a.drain_actions().collect();
    assert!(
        !acts
            .iter()
            .any(|a| matches!(a, Action::CompleteWrite { id: 9, .. }))
    );
    let frame = stream_frames(&acts)
        .into_iter()
        .find(|f| matches!(f.body, Body::Deallocate { .. }))
        .expect("the Deallocate sent again after the Hello");
    let ack = Frame {
        sender: NodeId::B,
        epoch: rec.epoch,
        seq: frame.seq,
        body: Body::WriteAck {
            status: AckStatus::Ok,
        },
    };
    t.a.on_stream_bytes(now, &ack.emit());
    assert!(t.a.drain_actions().any(|a| a
        == Action::CompleteWrite {
            id: 9,
            result: IoResult::Ok
        }));
}

/// A's stream to a B whose Hello announced no features (an older node).
fn primary_a_with_a_featureless_peer() -> (Trio, Instant) {
    let mut t = Trio::new();
    t.step(400);
    assert_eq!(t.a.role(), Role::Primary);
    let now = ms(t.now);
    t.a.on_stream_connected(now);
    t.a.drain_actions().for_each(drop);
    t.a.on_stream_bytes(now, &hello_from_b(&t, 0));
    t.a.drain_actions().for_each(drop);
    (t, now)
}

#[test]
fn deallocate_with_a_peer_that_did_not_announce_it_touches_neither_disk() {
    let (mut t, now) = primary_a_with_a_featureless_peer();
    t.a.host_deallocate(now, 10, 0, 1 << 20).unwrap();
    let acts = admitted(&mut t.a, now);
    assert!(
        !acts.iter().any(|a| matches!(
            a,
            Action::SubmitLocalWrite { .. }
                | Action::ReplicateWrite { .. }
                | Action::SendStream { .. }
        )),
        "nothing to either disk"
    );
    // Both nodes' blocks keep their content: done at once.
    assert!(acts.contains(&Action::CompleteWrite {
        id: 10,
        result: IoResult::Ok
    }));
}

#[test]
fn write_zeroes_goes_as_zero_data_to_a_peer_that_did_not_announce_it() {
    let (mut t, now) = primary_a_with_a_featureless_peer();
    t.a.host_write_zeroes(now, 8, 4096, 8192).unwrap();
    let acts = admitted(&mut t.a, now);
    let prefix = acts
        .iter()
        .find_map(|a| match a {
            Action::ReplicateWrite {
                id: 8,
                frame_prefix,
            } => Some(frame_prefix.clone()),
            _ => None,
        })
        .expect("a Write of zeroes");
    // The kernel appends as many zero bytes as the write is long.
    let mut frame = prefix;
    frame.extend_from_slice(&[0; 8192]);
    assert!(matches!(
        Frame::parse(&frame).unwrap().body,
        Body::Write { offset: 4096, data, .. } if data.len() == 8192
    ));
    assert!(
        !stream_frames(&acts)
            .iter()
            .any(|f| matches!(f.body, Body::WriteZeroes { .. }))
    );
}

#[test]
fn secondary_refuses_write_zeroes_from_a_lower_epoch_or_past_the_end() {
    let mut t = Trio::new();
    let (now, rec) = secondary_b_hears_primary_a(&mut t);
    let b = &mut t.b;
    let end = b.data_bytes();
    for (seq, epoch, offset) in [(3, rec.epoch - 1, 0), (4, rec.epoch, end - 512)] {
        let frame = Frame {
            sender: NodeId::A,
            epoch,
            seq,
            body: Body::WriteZeroes { offset, len: 4096 },
        };
        b.on_stream_bytes(now, &frame.emit());
        let acts: Vec<Action> = b.drain_actions().collect();
        assert!(
            !acts
                .iter()
                .any(|a| matches!(a, Action::ApplyReplicatedZeroes { .. })),
            "{acts:?}"
        );
        assert_eq!(
            stream_frames(&acts)
                .iter()
                .map(|f| (f.seq, f.body.clone()))
                .collect::<Vec<_>>(),
            [(
                seq,
                Body::WriteAck {
                    status: AckStatus::Fenced
                }
            )]
        );
    }
}

#[test]
fn a_peer_piling_up_overlapping_write_zeroes_gets_its_stream_closed() {
    let mut t = Trio::new();
    let (now, rec) = secondary_b_hears_primary_a(&mut t);
    let b = &mut t.b;
    let frame = |seq: u64, body: Body<'static>| {
        Frame {
            sender: NodeId::A,
            epoch: rec.epoch,
            seq,
            body,
        }
        .emit()
    };
    // A write on the disk; everything overlapping it has to wait.
    b.on_stream_bytes(
        now,
        &frame(
            1,
            Body::Write {
                offset: 0,
                data: &[1; 512],
                force_unit_access: false,
            },
        ),
    );
    b.drain_actions().for_each(drop);
    let mut closed_after = None;
    for seq in 2..3000 {
        b.on_stream_bytes(
            now,
            &frame(
                seq,
                Body::WriteZeroes {
                    offset: 0,
                    len: 4096,
                },
            ),
        );
        if b.drain_actions().any(|a| a == Action::CloseStream) {
            closed_after = Some(seq);
            break;
        }
    }
    let closed_after = closed_after.expect("the stream is closed");
    assert!(
        (1000..1100).contains(&closed_after),
        "closed after {closed_after} frames"
    );
}

#[test]
fn host_flush_waits_for_the_peer_or_its_outdating() {
    let mut t = Trio::with_stream();
    t.step(400);
    assert_eq!(t.a.role(), Role::Primary);
    assert_eq!(t.a.record().outdated, None, "{:?}", t.log);
    t.disk_flushes.clear();
    let now = ms(t.now);
    t.a.host_flush(now, 5).unwrap();
    t.step(t.now + 5);
    let mine = t.disk_flush_of(NodeId::A);
    let peers = t.disk_flush_of(NodeId::B);
    t.a.on_disk_flush_done(ms(t.now), mine, true);
    let acts: Vec<Action> = t.a.drain_actions().collect();
    assert!(
        !acts
            .iter()
            .any(|a| matches!(a, Action::CompleteFlush { .. })),
        "the peer has not flushed"
    );
    t.b.on_disk_flush_done(ms(t.now), peers, true);
    let mut done = false;
    for _ in 0..5 {
        // B's FlushAck reaches A within the step.
        let acks: Vec<Vec<u8>> =
            t.b.drain_actions()
                .filter_map(|a| match a {
                    Action::SendStream { bytes } => Some(bytes),
                    _ => None,
                })
                .collect();
        for bytes in acks {
            t.a.on_stream_bytes(ms(t.now), &bytes);
        }
        done |= t.a.drain_actions().any(|a| {
            a == Action::CompleteFlush {
                id: 5,
                result: IoResult::Ok,
            }
        });
    }
    assert!(done, "the flush completes once both disks flushed");

    // B stops answering (its stream is cut): a second flush waits until A
    // records B Outdated, then completes on A's disk alone.
    t.stream = false;
    t.b.on_stream_closed(ms(t.now));
    t.a.on_stream_closed(ms(t.now));
    t.disk_flushes.clear();
    t.a.host_flush(ms(t.now), 6).unwrap();
    t.step(t.now + 1);
    let mine = t.disk_flush_of(NodeId::A);
    t.a.on_disk_flush_done(ms(t.now), mine, true);
    let mut completed = None;
    for step in 1..2_000 {
        let now = ms(t.now + 1);
        t.a.tick(now);
        let acts: Vec<Action> = t.a.drain_actions().collect();
        if let Some(r) = acts.iter().find_map(|a| match a {
            Action::CompleteFlush { id: 6, result } => Some(*result),
            _ => None,
        }) {
            completed = Some((step, r, t.a.record().outdated));
            break;
        }
        // Deliver A's datagrams so that the witness can vote.
        for a in acts {
            if let Action::SendDatagram {
                to: NodeId::Witness,
                link,
                bytes,
            } = a
            {
                t.w.on_datagram(now, link, &bytes);
            }
        }
        let replies: Vec<Action> = t.w.drain_actions().collect();
        for a in replies {
            if let Action::SendDatagram {
                to: NodeId::A,
                link,
                bytes,
            } = a
            {
                t.a.on_datagram(now, link, &bytes);
            }
        }
        t.now += 1;
        t.w.tick(ms(t.now));
    }
    let (_, result, outdated) = completed.expect("the flush completes after the outdating");
    assert_eq!(result, IoResult::Ok);
    assert_eq!(outdated, Some(NodeId::B));
}

/// In sync, a write marks its whole activity extent: another write in the
/// same extent costs no metadata write. With the peer Outdated, marks are
/// exact (they are what the resync copies).
#[test]
fn in_sync_writes_mark_activity_extents_and_degraded_writes_their_regions() {
    let mut t = Trio::with_stream();
    t.step(400);
    assert_eq!(t.a.record().outdated, None, "{:?}", t.log);
    let now = ms(t.now);
    t.a.host_write(now, 1, 0, 4096, false).unwrap();
    let generation =
        t.a.drain_actions()
            .find_map(|a| match a {
                Action::PersistBitmap { generation, .. } => Some(generation),
                _ => None,
            })
            .expect("the first write persists its marks");
    t.a.on_bitmap_persisted(now, generation, true);
    // One 4 MiB extent (this disk holds less than that).
    assert_eq!(t.a.dirty_regions(), t.a.layout().region_count.min(64));
    t.a.host_write(now, 2, 1 << 20, 4096, false).unwrap();
    let acts: Vec<Action> = t.a.drain_actions().collect();
    assert!(acts.contains(&Action::SubmitLocalWrite { id: 2 }));
    assert!(
        !acts
            .iter()
            .any(|a| matches!(a, Action::PersistBitmap { .. }))
    );

    // Without a stream the peer gets recorded Outdated; then exact marks.
    let mut d = Trio::new();
    d.step(400);
    assert_eq!(d.a.record().outdated, Some(NodeId::B));
    let before = d.a.dirty_regions();
    d.a.host_write(ms(d.now), 1, 2 << 20, 4096, false).unwrap();
    assert_eq!(d.a.dirty_regions(), before + 1);
}

/// Primary A with B recorded Outdated (no stream), region 0 written alone,
/// then the stream connected: B is resyncing from A. Returns the time.
fn primary_a_resyncing_region_0(t: &mut Trio) -> Instant {
    t.step(400);
    assert_eq!(t.a.record().outdated, Some(NodeId::B), "{:?}", t.log);
    let now = ms(t.now);
    write_through(t, 1, 0);
    t.stream = true;
    t.a.on_stream_connected(now);
    t.b.on_stream_connected(now);
    t.step(t.now + 5);
    now
}

/// Host write `id` of 4 KiB at `offset` on A, its bitmap made durable and
/// its local write done; returns its replication `seq`, if it was sent.
fn write_through(t: &mut Trio, id: u64, offset: u64) -> Option<u64> {
    let now = ms(t.now);
    t.a.host_write(now, id, offset, 4096, false).unwrap();
    let mut acts: Vec<Action> = t.a.drain_actions().collect();
    if let Some(generation) = acts.iter().find_map(|a| match a {
        Action::PersistBitmap { generation, .. } => Some(*generation),
        _ => None,
    }) {
        t.a.on_bitmap_persisted(now, generation, true);
        acts.extend(t.a.drain_actions());
    }
    let seq = acts.iter().find_map(|a| match a {
        Action::ReplicateWrite {
            id: w,
            frame_prefix,
        } if *w == id => Some(u64::from_be_bytes(frame_prefix[24..32].try_into().unwrap())),
        _ => None,
    });
    t.a.on_local_write_done(now, id, true);
    t.a.drain_actions().for_each(drop);
    seq
}

#[test]
fn a_resync_ack_does_not_clear_a_region_a_refused_write_marked_again() {
    let mut t = Trio::new();
    let now = primary_a_resyncing_region_0(&mut t);
    let resync = t.a.status(now).resync.expect("a resync to B");
    assert_eq!(resync.remaining_regions, 1, "{resync:?}");
    // Region 0's chunk goes on the wire.
    t.a.on_resync_read_done(now, 0, Some(&[7; 65536]));
    t.a.drain_actions().for_each(drop);
    // A write over it, sent after the chunk, refused by the Outdated B.
    let seq = write_through(&mut t, 2, 4096).expect("replicated");
    let b_epoch = t.b.promised_epoch();
    let refusal = Frame {
        sender: NodeId::B,
        epoch: b_epoch,
        seq,
        body: Body::WriteAck {
            status: AckStatus::Fenced,
        },
    };
    t.a.on_stream_bytes(now, &refusal.emit());
    // Then the chunk's acknowledgement: the chunk predates the write.
    let ack = Frame {
        sender: NodeId::B,
        epoch: b_epoch,
        seq: 0,
        body: Body::ResyncAck {
            offset: 0,
            len: 65536,
            status: AckStatus::Ok,
        },
    };
    t.a.on_stream_bytes(now, &ack.emit());
    let resync = t.a.status(now).resync.expect("still resyncing");
    assert_eq!(
        resync.remaining_regions, 1,
        "region 0 must be copied again: B refused a write to it"
    );
    assert!(t.a.dirty_regions() >= 1);
}

#[test]
fn a_clean_cycle_does_not_clear_a_region_a_resync_started_meanwhile_needs() {
    let mut t = Trio::with_stream();
    t.step(400);
    assert_eq!(t.a.role(), Role::Primary, "{:?}", t.log);
    assert_eq!(t.a.record().outdated, None);
    // Settle the resync of the first connection (nothing to copy).
    t.step(600);
    // One write, acknowledged by B: its activity extent stays marked.
    let seq = write_through(&mut t, 1, 0).expect("replicated");
    let ack = Frame {
        sender: NodeId::B,
        epoch: t.b.promised_epoch(),
        seq,
        body: Body::WriteAck {
            status: AckStatus::Ok,
        },
    };
    t.a.on_stream_bytes(ms(t.now), &ack.emit());
    t.a.drain_actions().for_each(drop);
    let marked = t.a.dirty_regions();
    assert!(marked > 1, "{marked}");
    // A clean cycle starts: the untouched marked regions are candidates,
    // both disks are being flushed.
    t.disk_flushes.clear();
    t.step(t.now + 2_100);
    let a_flush = t.disk_flush_of(NodeId::A);
    let b_flush = t.disk_flush_of(NodeId::B);
    // Meanwhile B sends its bitmap again (as after adopting a record that
    // names A primary): a resync of the union starts.
    let now = ms(t.now);
    let done = Frame {
        sender: NodeId::B,
        epoch: t.b.record().epoch,
        seq: 0,
        body: Body::BitmapDone,
    };
    t.a.on_stream_bytes(now, &done.emit());
    assert!(t.a.status(now).resync.is_some(), "a resync started");
    // The cycle's flushes complete.
    t.a.on_disk_flush_done(now, a_flush, true);
    t.b.on_disk_flush_done(now, b_flush, true);
    t.step(t.now + 1);
    assert_eq!(
        t.a.dirty_regions(),
        marked,
        "the clean cycle cleared regions the running resync still has to copy"
    );
}

#[test]
fn a_write_admitted_while_degraded_waits_for_the_peer_once_the_recovery_started() {
    let mut t = Trio::new();
    // Region 0 dirty, B resyncing it (see the helper).
    let now = primary_a_resyncing_region_0(&mut t);
    // W, admitted while B is Outdated and no recovery is under way: it
    // waits for its bitmap persist.
    t.a.host_write(now, 7, 4 * 65536, 4096, false).unwrap();
    let generation =
        t.a.drain_actions()
            .find_map(|a| match a {
                Action::PersistBitmap { generation, .. } => Some(generation),
                _ => None,
            })
            .expect("W's region is marked first");
    // Region 0 copied: the resync is done, the recovery starts.
    t.a.on_resync_read_done(now, 0, Some(&[7; 65536]));
    let ack = Frame {
        sender: NodeId::B,
        epoch: t.b.promised_epoch(),
        seq: 0,
        body: Body::ResyncAck {
            offset: 0,
            len: 65536,
            status: AckStatus::Ok,
        },
    };
    t.a.on_stream_bytes(now, &ack.emit());
    assert!(
        t.a.drain_actions()
            .any(|a| matches!(&a, Action::SendStream { bytes } if bytes[5] == 9)),
        "ResyncDone sent"
    );
    // W's bitmap is durable, W is written here and sent to B.
    t.a.on_bitmap_persisted(now, generation, true);
    t.a.on_local_write_done(now, 7, true);
    let acts: Vec<Action> = t.a.drain_actions().collect();
    assert!(
        !acts
            .iter()
            .any(|a| matches!(a, Action::CompleteWrite { id: 7, .. })),
        "W was acknowledged without B while B is about to be recorded UpToDate: {acts:?}"
    );
}

#[test]
fn a_peer_with_another_disk_size_or_pair_is_refused_at_the_handshake() {
    let hello = |t: &Trio, data_bytes: u64, pair_id: u64| {
        let rec = t.a.record();
        Frame {
            sender: NodeId::B,
            epoch: rec.epoch,
            seq: 0,
            body: Body::Hello(Hello {
                role: Role::Secondary,
                data_state: DataState::UpToDate,
                record: rec,
                region_size: 65536,
                // The same number of regions: only the sizes differ.
                region_count: t.a.layout().region_count,
                data_bytes,
                features: feature::GENERATIONS,
                data: Some(HelloData {
                    pair_id,
                    ..in_sync_data().unwrap()
                }),
            }),
        }
        .emit()
    };
    for (bytes, pair, why) in [
        (None, 7, "another pair"),
        (Some(4096), PAIR, "the two disks differ in size"),
    ] {
        let mut t = Trio::new();
        t.step(50);
        let now = ms(t.now);
        t.a.on_stream_connected(now);
        t.a.drain_actions().for_each(drop);
        let size = t.a.data_bytes() - bytes.unwrap_or(0);
        t.a.on_stream_bytes(now, &hello(&t, size, pair));
        let acts: Vec<Action> = t.a.drain_actions().collect();
        assert!(acts.contains(&Action::CloseStream), "{why}: {acts:?}");
        let notice = acts
            .iter()
            .find_map(|a| match a {
                Action::HandshakeDecided(h) => Some(h.to_string()),
                _ => None,
            })
            .expect("a console line");
        assert!(notice.contains("refused"), "{notice}");
        assert!(notice.contains("to resolve"), "{notice}");
        let status = t.a.status(now).to_string();
        assert!(status.contains("handshake:refused"), "{status}");
        assert!(status.contains(&format!("peer-size:{size}B")), "{status}");
        assert!(t.a.handshake_refused());
    }
}

/// A peer that died without closing its stream (a half-open connection)
/// while the host writes as fast as the primary's disk allows, for 2 s: what
/// the primary asks the kernel to hold for the stream stays within
/// `max_unacked_bytes` and the one resend of the unacknowledged writes in the
/// new epoch (back-pressure until the peer is recorded Outdated, then the
/// stream is given up), the host's writes go on, nothing panics.
#[test]
fn unthrottled_writes_against_a_dead_peer_keep_the_stream_bounded() {
    let mut t = Trio::with_stream();
    t.step(400);
    assert_eq!(t.a.role(), Role::Primary);
    assert_eq!(t.a.record().outdated, None, "{:?}", t.log);
    let bound = Config::new(NodeId::A, PAIR, 1).max_unacked_bytes;
    const SLOTS: u64 = 16;
    const LEN: u64 = 128 << 10;
    let mut next_id = 1000;
    let mut in_flight: std::collections::BTreeMap<u64, u64> = Default::default();
    let mut local_pending: Vec<u64> = Vec::new();
    let mut outbox: u64 = 0;
    let mut max_outbox: u64 = 0;
    let mut completed = 0u64;
    let mut closed = 0;
    let start = t.now;
    // B is dead from now on: it hears nothing and says nothing; A's stream
    // to it stays "connected" and never drains.
    while t.now < start + 2_000 {
        t.now += 1;
        let now = ms(t.now);
        for id in local_pending.drain(..) {
            t.a.on_local_write_done(now, id, true);
        }
        t.a.tick(now);
        t.w.tick(now);
        for slot in 0..SLOTS {
            if !in_flight.values().any(|s| *s == slot) {
                let id = next_id;
                next_id += 1;
                if t.a.host_write(now, id, slot * LEN, LEN, false).is_ok() {
                    in_flight.insert(id, slot);
                }
            }
        }
        for _ in 0..10 {
            let mut to_a = Vec::new();
            for a in t.w.drain_actions() {
                if let Action::SendDatagram {
                    to: NodeId::A,
                    link,
                    bytes,
                } = a
                {
                    to_a.push((link, bytes));
                }
            }
            let acts: Vec<Action> = t.a.drain_actions().collect();
            if acts.is_empty() && to_a.is_empty() {
                break;
            }
            for a in acts {
                match a {
                    Action::SendDatagram {
                        to: NodeId::Witness,
                        link,
                        bytes,
                    } => t.w.on_datagram(now, link, &bytes),
                    Action::SendStream { bytes } => outbox += bytes.len() as u64,
                    Action::ReplicateWrite { frame_prefix, .. } => {
                        outbox += frame_prefix.len() as u64 + LEN
                    }
                    Action::CloseStream => {
                        outbox = 0;
                        closed += 1;
                    }
                    Action::SubmitLocalWrite { id } => local_pending.push(id),
                    Action::PersistBitmap { generation, .. } => {
                        t.a.on_bitmap_persisted(now, generation, true)
                    }
                    Action::FlushDisk { flush } => t.a.on_disk_flush_done(now, flush, true),
                    Action::CompleteWrite { id, result } => {
                        assert_eq!(result, IoResult::Ok, "{:?}", t.log);
                        in_flight.remove(&id);
                        completed += 1;
                    }
                    _ => {}
                }
            }
            for (link, bytes) in to_a {
                t.a.on_datagram(now, link, &bytes);
            }
            max_outbox = max_outbox.max(outbox);
        }
    }
    assert_eq!(t.a.role(), Role::Primary, "{:?}", t.log);
    assert_eq!(
        t.a.record().outdated,
        Some(NodeId::B),
        "B recorded Outdated"
    );
    assert!(closed >= 1, "the stream that does not drain is given up");
    assert_eq!(t.a.counters().stream_overflows, 1);
    assert!(
        max_outbox <= 2 * bound + (1 << 20),
        "the stream held {max_outbox} bytes (bound {bound})"
    );
    eprintln!("stream held at most {max_outbox} bytes; {completed} writes completed");
    // 16 writes of 128 KiB every 2 ms (disk, then the host's next write),
    // less the failure timeout.
    assert!(completed > 8 * 1_700, "only {completed} writes completed");
}

/// During a recovery a write the peer leaves unanswered for the failure
/// timeout ends the recovery (the stream is closed, the write completes on
/// A alone, B stays Outdated), instead of waiting for the stream's TCP abort.
#[test]
fn a_write_stuck_during_a_recovery_ends_it_after_the_failure_timeout() {
    let mut t = Trio::new();
    let now = primary_a_resyncing_region_0(&mut t);
    t.a.on_resync_read_done(now, 0, Some(&[7; 65536]));
    let ack = Frame {
        sender: NodeId::B,
        epoch: t.b.promised_epoch(),
        seq: 0,
        body: Body::ResyncAck {
            offset: 0,
            len: 65536,
            status: AckStatus::Ok,
        },
    };
    t.a.on_stream_bytes(now, &ack.emit());
    t.a.drain_actions().for_each(drop);
    // B's disk hangs: the stream stays up, nothing more comes back.
    t.stream = false;
    write_through(&mut t, 7, 4 * 65536);
    assert_eq!(t.a.status(now).in_flight_writes, 1, "W waits for B");
    t.step(t.now + 90);
    assert_eq!(
        t.a.status(ms(t.now)).in_flight_writes,
        1,
        "not before the failure timeout"
    );
    assert_eq!(t.a.counters().stuck_recoveries, 0);
    t.step(t.now + 20);
    assert_eq!(t.a.counters().stuck_recoveries, 1, "{:?}", t.log);
    assert_eq!(
        t.a.status(ms(t.now)).in_flight_writes,
        0,
        "W completed on A alone"
    );
    assert_eq!(t.a.role(), Role::Primary);
    assert_eq!(t.a.record().outdated, Some(NodeId::B));
}
