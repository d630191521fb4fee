//! A deterministic simulator of a tandem pair: nodes `a`, `b`, the witness,
//! a fake network (per-link loss, delay, duplication, reordering, partitions),
//! a TCP-like replication stream (in order within a connection; after a
//! break, each node notices it when its close arrives — up to
//! `stream_close_jitter` later than its peer — so the frames still in flight
//! on the old connection reach it after the pair may have reconnected, and
//! what it writes into the broken connection is lost; a new connection
//! replaces one not yet noticed broken), disks with reordering completions, node
//! kill/restart from persisted metadata, and pause (the node's clock stops
//! and its inbox fills up). A model host writes and reads blocks, follows the
//! ANA state, retries on path errors and checks every completion:
//! - no acknowledged write is ever lost (checked after every event on every
//!   node that could become primary, and at the end on both disks);
//! - no read returns data older than a write acknowledged before it was issued;
//! - never two nodes serving in the same epoch.
#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

use tandem_ha::metadata::BLOCK_SIZE;
use tandem_ha::node::{
    Action, Config, DataNode, HostIoError, InitialData, IoResult, ReplicationState, Timing,
};
use tandem_ha::witness::{Witness, WitnessConfig};
use tandem_ha::{AnaState, DataState, Duration, Instant, LinkId, NodeId, Role};

/// xorshift64*: small, deterministic, good enough for schedules.
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}

pub const US: u64 = 1;
pub const MS: u64 = 1000;
pub const BLOCK: u64 = 4096;
pub const DISK_BYTES: u64 = 2 << 20;
pub const HOST_BLOCKS: u64 = 192;
pub const LINKS: u8 = 2;
pub const PAIR_ID: u64 = 0x7a11_de00;

fn idx(n: NodeId) -> usize {
    n.index()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum HostOp {
    Write {
        block: u64,
        version: u64,
        kind: WriteKind,
    },
    Read {
        block: u64,
        min_version: u64,
    },
}

/// What a host write puts in its block: data carrying its version, or
/// zeroes (Write Zeroes, or Deallocate, after which the simulated disks read
/// zeroes as virtio-blk's discard does on a raw file).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum WriteKind {
    Data,
    Zeroes,
    Deallocate,
}

#[derive(Clone, Debug)]
enum DiskKind {
    HostWrite {
        id: u64,
        data: Vec<u8>,
    },
    HostRead {
        id: u64,
    },
    Replicated {
        seq: u64,
        offset: u64,
        data: Vec<u8>,
    },
    ResyncRead {
        offset: u64,
        len: u32,
    },
    ResyncWrite {
        offset: u64,
        data: Vec<u8>,
    },
    BitmapPersist {
        generation: u64,
        blocks: Vec<(u64, Vec<u8>)>,
    },
    Flush {
        flush: u64,
    },
}

#[derive(Clone, Debug)]
enum Input {
    Datagram { link: LinkId, bytes: Vec<u8> },
    Stream { conn: u64, bytes: Vec<u8> },
    StreamOpen { conn: u64 },
    StreamClose { conn: u64 },
    Host { id: u64, op: HostOp },
    HostFlush { id: u64 },
    Disk { incarnation: u64, kind: DiskKind },
}

#[derive(Clone, Debug)]
enum Event {
    Deliver { to: NodeId, input: Input },
    Tick,
    HostStep,
    Release { to: NodeId },
}

#[allow(clippy::large_enum_variant)]
pub enum Member {
    Data(DataNode),
    Witness(Witness),
}

/// A data node's disk, copied.
#[derive(Clone)]
pub struct DiskImage {
    pub data: BTreeMap<u64, Vec<u8>>,
    pub meta: BTreeMap<u64, Vec<u8>>,
}

pub struct SimNode {
    pub id: NodeId,
    pub member: Option<Member>,
    pub paused_since: Option<u64>,
    paused_total: u64,
    pub rate_ppm: i64,
    /// The replication connection this node is on (as the kernel knows it).
    stream_conn: Option<u64>,
    /// When it was last resumed (its lease may look valid for a while).
    last_resume: Option<u64>,
    inbox: VecDeque<Input>,
    /// Network input held back (in order) until this time.
    held_until: Option<u64>,
    held: VecDeque<Input>,
    pub disk: BTreeMap<u64, Vec<u8>>,
    pub meta: BTreeMap<u64, Vec<u8>>,
    /// The size of its disk (its metadata is at the end).
    pub disk_bytes: u64,
    incarnation: u64,
    write_data: BTreeMap<u64, Vec<u8>>,
    read_data: BTreeMap<u64, Vec<u8>>,
    host_ops: BTreeMap<u64, HostOp>,
    pub ana: AnaState,
    /// Restarted on an older copy of its disk: its metadata says UpToDate,
    /// and only its record (older than the pair's) and the handshake keep it
    /// from standing; the lost-write check starts after its handshake.
    reverted: bool,
}

impl SimNode {
    pub fn data(&self) -> Option<&DataNode> {
        match &self.member {
            Some(Member::Data(d)) => Some(d),
            _ => None,
        }
    }
    /// The node's clock: stopped while paused, and running at its own rate
    /// (`rate_ppm` off true time).
    fn local_now(&self, global: u64) -> Instant {
        let active = (global - self.paused_total) as i128;
        Instant::from_micros((active + active * self.rate_ppm as i128 / 1_000_000) as u64)
    }
    pub fn alive(&self) -> bool {
        self.member.is_some()
    }
}

fn block_bytes(block: u64, version: u64) -> Vec<u8> {
    let mut v = vec![0u8; BLOCK as usize];
    v[..8].copy_from_slice(&version.to_be_bytes());
    v[8..16].copy_from_slice(&block.to_be_bytes());
    v
}

fn version_of(bytes: &[u8]) -> u64 {
    u64::from_be_bytes(bytes[..8].try_into().unwrap())
}

#[derive(Clone, Copy, Debug)]
pub struct LinkParams {
    pub drop_per_mille: u64,
    pub dup_per_mille: u64,
    pub min_delay: u64,
    pub max_delay: u64,
}

impl Default for LinkParams {
    fn default() -> Self {
        LinkParams {
            drop_per_mille: 0,
            dup_per_mille: 0,
            min_delay: 100 * US,
            max_delay: 400 * US,
        }
    }
}

#[derive(Default)]
struct BlockState {
    acked: u64,
    issued_max: u64,
    pending: Option<(u64, u64, WriteKind)>, // (version, retry_at, kind)
    in_flight: bool,
    /// Versions issued as zeroes (their content reads as version 0).
    zero_versions: BTreeSet<u64>,
}

impl BlockState {
    /// Whether content of version `v` (0: zeroes) is what the block may
    /// hold once version `at_least` was acknowledged: that version or one
    /// issued after it.
    fn may_hold(&self, v: u64, at_least: u64) -> bool {
        if v == 0 {
            at_least == 0 || self.zero_versions.range(at_least..).next().is_some()
        } else {
            v >= at_least && v <= self.issued_max && !self.zero_versions.contains(&v)
        }
    }

    /// The version a new (or retried) write carries, and what it writes.
    fn next_write(&mut self, next_version: &mut u64, kind: WriteKind) -> (u64, WriteKind) {
        if let Some((v, _, k)) = self.pending {
            return (v, k);
        }
        let v = *next_version;
        *next_version += 1;
        self.pending = Some((v, 0, kind));
        self.issued_max = self.issued_max.max(v);
        if kind != WriteKind::Data {
            self.zero_versions.insert(v);
        }
        (v, kind)
    }
}

pub struct Host {
    pub enabled: bool,
    blocks: Vec<BlockState>,
    next_version: u64,
    next_id: u64,
    in_flight: BTreeMap<u64, (NodeId, HostOp, u64)>,
    pub writes_acked: u64,
    /// Of those, Write Zeroes and Deallocates.
    pub zeroes_acked: u64,
    pub deallocates_acked: u64,
    pub reads_ok: u64,
    /// Host flushes in flight (and where), completed, failed with a path error.
    flushes_in_flight: BTreeMap<u64, NodeId>,
    pub flushes_ok: u64,
    pub flushes_failed: u64,
    pub path_errors: u64,
    pub read_in_flight: usize,
    pub max_stall: u64,
    last_completion: u64,
    pub stall_window_start: Option<u64>,
}

pub struct Sim {
    /// Resync reads outstanding now, and the most ever outstanding.
    pub resync_reads: usize,
    pub max_resync_reads: usize,
    pub now: u64,
    pub rng: Rng,
    pub nodes: Vec<SimNode>,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    events: BTreeMap<usize, Event>,
    next_event: usize,
    seq: u64,
    /// link_up[link][i][j]
    link_up: [[[bool; 3]; 3]; LINKS as usize],
    pub params: [LinkParams; LINKS as usize],
    conn: Option<u64>,
    next_conn: u64,
    stream_last: [u64; 2],
    pub host: Host,
    pub log: Vec<String>,
    pub timing: Timing,
    pub resync_rate: u64,
    pub disk_min: u64,
    pub disk_max: u64,
    pub checks: u64,
    /// Chance (per mille) that a node crashes in the middle of a metadata
    /// write: the write is torn at a 512-byte sector boundary and nothing
    /// after it is executed.
    pub torn_crash_per_mille: u64,
    pub torn_crashes: u64,
    /// A bitmap persist takes up to this many times the longest data
    /// write.
    pub slow_metadata: u64,
    /// The link state of each data node's front-end NIC, as its kernel
    /// reports it (`set_front_end_nic`). While it is down, the host reaches
    /// the node no more: its commands and their completions are lost, and the
    /// host retries them elsewhere (as after the reset a takeover's tickle
    /// brings).
    pub front_end_nic: [bool; 2],
    /// A node notices that its replication connection broke up to this
    /// much later than its peer (a half-open connection): meanwhile the
    /// peer may reconnect, and the frames still in flight on the old
    /// connection reach the node after the pair's new connection exists.
    pub stream_close_jitter: u64,
    /// Stream bytes a node took from a connection that was no longer the
    /// pair's current one (it had not noticed the break yet).
    pub late_stream_deliveries: u64,
    /// Stream bytes dropped because the node had already closed or
    /// replaced that connection.
    pub stale_stream_drops: u64,
    /// `peer-recovered` records committed while host writes were in
    /// flight on the primary.
    pub peer_recovered_with_writes: u64,
}

pub fn timing() -> Timing {
    Timing {
        heartbeat_interval: Duration::from_millis(20),
        failure_timeout: Duration::from_millis(200),
        lease_duration: Duration::from_millis(160),
        lease_margin: Duration::from_millis(40),
        clock_drift_ppm: 1000,
    }
}

impl Sim {
    pub fn new(seed: u64) -> Sim {
        Self::with_timing(seed, timing())
    }

    /// `HA_SIM_SEED_OFFSET` shifts every seed, to run the fixed scenarios
    /// under other schedules.
    pub fn with_timing(seed: u64, timing: Timing) -> Sim {
        let seed = seed
            + std::env::var("HA_SIM_SEED_OFFSET")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        let mut sim = Sim {
            resync_reads: 0,
            max_resync_reads: 0,
            now: 0,
            rng: Rng::new(seed),
            nodes: Vec::new(),
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            next_event: 0,
            seq: 0,
            link_up: [[[true; 3]; 3]; LINKS as usize],
            params: [LinkParams::default(); LINKS as usize],
            conn: None,
            next_conn: 1,
            stream_last: [0; 2],
            host: Host {
                enabled: false,
                blocks: (0..HOST_BLOCKS).map(|_| BlockState::default()).collect(),
                next_version: 1,
                next_id: 1,
                in_flight: BTreeMap::new(),
                writes_acked: 0,
                zeroes_acked: 0,
                deallocates_acked: 0,
                flushes_in_flight: BTreeMap::new(),
                flushes_ok: 0,
                flushes_failed: 0,
                reads_ok: 0,
                path_errors: 0,
                read_in_flight: 0,
                max_stall: 0,
                last_completion: 0,
                stall_window_start: None,
            },
            log: Vec::new(),
            timing,
            resync_rate: 50 << 20,
            disk_min: 200 * US,
            disk_max: 2 * MS,
            checks: 0,
            torn_crash_per_mille: 0,
            slow_metadata: 1,
            torn_crashes: 0,
            front_end_nic: [true; 2],
            stream_close_jitter: 0,
            late_stream_deliveries: 0,
            stale_stream_drops: 0,
            peer_recovered_with_writes: 0,
        };
        for id in NodeId::ALL {
            sim.nodes.push(SimNode {
                id,
                member: None,
                paused_since: None,
                paused_total: 0,
                rate_ppm: [400, -400, 250][id.index()],
                stream_conn: None,
                last_resume: None,
                inbox: VecDeque::new(),
                held_until: None,
                held: VecDeque::new(),
                disk: BTreeMap::new(),
                meta: BTreeMap::new(),
                disk_bytes: DISK_BYTES,
                incarnation: 0,
                write_data: BTreeMap::new(),
                read_data: BTreeMap::new(),
                host_ops: BTreeMap::new(),
                ana: AnaState::Inaccessible,
                reverted: false,
            });
        }
        for id in NodeId::ALL {
            sim.boot(id, true);
        }
        sim.schedule(MS, Event::Tick);
        sim.schedule(MS, Event::HostStep);
        sim
    }

    fn cfg(&mut self, id: NodeId) -> Config {
        let n = &mut self.nodes[idx(id)];
        n.incarnation += 1;
        let mut c = Config::new(id, PAIR_ID, n.incarnation * 1000 + id.index() as u64 + 1);
        c.links = LINKS;
        c.timing = self.timing;
        c.resync_rate = self.resync_rate;
        c.bitmap_flush_interval = Duration::from_millis(300);
        // The simulated disk has 32 regions: extents of 4 keep resyncs
        // incremental.
        c.activity_extent_regions = 4;
        c
    }

    fn boot(&mut self, id: NodeId, fresh: bool) {
        self.boot_with(id, fresh.then_some(InitialData::UpToDate));
    }

    /// Boots `id`: formatting its disk as `format` says, or opening it.
    fn boot_with(&mut self, id: NodeId, format: Option<InitialData>) {
        let now = self.now;
        let local = self.nodes[idx(id)].local_now(now);
        let member = if id == NodeId::Witness {
            self.nodes[idx(id)].incarnation += 1;
            let mut wc = WitnessConfig::new(self.nodes[idx(id)].incarnation * 1000 + 3);
            wc.links = LINKS;
            wc.timing = self.timing;
            Member::Witness(Witness::new(wc, local).unwrap())
        } else if let Some(initial) = format {
            let cfg = self.cfg(id);
            let disk_bytes = self.nodes[idx(id)].disk_bytes;
            let layout = tandem_ha::metadata::Layout::new(disk_bytes, 65536).unwrap();
            Member::Data(DataNode::format_with_layout(cfg, layout, initial, local).unwrap())
        } else {
            let cfg = self.cfg(id);
            let n = &self.nodes[idx(id)];
            let layout = tandem_ha::metadata::Layout::new(n.disk_bytes, 65536).unwrap();
            let get = |off: u64| {
                n.meta
                    .get(&off)
                    .cloned()
                    .unwrap_or_else(|| vec![0; BLOCK_SIZE])
            };
            let s0 = get(layout.superblock_offset(0));
            let s1 = get(layout.superblock_offset(1));
            let mut bm = Vec::new();
            for b in 0..layout.bitmap_blocks {
                bm.extend(get(layout.bitmap_block_offset(b)));
            }
            Member::Data(DataNode::open(cfg, &s0, &s1, &bm, local).unwrap())
        };
        let n = &mut self.nodes[idx(id)];
        let mut member = member;
        if let Member::Data(d) = &mut member {
            d.set_front_end_nic(local, self.front_end_nic[idx(id)]);
        }
        n.member = Some(member);
        n.stream_conn = None;
        n.inbox.clear();
        n.write_data.clear();
        n.read_data.clear();
        n.host_ops.clear();
        self.run_actions(id);
    }

    // ----- event queue -----

    fn schedule(&mut self, delay: u64, ev: Event) {
        let at = self.now + delay;
        let k = self.next_event;
        self.next_event += 1;
        self.seq += 1;
        self.events.insert(k, ev);
        self.queue.push(Reverse((at, self.seq, k)));
    }

    fn deliver(&mut self, delay: u64, to: NodeId, input: Input) {
        self.schedule(delay, Event::Deliver { to, input });
    }

    pub fn run_for(&mut self, dur: u64) {
        let end = self.now + dur;
        while let Some(&Reverse((at, _, _))) = self.queue.peek() {
            if at > end {
                break;
            }
            let Reverse((at, _, k)) = self.queue.pop().unwrap();
            self.now = at;
            let ev = self.events.remove(&k).unwrap();
            self.handle(ev);
            self.check();
        }
        self.now = end;
    }

    pub fn run_until(&mut self, max: u64, mut pred: impl FnMut(&Sim) -> bool) -> bool {
        let end = self.now + max;
        while self.now < end {
            if pred(self) {
                return true;
            }
            self.run_for(MS);
        }
        pred(self)
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Tick => {
                for id in NodeId::ALL {
                    if self.nodes[idx(id)].paused_since.is_none() {
                        let local = self.nodes[idx(id)].local_now(self.now);
                        match &mut self.nodes[idx(id)].member {
                            Some(Member::Data(d)) => d.tick(local),
                            Some(Member::Witness(w)) => w.tick(local),
                            None => {}
                        }
                        self.run_actions(id);
                    }
                }
                self.maybe_connect();
                self.schedule(2 * MS, Event::Tick);
            }
            Event::HostStep => {
                if self.host.enabled {
                    self.host_step();
                }
                let d = self.rng.range(300, 1500);
                self.schedule(d, Event::HostStep);
            }
            Event::Deliver { to, input } => {
                let n = &mut self.nodes[idx(to)];
                let host_input = matches!(input, Input::Host { .. } | Input::HostFlush { .. });
                let unreachable = to.is_data_node() && !self.front_end_nic[idx(to)];
                if n.member.is_none() || (host_input && unreachable) {
                    match input {
                        Input::Host { id, .. } => self.host_complete(id, None),
                        Input::HostFlush { id } => {
                            self.host_flush_complete(id, IoResult::PathError)
                        }
                        _ => {}
                    }
                    return;
                }
                if n.paused_since.is_some() {
                    n.inbox.push_back(input);
                    return;
                }
                let network = matches!(
                    input,
                    Input::Datagram { .. }
                        | Input::Stream { .. }
                        | Input::StreamOpen { .. }
                        | Input::StreamClose { .. }
                );
                if network && n.held_until.is_some() {
                    n.held.push_back(input);
                    return;
                }
                self.process(to, input);
            }
            Event::Release { to } => {
                self.nodes[idx(to)].held_until = None;
                while let Some(input) = self.nodes[idx(to)].held.pop_front() {
                    if self.nodes[idx(to)].member.is_some() {
                        self.process(to, input);
                        self.check();
                    }
                }
            }
        }
    }

    fn process(&mut self, to: NodeId, input: Input) {
        let local = self.nodes[idx(to)].local_now(self.now);
        let n = &mut self.nodes[idx(to)];
        let Some(member) = n.member.as_mut() else {
            return;
        };
        match (member, input) {
            (Member::Witness(w), Input::Datagram { link, bytes }) => {
                w.on_datagram(local, link, &bytes)
            }
            (Member::Witness(_), _) => {}
            (Member::Data(d), input) => match input {
                Input::Datagram { link, bytes } => d.on_datagram(local, link, &bytes),
                Input::Stream { conn, bytes } => {
                    // The bytes of the connection this node has open, even
                    // if the pair has moved on (it has not noticed yet); a
                    // connection it closed or replaced is gone with its
                    // bytes, as a socket is.
                    if n.stream_conn == Some(conn) {
                        if self.conn != Some(conn) {
                            self.late_stream_deliveries += 1;
                        }
                        d.on_stream_bytes(local, &bytes)
                    } else {
                        self.stale_stream_drops += 1;
                    }
                }
                Input::StreamOpen { conn } => {
                    if self.conn == Some(conn) {
                        // A new connection replaces one not yet noticed
                        // broken (the kernel closes the old one first).
                        if n.stream_conn.take().is_some() {
                            d.on_stream_closed(local);
                        }
                        n.stream_conn = Some(conn);
                        d.on_stream_connected(local)
                    }
                }
                Input::StreamClose { conn } => {
                    // A late close of an older connection is not ours.
                    if n.stream_conn == Some(conn) {
                        n.stream_conn = None;
                        d.on_stream_closed(local)
                    }
                }
                Input::HostFlush { id } => {
                    if d.host_flush(local, id).is_err() {
                        self.host_flush_complete(id, IoResult::PathError);
                    }
                }
                Input::Host { id, op } => {
                    let r = match op {
                        HostOp::Write {
                            block,
                            version,
                            kind,
                        } => {
                            let offset = block * BLOCK;
                            match kind {
                                WriteKind::Data => {
                                    n.write_data.insert(id, block_bytes(block, version));
                                    d.host_write(local, id, offset, BLOCK, id % 7 == 0)
                                }
                                WriteKind::Zeroes => {
                                    n.write_data.insert(id, vec![0; BLOCK as usize]);
                                    d.host_write_zeroes(local, id, offset, BLOCK)
                                }
                                WriteKind::Deallocate => {
                                    n.write_data.insert(id, vec![0; BLOCK as usize]);
                                    d.host_deallocate(local, id, offset, BLOCK)
                                }
                            }
                        }
                        HostOp::Read { block, .. } => d.host_read(local, id, block * BLOCK, BLOCK),
                    };
                    match r {
                        Ok(()) => {
                            n.host_ops.insert(id, op);
                            if let HostOp::Read { .. } = op {
                                let inc = n.incarnation;
                                let delay = self.rng.range(self.disk_min, self.disk_max);
                                self.deliver(
                                    delay,
                                    to,
                                    Input::Disk {
                                        incarnation: inc,
                                        kind: DiskKind::HostRead { id },
                                    },
                                );
                            }
                        }
                        Err(HostIoError::NotServing(_)) => {
                            n.write_data.remove(&id);
                            self.host_complete(id, None);
                        }
                        Err(HostIoError::OutOfRange) => panic!("host range refused"),
                    }
                }
                Input::Disk { incarnation, kind } => {
                    if incarnation != n.incarnation {
                        return;
                    }
                    match kind {
                        DiskKind::HostWrite { id, data } => {
                            let off = n.host_ops.get(&id).map(|op| match op {
                                HostOp::Write { block, .. } => block * BLOCK,
                                _ => unreachable!(),
                            });
                            if let Some(off) = off {
                                write_disk(&mut n.disk, off, &data);
                            }
                            d.on_local_write_done(local, id, true);
                        }
                        DiskKind::HostRead { id } => {
                            if let Some(HostOp::Read { block, .. }) = n.host_ops.get(&id) {
                                let data = read_disk(&n.disk, block * BLOCK, BLOCK as u32);
                                n.read_data.insert(id, data);
                            }
                            d.on_local_read_done(local, id, true);
                        }
                        DiskKind::Replicated { seq, offset, data } => {
                            write_disk(&mut n.disk, offset, &data);
                            d.on_replicated_write_done(local, seq, offset, true);
                        }
                        DiskKind::ResyncRead { offset, len } => {
                            self.resync_reads = self.resync_reads.saturating_sub(1);
                            let data = read_disk(&n.disk, offset, len);
                            d.on_resync_read_done(local, offset, Some(&data));
                        }
                        DiskKind::ResyncWrite { offset, data } => {
                            write_disk(&mut n.disk, offset, &data);
                            d.on_resync_write_done(local, offset, true);
                        }
                        DiskKind::BitmapPersist { generation, blocks } => {
                            for (offset, bytes) in blocks {
                                n.meta.insert(offset, bytes);
                            }
                            d.on_bitmap_persisted(local, generation, true);
                        }
                        DiskKind::Flush { flush } => {
                            d.on_disk_flush_done(local, flush, true);
                        }
                    }
                }
            },
        }
        self.run_actions(to);
    }

    fn run_actions(&mut self, id: NodeId) {
        let actions: Vec<Action> = match &mut self.nodes[idx(id)].member {
            Some(Member::Data(d)) => d.drain_actions().collect(),
            Some(Member::Witness(w)) => w.drain_actions().collect(),
            None => return,
        };
        for a in actions {
            if let Action::PersistMetadata { offset, bytes } = &a
                && self.torn_crash_per_mille > 0
                && self.rng.chance(self.torn_crash_per_mille)
            {
                let sectors = self.rng.below(bytes.len() as u64 / 512 + 1) as usize;
                let old = self.nodes[idx(id)]
                    .meta
                    .get(offset)
                    .cloned()
                    .unwrap_or_else(|| vec![0; bytes.len()]);
                let mut torn = old;
                torn[..sectors * 512].copy_from_slice(&bytes[..sectors * 512]);
                self.nodes[idx(id)].meta.insert(*offset, torn);
                self.torn_crashes += 1;
                self.log.push(format!(
                    "{:>8.3}ms {} crashes during a metadata write ({} sectors written)",
                    self.now as f64 / 1000.0,
                    id,
                    sectors
                ));
                self.kill(id);
                return;
            }
            self.execute(id, a);
        }
    }

    fn execute(&mut self, id: NodeId, a: Action) {
        let inc = self.nodes[idx(id)].incarnation;
        if let Ok(b) = std::env::var("HA_SIM_TRACE_BLOCK") {
            let b: u64 = b.parse().unwrap();
            let hit = |off: u64, len: u64| b * BLOCK >= off && b * BLOCK < off + len;
            let t = self.now as f64 / 1000.0;
            match &a {
                Action::ApplyReplicatedWrite {
                    seq, offset, data, ..
                } if hit(*offset, data.len() as u64) => {
                    eprintln!(
                        "{t:.3} {id} apply-repl seq {seq} v{}",
                        version_of(&data[((b * BLOCK - offset) as usize)..])
                    )
                }
                Action::ApplyResync { offset, data } if hit(*offset, data.len() as u64) => {
                    eprintln!(
                        "{t:.3} {id} apply-resync v{}",
                        version_of(&data[((b * BLOCK - offset) as usize)..])
                    )
                }
                Action::SubmitLocalWrite { id: w } | Action::ReplicateWrite { id: w, .. } => {
                    if let Some(HostOp::Write { block, version, .. }) =
                        self.nodes[idx(id)].host_ops.get(w)
                    {
                        if *block == b {
                            eprintln!("{t:.3} {id} {:?} v{version}", a);
                        }
                    } else if let Some(d) = self.nodes[idx(id)].write_data.get(w)
                        && u64::from_be_bytes(d[8..16].try_into().unwrap()) == b
                    {
                        eprintln!(
                            "{t:.3} {id} {} v{} (op unknown)",
                            if matches!(a, Action::SubmitLocalWrite { .. }) {
                                "submit"
                            } else {
                                "replicate"
                            },
                            version_of(d)
                        );
                    }
                }
                _ => {}
            }
        }
        match a {
            Action::SendDatagram { to, link, bytes } => self.send_datagram(id, to, link, bytes),
            Action::SendStream { bytes } => self.stream_send(id, bytes),
            Action::ReplicateWrite {
                id: wid,
                frame_prefix,
            } => {
                let mut bytes = frame_prefix;
                bytes.extend_from_slice(
                    self.nodes[idx(id)]
                        .write_data
                        .get(&wid)
                        .expect("write data held"),
                );
                self.stream_send(id, bytes);
            }
            Action::CloseStream => self.close_stream(),
            Action::PersistMetadata { offset, bytes } => {
                self.nodes[idx(id)].meta.insert(offset, bytes);
            }
            Action::PersistBitmap { generation, blocks } => {
                // Metadata writes may take much longer than data writes
                // (a busy or throttled disk): writes wait for them.
                let max = self.disk_max * self.slow_metadata.max(1);
                let delay = self.rng.range(self.disk_min, max);
                self.deliver(
                    delay,
                    id,
                    Input::Disk {
                        incarnation: inc,
                        kind: DiskKind::BitmapPersist { generation, blocks },
                    },
                );
            }
            Action::FlushDisk { flush } => {
                self.disk_later(id, inc, DiskKind::Flush { flush });
            }
            Action::CompleteFlush { id: fid, result } => {
                let result = if self.front_end_nic[idx(id)] {
                    result
                } else {
                    IoResult::PathError
                };
                self.host_flush_complete(fid, result);
            }
            Action::SubmitLocalWrite { id: wid } => {
                let data = self.nodes[idx(id)]
                    .write_data
                    .get(&wid)
                    .cloned()
                    .expect("write data");
                self.disk_later(id, inc, DiskKind::HostWrite { id: wid, data });
            }
            Action::CompleteWrite { id: wid, result } => {
                let n = &mut self.nodes[idx(id)];
                n.write_data.remove(&wid);
                n.host_ops.remove(&wid);
                let outcome = self.front_end_nic[idx(id)].then_some((result, None));
                self.host_complete(wid, outcome);
            }
            Action::CompleteRead { id: rid, result } => {
                let n = &mut self.nodes[idx(id)];
                let data = n.read_data.remove(&rid);
                n.host_ops.remove(&rid);
                let outcome = self.front_end_nic[idx(id)].then_some((result, data));
                self.host_complete(rid, outcome);
            }
            Action::ApplyReplicatedWrite {
                seq, offset, data, ..
            } => {
                self.disk_later(id, inc, DiskKind::Replicated { seq, offset, data });
            }
            // Zeroes are content a deallocated block may have.
            Action::ApplyReplicatedZeroes { seq, offset, len }
            | Action::ApplyReplicatedDeallocate { seq, offset, len } => {
                let data = vec![0; len as usize];
                self.disk_later(id, inc, DiskKind::Replicated { seq, offset, data });
            }
            Action::ReadForResync { offset, len } => {
                self.resync_reads += 1;
                self.max_resync_reads = self.max_resync_reads.max(self.resync_reads);
                self.disk_later(id, inc, DiskKind::ResyncRead { offset, len });
            }
            Action::ApplyResync { offset, data } => {
                self.disk_later(id, inc, DiskKind::ResyncWrite { offset, data });
            }
            Action::AnaChanged(s) => self.nodes[idx(id)].ana = s,
            Action::RoleChanged(c) => {
                if c.reason == "peer-recovered"
                    && self
                        .host
                        .in_flight
                        .values()
                        .any(|(t, op, _)| *t == id && matches!(op, HostOp::Write { .. }))
                {
                    self.peer_recovered_with_writes += 1;
                }
                let line = format!("{:>8.3}ms {}: {}", self.now as f64 / 1000.0, id, c);
                self.log.push(line);
            }
            Action::VerifyFinished(v) => {
                let line = format!("{:>8.3}ms {}: {}", self.now as f64 / 1000.0, id, v);
                self.log.push(line);
            }
            Action::HandshakeDecided(h) => {
                let line = format!("{:>8.3}ms {}: {}", self.now as f64 / 1000.0, id, h);
                self.log.push(line);
            }
        }
    }

    /// A disk completion for node `id` (of incarnation `inc`) after a
    /// random disk latency.
    fn disk_later(&mut self, id: NodeId, inc: u64, kind: DiskKind) {
        let delay = self.rng.range(self.disk_min, self.disk_max);
        self.deliver(
            delay,
            id,
            Input::Disk {
                incarnation: inc,
                kind,
            },
        );
    }

    // ----- network -----

    fn send_datagram(&mut self, from: NodeId, to: NodeId, link: LinkId, bytes: Vec<u8>) {
        let l = link.0 as usize;
        if l >= LINKS as usize || !self.link_up[l][idx(from)][idx(to)] {
            return;
        }
        let p = self.params[l];
        if self.rng.chance(p.drop_per_mille) {
            return;
        }
        let copies = if self.rng.chance(p.dup_per_mille) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let d = self.rng.range(p.min_delay, p.max_delay);
            self.deliver(
                d,
                to,
                Input::Datagram {
                    link,
                    bytes: bytes.clone(),
                },
            );
        }
    }

    fn stream_possible(&self) -> bool {
        self.link_up[0][0][1] && self.nodes[0].alive() && self.nodes[1].alive()
    }

    fn maybe_connect(&mut self) {
        if self.conn.is_none() && self.stream_possible() {
            let c = self.next_conn;
            self.next_conn += 1;
            self.conn = Some(c);
            self.stream_last = [self.now; 2];
            for to in [NodeId::A, NodeId::B] {
                let d = self.rng.range(100, 300);
                self.stream_last[idx(to)] = self.stream_last[idx(to)].max(self.now + d);
                self.deliver(
                    self.stream_last[idx(to)] - self.now,
                    to,
                    Input::StreamOpen { conn: c },
                );
            }
        }
    }

    fn close_stream(&mut self) {
        if let Some(c) = self.conn.take() {
            for to in [NodeId::A, NodeId::B] {
                let late = self.rng.below(self.stream_close_jitter + 1);
                let at = self.stream_last[idx(to)].max(self.now) + 10 + late;
                self.deliver(at - self.now, to, Input::StreamClose { conn: c });
            }
        }
    }

    /// The replication connection breaks (a reset, a middlebox dropping
    /// it) with every link up: the nodes reconnect at once.
    pub fn break_stream(&mut self) {
        if self.conn.is_some() {
            self.log
                .push(format!("{:>8.3}ms stream reset", self.now as f64 / 1000.0));
            self.close_stream();
        }
    }

    fn stream_send(&mut self, from: NodeId, bytes: Vec<u8>) {
        // On the connection the sender has open. Written after that
        // connection broke (the sender has not noticed yet), the bytes are
        // lost; written before, they are in flight and reach the peer if
        // it still has the connection open when they arrive.
        let Some(c) = self.nodes[idx(from)].stream_conn else {
            return;
        };
        if self.conn != Some(c) {
            return;
        }
        let to = from.peer();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let n = (self.rng.range(1, 9000) as usize).min(rest.len());
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            let d = self
                .rng
                .range(self.params[0].min_delay, self.params[0].max_delay);
            let at = (self.now + d).max(self.stream_last[idx(to)]);
            self.stream_last[idx(to)] = at;
            self.deliver(
                at - self.now,
                to,
                Input::Stream {
                    conn: c,
                    bytes: chunk.to_vec(),
                },
            );
        }
    }

    // ----- faults -----

    pub fn set_link(&mut self, link: u8, a: NodeId, b: NodeId, up: bool) {
        self.link_up[link as usize][idx(a)][idx(b)] = up;
        self.link_up[link as usize][idx(b)][idx(a)] = up;
        if link == 0 && !self.stream_possible() {
            self.close_stream();
        }
        self.log.push(format!(
            "{:>8.3}ms link{} {}-{} {}",
            self.now as f64 / 1000.0,
            link,
            a,
            b,
            if up { "up" } else { "down" }
        ));
    }

    /// Cuts (or mends) data node `n`'s front-end: its NIC's link goes down,
    /// so link 1 to every other member goes too, and the host reaches it no
    /// more (its commands in flight fail and are retried, as after a reset).
    pub fn set_front_end(&mut self, n: NodeId, up: bool) {
        self.front_end_nic[idx(n)] = up;
        for o in NodeId::ALL {
            if o != n {
                self.set_link(1, n, o, up);
            }
        }
        if !up {
            let ids: Vec<u64> = self
                .host
                .in_flight
                .iter()
                .filter(|(_, (t, _, _))| *t == n)
                .map(|(id, _)| *id)
                .collect();
            for id in ids {
                self.host_complete(id, None);
            }
            let flushes: Vec<u64> = self
                .host
                .flushes_in_flight
                .iter()
                .filter(|(_, t)| **t == n)
                .map(|(id, _)| *id)
                .collect();
            for id in flushes {
                self.host_flush_complete(id, IoResult::PathError);
            }
        }
        if self.nodes[idx(n)].data().is_some() && self.nodes[idx(n)].paused_since.is_none() {
            self.with_data(n, |d, now| d.set_front_end_nic(now, up));
        }
        self.log.push(format!(
            "{:>8.3}ms front-end of {} {}",
            self.now as f64 / 1000.0,
            n,
            if up { "up" } else { "down" }
        ));
    }

    /// Cuts every link between `n` and the other members.
    pub fn isolate(&mut self, n: NodeId) {
        for l in 0..LINKS {
            for o in NodeId::ALL {
                if o != n {
                    self.set_link(l, n, o, false);
                }
            }
        }
    }

    pub fn heal(&mut self) {
        for l in 0..LINKS {
            for a in NodeId::ALL {
                for b in NodeId::ALL {
                    if a != b {
                        self.link_up[l as usize][idx(a)][idx(b)] = true;
                    }
                }
            }
        }
        self.log
            .push(format!("{:>8.3}ms heal", self.now as f64 / 1000.0));
    }

    pub fn kill(&mut self, n: NodeId) {
        self.log
            .push(format!("{:>8.3}ms kill {}", self.now as f64 / 1000.0, n));
        let node = &mut self.nodes[idx(n)];
        node.member = None;
        node.paused_since = None;
        node.inbox.clear();
        node.held.clear();
        node.held_until = None;
        node.incarnation += 1;
        if n.is_data_node() {
            self.close_stream();
        }
        // The host's commands to it fail (connection reset).
        let ids: Vec<u64> = self
            .host
            .in_flight
            .iter()
            .filter(|(_, (t, _, _))| *t == n)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.host_complete(id, None);
        }
        let flushes: Vec<u64> = self
            .host
            .flushes_in_flight
            .iter()
            .filter(|(_, t)| **t == n)
            .map(|(id, _)| *id)
            .collect();
        for id in flushes {
            self.host_flush_complete(id, IoResult::PathError);
        }
    }

    /// Stops data node `n` (if running), replaces its disk by a blank one
    /// (a failed disk swapped for a new one) and boots it.
    pub fn replace_disk_blank(&mut self, n: NodeId) {
        let bytes = self.nodes[idx(n)].disk_bytes;
        self.replace_disk_blank_sized(n, bytes);
    }

    /// As [`Sim::replace_disk_blank`], with a disk of `bytes`.
    pub fn replace_disk_blank_sized(&mut self, n: NodeId, bytes: u64) {
        self.log.push(format!(
            "{:>8.3}ms replace {}'s disk by a blank one of {} bytes",
            self.now as f64 / 1000.0,
            n,
            bytes
        ));
        if self.nodes[idx(n)].member.is_some() {
            self.kill(n);
        }
        self.nodes[idx(n)].disk.clear();
        self.nodes[idx(n)].meta.clear();
        self.nodes[idx(n)].disk_bytes = bytes;
        self.boot_with(n, Some(InitialData::Blank));
    }

    /// A copy of data node `n`'s disk (data and metadata), as a snapshot or
    /// a copied image file would hold it.
    pub fn disk_image(&self, n: NodeId) -> DiskImage {
        let node = &self.nodes[idx(n)];
        DiskImage {
            data: node.disk.clone(),
            meta: node.meta.clone(),
        }
    }

    /// Stops `n` (if running), puts `image` in place of its disk and boots it.
    pub fn restart_on_image(&mut self, n: NodeId, image: &DiskImage) {
        self.log.push(format!(
            "{:>8.3}ms restart {} on an older copy of its disk",
            self.now as f64 / 1000.0,
            n
        ));
        if self.nodes[idx(n)].member.is_some() {
            self.kill(n);
        }
        self.nodes[idx(n)].disk = image.data.clone();
        self.nodes[idx(n)].meta = image.meta.clone();
        self.nodes[idx(n)].reverted = true;
        self.boot(n, false);
    }

    pub fn restart(&mut self, n: NodeId) {
        self.log
            .push(format!("{:>8.3}ms restart {}", self.now as f64 / 1000.0, n));
        if self.nodes[idx(n)].member.is_some() {
            self.kill(n);
        }
        self.boot(n, false);
    }

    pub fn pause(&mut self, n: NodeId) {
        self.log
            .push(format!("{:>8.3}ms pause {}", self.now as f64 / 1000.0, n));
        self.nodes[idx(n)].paused_since = Some(self.now);
    }

    /// Resumes a paused node: its clock continues from where it stopped,
    /// and it processes its backlog first.
    pub fn resume(&mut self, n: NodeId) {
        self.log
            .push(format!("{:>8.3}ms resume {}", self.now as f64 / 1000.0, n));
        let node = &mut self.nodes[idx(n)];
        if let Some(since) = node.paused_since.take() {
            node.paused_total += self.now - since;
            node.last_resume = Some(self.now);
        }
        while let Some(input) = self.nodes[idx(n)].inbox.pop_front() {
            self.process(n, input);
            self.check();
        }
    }

    /// Resumes a paused node the worst way round: the host commands that
    /// queued up are handled first, while the network backlog (which would
    /// tell it that it was deposed) is held back for `hold` more.
    pub fn resume_host_first(&mut self, n: NodeId, hold: u64) {
        self.log.push(format!(
            "{:>8.3}ms resume {} (host first, network held {}us)",
            self.now as f64 / 1000.0,
            n,
            hold
        ));
        let node = &mut self.nodes[idx(n)];
        if let Some(since) = node.paused_since.take() {
            node.paused_total += self.now - since;
            node.last_resume = Some(self.now);
        }
        let backlog: Vec<Input> = self.nodes[idx(n)].inbox.drain(..).collect();
        let (host, rest): (Vec<Input>, Vec<Input>) = backlog.into_iter().partition(|i| {
            !matches!(
                i,
                Input::Datagram { .. }
                    | Input::Stream { .. }
                    | Input::StreamOpen { .. }
                    | Input::StreamClose { .. }
            )
        });
        self.nodes[idx(n)].held_until = Some(self.now + hold);
        self.nodes[idx(n)].held.extend(rest);
        self.schedule(hold, Event::Release { to: n });
        for input in host {
            self.process(n, input);
            self.check();
        }
    }

    // ----- commands -----

    /// Host commands waiting in a paused node's inbox.
    pub fn queued_host_commands(&self, n: NodeId) -> usize {
        self.nodes[idx(n)]
            .inbox
            .iter()
            .filter(|i| matches!(i, Input::Host { .. }))
            .count()
    }

    pub fn data(&self, n: NodeId) -> &DataNode {
        self.nodes[idx(n)].data().expect("data node alive")
    }

    pub fn with_data<R>(&mut self, n: NodeId, f: impl FnOnce(&mut DataNode, Instant) -> R) -> R {
        let local = self.nodes[idx(n)].local_now(self.now);
        let r = match &mut self.nodes[idx(n)].member {
            Some(Member::Data(d)) => f(d, local),
            _ => panic!("{n} not alive"),
        };
        self.run_actions(n);
        r
    }

    /// The node serving I/O (with ANA optimized), if exactly one.
    pub fn serving(&self) -> Vec<NodeId> {
        [NodeId::A, NodeId::B]
            .into_iter()
            .filter(|&n| {
                let node = &self.nodes[idx(n)];
                node.paused_since.is_none()
                    && node
                        .data()
                        .is_some_and(|d| d.is_serving(node.local_now(self.now)))
            })
            .collect()
    }

    pub fn primary(&self) -> Option<NodeId> {
        let s = self.serving();
        if s.len() == 1 { Some(s[0]) } else { None }
    }

    pub fn wait_primary(&mut self, max: u64) -> NodeId {
        assert!(
            self.run_until(max, |s| s.primary().is_some()),
            "no primary within {}ms\n{}",
            max / MS,
            self.log_tail()
        );
        self.primary().unwrap()
    }

    /// Both nodes alive, UpToDate, in the same record, peer not outdated,
    /// and no resync left.
    pub fn in_sync(&self) -> bool {
        let (Some(a), Some(b)) = (self.nodes[0].data(), self.nodes[1].data()) else {
            return false;
        };
        let ok =
            |d: &DataNode| d.data_state() == DataState::UpToDate && d.record().outdated.is_none();
        let Some(p) = [a, b].into_iter().find(|d| d.role() == Role::Primary) else {
            return false;
        };
        let st = p.status(Instant::ZERO);
        ok(a)
            && ok(b)
            && a.record() == b.record()
            && self.conn.is_some()
            && st.replication == ReplicationState::Established
            && st.resync.is_none_or(|r| r.remaining_regions == 0)
    }

    pub fn log_tail(&self) -> String {
        let lines: Vec<&String> = self
            .log
            .iter()
            .filter(|l| {
                !l.contains("host ack")
                    || std::env::var("HA_SIM_TRACE_BLOCK")
                        .is_ok_and(|b| l.contains(&format!(" b{b} ")))
            })
            .collect();
        let start = lines.len().saturating_sub(60);
        let mut out = lines[start..]
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        for n in [NodeId::A, NodeId::B] {
            if let Some(d) = self.nodes[idx(n)].data() {
                out.push_str(&format!(
                    "\n{}  {:?} promised {}",
                    d.status(self.nodes[idx(n)].local_now(self.now)),
                    d.counters(),
                    d.promised_epoch()
                ));
            }
        }
        out
    }

    // ----- host -----

    fn pick_target(&mut self) -> NodeId {
        let optimized: Vec<NodeId> = [NodeId::A, NodeId::B]
            .into_iter()
            .filter(|&n| self.nodes[idx(n)].ana == AnaState::Optimized)
            .collect();
        if !optimized.is_empty() && !self.rng.chance(100) {
            optimized[self.rng.below(optimized.len() as u64) as usize]
        } else if self.rng.chance(500) {
            NodeId::A
        } else {
            NodeId::B
        }
    }

    fn host_step(&mut self) {
        // Retry or issue a write, or issue a read; now and then a flush.
        let b = self.rng.below(HOST_BLOCKS);
        let target = self.pick_target();
        if self.rng.chance(50) && self.host.flushes_in_flight.len() < 4 {
            let id = self.host.next_id;
            self.host.next_id += 1;
            self.host.flushes_in_flight.insert(id, target);
            let d = self.rng.range(50, 200);
            self.deliver(d, target, Input::HostFlush { id });
            return;
        }
        let id = self.host.next_id;
        let bs = &mut self.host.blocks[b as usize];
        if bs.in_flight {
            return;
        }
        let op = if self.rng.chance(600) {
            if bs
                .pending
                .is_some_and(|(_, retry_at, _)| retry_at > self.now)
            {
                return;
            }
            // Now and then a Write Zeroes or a Deallocate instead of data.
            let kind = match self.rng.below(20) {
                0 | 1 => WriteKind::Zeroes,
                2 => WriteKind::Deallocate,
                _ => WriteKind::Data,
            };
            let (version, kind) = bs.next_write(&mut self.host.next_version, kind);
            HostOp::Write {
                block: b,
                version,
                kind,
            }
        } else {
            if self.host.read_in_flight > 16 {
                return;
            }
            self.host.read_in_flight += 1;
            HostOp::Read {
                block: b,
                min_version: bs.acked,
            }
        };
        bs.in_flight = true;
        self.host.next_id += 1;
        self.host.in_flight.insert(id, (target, op, self.now));
        let d = self.rng.range(50, 200);
        self.deliver(d, target, Input::Host { id, op });
    }

    /// Sends a read of `block` to `target` now, whatever its ANA state (a
    /// host with a stale path view). Returns false if the block is busy.
    pub fn host_read_via(&mut self, target: NodeId, block: u64) -> bool {
        let bs = &mut self.host.blocks[block as usize];
        if bs.in_flight {
            return false;
        }
        bs.in_flight = true;
        let op = HostOp::Read {
            block,
            min_version: bs.acked,
        };
        self.host.read_in_flight += 1;
        let id = self.host.next_id;
        self.host.next_id += 1;
        self.host.in_flight.insert(id, (target, op, self.now));
        self.deliver(10, target, Input::Host { id, op });
        true
    }

    /// Sends a new write of `block` to `target` now, whatever its ANA state.
    pub fn host_write_via(&mut self, target: NodeId, block: u64) -> bool {
        let bs = &mut self.host.blocks[block as usize];
        if bs.in_flight {
            return false;
        }
        // A write the host still has to retry is sent again; otherwise a
        // new version.
        let (version, kind) = bs.next_write(&mut self.host.next_version, WriteKind::Data);
        bs.in_flight = true;
        let op = HostOp::Write {
            block,
            version,
            kind,
        };
        let id = self.host.next_id;
        self.host.next_id += 1;
        self.host.in_flight.insert(id, (target, op, self.now));
        self.deliver(10, target, Input::Host { id, op });
        true
    }

    /// Blocks whose acknowledged version is above `versions[block]`.
    pub fn blocks_acked_since(&self, versions: &[u64]) -> Vec<u64> {
        (0..HOST_BLOCKS)
            .filter(|&b| self.host.blocks[b as usize].acked > versions[b as usize])
            .collect()
    }

    pub fn busy_blocks(&self) -> usize {
        self.host.blocks.iter().filter(|b| b.in_flight).count()
    }

    pub fn acked_versions(&self) -> Vec<u64> {
        self.host.blocks.iter().map(|b| b.acked).collect()
    }

    fn host_flush_complete(&mut self, id: u64, result: IoResult) {
        if self.host.flushes_in_flight.remove(&id).is_none() {
            return;
        }
        match result {
            IoResult::Ok => self.host.flushes_ok += 1,
            IoResult::PathError => self.host.flushes_failed += 1,
            IoResult::MediaError => panic!("a flush failed with a media error on a healthy disk"),
        }
    }

    fn host_complete(&mut self, id: u64, outcome: Option<(IoResult, Option<Vec<u8>>)>) {
        let Some((target, op, _)) = self.host.in_flight.remove(&id) else {
            return;
        };
        let ok = matches!(outcome, Some((IoResult::Ok, _)));
        if ok {
            if let Some(start) = self.host.stall_window_start {
                let gap = self
                    .now
                    .saturating_sub(self.host.last_completion.max(start));
                self.host.max_stall = self.host.max_stall.max(gap);
            }
            self.host.last_completion = self.now;
        } else {
            self.host.path_errors += 1;
        }
        match op {
            HostOp::Write {
                block,
                version,
                kind,
            } => {
                let bs = &mut self.host.blocks[block as usize];
                bs.in_flight = false;
                if ok {
                    assert!(version > bs.acked, "ack of an older version");
                    bs.acked = version;
                    bs.pending = None;
                    self.host.writes_acked += 1;
                    match kind {
                        WriteKind::Data => {}
                        WriteKind::Zeroes => self.host.zeroes_acked += 1,
                        WriteKind::Deallocate => self.host.deallocates_acked += 1,
                    }
                    self.log.push(format!(
                        "{:>8.3}ms host ack w b{} v{} via {}",
                        self.now as f64 / 1000.0,
                        block,
                        version,
                        target
                    ));
                } else {
                    bs.pending = Some((version, self.now + 5 * MS, kind));
                }
            }
            HostOp::Read { block, min_version } => {
                self.host.read_in_flight -= 1;
                self.host.blocks[block as usize].in_flight = false;
                if ok {
                    let data = outcome.unwrap().1.expect("read data");
                    let v = version_of(&data);
                    let bs = &self.host.blocks[block as usize];
                    assert!(
                        bs.may_hold(v, min_version),
                        "STALE READ of block {block} via {target}: got v{v} (0: zeroes), acked before issue v{min_version}, zeroes issued as {:?}\n{}",
                        bs.zero_versions,
                        self.log_tail()
                    );
                    self.host.reads_ok += 1;
                }
            }
        }
    }

    // ----- invariants -----

    /// Checked after every event.
    fn check(&mut self) {
        self.checks += 1;
        // The newest committed record any live node knows.
        let mut latest: Option<tandem_ha::EpochRecord> = None;
        for n in &self.nodes[..2] {
            // A dead node's record is the one persisted on its disk.
            let rec = match n.data() {
                Some(d) => Some(d.record()),
                None => persisted_record(n),
            };
            if let Some(r) = rec
                && latest.is_none_or(|l| r.epoch > l.epoch)
            {
                latest = Some(r);
            }
        }
        // Never two nodes serving in the same epoch.
        let serving: Vec<(NodeId, u64)> = [NodeId::A, NodeId::B]
            .into_iter()
            .filter_map(|n| {
                let node = &self.nodes[idx(n)];
                let d = node.data()?;
                d.is_serving(node.local_now(self.now))
                    .then(|| (n, d.epoch()))
            })
            .collect();
        // Unless a node was paused, the old primary has stopped serving before
        // a new one starts (leases and the promise horizon).
        let recently_paused = self.nodes.iter().any(|n| {
            n.paused_since.is_some()
                || n.last_resume
                    .is_some_and(|r| self.now - r < self.timing.lease_duration.as_micros() * 2)
        });
        if serving.len() == 2 && !recently_paused {
            panic!(
                "two nodes serving at once (epochs {} and {})\n{}",
                serving[0].1,
                serving[1].1,
                self.log_tail()
            );
        }
        if serving.len() == 2 {
            assert_ne!(
                serving[0].1,
                serving[1].1,
                "two primaries serving in epoch {}\n{}",
                serving[0].1,
                self.log_tail()
            );
        }
        // Every node that could become primary holds every acknowledged write.
        let Some(latest) = latest else { return };
        for n in [NodeId::A, NodeId::B] {
            let node = &self.nodes[idx(n)];
            let Some(d) = node.data() else { continue };
            if node.reverted && d.status(Instant::ZERO).handshake.is_none() {
                continue;
            }
            if d.data_state() != DataState::UpToDate
                || latest.outdated == Some(n)
                || d.record().outdated == Some(n)
            {
                continue;
            }
            if latest.epoch > d.record().epoch && latest.primary != Some(n) {
                // It will learn the latest record before it can stand; the
                // record itself is checked on the node that holds it.
            }
            for (b, bs) in self.host.blocks.iter().enumerate() {
                if bs.acked == 0 {
                    continue;
                }
                let v = node
                    .disk
                    .get(&(b as u64 * BLOCK))
                    .map_or(0, |d| version_of(d));
                assert!(
                    bs.may_hold(v, bs.acked),
                    "LOST WRITE: block {b} acked v{} but {n} (could be primary, record {:?}, latest {:?}) has v{v} (0: zeroes)\n{}",
                    bs.acked,
                    d.record(),
                    latest,
                    self.log_tail()
                );
            }
        }
    }

    /// Heals everything, waits for a synchronised pair, then reads every
    /// block back through the primary and compares both disks.
    pub fn final_verify(&mut self) {
        self.host.enabled = false;
        for id in NodeId::ALL {
            if self.nodes[idx(id)].paused_since.is_some() {
                self.resume(id);
            }
            if !self.nodes[idx(id)].alive() {
                self.restart(id);
            }
        }
        self.heal();
        let ok = self.run_until(20_000 * MS, |s| {
            s.primary().is_some() && s.in_sync() && s.host.in_flight.is_empty()
        });
        self.run_for(500 * MS);
        let ok = ok && self.in_sync();
        assert!(
            ok,
            "pair did not resynchronise\n{}\nA: {}\nB: {}",
            self.log_tail(),
            self.data(NodeId::A).status(Instant::ZERO),
            self.data(NodeId::B).status(Instant::ZERO)
        );
        let p = self.primary().unwrap();
        // Read every block through the protocol.
        for b in 0..HOST_BLOCKS {
            let bs = &self.host.blocks[b as usize];
            let op = HostOp::Read {
                block: b,
                min_version: bs.acked,
            };
            let id = self.host.next_id;
            self.host.next_id += 1;
            self.host.read_in_flight += 1;
            self.host.blocks[b as usize].in_flight = true;
            self.host.in_flight.insert(id, (p, op, self.now));
            self.deliver(10, p, Input::Host { id, op });
        }
        let ok = self.run_until(5_000 * MS, |s| s.host.in_flight.is_empty());
        assert!(ok, "final reads did not complete");
        // After a full resync both replicas must be identical block for block.
        let a = &self.nodes[0].disk;
        let b = &self.nodes[1].disk;
        for blk in 0..HOST_BLOCKS {
            let va = a.get(&(blk * BLOCK)).map_or(0, |d| version_of(d));
            let vb = b.get(&(blk * BLOCK)).map_or(0, |d| version_of(d));
            assert_eq!(
                va,
                vb,
                "replicas differ at block {blk}\n{}",
                self.log_tail()
            );
            let bs = &self.host.blocks[blk as usize];
            assert!(
                bs.may_hold(va, bs.acked),
                "acknowledged write lost at block {blk}: v{va} (0: zeroes), acked v{}",
                bs.acked
            );
        }
    }
}

fn persisted_record(n: &SimNode) -> Option<tandem_ha::EpochRecord> {
    let layout = tandem_ha::metadata::Layout::new(n.disk_bytes, 65536).unwrap();
    let s0 = n.meta.get(&layout.superblock_offset(0))?;
    let s1 = n.meta.get(&layout.superblock_offset(1))?;
    tandem_ha::metadata::Superblock::load(s0, s1)
        .ok()
        .map(|sb| sb.record)
}

fn write_disk(disk: &mut BTreeMap<u64, Vec<u8>>, offset: u64, data: &[u8]) {
    assert_eq!(offset % BLOCK, 0);
    if let Ok(b) = std::env::var("HA_SIM_TRACE_BLOCK") {
        let b: u64 = b.parse().unwrap();
        let o = b * BLOCK;
        if o >= offset && o < offset + data.len() as u64 {
            let k = ((o - offset) / BLOCK) as usize * BLOCK as usize;
            eprintln!(
                "disk write {:p} block {b} v{} (len {})",
                disk,
                version_of(&data[k..k + 16]),
                data.len()
            );
        }
    }
    for (i, chunk) in data.chunks(BLOCK as usize).enumerate() {
        let mut b = chunk.to_vec();
        b.resize(BLOCK as usize, 0);
        disk.insert(offset + i as u64 * BLOCK, b);
    }
}

fn read_disk(disk: &BTreeMap<u64, Vec<u8>>, offset: u64, len: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(len as usize);
    let mut o = offset;
    while (out.len() as u32) < len {
        match disk.get(&o) {
            Some(b) => out.extend_from_slice(b),
            None => out.extend(std::iter::repeat_n(0u8, BLOCK as usize)),
        }
        o += BLOCK;
    }
    out.truncate(len as usize);
    out
}
