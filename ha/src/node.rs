//! The data node state machine: roles and epochs, heartbeats on every link,
//! leases, elections, synchronous replication, dirty-region resync, planned
//! switchover and fencing, and the ANA state the NVMe layer must report.
//!
//! The kernel drives it with the `on_*`/`host_*`/command methods and `tick`,
//! then executes [`DataNode::drain_actions`] **in order**. A
//! [`Action::PersistMetadata`] is a barrier: it must be durable (written with
//! FUA, or written then flushed) before any later action is performed.
//!
//! The role is per node: every namespace of the node follows it.

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec::Vec;
use core::fmt;

use crate::Error;
use crate::bitmap::Bitmap;
use crate::generations::{
    self, DataView, Decision, Generations, Refusal as HandshakeRefusal, Side, Verdict,
};
use crate::metadata::{Layout, Superblock, emit_bitmap_block, load_bitmap_block};
use crate::sizes::{self, SizeView, Sizes};
use crate::time::{Duration, DurationStats, Instant};
use crate::types::{AnaState, DataState, EpochRecord, LinkId, MAX_LINKS, NodeId, Role};
use crate::voter::{OwnView, VoteAsk, Voter};
use crate::wire::control::{Datagram, ElectionReason, Heartbeat, Message, Refusal, flags};
use crate::wire::stream::{self, AckStatus, Body, Frame, Hello, HelloData, hello_flag};

mod apply;
mod dirty_log;
mod election;
mod flushes;
mod frames;
mod host_path;
mod ids;
mod lease;
pub mod replication_bound;
mod resync;

use apply::{Apply, ApplyKind, ApplyQueue};
use dirty_log::{DirtyLog, Persisted};
use election::Candidacy;
use flushes::{FlushPurpose, Flushes};
use ids::{BitmapGeneration, Extent, FlushId, Region, Seq, WriteId};
use lease::Lease;
use resync::{Pace, Pacer, ResyncPump};

/// The timers of the protocol. All are measured on the local clock only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Heartbeats and lease renewals are sent this often on every link.
    pub heartbeat_interval: Duration,
    /// A member silent on every link for this long is considered failed.
    pub failure_timeout: Duration,
    /// A lease lasts this long from the moment its request was sent.
    pub lease_duration: Duration,
    /// Added by a granter before it helps anyone else take over.
    pub lease_margin: Duration,
    /// Worst relative clock-rate difference between two nodes.
    pub clock_drift_ppm: u32,
}

impl Timing {
    /// Defaults for a LAN: takeover about 0.5 s after the primary died.
    pub const DEFAULT: Timing = Timing {
        heartbeat_interval: Duration::from_millis(50),
        failure_timeout: Duration::from_millis(500),
        lease_duration: Duration::from_millis(400),
        lease_margin: Duration::from_millis(100),
        clock_drift_ppm: 1000,
    };

    /// How long a granter keeps its promise after a grant: the lease,
    /// stretched by the clock drift, plus the safety margin.
    pub fn promise_horizon(&self) -> Duration {
        self.lease_duration.stretched_by_ppm(self.clock_drift_ppm) + self.lease_margin
    }

    pub fn validate(&self) -> Result<(), Error> {
        let i = self.heartbeat_interval.as_micros();
        if i == 0 {
            return Err(Error::InvalidConfig("heartbeat interval must be positive"));
        }
        if self.lease_duration.as_micros() < 2 * i {
            return Err(Error::InvalidConfig(
                "lease must cover at least two heartbeat intervals",
            ));
        }
        if self.failure_timeout.as_micros() < 2 * i {
            return Err(Error::InvalidConfig(
                "failure timeout must cover at least two heartbeat intervals",
            ));
        }
        Ok(())
    }
}

/// Configuration of a data node.
#[derive(Clone, Debug)]
pub struct Config {
    pub node: NodeId,
    /// Identifies the pair; stored in the metadata and checked on open.
    pub pair_id: u64,
    /// A value that differs on every boot (e.g. from the TSC).
    pub incarnation: u64,
    /// Number of links (1..=4); link 0 carries the replication stream.
    pub links: u8,
    pub timing: Timing,
    /// Resync bandwidth limit, bytes per second.
    pub resync_rate: u64,
    /// Resync chunks sent and not yet acknowledged, at most.
    pub resync_max_in_flight: u32,
    /// How often a clean cycle runs: a region's bit is cleared once no write
    /// touched it for a whole interval and both disks were flushed since its
    /// last write (so a busy region costs no metadata write per write).
    pub bitmap_flush_interval: Duration,
    /// Role changes kept for `history`.
    pub history_len: usize,
    /// Regions a write marks together while the pair is in sync (its
    /// activity extent; 64, i.e. 4 MiB with 64 KiB regions). A larger extent
    /// costs fewer metadata writes and a larger resync after a crash.
    pub activity_extent_regions: u32,
    /// How `status` names each link (e.g. the NIC that carries it).
    pub link_names: [&'static str; MAX_LINKS],
    /// Replicated data sent to the peer and not yet acknowledged, at most
    /// (bytes of write data on the stream): beyond it writes wait for the
    /// peer's acknowledgements, or, with the peer recorded Outdated, the
    /// stream is given up (a resync catches the peer up).
    pub max_unacked_bytes: u64,
    /// The links hosts reach this node on (bit per link; 0: every link but
    /// the replication link 0). See [`crate::hostpath`].
    pub front_end_links: u8,
    /// Hysteresis of the host-path verdict (`None`: derived from `timing`).
    pub host_path_timing: Option<crate::hostpath::HostPathTiming>,
}

impl Config {
    pub fn new(node: NodeId, pair_id: u64, incarnation: u64) -> Config {
        Config {
            node,
            pair_id,
            incarnation,
            links: 2,
            timing: Timing::DEFAULT,
            resync_rate: 100 << 20,
            resync_max_in_flight: 16,
            bitmap_flush_interval: Duration::from_millis(1000),
            history_len: 64,
            activity_extent_regions: 64,
            link_names: ["link0", "link1", "link2", "link3"],
            max_unacked_bytes: 64 << 20,
            front_end_links: 0,
            host_path_timing: None,
        }
    }
}

/// Outcome of a host I/O, for the NVMe layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoResult {
    Ok,
    /// Fail with an ANA path status (Inaccessible or Transition): the host
    /// retries on the other path. Nothing was acknowledged.
    PathError,
    /// The local disk failed.
    MediaError,
}

/// Why host I/O is refused at submission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostIoError {
    /// This node does not serve I/O now; report the given ANA state.
    NotServing(AnaState),
    /// The range lies outside the data area.
    OutOfRange,
}

/// Why a console command was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandError {
    NotPrimary,
    AlreadyPrimary,
    /// The peer is unreachable, not UpToDate, or not connected on the
    /// replication stream: a switchover would lose availability.
    PeerNotReady,
    /// This node's data is not UpToDate: it can never become primary.
    NotUpToDate,
    AdminFenced,
    Busy,
    /// The primary is not connected to this node on the replication stream,
    /// or does not count it UpToDate (resync under way).
    NotInSync,
    /// The primary's data cannot be discarded while it serves.
    IsPrimary,
    /// The peer reports that its front-end is lost: hosts could not reach it
    /// as primary.
    PeerHasNoHostPath,
    /// This node's front-end is lost: hosts could not reach it as primary.
    NoHostPath,
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CommandError::NotPrimary => "this node is not primary",
            CommandError::AlreadyPrimary => "this node is already primary",
            CommandError::PeerNotReady => "peer not reachable, not UpToDate or not connected",
            CommandError::NotUpToDate => "local data is not UpToDate",
            CommandError::AdminFenced => "node is fenced by the operator (use unfence)",
            CommandError::Busy => "a role change is already under way",
            CommandError::NotInSync => {
                "not connected to the primary, or not yet in sync with it (resync under way)"
            }
            CommandError::IsPrimary => {
                "this node is primary: its data cannot be discarded (demote it first)"
            }
            CommandError::PeerHasNoHostPath => {
                "the peer's front-end is down: hosts could not reach it"
            }
            CommandError::NoHostPath => "this node's front-end is down: hosts could not reach it",
        })
    }
}

/// A role change, as printed on the console and kept in the history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoleChange {
    pub at: Instant,
    pub role: Role,
    pub epoch: u64,
    pub reason: &'static str,
}

impl fmt::Display for RoleChange {
    /// `tandem: role <role> epoch <N> reason <text>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tandem: role {} epoch {} reason {}",
            self.role, self.epoch, self.reason
        )
    }
}

/// What the two nodes decided when they met on the replication stream,
/// printed on the console when it changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handshake {
    pub peer: NodeId,
    pub verdict: Verdict,
    /// Both disks' sizes, printed with a refusal about sizes.
    pub sizes: Sizes,
}

impl fmt::Display for Handshake {
    /// `tandem: handshake with <peer>: <decision> (<reason>)`, and for a
    /// refusal what resolves it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tandem: handshake with {}: {}", self.peer, self.verdict)?;
        if let Decision::Refuse(r) = self.verdict.decision {
            if matches!(
                r,
                HandshakeRefusal::DiskTooSmall | HandshakeRefusal::Geometry
            ) {
                write!(f, "\ntandem: {}", self.sizes)?;
            }
            write!(
                f,
                "\ntandem: both nodes keep their data as it is; to resolve: {}",
                generations::resolution(r)
            )?;
        }
        Ok(())
    }
}

/// What the kernel must do. Executed in order; `PersistMetadata` is a barrier
/// (nothing after it may start before it is durable); `PersistBitmap` and
/// `FlushDisk` are not: the crate waits for their reports itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send a UDP datagram to `to` over `link`.
    SendDatagram {
        to: NodeId,
        link: LinkId,
        bytes: Vec<u8>,
    },
    /// Append bytes to the replication stream.
    SendStream { bytes: Vec<u8> },
    /// Append `frame_prefix` then the data of host write `id` to the stream
    /// (as many zero bytes as it is long, for a Write Zeroes).
    ReplicateWrite { id: u64, frame_prefix: Vec<u8> },
    /// The stream is broken (protocol error): close it; reconnect later.
    CloseStream,
    /// Write these bytes at this disk offset, durably, before going on.
    PersistMetadata { offset: u64, bytes: Vec<u8> },
    /// Write these bitmap blocks (offset, bytes) durably (forced unit
    /// access), while other actions go on; report `on_bitmap_persisted`.
    /// At most one is outstanding.
    PersistBitmap {
        generation: u64,
        blocks: Vec<(u64, Vec<u8>)>,
    },
    /// Flush the local disk's volatile write cache; report
    /// `on_disk_flush_done`.
    FlushDisk { flush: u64 },
    /// Complete host flush `id` to the host.
    CompleteFlush { id: u64, result: IoResult },
    /// Issue host write `id` to the local disk; report `on_local_write_done`.
    SubmitLocalWrite { id: u64 },
    /// Complete host write `id` to the host.
    CompleteWrite { id: u64, result: IoResult },
    /// Complete host read `id` (whose data the kernel read) to the host.
    CompleteRead { id: u64, result: IoResult },
    /// Secondary: write replicated data (durably first if
    /// `force_unit_access`); report `on_replicated_write_done`.
    ApplyReplicatedWrite {
        seq: u64,
        offset: u64,
        data: Vec<u8>,
        force_unit_access: bool,
    },
    /// Secondary: write `len` bytes of zeroes at `offset` (the device's
    /// write-zeroes where it has one); report `on_replicated_write_done`.
    ApplyReplicatedZeroes { seq: u64, offset: u64, len: u64 },
    /// Secondary: deallocate (discard) the range; report
    /// `on_replicated_write_done`.
    ApplyReplicatedDeallocate { seq: u64, offset: u64, len: u64 },
    /// Primary: read this range for resync; report `on_resync_read_done`.
    ReadForResync { offset: u64, len: u32 },
    /// Secondary: write resync data durably (forced unit access); report
    /// `on_resync_write_done`.
    ApplyResync { offset: u64, data: Vec<u8> },
    /// Report this ANA state from now on (and raise the ANA change AEN).
    AnaChanged(AnaState),
    /// Print the line on the console (`Display` of [`RoleChange`]).
    RoleChanged(RoleChange),
    /// Print the handshake's outcome on the console (`Display` of
    /// [`Handshake`]).
    HandshakeDecided(Handshake),
    /// Print the outcome of an online verification (`Display` of
    /// [`VerifyProgress`]).
    VerifyFinished(VerifyProgress),
}

/// Progress or outcome of an online verification (`verify`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifyProgress {
    pub total_regions: u64,
    pub checked_regions: u64,
    /// Regions whose two copies differ: marked out of sync, then resynced.
    pub differing_regions: u64,
    pub running: bool,
    /// Stopped before the end (the stream broke, the role was lost).
    pub interrupted: bool,
}

impl fmt::Display for VerifyProgress {
    /// `tandem: verify done: <K> of <T> regions differ …`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.interrupted {
            write!(
                f,
                "tandem: verify interrupted after {} of {} regions: {} differ",
                self.checked_regions, self.total_regions, self.differing_regions
            )
        } else if self.differing_regions > 0 {
            write!(
                f,
                "tandem: verify done: {} of {} regions differ (marked out of sync; resync started)",
                self.differing_regions, self.total_regions
            )
        } else {
            write!(
                f,
                "tandem: verify done: {} regions, no difference",
                self.total_regions
            )
        }
    }
}

/// Online verification under way (primary): regions are read here,
/// their digest sent to the peer, which compares it with its own copy.
#[derive(Debug)]
struct Verify {
    cursor: u64,
    reading: BTreeSet<u64>,
    in_flight: BTreeSet<u64>,
    pacer: Pacer,
    checked: u64,
    found: Bitmap,
}

#[derive(Clone, Copy, Debug)]
struct Demote {
    started: Instant,
    /// The flush of both disks that precedes the handover.
    flush: Option<FlushId>,
    handover_sent: bool,
}

#[derive(Clone, Copy, Debug)]
struct PendingWrite {
    offset: u64,
    len: u64,
    at: Instant,
    force_unit_access: bool,
    /// Its regions are marked in the bitmap (it may be waiting for that to
    /// be durable): overlapping writes wait behind it.
    admitted: bool,
    /// Issued to the local disk and the stream.
    started: bool,
    /// Its number on the replication stream, once sent on this connection.
    seq: Option<Seq>,
    local: Option<bool>,
    peer_acked: bool,
    needs_peer: bool,
    content: Content,
}

/// What a host write puts on the disks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Content {
    /// The host's data (held by the kernel).
    Data,
    /// Zeroes (Write Zeroes): replicated as a WriteZeroes frame where the
    /// peer understands it, else as a Write of zero bytes.
    Zeroes,
    /// Deallocated (Dataset Management): replicated as a Deallocate frame
    /// where the peer understands it, else not at all (the peer's blocks
    /// keep their content, which is one a deallocated block may have).
    Deallocate,
}

#[derive(Clone, Copy, Debug)]
struct PendingRead {
    ticket: u64,
    local: Option<bool>,
}

#[derive(Debug, Default)]
struct StreamState {
    connected: bool,
    since: Instant,
    decoder: stream::Decoder,
    peer_hello: Option<Hello>,
    peer_bitmap: Option<Bitmap>,
    /// The generation this node offered for a new pair in its Hello.
    offered_generation: u64,
    /// Host writes on this connection, from their arrival: until the local
    /// disk finished, until the peer acknowledged.
    write_times: WriteTimes,
    /// Secondary: when each replicated write being applied arrived.
    apply_arrivals: BTreeMap<u64, Instant>,
}

/// How long replicated host writes take on each side (`status`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteTimes {
    pub local: DurationStats,
    pub peer: DurationStats,
    /// Secondary: from a replicated write's arrival to its acknowledgement.
    pub applied: DurationStats,
}

/// Replication state for status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicationState {
    /// No replication stream.
    Disconnected,
    /// Connected, peer in sync: writes are acknowledged by both.
    Established,
    /// Primary writing alone: the peer is recorded Outdated.
    Degraded,
    /// Resync to the peer under way.
    SyncSource,
    /// Receiving a resync.
    SyncTarget,
}

impl ReplicationState {
    pub fn name(self) -> &'static str {
        match self {
            ReplicationState::Disconnected => "Disconnected",
            ReplicationState::Established => "Established",
            ReplicationState::Degraded => "Degraded",
            ReplicationState::SyncSource => "SyncSource",
            ReplicationState::SyncTarget => "SyncTarget",
        }
    }
}

/// Resync progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResyncProgress {
    pub total_regions: u64,
    pub remaining_regions: u64,
}

impl ResyncProgress {
    /// Percent done, in tenths of a percent (0..=1000).
    pub fn per_mille(&self) -> u64 {
        if self.total_regions == 0 {
            return 1000;
        }
        (self.total_regions - self.remaining_regions) * 1000 / self.total_regions
    }
}

/// A snapshot for the console's `status`.
#[derive(Clone, Debug)]
pub struct Status {
    pub node: NodeId,
    pub role: Role,
    pub epoch: u64,
    pub promised_epoch: u64,
    pub record: EpochRecord,
    pub data_state: DataState,
    pub peer_state: DataState,
    pub admin_fenced: bool,
    pub ana: AnaState,
    pub serving: bool,
    pub lease_remaining: Option<Duration>,
    /// Time since the send of the newest lease request that was granted.
    pub lease_age: Option<Duration>,
    pub links: u8,
    pub link_names: [&'static str; MAX_LINKS],
    /// Time since the peer / witness was last heard, per link.
    pub peer_heard: [Option<Duration>; MAX_LINKS],
    pub witness_heard: [Option<Duration>; MAX_LINKS],
    pub peer_reachable: bool,
    pub witness_reachable: bool,
    pub replication: ReplicationState,
    pub in_flight_writes: usize,
    /// Replicated writes since the stream connected.
    pub write_times: WriteTimes,
    /// Bytes sent to the peer and not yet acknowledged (replication lag).
    pub unacked_bytes: u64,
    /// Regions that may differ from the peer (bitmap bits), in bytes, while
    /// not in sync with it.
    pub out_of_sync_bytes: u64,
    /// While in sync: regions still marked because they were written
    /// recently (they would be resynced after a crash), in bytes.
    pub active_bytes: u64,
    pub resync: Option<ResyncProgress>,
    /// The resync under way copies every region.
    pub full_resync: bool,
    pub election: Option<(u64, ElectionReason)>,
    pub generations: Generations,
    /// The disk is blank (never paired).
    pub blank: bool,
    /// The outcome of the last handshake with the peer.
    pub handshake: Option<Verdict>,
    /// Online verification under way, or its last outcome.
    pub verify: Option<VerifyProgress>,
    /// The namespace size agreed with the peer (None: not yet, a blank
    /// disk that has not met its peer), this disk's data area, and the
    /// peer's from its last Hello: a peer whose disk is smaller than the
    /// agreed size is refused.
    pub namespace_bytes: Option<u64>,
    pub data_bytes: u64,
    pub peer_data_bytes: Option<u64>,
    /// This node's host path (`None` while the kernel reports no front-end
    /// link state), and the peer's as its last heartbeat told.
    pub host_path: Option<crate::wire::control::HostPathReport>,
    pub peer_host_path: Option<crate::wire::control::HostPathReport>,
    /// The peer is heard and reports that it cannot serve hosts.
    pub peer_host_path_lost: bool,
}

fn fmt_age(f: &mut fmt::Formatter<'_>, d: Option<Duration>) -> fmt::Result {
    match d {
        Some(d) => write!(f, "{}ms", d.as_millis()),
        None => f.write_str("never"),
    }
}

impl fmt::Display for Status {
    /// Several lines in the manner of `drbdadm status`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} role:{} epoch:{} disk:{} ana:{}{}",
            self.node,
            self.role,
            self.epoch,
            self.data_state,
            self.ana.name(),
            if self.admin_fenced {
                " fenced-by-operator"
            } else {
                ""
            }
        )?;
        write!(f, "  lease:")?;
        match self.lease_remaining {
            Some(r) => write!(f, "{}ms-left", r.as_millis())?,
            None => f.write_str("none")?,
        }
        write!(f, " age:")?;
        fmt_age(f, self.lease_age)?;
        if let Some((e, r)) = self.election {
            write!(f, " election:{}({})", e, r.name())?;
        }
        writeln!(f)?;
        write!(
            f,
            "  {} role:{} disk:{} reachable:{}",
            self.node.peer(),
            if self.record.primary == Some(self.node.peer()) {
                "primary"
            } else {
                "secondary"
            },
            self.peer_state,
            self.peer_reachable
        )?;
        for l in 0..self.links as usize {
            write!(f, " {}:", self.link_names[l])?;
            fmt_age(f, self.peer_heard[l])?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "    replication:{} in-flight:{} lag:{}B out-of-sync:{}B active:{}B",
            self.replication.name(),
            self.in_flight_writes,
            self.unacked_bytes,
            self.out_of_sync_bytes,
            self.active_bytes
        )?;
        if self.write_times.peer.count() > 0 {
            writeln!(
                f,
                "    write-time local:{} peer:{}",
                self.write_times.local, self.write_times.peer
            )?;
        }
        if self.write_times.applied.count() > 0 {
            writeln!(f, "    apply-time {}", self.write_times.applied)?;
        }
        if let Some(p) = self.resync {
            writeln!(
                f,
                "    resync:{}.{}% ({} of {} regions left){}",
                p.per_mille() / 10,
                p.per_mille() % 10,
                p.remaining_regions,
                p.total_regions,
                if self.full_resync { " full" } else { "" }
            )?;
        }
        if let Some(v) = self.handshake {
            writeln!(f, "    handshake:{v}")?;
        }
        if let Some(v) = self.verify {
            let per_mille = v.checked_regions * 1000 / v.total_regions.max(1);
            writeln!(
                f,
                "    verify:{}.{}% ({} of {} regions checked) differing:{}{}",
                per_mille / 10,
                per_mille % 10,
                v.checked_regions,
                v.total_regions,
                v.differing_regions,
                if v.running {
                    ""
                } else if v.interrupted {
                    " interrupted"
                } else {
                    " done"
                }
            )?;
        }
        let g = self.generations;
        writeln!(
            f,
            "  generations current:{:016x} bitmap:{:016x} history:{:016x},{:016x}{}",
            g.current,
            g.bitmap,
            g.history[0],
            g.history[1],
            if self.blank { " blank" } else { "" }
        )?;
        match self.namespace_bytes {
            Some(n) => write!(f, "  size:{n}B")?,
            None => f.write_str("  size:not-agreed")?,
        }
        write!(f, " disk-size:{}B", self.data_bytes)?;
        if let Some(p) = self.peer_data_bytes {
            write!(f, " peer-size:{p}B")?;
        }
        writeln!(f)?;
        crate::hostpath::fmt_status(f, self.node, self.host_path, self.peer_host_path)?;
        write!(f, "  witness reachable:{}", self.witness_reachable)?;
        for l in 0..self.links as usize {
            write!(f, " {}:", self.link_names[l])?;
            fmt_age(f, self.witness_heard[l])?;
        }
        writeln!(f)
    }
}

/// Counters of refused input, for diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub bad_datagrams: u64,
    pub stale_datagrams: u64,
    pub stream_errors: u64,
    pub fenced_writes_refused: u64,
    /// Bitmap persists (each may cover many writes).
    pub bitmap_persists: u64,
    /// Bits cleared by clean cycles.
    pub regions_cleaned: u64,
    /// Streams given up because the Outdated peer did not drain them.
    pub stream_overflows: u64,
    /// Recoveries ended because the peer left a write unanswered.
    pub stuck_recoveries: u64,
}

/// Region size of the dirty bitmap unless configured otherwise.
pub const DEFAULT_REGION_SIZE: u32 = 65536;

/// How a fresh disk is formatted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitialData {
    /// Both disks start identical (e.g. freshly created, all zeros).
    UpToDate,
    /// This disk must be fully synchronised from the peer before use.
    Inconsistent,
    /// An empty disk: it takes a full copy from a peer that has data, and
    /// two blank disks that meet make a new pair. Never stands before it
    /// met its peer.
    Blank,
}

/// A data node (`a` or `b`).
pub struct DataNode {
    cfg: Config,
    layout: Layout,
    me: NodeId,
    peer: NodeId,
    voter: Voter,
    data_state: DataState,
    peer_state: DataState,
    admin_fenced: bool,
    sb_sequence: u64,
    /// The dirty bitmap: its marks, their persistence (writes wait for the
    /// generation of their bits) and the clean cycle.
    dirty: DirtyLog,
    /// Admitted writes waiting for their bits to be durable, in order.
    awaiting_bitmap: VecDeque<WriteId>,
    flushes: Flushes,
    role: Role,
    candidacy: Option<Candidacy>,
    next_candidacy_at: Instant,
    primary_seen: Instant,
    handover_from_peer: bool,
    handed_over_to: Option<NodeId>,
    demote: Option<Demote>,
    /// A switchover asked for, its pre-flush (both disks) under way while
    /// host I/O still flows: the flush, and when it started.
    demote_preflush: Option<(FlushId, Instant)>,
    /// Why the switchover under way was started (the old primary's role
    /// change names it): `switchover` or `host-path-lost`.
    handover_reason: &'static str,
    /// What the node judges of its own front-end ([`crate::hostpath`]).
    host_path: crate::hostpath::HostPathMonitor,
    /// When this node last became primary (host-path handovers are spaced
    /// from it).
    primary_since: Instant,
    lease: Lease,
    writes: BTreeMap<WriteId, PendingWrite>,
    seq_to_id: BTreeMap<Seq, WriteId>,
    unacked: replication_bound::Unacked,
    /// Writes waiting for the peer's acknowledgements (the bound above), in
    /// order; and a stream to give up because it does not drain.
    held_for_stream: VecDeque<WriteId>,
    stream_overflow: bool,
    next_seq: Seq,
    deferred: VecDeque<WriteId>,
    reads: BTreeMap<u64, PendingRead>,
    stream: StreamState,
    resync: Option<ResyncPump>,
    /// Secondary: replicated data waiting for overlapping writes.
    applies: ApplyQueue,
    resynced_in_epoch: Option<u64>,
    /// The data generations (persisted) and the blank flag.
    generations: Generations,
    blank: bool,
    /// The namespace size agreed with the peer (persisted; 0: not yet).
    agreed_bytes: u64,
    /// The outcome of the last handshake.
    handshake: Option<Verdict>,
    /// The peer must be resynced from this node (from the handshake): in
    /// full (`Some(true)`) or from the bitmaps. Until its resync finished,
    /// no clean cycle runs.
    peer_behind: Option<bool>,
    /// Sync target: the source's current generation, from its ResyncDone.
    resync_source_generation: u64,
    /// The last handshake refused the peer while this node was not
    /// primary: it does not stand until a handshake succeeds (or it
    /// restarts).
    refused_standing: bool,
    /// Mixed into new generation identifiers.
    generation_counter: u64,
    /// The peer's data size from its last Hello (`status`).
    last_peer_data_bytes: Option<u64>,
    /// Online verification under way (primary), and the last outcome.
    verify: Option<Verify>,
    verify_result: Option<VerifyProgress>,
    /// Secondary: verification digests waiting for their region's read.
    verify_checks: BTreeMap<u64, u64>,
    last_bitmap_flush: Instant,
    next_heartbeat: Instant,
    history: VecDeque<RoleChange>,
    ana: AnaState,
    actions: Vec<Action>,
    counters: Counters,
}

/// What the peer's Hello says about its disk's size: a peer of the version
/// before agreed sizes serves its whole data area once it holds data.
fn peer_size_view(h: &Hello) -> SizeView {
    let agreed = match h.data {
        Some(d) => d.agreed_bytes.unwrap_or(
            if d.flags & hello_flag::BLANK != 0 || d.generations.current == 0 {
                0
            } else {
                h.data_bytes
            },
        ),
        None => h.data_bytes,
    };
    SizeView {
        capacity: h.data_bytes,
        agreed,
    }
}

fn overlaps(a_off: u64, a_len: u64, b_off: u64, b_len: u64) -> bool {
    a_off < b_off.saturating_add(b_len) && b_off < a_off.saturating_add(a_len)
}

/// Whether a host write pending or unacknowledged by the peer covers part
/// of region `r`.
fn region_busy(
    layout: &Layout,
    writes: &BTreeMap<WriteId, PendingWrite>,
    unacked: &replication_bound::Unacked,
    r: Region,
) -> bool {
    let rs = layout.region_size as u64;
    writes
        .values()
        .any(|w| overlaps(w.offset, w.len, r.0 * rs, rs))
        || unacked
            .values()
            .any(|e| e.overlaps(Extent::new(r.0 * rs, rs)))
}

impl DataNode {
    /// Formats a fresh disk of `disk_bytes` with 64 KiB regions.
    pub fn format(
        cfg: Config,
        disk_bytes: u64,
        initial: InitialData,
        now: Instant,
    ) -> Result<DataNode, Error> {
        let layout = Layout::new(disk_bytes, DEFAULT_REGION_SIZE)?;
        Self::format_with_layout(cfg, layout, initial, now)
    }

    /// Formats with an explicit layout (region size).
    pub fn format_with_layout(
        cfg: Config,
        layout: Layout,
        initial: InitialData,
        now: Instant,
    ) -> Result<DataNode, Error> {
        let agreed_bytes = match initial {
            InitialData::UpToDate => layout.data_bytes,
            InitialData::Inconsistent | InitialData::Blank => 0,
        };
        let (data_state, generations, blank) = match initial {
            InitialData::UpToDate => (
                DataState::UpToDate,
                Generations::initial(cfg.pair_id),
                false,
            ),
            InitialData::Inconsistent => (DataState::Inconsistent, Generations::NONE, false),
            InitialData::Blank => (DataState::Inconsistent, Generations::NONE, true),
        };
        let sb = Superblock {
            sequence: 0,
            pair_id: cfg.pair_id,
            node: cfg.node,
            data_state,
            peer_state: DataState::UpToDate,
            admin_fenced: false,
            epoch: 0,
            voted_for: None,
            vote_outdated: None,
            record: EpochRecord::INITIAL,
            layout,
            generations,
            blank,
            agreed_bytes,
            version: crate::metadata::FORMAT_VERSION,
        };
        let mut n = Self::from_parts(cfg, sb, Bitmap::new(layout.region_count), now)?;
        // The bitmap first, as barriers: a valid superblock then always comes
        // with a valid bitmap.
        for b in 0..layout.bitmap_blocks {
            let bytes = emit_bitmap_block(n.dirty.bitmap(), b);
            n.actions.push(Action::PersistMetadata {
                offset: layout.bitmap_block_offset(b),
                bytes,
            });
        }
        n.persist_superblock();
        // Write the slot the first persist did not, so both copies are valid.
        n.persist_superblock();
        Ok(n)
    }

    /// Opens from the metadata area read back from disk: both superblock
    /// slots and the bitmap blocks (concatenated, `layout.bitmap_blocks`
    /// blocks of 4 KiB).
    pub fn open(
        cfg: Config,
        slot0: &[u8],
        slot1: &[u8],
        bitmap_blocks: &[u8],
        now: Instant,
    ) -> Result<DataNode, Error> {
        let sb = Superblock::load(slot0, slot1)?;
        if sb.node != cfg.node {
            return Err(Error::MetadataMismatch("disk belongs to the other node"));
        }
        if sb.pair_id != cfg.pair_id {
            return Err(Error::MetadataMismatch("disk belongs to another pair"));
        }
        let mut bitmap = Bitmap::new(sb.layout.region_count);
        for i in 0..sb.layout.bitmap_blocks {
            let start = i as usize * crate::metadata::BLOCK_SIZE;
            let block = bitmap_blocks
                .get(start..start + crate::metadata::BLOCK_SIZE)
                .unwrap_or(&[]);
            load_bitmap_block(&mut bitmap, i, block);
        }
        let upgrade = sb.version < crate::metadata::FORMAT_VERSION;
        let mut n = Self::from_parts(cfg, sb, bitmap, now)?;
        if upgrade {
            // Rewritten in the current version at once (the slot not
            // written keeps the old copy until the next update).
            n.persist_superblock();
        }
        Ok(n)
    }

    fn from_parts(
        cfg: Config,
        sb: Superblock,
        bitmap: Bitmap,
        now: Instant,
    ) -> Result<DataNode, Error> {
        cfg.timing.validate()?;
        if !cfg.node.is_data_node() {
            return Err(Error::InvalidConfig("a data node must be a or b"));
        }
        if cfg.links == 0 || cfg.links as usize > MAX_LINKS {
            return Err(Error::InvalidConfig("links must be 1..=4"));
        }
        let horizon = cfg.timing.promise_horizon();
        let voter = Voter::new(
            cfg.node,
            sb.epoch,
            sb.voted_for,
            sb.vote_outdated,
            sb.record,
            now,
            horizon,
        );
        let role = if sb.admin_fenced {
            Role::Fenced
        } else {
            Role::Secondary
        };
        let mut n = DataNode {
            me: cfg.node,
            peer: cfg.node.peer(),
            layout: sb.layout,
            voter,
            data_state: sb.data_state,
            peer_state: sb.peer_state,
            admin_fenced: sb.admin_fenced,
            sb_sequence: sb.sequence,
            dirty: DirtyLog::new(sb.layout, bitmap),
            awaiting_bitmap: VecDeque::new(),
            flushes: Flushes::default(),
            role,
            candidacy: None,
            next_candidacy_at: now,
            primary_seen: now,
            handover_from_peer: false,
            handed_over_to: None,
            demote: None,
            demote_preflush: None,
            handover_reason: "switchover",
            host_path: crate::hostpath::HostPathMonitor::new(
                cfg.host_path_timing
                    .unwrap_or(crate::hostpath::HostPathTiming::derived(
                        cfg.timing.heartbeat_interval,
                        cfg.timing.failure_timeout,
                    )),
                now,
            ),
            primary_since: now,
            lease: Lease::default(),
            writes: BTreeMap::new(),
            seq_to_id: BTreeMap::new(),
            unacked: replication_bound::Unacked::default(),
            held_for_stream: VecDeque::new(),
            stream_overflow: false,
            next_seq: Seq(1),
            deferred: VecDeque::new(),
            reads: BTreeMap::new(),
            stream: StreamState {
                since: now,
                ..StreamState::default()
            },
            resync: None,
            applies: ApplyQueue::default(),
            resynced_in_epoch: None,
            generations: sb.generations,
            blank: sb.blank,
            agreed_bytes: sb.agreed_bytes,
            handshake: None,
            peer_behind: None,
            resync_source_generation: 0,
            refused_standing: false,
            generation_counter: 0,
            last_peer_data_bytes: None,
            verify: None,
            verify_result: None,
            verify_checks: BTreeMap::new(),
            last_bitmap_flush: now,
            next_heartbeat: now,
            history: VecDeque::new(),
            ana: AnaState::Inaccessible,
            actions: Vec::new(),
            counters: Counters::default(),
            cfg,
        };
        n.push_role_change(now, "boot");
        n.actions.push(Action::AnaChanged(AnaState::Inaccessible));
        Ok(n)
    }

    // ----- accessors -----

    pub fn node(&self) -> NodeId {
        self.me
    }
    pub fn role(&self) -> Role {
        self.role
    }
    /// The epoch of the current record (the one printed with roles).
    pub fn epoch(&self) -> u64 {
        self.voter.record.epoch
    }
    /// The highest epoch seen or promised (the fencing token).
    pub fn promised_epoch(&self) -> u64 {
        self.voter.epoch
    }
    pub fn record(&self) -> EpochRecord {
        self.voter.record
    }
    pub fn data_state(&self) -> DataState {
        self.data_state
    }
    pub fn layout(&self) -> &Layout {
        &self.layout
    }
    /// The bytes host I/O and replication cover: the namespace size agreed
    /// with the peer, or until one is agreed the disk's data area (the disk
    /// minus the metadata area).
    pub fn data_bytes(&self) -> u64 {
        if self.agreed_bytes != 0 {
            self.agreed_bytes
        } else {
            self.layout.data_bytes
        }
    }
    /// The namespace size agreed with the peer; None until this disk met
    /// its peer (a blank disk): its namespace must not be shown to hosts
    /// before then, since the peer's disk may be smaller.
    pub fn namespace_bytes(&self) -> Option<u64> {
        (self.agreed_bytes != 0).then_some(self.agreed_bytes)
    }
    /// Regions of [`DataNode::data_bytes`] (the last one may be partial).
    fn data_regions(&self) -> u64 {
        self.data_bytes().div_ceil(self.layout.region_size as u64)
    }
    pub fn ana_state(&self) -> AnaState {
        self.ana
    }
    pub fn history(&self) -> impl Iterator<Item = &RoleChange> {
        self.history.iter()
    }
    pub fn counters(&self) -> Counters {
        self.counters
    }
    pub fn dirty_regions(&self) -> u64 {
        self.dirty.count()
    }
    /// True when host I/O is accepted right now.
    pub fn is_serving(&self, now: Instant) -> bool {
        self.role == Role::Primary
            && self.demote.is_none()
            && self.data_state == DataState::UpToDate
            && self.lease.valid(now)
    }
    /// The earliest time `tick` has something to do.
    pub fn next_deadline(&self) -> Instant {
        let mut t = self.next_heartbeat;
        if let Some(u) = self.lease.until()
            && self.role == Role::Primary
            && u < t
        {
            t = u;
        }
        t
    }
    pub fn drain_actions(&mut self) -> alloc::vec::Drain<'_, Action> {
        self.actions.drain(..)
    }

    fn timing(&self) -> Timing {
        self.cfg.timing
    }
    fn horizon(&self) -> Duration {
        self.cfg.timing.promise_horizon()
    }

    // ----- persistence -----

    fn superblock(&self) -> Superblock {
        Superblock {
            sequence: self.sb_sequence,
            pair_id: self.cfg.pair_id,
            node: self.me,
            data_state: self.data_state,
            peer_state: self.peer_state,
            admin_fenced: self.admin_fenced,
            epoch: self.voter.epoch,
            voted_for: self.voter.voted_for,
            vote_outdated: self.voter.vote_outdated,
            record: self.voter.record,
            layout: self.layout,
            generations: self.generations,
            blank: self.blank,
            agreed_bytes: self.agreed_bytes,
            version: crate::metadata::FORMAT_VERSION,
        }
    }

    /// A fresh generation identifier: never 0, different on every call and
    /// every boot.
    fn fresh_generation(&mut self, now: Instant) -> u64 {
        self.generation_counter += 1;
        let mut x = self.cfg.incarnation
            ^ now.as_micros().rotate_left(17)
            ^ self.generation_counter.wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ (self.me.index() as u64) << 62;
        x ^= x >> 30;
        x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x ^= x >> 27;
        x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
        x.max(1)
    }

    pub fn generations(&self) -> Generations {
        self.generations
    }

    /// The last handshake with the peer was a refusal: it will be the same
    /// until the operator acts, so reconnecting may slow down.
    pub fn handshake_refused(&self) -> bool {
        self.handshake
            .is_some_and(|v| matches!(v.decision, Decision::Refuse(_)))
    }

    fn persist_superblock(&mut self) {
        self.sb_sequence += 1;
        let sb = self.superblock();
        let offset = self.layout.superblock_offset(sb.sequence);
        self.actions.push(Action::PersistMetadata {
            offset,
            bytes: sb.emit(),
        });
    }

    /// Starts persisting the changed bitmap blocks unless a persist is
    /// outstanding (the next one then carries everything changed meanwhile).
    fn persist_bitmap(&mut self) {
        let Some((generation, blocks)) = self.dirty.start_persist() else {
            return;
        };
        self.counters.bitmap_persists += 1;
        self.actions.push(Action::PersistBitmap {
            generation: generation.0,
            blocks,
        });
    }

    /// The bitmap persist of `generation` finished.
    pub fn on_bitmap_persisted(&mut self, now: Instant, generation: u64, ok: bool) {
        match self.dirty.on_persisted(BitmapGeneration(generation), ok) {
            None => return,
            Some(Persisted::Durable) => self.start_awaiting_writes(),
            Some(Persisted::Failed) => {
                // The writes that waited for the blocks fail (their bits
                // may not be on disk).
                for id in core::mem::take(&mut self.awaiting_bitmap) {
                    if let Some(w) = self.writes.get_mut(&id) {
                        w.local = Some(false);
                        w.admitted = false;
                    }
                }
            }
        }
        self.progress(now);
    }

    // ----- events and ANA -----

    fn push_role_change(&mut self, now: Instant, reason: &'static str) {
        let change = RoleChange {
            at: now,
            role: self.role,
            epoch: self.voter.record.epoch,
            reason,
        };
        if self.history.len() >= self.cfg.history_len.max(1) {
            self.history.pop_front();
        }
        self.history.push_back(change);
        self.actions.push(Action::RoleChanged(change));
    }

    fn set_role(&mut self, now: Instant, role: Role, reason: &'static str) {
        self.role = role;
        self.push_role_change(now, reason);
    }

    fn desired_ana(&self, now: Instant) -> AnaState {
        if self.is_serving(now) {
            AnaState::Optimized
        } else if (self.role == Role::Primary && self.demote.is_some())
            || (self.role != Role::Primary
                && self
                    .candidacy
                    .is_some_and(|c| c.reason == ElectionReason::Switchover))
        {
            AnaState::Change
        } else {
            AnaState::Inaccessible
        }
    }

    fn update_ana(&mut self, now: Instant) {
        let a = self.desired_ana(now);
        if a != self.ana {
            self.ana = a;
            self.actions.push(Action::AnaChanged(a));
        }
    }

    // ----- sending -----

    fn send_all_links(&mut self, to: NodeId, message: Message) {
        for l in 0..self.cfg.links {
            let dg = Datagram {
                sender: self.me,
                link: LinkId(l),
                epoch: self.voter.epoch,
                message,
            };
            self.actions.push(Action::SendDatagram {
                to,
                link: LinkId(l),
                bytes: dg.emit(),
            });
        }
    }

    fn send_on(&mut self, to: NodeId, link: LinkId, message: Message) {
        let dg = Datagram {
            sender: self.me,
            link,
            epoch: self.voter.epoch,
            message,
        };
        self.actions.push(Action::SendDatagram {
            to,
            link,
            bytes: dg.emit(),
        });
    }

    fn send_frame(&mut self, epoch: u64, seq: u64, body: Body<'_>) {
        if self.stream.connected {
            let bytes = Frame {
                sender: self.me,
                epoch,
                seq,
                body,
            }
            .emit();
            self.actions.push(Action::SendStream { bytes });
        }
    }

    fn heartbeat_for(&self, to: NodeId, now: Instant) -> Heartbeat {
        let mut f = 0;
        if self.admin_fenced {
            f |= flags::ADMIN_FENCED;
        }
        if self.is_serving(now) {
            f |= flags::SERVING;
        }
        Heartbeat {
            role: self.role,
            data_state: self.data_state,
            peer_state: self.peer_state,
            flags: f,
            voted_for: self.voter.voted_for,
            vote_outdated: self.voter.vote_outdated,
            record: self.voter.record,
            incarnation: self.cfg.incarnation,
            echo: self.voter.knowledge[to.index()]
                .heartbeat
                .map_or(0, |h| h.incarnation),
            host_path: self.host_path.report(),
        }
    }

    fn send_heartbeats(&mut self, now: Instant) {
        for to in [self.peer, NodeId::Witness] {
            let hb = self.heartbeat_for(to, now);
            self.send_all_links(to, Message::Heartbeat(hb));
        }
    }

    fn send_bitmap(&mut self) {
        let epoch = self.voter.record.epoch;
        let mut first = 0;
        const RUN: u64 = 8192;
        while let Some(j) = self.dirty.bitmap().next_set(first) {
            let start = j / RUN * RUN;
            let count = RUN.min(self.dirty.bitmap().len() - start);
            let bits = self.dirty.bitmap().export(start, count);
            self.send_frame(
                epoch,
                0,
                Body::Bitmap {
                    first_region: start,
                    bit_count: count as u32,
                    bits: &bits,
                },
            );
            first = start + count;
        }
        self.send_frame(epoch, 0, Body::BitmapDone);
    }

    // ----- clock -----

    /// Periodic work: heartbeats, lease renewal, elections, resync pacing,
    /// bitmap flushing. Call at least at [`DataNode::next_deadline`].
    pub fn tick(&mut self, now: Instant) {
        self.check_lease(now);
        self.update_host_path(now);
        if now >= self.next_heartbeat {
            self.next_heartbeat = now + self.timing().heartbeat_interval;
            self.send_heartbeats(now);
            if self.role == Role::Primary {
                self.start_lease_round(now);
            }
            if let Some(c) = self.candidacy {
                if c.expired(now, self.timing().failure_timeout) {
                    self.abandon_candidacy(now);
                } else {
                    self.send_vote_requests(now);
                }
            }
            if let Some(d) = self.demote {
                if d.handover_sent {
                    let rec = self.voter.record;
                    self.send_all_links(self.peer, Message::Handover { record: rec });
                }
                if now.saturating_since(d.started)
                    >= self.timing().failure_timeout + self.timing().failure_timeout
                {
                    self.lose_primary(now, Role::Fenced, "switchover-failed");
                }
            }
        }
        if self.lease.wants_round() && self.role == Role::Primary {
            self.start_lease_round(now);
        }
        self.host_path_handover(now);
        self.maybe_stand(now);
        if now.saturating_since(self.last_bitmap_flush) >= self.cfg.bitmap_flush_interval {
            self.last_bitmap_flush = now;
            self.start_clean_cycle(now);
        }
        self.progress(now);
    }

    fn check_lease(&mut self, now: Instant) {
        if self.role == Role::Primary && !self.lease.valid(now) {
            self.lose_primary(now, Role::Fenced, "lease-expired");
        }
    }

    /// Work that follows any event: completions, replication checks, resync.
    fn progress(&mut self, now: Instant) {
        self.check_lease(now);
        self.relieve_stream(now);
        self.try_complete_writes(now);
        self.try_complete_flushes(now);
        self.try_complete_reads(now);
        self.demote_progress(now);
        self.check_replication(now);
        self.pump_resync(now);
        self.pump_verify(now);
        self.persist_bitmap();
        self.update_ana(now);
    }

    // ----- leases and reads -----

    fn start_lease_round(&mut self, now: Instant) {
        let round = self.lease.start_round(now, self.voter.record.epoch);
        let rec = self.voter.record;
        for to in [self.peer, NodeId::Witness] {
            self.send_all_links(to, Message::LeaseRequest { round, record: rec });
        }
    }

    fn on_lease_reply(
        &mut self,
        now: Instant,
        dg: &Datagram,
        round: u64,
        granted: bool,
        refusal: Refusal,
    ) {
        if self.role != Role::Primary {
            return;
        }
        let Some(sent_round) = self.lease.round(round) else {
            return;
        };
        if !granted {
            // A refusal of a round sent under an older record says nothing
            // about the current one (datagrams are reordered).
            if sent_round.epoch == self.voter.record.epoch
                && matches!(refusal, Refusal::NotPrimary | Refusal::StaleRecord)
            {
                // Someone knows a newer record: stop serving at once.
                self.lose_primary(now, Role::Fenced, "deposed");
            }
            return;
        }
        if dg.epoch != self.voter.epoch {
            return;
        }
        self.lease.granted(sent_round, self.timing().lease_duration);
        if self.lease.wants_round() {
            self.start_lease_round(now);
        }
    }

    /// A host read of `[offset, offset+len)` arrived. On `Ok`, the kernel
    /// reads the local disk at once and reports [`DataNode::on_local_read_done`];
    /// the data goes to the host only on [`Action::CompleteRead`], which
    /// waits for a lease round started after this call (pause safety).
    pub fn host_read(
        &mut self,
        now: Instant,
        id: u64,
        offset: u64,
        len: u64,
    ) -> Result<(), HostIoError> {
        self.check_lease(now);
        self.check_host_io(now, offset, len)?;
        // Only a round started after the read arrived can confirm it.
        let (ticket, start_now) = self
            .lease
            .read_ticket(now, self.timing().heartbeat_interval);
        if start_now {
            self.start_lease_round(now);
        }
        self.reads.insert(
            id,
            PendingRead {
                ticket,
                local: None,
            },
        );
        self.update_ana(now);
        Ok(())
    }

    /// The local disk read of host read `id` finished.
    pub fn on_local_read_done(&mut self, now: Instant, id: u64, ok: bool) {
        if let Some(r) = self.reads.get_mut(&id) {
            r.local = Some(ok);
        }
        self.progress(now);
    }

    fn try_complete_reads(&mut self, now: Instant) {
        if !self.is_serving(now) && self.demote.is_none() {
            return;
        }
        let confirmed = self.lease.confirmed();
        let done: Vec<(u64, bool)> = self
            .reads
            .iter()
            .filter_map(|(id, r)| {
                r.local
                    .filter(|_| r.ticket <= confirmed)
                    .map(|ok| (*id, ok))
            })
            .collect();
        for (id, ok) in done {
            self.reads.remove(&id);
            let result = if ok {
                IoResult::Ok
            } else {
                IoResult::MediaError
            };
            self.actions.push(Action::CompleteRead { id, result });
        }
    }

    /// Host I/O is refused with the ANA state the host should see (Change
    /// while the lease is being confirmed, so it retries here).
    fn check_serving(&self, now: Instant) -> Result<(), HostIoError> {
        if self.is_serving(now) {
            return Ok(());
        }
        Err(HostIoError::NotServing(
            if self.ana == AnaState::Optimized {
                AnaState::Change
            } else {
                self.ana
            },
        ))
    }

    fn check_host_io(&self, now: Instant, offset: u64, len: u64) -> Result<(), HostIoError> {
        self.check_serving(now)?;
        if len == 0
            || offset
                .checked_add(len)
                .is_none_or(|end| end > self.data_bytes())
        {
            return Err(HostIoError::OutOfRange);
        }
        Ok(())
    }

    // ----- writes (primary) -----

    fn peer_degraded(&self) -> bool {
        self.voter.record.outdated == Some(self.peer)
    }

    /// True while the primary is about to record its peer UpToDate again:
    /// from then on every write needs the peer's acknowledgement.
    fn recovering(&self) -> bool {
        self.resync.as_ref().is_some_and(|r| r.done_sent)
            || self
                .candidacy
                .is_some_and(|c| c.reason == ElectionReason::PeerRecovered)
    }

    fn stream_ready(&self) -> bool {
        self.stream.connected && self.stream.peer_hello.is_some()
    }

    /// A host write of `[offset, offset+len)` arrived. On `Ok`, the kernel
    /// keeps the data until [`Action::CompleteWrite`]; the crate asks for the
    /// local write ([`Action::SubmitLocalWrite`]) and the replication
    /// ([`Action::ReplicateWrite`]) once the region is marked in the bitmap.
    pub fn host_write(
        &mut self,
        now: Instant,
        id: u64,
        offset: u64,
        len: u64,
        force_unit_access: bool,
    ) -> Result<(), HostIoError> {
        self.admit_write(now, id, offset, len, force_unit_access, Content::Data)
    }

    /// A host Write Zeroes of `len` bytes at `offset`, handled as a write
    /// ([`Self::host_write`]) whose data are zeroes: the local disk gets
    /// [`Action::SubmitLocalWrite`] (the kernel zeroes the range), the peer
    /// a WriteZeroes frame, or a Write of zeroes if its Hello did not
    /// announce that it understands WriteZeroes.
    pub fn host_write_zeroes(
        &mut self,
        now: Instant,
        id: u64,
        offset: u64,
        len: u64,
    ) -> Result<(), HostIoError> {
        self.admit_write(now, id, offset, len, false, Content::Zeroes)
    }

    /// A host Deallocate of `len` bytes at `offset`, ordered like a write
    /// ([`Self::host_write`]): the local disk gets
    /// [`Action::SubmitLocalWrite`] (the kernel discards the range) and the
    /// peer a Deallocate frame — if its Hello announced that it understands
    /// one; with a peer that did not, the Deallocate completes without
    /// touching either disk (deallocated blocks may keep their content, and
    /// both nodes then return the same).
    pub fn host_deallocate(
        &mut self,
        now: Instant,
        id: u64,
        offset: u64,
        len: u64,
    ) -> Result<(), HostIoError> {
        self.admit_write(now, id, offset, len, false, Content::Deallocate)
    }

    fn admit_write(
        &mut self,
        now: Instant,
        id: u64,
        offset: u64,
        len: u64,
        force_unit_access: bool,
        content: Content,
    ) -> Result<(), HostIoError> {
        let id = WriteId(id);
        self.check_lease(now);
        self.check_host_io(now, offset, len)?;
        let needs_peer = !self.peer_degraded() || self.recovering();
        let w = PendingWrite {
            offset,
            len,
            at: now,
            force_unit_access,
            admitted: false,
            started: false,
            seq: None,
            local: None,
            peer_acked: false,
            needs_peer,
            content,
        };
        let blocked = self.write_blocked(offset, len);
        self.writes.insert(id, w);
        if blocked {
            self.deferred.push_back(id);
        } else {
            self.start_write(id);
        }
        self.progress(now);
        Ok(())
    }

    fn write_blocked(&self, offset: u64, len: u64) -> bool {
        let resync_reading = self.resync.as_ref().is_some_and(|r| {
            let rs = self.layout.region_size as u64;
            r.reading().any(|reg| overlaps(offset, len, reg.0 * rs, rs))
        });
        let verify_reading = self.verify.as_ref().is_some_and(|v| {
            let rs = self.layout.region_size as u64;
            v.reading
                .iter()
                .any(|&reg| overlaps(offset, len, reg * rs, rs))
        });
        resync_reading
            || verify_reading
            || self
                .writes
                .values()
                .any(|w| w.admitted && overlaps(offset, len, w.offset, w.len))
    }

    /// The regions a write marks: its own while the peer is recorded
    /// Outdated (they are exactly what the resync must copy); while in sync,
    /// the whole activity extents around them (like DRBD's activity log,
    /// whose extents are 4 MiB), so that random writes over a working set
    /// mark it once instead of costing a metadata write each.
    fn marked_regions(&self, offset: u64, len: u64) -> core::ops::Range<u64> {
        let exact = self.layout.regions(offset, len);
        if self.peer_degraded() {
            return exact;
        }
        let extent = (self.cfg.activity_extent_regions as u64).max(1);
        let first = exact.start / extent * extent;
        let end = exact
            .end
            .div_ceil(extent)
            .saturating_mul(extent)
            .min(self.data_regions());
        first..end
    }

    /// Marks the write's regions; issues it once the marks are durable.
    fn start_write(&mut self, id: WriteId) {
        let Some(w) = self.writes.get(&id).copied() else {
            return;
        };
        for r in self.marked_regions(w.offset, w.len) {
            self.dirty.mark_written(Region(r));
        }
        if let Some(w) = self.writes.get_mut(&id) {
            w.admitted = true;
        }
        // The bitmap must be durable before the data can differ between
        // the two disks.
        if self.dirty.durable(w.offset, w.len) {
            self.issue_write(id);
        } else {
            self.awaiting_bitmap.push_back(id);
            self.persist_bitmap();
        }
    }

    fn start_awaiting_writes(&mut self) {
        let waiting = core::mem::take(&mut self.awaiting_bitmap);
        for id in waiting {
            match self.writes.get(&id).copied() {
                Some(w) if self.dirty.durable(w.offset, w.len) => self.issue_write(id),
                Some(_) => self.awaiting_bitmap.push_back(id),
                None => {}
            }
        }
    }

    fn issue_write(&mut self, id: WriteId) {
        self.issue_write_from(id, false)
    }

    fn issue_write_from(&mut self, id: WriteId, from_queue: bool) {
        let Some(w) = self.writes.get(&id).copied() else {
            return;
        };
        if self.hold_for_stream(id, &w, from_queue) {
            return;
        }
        if self.stream_ready() && !self.peer_takes(&w) {
            // A Deallocate the peer cannot take is left out on both nodes,
            // so that both keep returning what they returned before.
            if let Some(w) = self.writes.get_mut(&id) {
                w.started = true;
                w.local = Some(true);
                w.peer_acked = true;
            }
            return;
        }
        self.actions.push(Action::SubmitLocalWrite { id: id.0 });
        let mut seq = None;
        if self.stream_ready() && !self.stream_overflow {
            seq = Some(self.send_write(id, &w));
        }
        if let Some(w) = self.writes.get_mut(&id) {
            w.started = true;
            w.seq = seq;
        }
    }

    /// The peer's features, from its Hello.
    fn peer_features(&self) -> u8 {
        self.stream.peer_hello.map_or(0, |h| h.features)
    }

    /// Whether `w` goes to the peer at all: a Deallocate only to a peer
    /// that understands Deallocate frames.
    fn peer_takes(&self, w: &PendingWrite) -> bool {
        w.content != Content::Deallocate || self.peer_features() & stream::feature::DEALLOCATE != 0
    }

    /// Numbers host write `id` for the stream, sends it, and counts it
    /// unacknowledged.
    fn send_write(&mut self, id: WriteId, w: &PendingWrite) -> Seq {
        let s = self.next_seq;
        self.next_seq = s.next();
        self.seq_to_id.insert(s, id);
        let wire = self.replication_wire_bytes(w);
        self.unacked.insert(s, Extent::new(w.offset, w.len), wire);
        self.replicate(id, s, w);
        s
    }

    /// Sends host write `id` to the peer as write `seq`.
    fn replicate(&mut self, id: WriteId, seq: Seq, w: &PendingWrite) {
        let seq = seq.0;
        let epoch = self.voter.record.epoch;
        let (offset, len) = (w.offset, w.len);
        match w.content {
            Content::Zeroes if self.peer_features() & stream::feature::WRITE_ZEROES != 0 => {
                self.send_frame(epoch, seq, Body::WriteZeroes { offset, len });
                return;
            }
            Content::Deallocate => {
                // Only to a peer that understands it (`peer_takes`).
                self.send_frame(epoch, seq, Body::Deallocate { offset, len });
                return;
            }
            Content::Zeroes | Content::Data => {}
        }
        let frame_prefix = stream::write_frame_prefix(
            self.me,
            epoch,
            seq,
            offset,
            len as usize,
            w.force_unit_access,
        );
        self.actions.push(Action::ReplicateWrite {
            id: id.0,
            frame_prefix,
        });
    }

    fn start_deferred(&mut self) {
        let mut i = 0;
        while i < self.deferred.len() {
            let id = self.deferred[i];
            let Some(w) = self.writes.get(&id).copied() else {
                self.deferred.remove(i);
                continue;
            };
            let earlier_blocked = self.deferred.iter().take(i).any(|e| {
                self.writes
                    .get(e)
                    .is_some_and(|x| overlaps(w.offset, w.len, x.offset, x.len))
            });
            if !earlier_blocked && !self.write_blocked(w.offset, w.len) {
                self.deferred.remove(i);
                self.start_write(id);
            } else {
                i += 1;
            }
        }
    }

    /// The local disk write of host write `id` finished.
    pub fn on_local_write_done(&mut self, now: Instant, id: u64, ok: bool) {
        let id = WriteId(id);
        if let Some(w) = self.writes.get_mut(&id) {
            w.local = Some(ok);
            if w.needs_peer && w.seq.is_some() {
                self.stream.write_times.local.record(now - w.at);
            }
        } else if self.applies.release_orphan(id) {
            self.issue_applies();
        }
        self.progress(now);
    }

    fn try_complete_writes(&mut self, now: Instant) {
        if self.role != Role::Primary || !self.lease.valid(now) {
            return;
        }
        let degraded_ok = self.peer_degraded() && !self.recovering();
        let mut done = Vec::new();
        for (id, w) in &self.writes {
            match w.local {
                Some(false) => done.push((*id, IoResult::MediaError)),
                // A write admitted while the peer was Outdated completes
                // without it only while no recovery is under way: once the
                // peer is about to be recorded UpToDate it must hold every
                // acknowledged write.
                Some(true)
                    if w.peer_acked || (!w.needs_peer && !self.recovering()) || degraded_ok =>
                {
                    done.push((*id, IoResult::Ok))
                }
                _ => {}
            }
        }
        let any = !done.is_empty();
        for (id, result) in done {
            if let Some(w) = self.writes.remove(&id)
                && let Some(s) = w.seq
            {
                self.seq_to_id.remove(&s);
            }
            self.actions
                .push(Action::CompleteWrite { id: id.0, result });
        }
        if any {
            self.start_deferred();
        }
    }

    fn fail_all_io(&mut self) {
        for (id, w) in &self.writes {
            if w.started && w.local.is_none() {
                self.applies.hold_orphan(*id, w.offset, w.len);
            }
        }
        self.unacked.clear();
        let ids: Vec<WriteId> = self.writes.keys().copied().collect();
        for id in ids {
            self.actions.push(Action::CompleteWrite {
                id: id.0,
                result: IoResult::PathError,
            });
        }
        self.writes.clear();
        self.seq_to_id.clear();
        self.deferred.clear();
        self.awaiting_bitmap.clear();
        self.abandon_clean_cycle();
        for id in self.flushes.end_own() {
            self.actions.push(Action::CompleteFlush {
                id,
                result: IoResult::PathError,
            });
        }
        let ids: Vec<u64> = self.reads.keys().copied().collect();
        for id in ids {
            self.actions.push(Action::CompleteRead {
                id,
                result: IoResult::PathError,
            });
        }
        self.reads.clear();
    }

    // ----- role changes -----

    fn lose_primary(&mut self, now: Instant, role: Role, reason: &'static str) {
        if self.role != Role::Primary {
            return;
        }
        self.fail_all_io();
        self.lease.end();
        self.demote = None;
        self.demote_preflush = None;
        self.handed_over_to = None;
        self.resync = None;
        self.stop_verify(true);
        if self.candidacy.is_some() {
            self.candidacy = None;
        }
        self.primary_seen = now;
        self.next_candidacy_at = now + self.timing().failure_timeout;
        self.set_role(now, role, reason);
        self.update_ana(now);
    }

    /// Adopts a newer committed record learned from any member.
    fn adopt_record(&mut self, now: Instant, rec: EpochRecord) {
        if rec.epoch <= self.voter.record.epoch {
            return;
        }
        // A record names at most one primary, never a witness, and never
        // records its own primary Outdated.
        if rec.primary.is_some_and(|p| !p.is_data_node())
            || (rec.primary.is_some() && rec.primary == rec.outdated)
        {
            self.counters.bad_datagrams += 1;
            return;
        }
        self.voter.observe_record(rec);
        let mut reason = "new-epoch";
        if rec.outdated == Some(self.me) {
            if self.data_state == DataState::UpToDate {
                self.data_state = DataState::Outdated;
            }
            self.resynced_in_epoch = None;
            reason = "outdated";
        } else if self.data_state != DataState::UpToDate
            && self.resynced_in_epoch.is_some()
            && rec.primary == Some(self.peer)
        {
            self.data_state = DataState::UpToDate;
            self.resynced_in_epoch = None;
            // The source's generation: the two disks hold the same data.
            if self.resync_source_generation != 0 {
                let old = self.generations;
                self.generations = Generations {
                    current: self.resync_source_generation,
                    bitmap: 0,
                    history: [
                        if old.current != 0 {
                            old.current
                        } else {
                            old.history[0]
                        },
                        if old.current != 0 {
                            old.history[0]
                        } else {
                            old.history[1]
                        },
                    ],
                };
            }
            self.blank = false;
            reason = "resynced";
        }
        if rec.outdated == Some(self.peer) {
            self.peer_state = DataState::Outdated;
        } else if rec.primary == Some(self.peer) {
            self.peer_state = DataState::UpToDate;
        }
        self.persist_superblock();
        // A committed record with another primary, or one that outdates us,
        // ends our candidacy whatever its epoch: it could only disrupt.
        if self.candidacy.is_some_and(|c| {
            c.epoch <= rec.epoch || rec.primary != Some(self.me) || rec.outdated == Some(self.me)
        }) {
            self.candidacy = None;
        }
        self.handover_from_peer = false;
        if rec.primary == Some(self.peer) {
            self.primary_seen = now;
        }
        if self.role == Role::Primary && rec.primary != Some(self.me) {
            let why = if self.demote.is_some() {
                self.handover_reason
            } else {
                "deposed"
            };
            self.lose_primary(now, Role::Secondary, why);
        } else if self.role == Role::Fenced && !self.admin_fenced && rec.primary == Some(self.peer)
        {
            self.set_role(now, Role::Secondary, "new-primary");
        } else {
            self.push_role_change(now, reason);
        }
        // A new primary of ours: offer our bitmap so it can resync us.
        if rec.primary == Some(self.peer) && self.stream.connected {
            self.send_bitmap();
        }
    }

    fn observe_epoch(&mut self, epoch: u64) {
        if self.voter.observe_epoch(epoch) {
            self.persist_superblock();
            if self.candidacy.is_some_and(|c| c.epoch < epoch) {
                self.candidacy = None;
            }
        }
    }

    // ----- elections -----

    /// How much later than `a` node `b` stands: when both could stand at
    /// once, their candidacies would split the witness's vote.
    fn stagger(&self) -> Duration {
        Duration::from_micros(
            self.timing().heartbeat_interval.as_micros() * 4 * self.me.index() as u64,
        )
    }

    /// The stagger before standing: none while the peer is silent on every
    /// link (it cannot be standing too, or a candidacy split by a partition
    /// is settled by the witness, which votes once per epoch), so that
    /// either node takes over from a dead peer equally fast.
    fn stand_stagger(&self, now: Instant) -> Duration {
        let peer = &self.voter.knowledge[self.peer.index()];
        if peer.alive(now, self.timing().failure_timeout) {
            self.stagger()
        } else {
            Duration::ZERO
        }
    }

    fn maybe_stand(&mut self, now: Instant) {
        if self.candidacy.is_some() || self.role == Role::Primary || self.admin_fenced {
            return;
        }
        if self.data_state != DataState::UpToDate || self.voter.record.outdated == Some(self.me) {
            return;
        }
        // Refused by the handshake while not primary (split brain,
        // unrelated data, another pair's disk): its data must not take over
        // from the peer's by itself, unless the pair's record already names
        // the peer Outdated (then this node's data is the pair's, and the
        // peer can never stand); otherwise the operator decides.
        if self.refused_standing && self.voter.record.outdated != Some(self.peer) {
            return;
        }
        let handover = self.handover_from_peer;
        // Without a front-end it could serve no host (a handover offered by
        // the primary, which saw this node's report, is still taken).
        if !handover && self.host_path.lost() {
            return;
        }
        if !handover {
            if now < self.next_candidacy_at
                || now < self.primary_seen + self.timing().failure_timeout + self.stand_stagger(now)
            {
                return;
            }
            if self.voter.promise_outstanding(now, self.horizon(), self.me) {
                return;
            }
        } else if now < self.voter.promise_floor {
            return;
        }
        let t = self.timing();
        let peer = self.voter.knowledge[self.peer.index()];
        let peer_alive = peer.alive(now, t.failure_timeout);
        if let Some(hb) = peer.heartbeat {
            if hb.record.epoch > self.voter.record.epoch {
                return;
            }
            if peer_alive && hb.flags & flags::SERVING != 0 && !handover {
                return;
            }
        }
        let peer_in_sync = peer_alive
            && peer.heartbeat.is_some_and(|h| {
                h.data_state == DataState::UpToDate && h.record == self.voter.record
            })
            && self.voter.record.outdated.is_none()
            && self.stream_ready();
        let (reason, outdated) = if handover {
            (ElectionReason::Switchover, None)
        } else if self.voter.record.primary == Some(self.peer) {
            (
                ElectionReason::Failover,
                if peer_in_sync { None } else { Some(self.peer) },
            )
        } else {
            (
                ElectionReason::NoPrimary,
                if peer_in_sync { None } else { Some(self.peer) },
            )
        };
        self.stand(now, reason, outdated);
    }

    fn stand(&mut self, now: Instant, reason: ElectionReason, outdated: Option<NodeId>) {
        // Epochs are 64-bit; only a misbehaving member could exhaust them.
        let Some(epoch) = self.voter.epoch.checked_add(1) else {
            return;
        };
        self.voter.epoch = epoch;
        self.voter.voted_for = Some(self.me);
        self.voter.vote_outdated = outdated;
        self.persist_superblock();
        self.candidacy = Some(Candidacy::new(epoch, outdated, reason, now));
        self.send_vote_requests(now);
        self.update_ana(now);
    }

    fn send_vote_requests(&mut self, now: Instant) {
        let Some(c) = self.candidacy.as_mut() else {
            return;
        };
        c.last_sent = now;
        let msg = Message::VoteRequest {
            outdated: c.outdated,
            data_state: self.data_state,
            reason: c.reason,
            record: self.voter.record,
        };
        for to in [self.peer, NodeId::Witness] {
            self.send_all_links(to, msg);
        }
    }

    fn abandon_candidacy(&mut self, now: Instant) {
        if self.candidacy.take().is_some() {
            self.next_candidacy_at = now
                + Duration::from_micros(self.timing().failure_timeout.as_micros() / 2)
                + self.stagger();
            self.handover_from_peer = false;
            self.update_ana(now);
        }
    }

    fn on_vote_request(&mut self, now: Instant, dg: &Datagram, ask: VoteAsk) {
        self.adopt_record(now, ask.record);
        let own = OwnView {
            data_state: self.data_state,
            serving: self.is_serving(now)
                || (self.role == Role::Primary && self.handed_over_to != Some(dg.sender)),
            resynced: self.resynced_in_epoch == Some(self.voter.record.epoch),
            // Agreeing to be recorded Outdated is always safe (we mark
            // ourselves Outdated with the vote) and lets the primary go on
            // when only we can vote, e.g. witness down and replication
            // link down.
            accepts_outdate: true,
            handed_over_to: self.handed_over_to,
        };
        let decision = self.voter.decide_vote(now, self.horizon(), &ask, Some(own));
        let granted = decision.is_ok();
        if granted {
            self.voter.grant_vote(now, &ask);
            if self.candidacy.is_some() {
                self.candidacy = None;
            }
            if ask.outdated == Some(self.me) {
                if self.data_state == DataState::UpToDate {
                    self.data_state = DataState::Outdated;
                }
                self.resynced_in_epoch = None;
            }
            self.persist_superblock();
        } else {
            self.observe_epoch(dg.epoch);
        }
        let reply = Message::VoteReply {
            granted,
            refusal: decision.err().unwrap_or(Refusal::None),
            record: self.voter.record,
        };
        self.send_on(dg.sender, dg.link, reply);
    }

    fn on_vote_reply(&mut self, now: Instant, dg: &Datagram, granted: bool, record: EpochRecord) {
        let Some(mut c) = self.candidacy else {
            self.observe_epoch(dg.epoch);
            return;
        };
        if granted && c.count_vote(dg.sender, dg.epoch) {
            self.candidacy = Some(c);
            if c.elected(self.peer) {
                self.commit(now, c);
            }
            return;
        }
        if dg.epoch > self.voter.epoch {
            self.observe_epoch(dg.epoch);
            self.abandon_candidacy(now);
        }
        self.adopt_record(now, record);
    }

    fn commit(&mut self, now: Instant, c: Candidacy) {
        self.candidacy = None;
        if self.voter.epoch != c.epoch {
            return;
        }
        let rec = EpochRecord {
            epoch: c.epoch,
            primary: Some(self.me),
            outdated: c.outdated,
        };
        let was_degraded = self.peer_degraded();
        self.voter.record = rec;
        if c.outdated == Some(self.peer) && !was_degraded {
            // From now on this node writes without its peer: a new
            // generation, persisted with the record before any such write.
            let fresh = self.fresh_generation(now);
            self.generations.start_new_current(fresh);
        }
        if c.reason == ElectionReason::PeerRecovered {
            self.generations.retire_bitmap();
            self.peer_behind = None;
        }
        match c.outdated {
            Some(p) if p == self.peer => self.peer_state = DataState::Outdated,
            _ => {
                if c.reason == ElectionReason::PeerRecovered
                    || self.peer_state != DataState::Outdated
                {
                    self.peer_state = DataState::UpToDate;
                }
            }
        }
        self.persist_superblock();
        self.handover_from_peer = false;
        if c.reason == ElectionReason::PeerRecovered {
            self.resync = None;
        }
        if self.role != Role::Primary {
            // The votes are grants: each voter promised at or after the
            // first request was sent.
            self.lease
                .granted_by_election(c.started, self.timing().lease_duration);
            self.primary_since = now;
            self.set_role(now, Role::Primary, c.reason.name());
        } else {
            self.push_role_change(now, c.reason.name());
        }
        self.send_frame(rec.epoch, 0, Body::Config(rec));
        if rec.outdated.is_none() {
            // From this record on the peer counts as UpToDate: a write or
            // flush admitted while it was Outdated completes only once the
            // peer has it too.
            for w in self.writes.values_mut() {
                w.needs_peer = true;
            }
            self.flushes.host_flushes_need_peer();
            self.send_pending_flushes();
        }
        if self.stream.connected {
            let resend: Vec<WriteId> = self
                .writes
                .iter()
                .filter(|(_, w)| w.started && !w.peer_acked)
                .map(|(id, _)| *id)
                .collect();
            self.resend_writes(&resend);
        }
        self.start_lease_round(now);
        self.send_heartbeats(now);
        self.next_heartbeat = now + self.timing().heartbeat_interval;
        self.update_ana(now);
    }

    fn resend_writes(&mut self, ids: &[WriteId]) {
        for id in ids {
            let Some(w) = self.writes.get(id).copied() else {
                continue;
            };
            if let Some(old) = w.seq {
                self.seq_to_id.remove(&old);
                self.unacked.remove(&old);
            }
            if w.content == Content::Deallocate && self.stream.peer_hello.is_none() {
                // Whether the peer takes it is known from its Hello, which
                // sends what went unsent.
                if let Some(w) = self.writes.get_mut(id) {
                    w.seq = None;
                }
                continue;
            }
            if !self.peer_takes(&w) {
                // Carried out here already (before this connection), not
                // there: those blocks may now read differently on the two
                // nodes, which deallocated blocks may.
                if let Some(w) = self.writes.get_mut(id) {
                    w.seq = None;
                    w.peer_acked = true;
                }
                continue;
            }
            let s = self.send_write(*id, &w);
            if let Some(w) = self.writes.get_mut(id) {
                w.seq = Some(s);
            }
        }
    }

    /// Primary: decide whether to record the peer Outdated (it cannot keep
    /// up) or UpToDate again (resync finished).
    fn check_replication(&mut self, now: Instant) {
        if self.role != Role::Primary
            || self.candidacy.is_some()
            || self.demote.is_some()
            || !self.is_serving(now)
        {
            return;
        }
        let t = self.timing();
        if self.peer_degraded() {
            if self.recovery_stuck(now) {
                return;
            }
            let resync_done = self.resync.as_ref().is_some_and(|r| r.done_sent);
            if resync_done && self.stream_ready() && self.unacked.is_empty() {
                self.stand(now, ElectionReason::PeerRecovered, None);
            }
            return;
        }
        if self.peer_behind.is_some() && self.stream_ready() {
            // The handshake found the peer's data behind: record it Outdated
            // so that the resync can run while writes go on here.
            self.stand(now, ElectionReason::OutdatePeer, Some(self.peer));
            return;
        }
        let peer_silent = !self.voter.knowledge[self.peer.index()].alive(now, t.failure_timeout);
        let stream_down =
            !self.stream.connected && now.saturating_since(self.stream.since) >= t.failure_timeout;
        let stuck = self.writes.values().any(|w| {
            w.needs_peer && !w.peer_acked && now.saturating_since(w.at) >= t.failure_timeout
        }) || self.flushes.peer_stuck(now, t.failure_timeout);
        if peer_silent || stream_down || stuck {
            self.stand(now, ElectionReason::OutdatePeer, Some(self.peer));
        }
    }

    // ----- switchover and fencing -----

    /// Planned switchover, on the primary: flush both disks while still
    /// serving, then stop taking new I/O, drain, flush again (only what was
    /// written meanwhile: the host's I/O stall stays short however much the
    /// disks' caches held), and hand over to the peer.
    pub fn demote(&mut self, now: Instant) -> Result<(), CommandError> {
        self.check_lease(now);
        if self.role != Role::Primary {
            return Err(CommandError::NotPrimary);
        }
        if self.demote.is_some() || self.demote_preflush.is_some() || self.candidacy.is_some() {
            return Err(CommandError::Busy);
        }
        let peer = self.voter.knowledge[self.peer.index()];
        let ready = !self.peer_degraded()
            && peer.alive(now, self.timing().failure_timeout)
            && peer
                .heartbeat
                .is_some_and(|h| h.data_state == DataState::UpToDate)
            && self.stream_ready()
            && self.resync.as_ref().is_none_or(|r| r.done_sent);
        if !ready {
            return Err(CommandError::PeerNotReady);
        }
        if self.peer_host_path_lost(now) {
            return Err(CommandError::PeerHasNoHostPath);
        }
        self.handover_reason = "switchover";
        let flush = self.new_flush(now, FlushPurpose::PreHandover, true);
        self.demote_preflush = Some((flush, now));
        self.progress(now);
        Ok(())
    }

    /// Ends the pre-flush once both disks flushed (or one failed, or it
    /// takes longer than the failure timeout: the handover's own flush then
    /// does all the work) and starts the drain.
    fn preflush_progress(&mut self, now: Instant) {
        let Some((flush, started)) = self.demote_preflush else {
            return;
        };
        let done = match self.flushes.get(flush) {
            Some(f) => {
                f.local == Some(false)
                    || f.done_on_both()
                    || now.saturating_since(started) >= self.timing().failure_timeout
            }
            None => true,
        };
        if !done {
            return;
        }
        self.flushes.remove(flush);
        self.demote_preflush = None;
        if self.role == Role::Primary {
            self.demote = Some(Demote {
                started: now,
                flush: None,
                handover_sent: false,
            });
        }
    }

    fn demote_progress(&mut self, now: Instant) {
        self.preflush_progress(now);
        let Some(d) = self.demote else { return };
        if d.handover_sent
            || !self.writes.is_empty()
            || !self.reads.is_empty()
            || !self.unacked.is_empty()
            || self.flushes.any_host()
        {
            return;
        }
        // Drained: flush both disks, after which every region is equal and
        // durable on both, so the marks go and the new primary has nothing
        // to resync (a switch back is possible at once).
        let Some(flush) = d.flush else {
            self.abandon_clean_cycle();
            let flush = self.new_flush(now, FlushPurpose::Handover, true);
            self.demote = Some(Demote {
                flush: Some(flush),
                ..d
            });
            return;
        };
        match self.flushes.get(flush) {
            Some(f) if f.done_on_both() => {
                self.flushes.remove(flush);
                self.dirty.clear_all();
                self.persist_bitmap();
            }
            // A failed local flush: hand over anyway, the marks stay.
            Some(f) if f.local == Some(false) => {
                self.flushes.remove(flush);
            }
            _ => return,
        }
        self.demote = Some(Demote {
            handover_sent: true,
            ..d
        });
        self.handed_over_to = Some(self.peer);
        let rec = self.voter.record;
        self.send_all_links(self.peer, Message::Handover { record: rec });
    }

    /// Planned switchover, on the secondary: ask the primary to hand over;
    /// without a primary, stand for election now.
    pub fn promote(&mut self, now: Instant) -> Result<(), CommandError> {
        self.check_lease(now);
        if self.admin_fenced {
            return Err(CommandError::AdminFenced);
        }
        if self.role == Role::Primary {
            return Err(CommandError::AlreadyPrimary);
        }
        if self.data_state != DataState::UpToDate || self.voter.record.outdated == Some(self.me) {
            return Err(CommandError::NotUpToDate);
        }
        if self.candidacy.is_some() {
            return Err(CommandError::Busy);
        }
        if self.host_path.lost() {
            return Err(CommandError::NoHostPath);
        }
        let peer = self.voter.knowledge[self.peer.index()];
        let peer_serving = peer.alive(now, self.timing().failure_timeout)
            && peer
                .heartbeat
                .is_some_and(|h| h.flags & flags::SERVING != 0);
        if peer_serving {
            // The primary hands over only to a peer in sync with it: refuse
            // here what it would refuse silently.
            let in_sync = self.stream_ready()
                && self.voter.record.primary == Some(self.peer)
                && peer
                    .heartbeat
                    .is_some_and(|h| h.peer_state == DataState::UpToDate);
            if !in_sync {
                return Err(CommandError::NotInSync);
            }
            self.send_all_links(self.peer, Message::SwitchoverRequest);
        } else {
            self.next_candidacy_at = now;
            self.primary_seen = Instant::ZERO;
            self.maybe_stand(now);
        }
        self.progress(now);
        Ok(())
    }

    /// Operator fence: serve nothing and stand for nothing until `unfence`.
    pub fn fence(&mut self, now: Instant) {
        self.admin_fenced = true;
        self.persist_superblock();
        self.candidacy = None;
        if self.role == Role::Primary {
            self.lose_primary(now, Role::Fenced, "operator-fence");
        } else if self.role != Role::Fenced {
            self.set_role(now, Role::Fenced, "operator-fence");
        }
        self.progress(now);
    }

    /// Lifts an operator fence: the node becomes a secondary.
    pub fn unfence(&mut self, now: Instant) {
        if !self.admin_fenced {
            return;
        }
        self.admin_fenced = false;
        self.persist_superblock();
        self.next_candidacy_at = now + self.timing().failure_timeout;
        self.set_role(now, Role::Secondary, "operator-unfence");
        self.progress(now);
    }

    // ----- datagrams -----

    /// A control datagram arrived on `link`.
    pub fn on_datagram(&mut self, now: Instant, link: LinkId, bytes: &[u8]) {
        self.check_lease(now);
        let dg = match Datagram::parse(bytes) {
            Ok(dg) if dg.sender != self.me && (link.0 as usize) < MAX_LINKS => dg,
            _ => {
                self.counters.bad_datagrams += 1;
                return;
            }
        };
        let k = &mut self.voter.knowledge[dg.sender.index()];
        k.last_heard[link.0 as usize] = Some(now);
        k.epoch = k.epoch.max(dg.epoch);
        match dg.message {
            Message::Heartbeat(hb) => {
                self.voter.knowledge[dg.sender.index()].heartbeat = Some(hb);
                if dg.epoch < self.voter.epoch {
                    self.counters.stale_datagrams += 1;
                    // Tell the laggard at once, on the link it used.
                    if dg.sender == self.peer {
                        let hb = self.heartbeat_for(dg.sender, now);
                        self.send_on(dg.sender, link, Message::Heartbeat(hb));
                    }
                } else {
                    self.observe_epoch(dg.epoch);
                }
                if hb.record.epoch >= self.voter.record.epoch {
                    self.adopt_record(now, hb.record);
                }
                if dg.sender == self.peer {
                    if hb.flags & flags::SERVING != 0 && hb.record == self.voter.record {
                        self.primary_seen = now;
                    }
                    if hb.record == self.voter.record {
                        self.peer_state = hb.data_state;
                    }
                }
            }
            Message::LeaseRequest { round, record } => {
                if record.primary == Some(dg.sender) {
                    self.adopt_record(now, record);
                }
                self.observe_epoch(dg.epoch);
                let decision = if self.role == Role::Primary {
                    Err(Refusal::ResponderIsPrimary)
                } else {
                    self.voter.decide_lease(
                        dg.sender,
                        dg.epoch,
                        &record,
                        false,
                        self.candidacy.is_some(),
                    )
                };
                if decision.is_ok() {
                    self.voter.promise = Some((dg.sender, now));
                    self.primary_seen = now;
                }
                let reply = Message::LeaseReply {
                    round,
                    granted: decision.is_ok(),
                    refusal: decision.err().unwrap_or(Refusal::None),
                };
                self.send_on(dg.sender, link, reply);
            }
            Message::LeaseReply {
                round,
                granted,
                refusal,
            } => {
                self.on_lease_reply(now, &dg, round, granted, refusal);
                if !granted {
                    self.observe_epoch(dg.epoch);
                }
            }
            Message::VoteRequest {
                outdated,
                data_state,
                reason,
                record,
            } => {
                let ask = VoteAsk {
                    candidate: dg.sender,
                    epoch: dg.epoch,
                    outdated,
                    data_state,
                    reason,
                    record,
                };
                if dg.sender == self.peer {
                    self.on_vote_request(now, &dg, ask);
                }
            }
            Message::VoteReply {
                granted, record, ..
            } => self.on_vote_reply(now, &dg, granted, record),
            Message::Handover { record } => {
                if dg.sender == self.peer
                    && record == self.voter.record
                    && record.primary == Some(self.peer)
                    && self.role != Role::Primary
                {
                    self.handover_from_peer = true;
                    self.maybe_stand(now);
                }
            }
            Message::SwitchoverRequest => {
                if dg.sender == self.peer && self.role == Role::Primary && self.demote.is_none() {
                    let _ = self.demote(now);
                }
            }
        }
        self.progress(now);
    }

    // ----- replication stream -----

    /// The replication stream (re)connected.
    pub fn on_stream_connected(&mut self, now: Instant) {
        self.stream = StreamState {
            connected: true,
            since: now,
            ..StreamState::default()
        };
        self.resync = None;
        self.stream.offered_generation = self.fresh_generation(now);
        let hello = Hello {
            role: self.role,
            data_state: self.data_state,
            record: self.voter.record,
            region_size: self.layout.region_size,
            region_count: self.layout.region_count,
            data_bytes: self.layout.data_bytes,
            features: stream::feature::WRITE_ZEROES
                | stream::feature::DEALLOCATE
                | stream::feature::GENERATIONS
                | stream::feature::VERIFY
                | stream::feature::SIZES,
            data: Some(HelloData {
                pair_id: self.cfg.pair_id,
                generations: self.generations,
                new_generation: self.stream.offered_generation,
                flags: if self.blank { hello_flag::BLANK } else { 0 },
                agreed_bytes: Some(self.agreed_bytes),
            }),
        };
        self.send_frame(self.voter.record.epoch, 0, Body::Hello(hello));
        if self.role == Role::Primary {
            let rec = self.voter.record;
            self.send_frame(rec.epoch, 0, Body::Config(rec));
        }
        self.send_bitmap();
        // Writes sent on the old connection and completed since are covered
        // by their bitmap bits; pending ones are sent again.
        self.unacked.clear();
        self.seq_to_id.clear();
        let resend: Vec<WriteId> = self
            .writes
            .iter()
            .filter(|(_, w)| w.started && !w.peer_acked)
            .map(|(id, _)| *id)
            .collect();
        for id in &resend {
            if let Some(w) = self.writes.get_mut(id) {
                w.seq = None;
            }
        }
        if self.role == Role::Primary {
            self.resend_writes(&resend);
        }
        self.flushes.unsend_all();
        self.progress(now);
    }

    /// The replication stream closed (either side, or the link).
    pub fn on_stream_closed(&mut self, now: Instant) {
        if !self.stream.connected {
            return;
        }
        self.stream = StreamState {
            connected: false,
            since: now,
            ..StreamState::default()
        };
        self.resync = None;
        self.stop_verify(true);
        self.verify_checks.clear();
        self.unacked.clear();
        // The peer's flush may not cover writes it took on the old
        // connection: flush again on the next one.
        self.abandon_clean_cycle();
        self.flushes.unsend_all();
        self.progress(now);
    }

    fn stream_error(&mut self, now: Instant) {
        self.counters.stream_errors += 1;
        self.actions.push(Action::CloseStream);
        self.on_stream_closed(now);
    }

    /// Bytes arrived on the replication stream.
    pub fn on_stream_bytes(&mut self, now: Instant, bytes: &[u8]) {
        self.check_lease(now);
        if !self.stream.connected {
            return;
        }
        self.stream.decoder.push(bytes);
        loop {
            let frame = match self.stream.decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => {
                    self.stream_error(now);
                    return;
                }
            };
            let ok = match Frame::parse(&frame) {
                Ok(f) if f.sender == self.peer => self.on_frame(now, f),
                _ => false,
            };
            if !ok {
                self.stream_error(now);
                return;
            }
            if !self.stream.connected {
                return;
            }
        }
        self.progress(now);
    }

    /// Operator (primary): online verification. Every region is read on
    /// both nodes in the background, at the resync rate, and their digests
    /// compared; regions that differ are marked out of sync and resynced
    /// when the verification ends.
    pub fn verify(&mut self, now: Instant) -> Result<(), CommandError> {
        if self.role != Role::Primary {
            return Err(CommandError::NotPrimary);
        }
        if self.verify.is_some() || self.demote.is_some() || self.candidacy.is_some() {
            return Err(CommandError::Busy);
        }
        let peer_verifies = self
            .stream
            .peer_hello
            .is_some_and(|h| h.features & stream::feature::VERIFY != 0);
        if !self.stream_ready()
            || self.peer_degraded()
            || self.resync.is_some()
            || self.peer_behind.is_some()
            || !peer_verifies
        {
            return Err(CommandError::PeerNotReady);
        }
        self.verify = Some(Verify {
            cursor: 0,
            reading: BTreeSet::new(),
            in_flight: BTreeSet::new(),
            pacer: Pacer::new(self.layout.region_size as u64, now),
            checked: 0,
            found: Bitmap::new(self.data_regions()),
        });
        self.verify_result = None;
        self.progress(now);
        Ok(())
    }

    fn verify_progress(&self) -> Option<VerifyProgress> {
        match &self.verify {
            Some(v) => Some(VerifyProgress {
                total_regions: self.data_regions(),
                checked_regions: v.checked,
                differing_regions: v.found.count(),
                running: true,
                interrupted: false,
            }),
            None => self.verify_result,
        }
    }

    /// Ends the verification: `interrupted` before its end.
    fn stop_verify(&mut self, interrupted: bool) {
        if self.verify.is_none() {
            return;
        }
        let mut p = self.verify_progress().unwrap_or(VerifyProgress {
            total_regions: 0,
            checked_regions: 0,
            differing_regions: 0,
            running: false,
            interrupted,
        });
        p.running = false;
        p.interrupted = interrupted;
        self.verify = None;
        self.verify_result = Some(p);
        self.actions.push(Action::VerifyFinished(p));
    }

    fn pump_verify(&mut self, now: Instant) {
        if self.verify.is_none() {
            return;
        }
        if self.role != Role::Primary || !self.stream_ready() || self.peer_degraded() {
            return self.stop_verify(true);
        }
        let pace = self.resync_pace();
        let (max_in_flight, rs) = (pace.max_in_flight, pace.region_size);
        let Some(mut v) = self.verify.take() else {
            return;
        };
        v.pacer.refill(now, pace.rate, pace.burst());
        while v.reading.len() + v.in_flight.len() < max_in_flight
            && v.pacer.has(rs)
            && v.cursor < self.data_regions()
        {
            let r = v.cursor;
            // A region with a host write under way is checked once the
            // write is done on both nodes.
            if self
                .writes
                .values()
                .any(|w| w.admitted && overlaps(w.offset, w.len, r * rs, rs))
            {
                break;
            }
            v.reading.insert(r);
            v.cursor += 1;
            v.pacer.spend(rs);
            let (offset, len) = self.region_range(r);
            self.actions.push(Action::ReadForResync { offset, len });
        }
        let done =
            v.cursor >= self.data_regions() && v.reading.is_empty() && v.in_flight.is_empty();
        self.verify = Some(v);
        if !done {
            return;
        }
        let found = self
            .verify
            .as_ref()
            .map(|v| v.found.clone())
            .unwrap_or_else(|| Bitmap::new(0));
        self.stop_verify(false);
        if found.count() > 0 && self.resync.is_none() {
            // The next resync repairs them: start it now, from this node.
            self.resync = Some(ResyncPump::new(found, rs, now));
        }
    }

    /// A read for verification finished: on the primary, its digest goes to
    /// the peer; on the secondary, it is compared with the primary's.
    /// Returns false if the read was not one.
    fn on_verify_read_done(&mut self, offset: u64, data: Option<&[u8]>) -> bool {
        let rs = self.layout.region_size as u64;
        let r = offset / rs;
        let (_, len) = self.region_range(r);
        if self.verify.as_mut().is_some_and(|v| v.reading.remove(&r)) {
            let digest = data
                .filter(|d| d.len() == len as usize)
                .map(|d| crate::wire::CRC64.checksum(d));
            match digest {
                Some(digest) => {
                    if let Some(v) = self.verify.as_mut() {
                        v.in_flight.insert(r);
                    }
                    let epoch = self.voter.record.epoch;
                    self.send_frame(
                        epoch,
                        0,
                        Body::VerifyRequest {
                            offset,
                            len,
                            digest,
                        },
                    );
                }
                None => {
                    // Unreadable here: counted as differing.
                    if let Some(v) = self.verify.as_mut() {
                        v.checked += 1;
                        v.found.set(r);
                    }
                    self.dirty.mark(Region(r));
                }
            }
            self.start_deferred();
            return true;
        }
        if self.role != Role::Primary
            && let Some(len) = self.finish_apply(ApplyKind::Verify, offset)
        {
            if let Some(digest) = self.verify_checks.remove(&offset) {
                let equal = data.is_some_and(|d| {
                    d.len() as u64 == len && crate::wire::CRC64.checksum(d) == digest
                });
                let epoch = self.voter.epoch;
                self.send_frame(
                    epoch,
                    0,
                    Body::VerifyReply {
                        offset,
                        len: len as u32,
                        equal,
                    },
                );
            }
            return true;
        }
        false
    }

    fn on_verify_reply(&mut self, now: Instant, offset: u64, equal: bool) {
        let rs = self.layout.region_size as u64;
        let r = offset / rs;
        let Some(v) = self.verify.as_mut() else {
            return;
        };
        if !v.in_flight.remove(&r) {
            return;
        }
        v.checked += 1;
        if !equal {
            v.found.set(r);
            self.dirty.mark(Region(r));
        }
        let _ = now;
    }

    /// What this disk says about its size in the handshake.
    fn size_view(&self) -> SizeView {
        SizeView {
            capacity: self.layout.data_bytes,
            agreed: self.agreed_bytes,
        }
    }

    /// What this node and its peer decide, from the peer's Hello, and the
    /// namespace size they agree on (unless refused).
    fn handshake_verdict(&self, h: &Hello) -> (Verdict, Option<u64>) {
        let refuse = |r: HandshakeRefusal, reason: &'static str| {
            (
                Verdict {
                    decision: Decision::Refuse(r),
                    reason,
                },
                None,
            )
        };
        let Some(d) = h.data else {
            return refuse(
                HandshakeRefusal::Unrelated,
                "the peer does not send data generations (older version)",
            );
        };
        if d.pair_id != self.cfg.pair_id {
            return refuse(
                HandshakeRefusal::OtherPair,
                "the peer's disk belongs to another pair",
            );
        }
        if h.region_size != self.layout.region_size {
            return refuse(
                HandshakeRefusal::Geometry,
                "the peer's disk has another region size",
            );
        }
        if d.agreed_bytes.is_none() && h.data_bytes != self.layout.data_bytes {
            // A peer of the version before agreed sizes refuses this too.
            return refuse(
                HandshakeRefusal::Geometry,
                "the two disks differ in size and the peer's version needs equal sizes",
            );
        }
        let size = match sizes::agree(self.size_view(), peer_size_view(h)) {
            Ok(size) => size,
            Err(e @ sizes::SizeRefusal::AgreedSizesDiffer) => {
                return refuse(HandshakeRefusal::Geometry, e.reason());
            }
            Err(e) => return refuse(HandshakeRefusal::DiskTooSmall, e.reason()),
        };
        let me = DataView {
            generations: self.generations,
            data_state: self.data_state,
            blank: self.blank,
            primary: self.role == Role::Primary,
        };
        let peer = DataView {
            generations: d.generations,
            data_state: h.data_state,
            blank: d.flags & hello_flag::BLANK != 0,
            primary: h.role == Role::Primary,
        };
        (generations::decide(&me, &peer), Some(size))
    }

    /// Carries out this node's part of the handshake's decision.
    fn apply_verdict(&mut self, now: Instant, h: &Hello, decision: Decision) {
        let Some(d) = h.data else { return };
        self.peer_behind = None;
        match decision {
            Decision::NewPair => {
                // Both take node a's offer: one generation for the pair.
                let current = if self.me == NodeId::A {
                    self.stream.offered_generation
                } else {
                    d.new_generation
                };
                self.generations = Generations {
                    current: current.max(1),
                    ..Generations::NONE
                };
                self.blank = false;
                self.data_state = DataState::UpToDate;
                self.peer_state = DataState::UpToDate;
                self.persist_superblock();
            }
            Decision::InSync | Decision::Refuse(_) => {}
            Decision::BitmapResync { source: Side::Peer } => {
                if self.data_state == DataState::UpToDate {
                    self.data_state = DataState::Outdated;
                    self.persist_superblock();
                }
            }
            Decision::FullResync { source: Side::Peer } => {
                // This disk's content counts for nothing until the copy is
                // complete. Its generation becomes the one the source's
                // bitmap counts from, so that a copy interrupted by a
                // restart resumes from the source's bitmap.
                let g = d.generations;
                self.generations = Generations {
                    current: if g.bitmap != 0 { g.bitmap } else { g.current },
                    ..Generations::NONE
                };
                self.blank = false;
                self.data_state = DataState::Inconsistent;
                self.resynced_in_epoch = None;
                self.persist_superblock();
            }
            Decision::BitmapResync { source: Side::Me } => self.peer_behind = Some(false),
            Decision::FullResync { source: Side::Me } => {
                self.peer_behind = Some(true);
                if self.generations.bitmap == 0 {
                    self.generations.bitmap = self.generations.current;
                    self.persist_superblock();
                }
                // Every region, persisted now: the copy resumes from here
                // after a restart of either node.
                self.dirty.mark_all(self.data_regions());
                self.persist_bitmap();
            }
        }
        let _ = now;
    }

    /// Operator: discard this node's data; it takes a full copy from its
    /// peer when they next meet (at once if connected). Also resolves a
    /// split brain or unrelated data in favour of the peer.
    pub fn invalidate(&mut self, now: Instant) -> Result<(), CommandError> {
        if self.role == Role::Primary {
            return Err(CommandError::IsPrimary);
        }
        if self.candidacy.is_some() {
            return Err(CommandError::Busy);
        }
        self.data_state = DataState::Inconsistent;
        self.generations = Generations::NONE;
        self.blank = false;
        self.resynced_in_epoch = None;
        self.handshake = None;
        self.persist_superblock();
        self.push_role_change(now, "invalidated");
        self.update_ana(now);
        if self.stream.connected {
            // A new handshake decides the copy.
            self.actions.push(Action::CloseStream);
            self.on_stream_closed(now);
        }
        Ok(())
    }

    /// An Outdated peer refused a write (it was busy with a candidacy of its
    /// own, or had not yet learned our record): the write completes on the
    /// local disk alone, as the record allows, and its regions go back into
    /// the resync instead of holding the recovery up.
    fn refused_by_outdated_peer(&mut self, seq: Seq) {
        // Also during the peer-recovered election: the write then waits for
        // it (it is sent again if the record commits) or, if the election
        // fails, completes here with its regions back in the resync.
        if !self.peer_degraded() {
            return;
        }
        let Some(sent) = self.unacked.remove(&seq) else {
            return;
        };
        if let Some(id) = self.seq_to_id.get(&seq).copied()
            && let Some(w) = self.writes.get_mut(&id)
        {
            w.needs_peer = false;
        }
        let regions = self.layout.regions(sent.offset, sent.len);
        if let Some(rz) = self.resync.as_mut() {
            for r in regions {
                rz.remark(Region(r));
            }
        }
    }

    /// The fencing-token check of the secondary: replicate only from the
    /// primary of our current record, in that record's epoch, and only if we
    /// did not promise our vote to someone else since.
    fn accepts_replication(&self, epoch: u64, offset: u64, len: u64) -> bool {
        let rec = self.voter.record;
        self.role != Role::Primary
            && epoch == rec.epoch
            && rec.primary == Some(self.peer)
            && self
                .voter
                .voted_for
                .is_none_or(|v| v == self.peer || (v == self.me && self.candidacy.is_none()))
            && offset
                .checked_add(len)
                .is_some_and(|e| e <= self.data_bytes())
    }

    fn become_inconsistent_if_outdated(&mut self) {
        if self.data_state == DataState::Outdated {
            self.data_state = DataState::Inconsistent;
            self.persist_superblock();
        }
    }

    /// Returns false (the stream must be reset) if the peer has sent more
    /// overlapping data than the queue may hold.
    fn enqueue_apply(&mut self, a: Apply) -> bool {
        if self.applies.push(a).is_err() {
            return false;
        }
        self.issue_applies();
        true
    }

    /// Issues queued secondary writes, keeping overlapping ones in stream
    /// order (the disk may reorder concurrent writes).
    fn issue_applies(&mut self) {
        for a in self.applies.take_ready() {
            self.actions.push(match a.kind {
                ApplyKind::Write(seq) if a.content == Content::Zeroes => {
                    Action::ApplyReplicatedZeroes {
                        seq: seq.0,
                        offset: a.offset,
                        len: a.len,
                    }
                }
                ApplyKind::Write(seq) if a.content == Content::Deallocate => {
                    Action::ApplyReplicatedDeallocate {
                        seq: seq.0,
                        offset: a.offset,
                        len: a.len,
                    }
                }
                ApplyKind::Write(seq) => Action::ApplyReplicatedWrite {
                    seq: seq.0,
                    offset: a.offset,
                    data: a.data,
                    force_unit_access: a.force_unit_access,
                },
                ApplyKind::Verify => Action::ReadForResync {
                    offset: a.offset,
                    len: a.len as u32,
                },
                ApplyKind::Resync | ApplyKind::Orphan(_) => Action::ApplyResync {
                    offset: a.offset,
                    data: a.data,
                },
            });
        }
    }

    fn finish_apply(&mut self, kind: ApplyKind, offset: u64) -> Option<u64> {
        let len = self.applies.finish(kind, offset)?;
        self.issue_applies();
        Some(len)
    }

    /// Secondary: the replicated write `seq` reached the disk (or failed).
    pub fn on_replicated_write_done(&mut self, now: Instant, seq: u64, offset: u64, ok: bool) {
        if self
            .finish_apply(ApplyKind::Write(Seq(seq)), offset)
            .is_some()
        {
            let status = AckStatus::of_disk(ok);
            let epoch = self.voter.epoch;
            self.send_frame(epoch, seq, Body::WriteAck { status });
            if let Some(arrived) = self.stream.apply_arrivals.remove(&seq) {
                self.stream.write_times.applied.record(now - arrived);
            }
        }
        self.progress(now);
    }

    /// Secondary: resync data at `offset` reached the disk (or failed).
    pub fn on_resync_write_done(&mut self, now: Instant, offset: u64, ok: bool) {
        if let Some(len) = self.finish_apply(ApplyKind::Resync, offset) {
            let status = AckStatus::of_disk(ok);
            let epoch = self.voter.epoch;
            self.send_frame(
                epoch,
                0,
                Body::ResyncAck {
                    offset,
                    len: len as u32,
                    status,
                },
            );
        }
        self.progress(now);
    }

    // ----- resync (primary = sync source) -----

    fn start_resync(&mut self, now: Instant) {
        let Some(peer_bm) = self.stream.peer_bitmap.take() else {
            return;
        };
        self.stream.peer_bitmap = Some(Bitmap::new(self.data_regions()));
        let mut i = 0;
        while let Some(j) = peer_bm.next_set(i) {
            self.dirty.mark(Region(j));
            i = j + 1;
        }
        self.persist_bitmap();
        // Only the namespace is copied (a larger disk's bits beyond it are
        // never set; this keeps it so).
        let mut pending = Bitmap::new(self.data_regions());
        pending.union_with(self.dirty.bitmap());
        self.resync = Some(ResyncPump::new(
            pending,
            self.layout.region_size as u64,
            now,
        ));
    }

    fn region_range(&self, r: u64) -> (u64, u32) {
        let rs = self.layout.region_size as u64;
        let off = r * rs;
        (off, rs.min(self.data_bytes().saturating_sub(off)) as u32)
    }

    /// The pace of resync and verification reads.
    fn resync_pace(&self) -> Pace {
        Pace {
            rate: self.cfg.resync_rate,
            max_in_flight: self.cfg.resync_max_in_flight.max(1) as usize,
            region_size: self.layout.region_size as u64,
        }
    }

    fn pump_resync(&mut self, now: Instant) {
        if self.role != Role::Primary || !self.stream_ready() {
            return;
        }
        let pace = self.resync_pace();
        let rs = pace.region_size;
        let writes = &self.writes;
        let Some(rz) = self.resync.as_mut() else {
            return;
        };
        // Not a region with a host write in flight over it.
        let reads = rz.next_reads(now, pace, |r| {
            writes
                .values()
                .any(|w| w.admitted && overlaps(w.offset, w.len, r.0 * rs, rs))
        });
        let finished = rz.finished();
        for r in reads {
            let (offset, len) = self.region_range(r.0);
            self.actions.push(Action::ReadForResync { offset, len });
        }
        if finished {
            if let Some(rz) = self.resync.as_mut() {
                rz.done_sent = true;
            }
            let epoch = self.voter.record.epoch;
            let current = self.generations.current;
            self.send_frame(epoch, 0, Body::ResyncDone { current });
            if !self.peer_degraded() {
                // Nothing to record: the peer was UpToDate all along (a
                // reconnection); an Outdated peer's resync ends with the
                // peer-recovered election instead.
                self.resync = None;
            }
        }
    }

    /// Primary: the resync read at `offset` finished; `data` is its content.
    pub fn on_resync_read_done(&mut self, now: Instant, offset: u64, data: Option<&[u8]>) {
        if self.on_verify_read_done(offset, data) {
            return self.progress(now);
        }
        let rs = self.layout.region_size as u64;
        let r = offset / rs;
        let (_, len) = self.region_range(r);
        let Some(rz) = self.resync.as_mut() else {
            return self.progress(now);
        };
        let data = data.filter(|d| d.len() == len as usize);
        if !rz.on_read(Region(r), data.is_some()) {
            return self.progress(now);
        }
        if let Some(d) = data {
            let epoch = self.voter.record.epoch;
            self.send_frame(epoch, 0, Body::ResyncData { offset, data: d });
        }
        self.start_deferred();
        self.progress(now);
    }

    fn on_resync_ack(&mut self, offset: u64, status: AckStatus) {
        let rs = self.layout.region_size as u64;
        let r = offset / rs;
        let Some(rz) = self.resync.as_mut() else {
            return;
        };
        // Copied: the mark goes unless a host write covers the region.
        if rz.on_ack(Region(r), status == AckStatus::Ok) && !self.region_busy(r) {
            self.dirty.clear(Region(r));
        }
    }

    /// A region is busy while a write over it is pending or unacknowledged.
    fn region_busy(&self, r: u64) -> bool {
        region_busy(&self.layout, &self.writes, &self.unacked, Region(r))
    }

    /// Every interval: the regions no write touched during the last interval
    /// become candidates; both disks are flushed (so every write they took
    /// is durable on both), then the candidates still untouched are cleared.
    /// Busy regions keep their bits, so a write to one costs no metadata
    /// write; an idle one is resynced only if written again.
    fn start_clean_cycle(&mut self, now: Instant) {
        let eligible = self.role == Role::Primary
            && !self.peer_degraded()
            && self.resync.is_none()
            && self.verify.is_none()
            && self.peer_behind.is_none()
            && self.stream_ready()
            && self.dirty.clean_flush().is_none();
        if !eligible {
            if self.dirty.clean_flush().is_none() {
                self.dirty.new_interval();
            }
            return;
        }
        let candidates = self.dirty.clean_candidates(|r| self.region_busy(r.0));
        self.dirty.new_interval();
        if candidates.is_empty() {
            return;
        }
        let flush = self.new_flush(now, FlushPurpose::Clean, true);
        self.dirty.start_clean(flush, candidates);
    }

    fn finish_clean_cycle(&mut self) {
        let Some(flush) = self.dirty.clean_flush() else {
            return;
        };
        let Some(f) = self.flushes.get(flush).copied() else {
            self.dirty.abandon_clean();
            return;
        };
        match f.local {
            Some(false) => {
                self.dirty.abandon_clean();
            }
            // A resync started meanwhile (or the peer found behind) needs
            // every bit it may copy: the cycle ends without clearing any.
            Some(true)
                if f.peer_acked
                    && (self.resync.is_some()
                        || self.verify.is_some()
                        || self.peer_behind.is_some()) =>
            {
                self.dirty.abandon_clean();
            }
            Some(true) if f.peer_acked => {
                let (layout, writes, unacked) = (&self.layout, &self.writes, &self.unacked);
                let cleared = self
                    .dirty
                    .finish_clean(|r| region_busy(layout, writes, unacked, r));
                self.counters.regions_cleaned += cleared;
            }
            _ => return,
        }
        self.flushes.remove(flush);
    }

    fn abandon_clean_cycle(&mut self) {
        if let Some(flush) = self.dirty.abandon_clean() {
            self.flushes.remove(flush);
        }
    }

    // ----- flushes -----

    /// A host Flush arrived: it completes when the local disk and (unless the
    /// record names the peer Outdated) the peer's disk flushed.
    pub fn host_flush(&mut self, now: Instant, id: u64) -> Result<(), HostIoError> {
        self.check_lease(now);
        self.check_serving(now)?;
        let needs_peer = !self.peer_degraded() || self.recovering();
        self.new_flush(now, FlushPurpose::Host(id), needs_peer);
        self.progress(now);
        Ok(())
    }

    fn new_flush(&mut self, now: Instant, purpose: FlushPurpose, needs_peer: bool) -> FlushId {
        let flush = self.flushes.start(now, purpose, needs_peer);
        self.actions.push(Action::FlushDisk { flush: flush.0 });
        self.send_pending_flushes();
        flush
    }

    /// Sends a Flush frame for every flush that needs the peer and has not
    /// been sent on the current connection.
    fn send_pending_flushes(&mut self) {
        if !self.stream_ready() || self.role != Role::Primary {
            return;
        }
        let epoch = self.voter.record.epoch;
        for n in self.flushes.take_unsent() {
            self.send_frame(epoch, n.0, Body::Flush);
        }
    }

    /// The local disk flush `flush` finished.
    pub fn on_disk_flush_done(&mut self, now: Instant, flush: u64, ok: bool) {
        let flush = FlushId(flush);
        let Some(purpose) = self.flushes.on_local_done(flush, ok) else {
            return;
        };
        if let FlushPurpose::Peer(seq) = purpose {
            self.flushes.remove(flush);
            let status = AckStatus::of_disk(ok);
            let epoch = self.voter.epoch;
            self.send_frame(epoch, seq.0, Body::FlushAck { status });
        }
        self.progress(now);
    }

    fn try_complete_flushes(&mut self, now: Instant) {
        self.finish_clean_cycle();
        if self.role != Role::Primary || !self.lease.valid(now) {
            return;
        }
        let degraded_ok = self.peer_degraded() && !self.recovering();
        for (id, result) in self.flushes.take_completed_host(degraded_ok) {
            self.actions.push(Action::CompleteFlush { id, result });
        }
    }

    // ----- status -----

    pub fn status(&self, now: Instant) -> Status {
        let t = self.timing();
        let ages = |k: &crate::voter::Knowledge| {
            let mut a = [None; MAX_LINKS];
            for (i, x) in k.last_heard.iter().enumerate() {
                a[i] = x.map(|t| now.saturating_since(t));
            }
            a
        };
        let peer_k = &self.voter.knowledge[self.peer.index()];
        let w_k = &self.voter.knowledge[NodeId::Witness.index()];
        let replication = if let Some(rz) = &self.resync {
            if rz.done_sent {
                ReplicationState::Established
            } else {
                ReplicationState::SyncSource
            }
        } else if self.role == Role::Primary && self.peer_degraded() {
            ReplicationState::Degraded
        } else if !self.stream.connected {
            ReplicationState::Disconnected
        } else if self.role != Role::Primary && self.data_state != DataState::UpToDate {
            ReplicationState::SyncTarget
        } else {
            ReplicationState::Established
        };
        Status {
            node: self.me,
            role: self.role,
            epoch: self.voter.record.epoch,
            promised_epoch: self.voter.epoch,
            record: self.voter.record,
            data_state: self.data_state,
            peer_state: self.peer_state,
            admin_fenced: self.admin_fenced,
            ana: self.ana,
            serving: self.is_serving(now),
            lease_remaining: self
                .lease
                .until()
                .filter(|_| self.role == Role::Primary)
                .map(|u| u.saturating_since(now)),
            lease_age: self
                .lease
                .last_grant()
                .filter(|_| self.role == Role::Primary)
                .map(|g| now.saturating_since(g)),
            links: self.cfg.links,
            link_names: self.cfg.link_names,
            peer_heard: ages(peer_k),
            witness_heard: ages(w_k),
            peer_reachable: peer_k.alive(now, t.failure_timeout),
            witness_reachable: w_k.alive(now, t.failure_timeout),
            replication,
            in_flight_writes: self.writes.len(),
            write_times: self.stream.write_times,
            unacked_bytes: self.unacked.values().map(|e| e.len).sum(),
            out_of_sync_bytes: if replication == ReplicationState::Established {
                0
            } else {
                self.dirty.count() * self.layout.region_size as u64
            },
            active_bytes: if replication == ReplicationState::Established {
                self.dirty.count() * self.layout.region_size as u64
            } else {
                0
            },
            full_resync: self.resync.is_some() && self.peer_behind == Some(true),
            generations: self.generations,
            blank: self.blank,
            handshake: self.handshake,
            verify: self.verify_progress(),
            namespace_bytes: self.namespace_bytes(),
            data_bytes: self.layout.data_bytes,
            peer_data_bytes: self.last_peer_data_bytes,
            resync: self.resync.as_ref().map(|r| ResyncProgress {
                total_regions: r.total(),
                remaining_regions: r.remaining(),
            }),
            election: self.candidacy.map(|c| (c.epoch, c.reason)),
            host_path: self.host_path.report(),
            peer_host_path: peer_k.heartbeat.and_then(|h| h.host_path),
            peer_host_path_lost: self.peer_host_path_lost(now),
        }
    }
}
