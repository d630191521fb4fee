//! The HA pair in the image: carries `tandem_ha`'s datagrams over UDP on
//! every link, its replication stream over TCP on the replication link, its
//! metadata and replicated writes to disk0, and host I/O between the NVMe
//! service and the pair. All decisions are the crate's; this only executes
//! its actions in order.
//!
//! Links: link 0 is the replication link (net1), link 1 the front-end (net0).
//! UDP `ha_port` (default 7790) carries control datagrams on both; the
//! replication stream is TCP `ha_port - 1` on link 0, opened by node `a`.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt::Write;

use crate::config::{Config, HaSettings, PairNode, derived_id};
use tandem_ha::auth::channel::ControlChannel;
use tandem_ha::auth::stream::{StreamCounters, StreamSession};
use tandem_ha::auth::{Keys, NonceSource};
use tandem_ha::metadata::{BLOCK_SIZE, Layout, Superblock};
use tandem_ha::node::{
    Action, Config as NodeConfig, DEFAULT_REGION_SIZE, DataNode, HostIoError, InitialData,
    IoResult, Timing,
};
use tandem_ha::witness::{Witness, WitnessConfig};
use tandem_ha::{AnaState as HaAna, Duration, Instant, LinkId, NodeId};
use tandem_net::smoltcp::iface::SocketHandle;
use tandem_net::smoltcp::socket::{tcp, udp};
use tandem_net::smoltcp::wire::{IpAddress, IpEndpoint, Ipv4Address};
use tandem_net::{FrameQueues, Listener};
use tandem_nvme::{AnaState, BlockError, BlockOp, BlockOutcome, BlockRequest, RequestId};

use crate::backend::{BlockBackend, Completion, ConnectionId};
use crate::block::{BlockQueue, DiskError, DiskOp, DiskResult, Tag, WriteData};
use crate::outbox::{self, Chunk, Outbox};
use crate::port::NetPort;
use crate::profile::{self, Spent};
use crate::storage::NvmeService;
use crate::takeover::{self, AddressTakeover};

const UDP_PACKETS: usize = 32;
const UDP_BYTES: usize = 32 * 1024;
const STREAM_BUFFER_BYTES: usize = 256 * 1024;
/// After a refused handshake (split brain, unrelated data, another pair's
/// disk): the same refusal comes back until the operator acts.
const REFUSED_RECONNECT_MILLIS: u64 = 5_000;
/// A replication connection must complete its handshake within twice the
/// failure timeout, and at least this (a slow machine's genuine peer must
/// get in; strangers are pushed out by newer connections anyway).
const STREAM_HANDSHAKE_MIN_MILLIS: u64 = 1000;
/// Accepted connections in their handshake at once (besides the stream):
/// a newer one pushes the oldest out, so strangers cannot keep the peer out.
const STREAM_PENDING: usize = 2;
/// Write Zeroes goes to the pair in pieces of at most this size, each a
/// WriteZeroes frame (or, to a peer that does not understand those, a Write
/// of zeroes: hence at most one Write frame's data).
const ZERO_CHUNK_BYTES: u64 = tandem_ha::wire::stream::MAX_DATA as u64;
/// Deallocate goes to the pair in pieces of at most this size: each piece
/// must be done on both disks well within the failure timeout, or the peer
/// is taken for stuck and recorded Outdated.
const DEALLOCATE_PIECE_BYTES: u64 = 128 << 20;

fn ha_now(micros: u64) -> Instant {
    Instant::from_micros(micros)
}

fn timing(settings: &HaSettings) -> Timing {
    Timing {
        heartbeat_interval: Duration::from_millis(settings.heartbeat_interval_ms),
        failure_timeout: Duration::from_millis(settings.failure_timeout_ms),
        lease_duration: Duration::from_millis(settings.lease_ms),
        lease_margin: Duration::from_millis((settings.lease_ms / 4).max(20)),
        clock_drift_ppm: 1000,
    }
}

fn pair_id(config: &Config) -> u64 {
    config.ha.pair_id.unwrap_or_else(|| {
        let id = derived_id(&config.nvme.subsystem_nqn, 0, 0xa5);
        u64::from_be_bytes([id[0], id[1], id[2], id[3], id[4], id[5], id[6], id[7]]).max(1)
    })
}

/// The pair's keys and this boot's nonces; `None` without `pair_key=`
/// (which the configuration refuses for a pair member).
fn pair_keys(config: &Config, entropy: &[u8]) -> Result<(Keys, NonceSource), String> {
    let key = config
        .ha
        .pair_key
        .as_ref()
        .ok_or_else(|| String::from("no pair_key="))?;
    let keys = Keys::derive(key);
    let nonces = NonceSource::new(&keys, entropy);
    Ok((keys, nonces))
}

/// One UDP socket per link.
struct Links {
    /// (NIC index, socket) for link 0 and link 1.
    sockets: [Option<(usize, SocketHandle)>; 2],
    port: u16,
    /// Address of (member, link): a, b, witness × link 0, link 1.
    addresses: [[Option<[u8; 4]>; 2]; 3],
    /// Seals what the crate sends, checks what arrives (docs/ha-protocol.md §3a).
    channel: ControlChannel,
}

impl Links {
    fn open<Q: FrameQueues>(
        nets: &mut [NetPort<Q>],
        port: u16,
        addresses: [[Option<[u8; 4]>; 2]; 3],
        channel: ControlChannel,
    ) -> Self {
        let mut sockets = [None, None];
        let nics = [if nets.len() > 1 { 1 } else { 0 }, 0];
        for (link, nic) in nics.into_iter().enumerate() {
            if nic >= nets.len() || (link == 0 && nets.len() < 2) {
                continue;
            }
            let mut socket = udp::Socket::new(
                udp::PacketBuffer::new(
                    vec![udp::PacketMetadata::EMPTY; UDP_PACKETS],
                    vec![0; UDP_BYTES],
                ),
                udp::PacketBuffer::new(
                    vec![udp::PacketMetadata::EMPTY; UDP_PACKETS],
                    vec![0; UDP_BYTES],
                ),
            );
            // Bound to the NIC's own address: datagrams the witness sends to a
            // peer whose address this node has taken over are not for it.
            let own = nets[nic]
                .nic
                .address()
                .map(|cidr| IpAddress::Ipv4(cidr.address()));
            if socket
                .bind(tandem_net::smoltcp::wire::IpListenEndpoint { addr: own, port })
                .is_ok()
            {
                sockets[link] = Some((nic, nets[nic].nic.sockets_mut().add(socket)));
            }
        }
        Self {
            sockets,
            port,
            addresses,
            channel,
        }
    }

    /// The member whose configured address on `link` is `address`.
    fn member_at(&self, link: usize, address: [u8; 4]) -> Option<NodeId> {
        NodeId::ALL.into_iter().find(|member| {
            self.addresses[member.index()].get(link).copied().flatten() == Some(address)
        })
    }

    /// Sends a control datagram or connection list of the crate (version 1,
    /// sealed here into version 2).
    fn send<Q: FrameQueues>(
        &mut self,
        nets: &mut [NetPort<Q>],
        to: NodeId,
        link: LinkId,
        plain: &[u8],
    ) {
        let link_index = link.0 as usize;
        let Some(Some((nic, handle))) = self.sockets.get(link_index) else {
            return;
        };
        let Some(Some(address)) = self
            .addresses
            .get(to.index())
            .and_then(|a| a.get(link_index))
        else {
            return;
        };
        let destination = Ipv4Address::from_octets(*address);
        // A peer whose address this node has taken over is not reachable
        // there: smoltcp would hold the datagram waiting for an ARP answer
        // that never comes, and the socket's later datagrams behind it.
        if nets[*nic]
            .nic
            .claimed_addresses()
            .iter()
            .any(|claimed| claimed.address() == destination)
        {
            return;
        }
        let endpoint = IpEndpoint::new(IpAddress::Ipv4(destination), self.port);
        let (nic, handle) = (*nic, *handle);
        let Some(bytes) = self.channel.seal(to, plain) else {
            log::error!(
                "ha: not a control datagram, not sent (to {} on link {})",
                to.name(),
                link.0
            );
            return;
        };
        let socket = nets[nic].nic.sockets_mut().get_mut::<udp::Socket>(handle);
        if let Err(error) = socket.send_slice(&bytes, endpoint) {
            log::debug!(
                "ha: datagram to {} on link {} dropped: {error}",
                to.name(),
                link.0
            );
        }
    }

    /// Received datagrams that are genuine, fresh, for this member and from
    /// where their sender is: (link, version-1 bytes for the crate). The
    /// others are dropped and counted by the channel.
    fn receive<Q: FrameQueues>(&mut self, nets: &mut [NetPort<Q>]) -> Vec<(LinkId, Vec<u8>)> {
        let mut received = Vec::new();
        for (link, entry) in self.sockets.into_iter().enumerate() {
            let Some((nic, handle)) = entry else { continue };
            loop {
                let socket = nets[nic].nic.sockets_mut().get_mut::<udp::Socket>(handle);
                let Ok((bytes, meta)) = socket.recv() else {
                    break;
                };
                let IpAddress::Ipv4(from) = meta.endpoint.addr;
                let source = self.member_at(link, from.octets());
                match self.channel.open(LinkId(link as u8), source, bytes) {
                    Ok(plain) => received.push((LinkId(link as u8), plain)),
                    Err(reason) => log::debug!(
                        "ha: control datagram from {} on link {link} dropped: {}",
                        meta.endpoint,
                        reason.name()
                    ),
                }
            }
        }
        received
    }
}

/// The replication stream's TCP connection.
struct Stream {
    nic: usize,
    peer: Option<[u8; 4]>,
    port: u16,
    listener: Option<Listener>,
    socket: Option<SocketHandle>,
    connected: bool,
    outbox: Outbox,
    retry_at_ms: u64,
    next_local_port: u16,
    /// The authentication of `socket` (docs/ha-protocol.md §4a); the
    /// stream is `connected` once it is established.
    session: Option<StreamSession>,
    /// When `socket`'s handshake started (the connecting side).
    handshake_since_ms: u64,
    /// How long a handshake may take.
    handshake_limit_ms: u64,
    /// Reconnect wait, keep-alive and abort, from the pair's timing.
    timers: tandem_ha::node::replication_bound::StreamTimers,
    /// Node b: accepted connections still in their handshake, with when
    /// they were accepted. None replaces the stream before it proved the key.
    pending: Vec<(SocketHandle, StreamSession, u64)>,
    me: NodeId,
    peer_node: NodeId,
    keys: Keys,
    nonces: NonceSource,
    counters: StreamCounters,
}

enum Origin {
    Host {
        connection: u64,
        request: RequestId,
    },
    /// A piece of a Write Zeroes or Deallocate command.
    Piece {
        parent: u64,
    },
}

struct HostWrite {
    origin: Origin,
    offset: u64,
    payload: Payload,
    force_unit_access: bool,
}

/// What a host write puts on the disks.
enum Payload {
    /// Shared by the local disk request and the replication stream.
    Data(WriteData),
    Zeroes {
        len: u64,
    },
    Deallocate {
        len: u64,
    },
}

struct HostRead {
    connection: u64,
    request: RequestId,
    data: Option<Vec<u8>>,
}

/// A Write Zeroes or Deallocate command, carried out one piece at a time.
struct PieceCommand {
    connection: u64,
    request: RequestId,
    deallocate: bool,
    /// What is left, as (offset, end) byte ranges.
    ranges: VecDeque<(u64, u64)>,
    failed: bool,
}

enum DiskPurpose {
    HostRead(u64),
    HostWrite(u64),
    /// The crate's flush `flush` (a host Flush, a clean cycle, the peer's).
    Flush(u64),
    /// One block of the bitmap persist of `generation`.
    BitmapBlock {
        generation: u64,
    },
    Replicated {
        seq: u64,
        offset: u64,
    },
    ResyncRead {
        offset: u64,
    },
    ResyncWrite {
        offset: u64,
    },
}

pub struct DataPair {
    node: DataNode,
    links: Links,
    stream: Stream,
    writes: BTreeMap<u64, HostWrite>,
    reads: BTreeMap<u64, HostRead>,
    pieces: BTreeMap<u64, PieceCommand>,
    /// Host flushes: the crate's id → the NVMe command.
    flushes: BTreeMap<u64, (u64, RequestId)>,
    /// The bitmap persist under way: generation, blocks left, all written.
    bitmap_persist: Option<(u64, usize, bool)>,
    disk_tags: BTreeMap<Tag, DiskPurpose>,
    next_id: u64,
    next_tag: Tag,
    copies: PayloadCopies,
    mac_time: StreamMacTime,
    /// Host requests finished, for the NVMe service.
    completions: Vec<Completion>,
    ana_group: u32,
    ana: HaAna,
    takeover: AddressTakeover,
    /// Hosts are admitted to the namespace (its size agreed with the peer),
    /// or told to come back later (gated) until it is.
    hosts: HostAdmission,
    /// The front-end NIC's link, as last reported, and the node's host-path
    /// verdict, as last printed.
    front_end_link: Option<bool>,
    host_path_lost: bool,
}

/// Whether hosts may connect yet: not before this node's namespace size is
/// agreed with its peer (a blank disk may be larger than the pair's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HostAdmission {
    Unset,
    Gated,
    Admitted,
}

/// What became of the host writes' data on this node: how many bytes of
/// it were copied in memory on its way to the disk and the peer (the
/// network stack's own socket buffers and frames aside). The NVMe
/// connection copies each write's data once, out of its socket.
#[derive(Debug, Default, Clone, Copy)]
pub struct PayloadCopies {
    /// Host writes with data, and their bytes.
    pub writes: u64,
    pub bytes: u64,
    /// Of them, sent to the peer.
    pub replicated: u64,
    /// Bytes copied.
    pub copied: u64,
}

impl PayloadCopies {
    fn count_host_write(&mut self, len: usize) {
        self.writes += 1;
        self.bytes += len as u64;
        self.copied += len as u64;
    }
}

impl core::fmt::Display for PayloadCopies {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.writes == 0 {
            return Ok(());
        }
        writeln!(
            f,
            "    payload-copies writes:{} bytes:{} replicated:{} copied:{}B ({} B per write)",
            self.writes,
            self.bytes,
            self.replicated,
            self.copied,
            self.copied / self.writes
        )
    }
}

/// The replication stream's MACs: frames sealed (trailer computed) and
/// bytes received and checked, and the time they took.
#[derive(Debug, Default, Clone, Copy)]
pub struct StreamMacTime {
    pub sealed: Spent,
    pub opened: Spent,
}

impl core::fmt::Display for StreamMacTime {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.sealed.count == 0 && self.opened.count == 0 {
            return Ok(());
        }
        writeln!(
            f,
            "    stream-mac sealed:{} ({} ns/KiB) opened:{} ({} ns/KiB)",
            self.sealed,
            self.sealed.nanos_per_kib(),
            self.opened,
            self.opened.nanos_per_kib()
        )
    }
}

pub struct WitnessMember {
    witness: Witness,
    links: Links,
}

/// The machine's part in a pair.
pub enum Pair {
    Data(DataPair),
    Witness(WitnessMember),
}

fn read_blocks<D: BlockQueue>(disk: &mut D, offset: u64, bytes: usize) -> Result<Vec<u8>, String> {
    match disk.run_now(DiskOp::read(offset, bytes)) {
        DiskResult::ReadData(data) if data.len() == bytes => Ok(data),
        DiskResult::Failed(error) => Err(alloc::format!("{error:?}")),
        _ => Err(alloc::format!("{:?}", DiskError::IoError)),
    }
}

impl DataPair {
    /// Opens disk0's metadata (formatting a blank disk) and joins the pair.
    /// `boot_stamp`: differs from one boot to the next (the node's
    /// incarnation, mixed with the time); `entropy`: bytes that differ from
    /// boot to boot, for the nonces of the pair's authentication.
    pub fn start<Q: FrameQueues, D: BlockQueue>(
        config: &Config,
        node: PairNode,
        nets: &mut [NetPort<Q>],
        disk: &mut D,
        now_micros: u64,
        boot_stamp: u64,
        entropy: &[u8],
    ) -> Result<Self, String> {
        let me = match node {
            PairNode::A => NodeId::A,
            PairNode::B => NodeId::B,
        };
        let mut node_config = NodeConfig::new(me, pair_id(config), boot_stamp ^ now_micros);
        node_config.timing = timing(&config.ha);
        node_config.resync_rate = config.ha.resync_mib_per_second << 20;
        // Link 0 is the replication link (net1), link 1 the front-end (net0).
        node_config.link_names = ["repl/net1", "front/net0", "link2", "link3"];
        let disk_bytes = disk.bytes();
        let layout = Layout::new(disk_bytes, DEFAULT_REGION_SIZE)
            .map_err(|error| alloc::format!("disk0 of {disk_bytes} bytes: {error}"))?;
        let slot0 = read_blocks(disk, layout.superblock_offset(0), BLOCK_SIZE)?;
        let slot1 = read_blocks(disk, layout.superblock_offset(1), BLOCK_SIZE)?;
        let now = ha_now(now_micros);
        let node = if slot0.iter().chain(slot1.iter()).all(|b| *b == 0) {
            // A blank disk: it takes a full copy from a peer with data, or
            // makes a new pair with a peer that is blank too.
            log::info!("ha: disk0 has no pair metadata: formatted blank for pair {:#x} as node {} (it serves once it met its peer)", node_config.pair_id, me.name());
            DataNode::format_with_layout(node_config, layout, InitialData::Blank, now)
        } else {
            // Metadata found where this disk's size puts it must describe
            // this disk (a copy of another disk's metadata, or a damaged
            // one, could claim any size).
            if let Ok(sb) = Superblock::load(&slot0, &slot1)
                && sb.layout != layout
            {
                return Err(alloc::format!(
                    "disk0 metadata describes a disk of {} bytes with {}-byte regions, this disk has {disk_bytes} bytes: not opened",
                    sb.layout.disk_bytes, sb.layout.region_size
                ));
            }
            let bitmap = read_blocks(disk, layout.bitmap_block_offset(0), layout.bitmap_blocks as usize * BLOCK_SIZE)?;
            DataNode::open(node_config, &slot0, &slot1, &bitmap, now)
        }
        .map_err(|error| alloc::format!("disk0 metadata: {error}"))?;

        let peer = config
            .nvme
            .peer_portals
            .first()
            .map(|(address, _)| *address);
        let me_index = me.index();
        let peer_index = me.peer().index();
        let mut addresses = [[None; 2]; 3];
        addresses[peer_index] = [config.ha.peer_replication.or(peer), peer];
        addresses[NodeId::Witness.index()] = [config.ha.witness_replication, config.ha.witness];
        let _ = me_index;
        let (keys, mut nonces) = pair_keys(config, entropy)?;
        let channel = ControlChannel::new(me, &keys, nonces.next_u64());
        let links = Links::open(nets, config.ha.control_port, addresses, channel);
        let stream_nic = if nets.len() > 1 { 1 } else { 0 };
        let stream_port = config.ha.control_port - 1;
        let connects = me == NodeId::A;
        let stream = Stream {
            nic: stream_nic,
            peer: addresses[peer_index][0],
            port: stream_port,
            // The stream, the connections in their handshake, one listening.
            listener: (!connects)
                .then(|| Listener::new(stream_port, 2 + STREAM_PENDING, STREAM_BUFFER_BYTES)),
            socket: None,
            connected: false,
            outbox: Outbox::default(),
            retry_at_ms: 0,
            next_local_port: 49152,
            session: None,
            handshake_since_ms: 0,
            handshake_limit_ms: (2 * config.ha.failure_timeout_ms).max(STREAM_HANDSHAKE_MIN_MILLIS),
            timers: timing(&config.ha).stream_timers(),
            pending: Vec::new(),
            me,
            peer_node: me.peer(),
            keys,
            nonces,
            counters: StreamCounters::default(),
        };
        log::info!(
            "ha: node {} data {} bytes, metadata at {} ({} regions of {} KiB)",
            me.name(),
            layout.data_bytes,
            layout.metadata_offset(),
            layout.region_count,
            layout.region_size / 1024
        );
        Ok(Self {
            node,
            links,
            stream,
            writes: BTreeMap::new(),
            reads: BTreeMap::new(),
            pieces: BTreeMap::new(),
            flushes: BTreeMap::new(),
            bitmap_persist: None,
            disk_tags: BTreeMap::new(),
            next_id: 1,
            next_tag: 1,
            completions: Vec::new(),
            copies: PayloadCopies::default(),
            mac_time: StreamMacTime::default(),
            ana_group: config.nvme.ana_group,
            ana: HaAna::Inaccessible,
            takeover: AddressTakeover::new(
                config,
                me,
                (boot_stamp ^ now_micros) as u32,
                now_micros,
            ),
            hosts: HostAdmission::Unset,
            front_end_link: None,
            host_path_lost: false,
        })
    }

    pub fn data_bytes(&self) -> u64 {
        self.node.data_bytes()
    }

    /// The NICs hosts reach the pair on, whose link state the node's host
    /// path depends on (`docs/ha-protocol.md` §17): those in the subnet of a
    /// peer portal (the hosts' segments), else link 1's (the front-end).
    pub fn front_end_nics<Q: FrameQueues>(&self, nets: &[NetPort<Q>]) -> Vec<usize> {
        let peer_portals = self.takeover.peer_portals();
        let nics: Vec<usize> = (0..nets.len())
            .filter(|&nic| {
                peer_portals
                    .iter()
                    .any(|address| nets[nic].nic.in_subnet(*address))
            })
            .collect();
        if nics.is_empty() {
            self.links.sockets[1]
                .map(|(nic, _)| nic)
                .into_iter()
                .collect()
        } else {
            nics
        }
    }

    /// The front-end NICs' link state (up: any is), sampled by the machine.
    pub fn set_front_end_link(&mut self, up: bool, console: &mut dyn Write, now_micros: u64) {
        if self.front_end_link != Some(up) {
            if self.front_end_link.is_some() || !up {
                let _ = writeln!(
                    console,
                    "tandem: front-end link {}",
                    if up { "up" } else { "down" }
                );
            }
            if up && self.front_end_link.is_some() {
                self.takeover.front_end_link_up(now_micros);
            }
            self.front_end_link = Some(up);
        }
        self.node.set_front_end_nic(ha_now(now_micros), up);
    }

    fn path_error(&self) -> BlockError {
        match self.ana {
            HaAna::Change => BlockError::AnaTransition,
            _ => BlockError::AnaInaccessible,
        }
    }

    fn tag(&mut self, purpose: DiskPurpose) -> Tag {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.disk_tags.insert(tag, purpose);
        tag
    }

    /// Takes a host block request (see the [`BlockBackend`] impl). A request
    /// refused at once comes back as its outcome.
    fn submit<D: BlockQueue>(
        &mut self,
        connection: u64,
        request: BlockRequest,
        disk: &mut D,
        now_micros: u64,
    ) -> Option<BlockOutcome> {
        let now = ha_now(now_micros);
        let refused = |error: HostIoError| match error {
            HostIoError::NotServing(HaAna::Change) => {
                BlockOutcome::Failed(BlockError::AnaTransition)
            }
            HostIoError::NotServing(_) => BlockOutcome::Failed(BlockError::AnaInaccessible),
            HostIoError::OutOfRange => BlockOutcome::Failed(BlockError::Internal),
        };
        match request.op {
            BlockOp::Read { offset, len } => {
                let id = self.next_id;
                self.next_id += 1;
                if let Err(error) = self.node.host_read(now, id, offset, len as u64) {
                    return Some(refused(error));
                }
                self.reads.insert(
                    id,
                    HostRead {
                        connection,
                        request: request.id,
                        data: None,
                    },
                );
                let tag = self.tag(DiskPurpose::HostRead(id));
                disk.submit(tag, DiskOp::read(offset, len as usize));
                None
            }
            BlockOp::Write {
                offset,
                data,
                force_unit_access,
            } => {
                let id = self.next_id;
                self.next_id += 1;
                if let Err(error) =
                    self.node
                        .host_write(now, id, offset, data.len() as u64, force_unit_access)
                {
                    return Some(refused(error));
                }
                // The NVMe connection's one copy, out of the socket.
                self.copies.count_host_write(data.len());
                self.writes.insert(
                    id,
                    HostWrite {
                        origin: Origin::Host {
                            connection,
                            request: request.id,
                        },
                        offset,
                        payload: Payload::Data(Rc::new(data)),
                        force_unit_access,
                    },
                );
                None
            }
            BlockOp::Flush => {
                let id = self.next_id;
                self.next_id += 1;
                if let Err(error) = self.node.host_flush(now, id) {
                    return Some(refused(error));
                }
                self.flushes.insert(id, (connection, request.id));
                None
            }
            BlockOp::WriteZeroes { offset, len, .. } => {
                let ranges = VecDeque::from([(offset, offset + len)]);
                self.start_pieces(
                    PieceCommand {
                        connection,
                        request: request.id,
                        deallocate: false,
                        ranges,
                        failed: false,
                    },
                    now,
                )
            }
            BlockOp::Deallocate { ranges } => {
                let ranges = ranges
                    .iter()
                    .filter(|r| r.len > 0)
                    .map(|r| (r.offset, r.offset + r.len))
                    .collect();
                self.start_pieces(
                    PieceCommand {
                        connection,
                        request: request.id,
                        deallocate: true,
                        ranges,
                        failed: false,
                    },
                    now,
                )
            }
        }
    }

    fn start_pieces(&mut self, command: PieceCommand, now: Instant) -> Option<BlockOutcome> {
        if !self.node.is_serving(now) {
            return Some(BlockOutcome::Failed(self.path_error()));
        }
        let parent = self.next_id;
        self.next_id += 1;
        self.pieces.insert(parent, command);
        self.next_piece(parent, now)
    }

    /// Starts the next piece of a Write Zeroes or Deallocate; the
    /// command's completion if it ended.
    fn next_piece(&mut self, parent: u64, now: Instant) -> Option<BlockOutcome> {
        let command = self.pieces.get_mut(&parent)?;
        let Some((offset, end)) = command.ranges.pop_front().filter(|_| !command.failed) else {
            let failed = command.failed;
            self.pieces.remove(&parent);
            return Some(if failed {
                BlockOutcome::Failed(self.path_error())
            } else {
                BlockOutcome::Done
            });
        };
        let deallocate = command.deallocate;
        let len = (end - offset).min(if deallocate {
            DEALLOCATE_PIECE_BYTES
        } else {
            ZERO_CHUNK_BYTES
        });
        if offset + len < end {
            command.ranges.push_front((offset + len, end));
        }
        let id = self.next_id;
        self.next_id += 1;
        let (admitted, payload) = if deallocate {
            (
                self.node.host_deallocate(now, id, offset, len),
                Payload::Deallocate { len },
            )
        } else {
            (
                self.node.host_write_zeroes(now, id, offset, len),
                Payload::Zeroes { len },
            )
        };
        match admitted {
            Ok(()) => {
                self.writes.insert(
                    id,
                    HostWrite {
                        origin: Origin::Piece { parent },
                        offset,
                        payload,
                        force_unit_access: false,
                    },
                );
                None
            }
            Err(_) => {
                self.pieces.remove(&parent);
                Some(BlockOutcome::Failed(self.path_error()))
            }
        }
    }

    /// One round: timers, datagrams, the stream, disk completions, actions.
    pub fn poll<Q: FrameQueues, D: BlockQueue>(
        &mut self,
        nets: &mut [NetPort<Q>],
        disk: &mut D,
        nvme: &mut NvmeService,
        console: &mut dyn Write,
        now_micros: u64,
    ) -> bool {
        let now = ha_now(now_micros);
        let mut busy = false;
        self.node.tick(now);
        for (link, bytes) in self.links.receive(nets) {
            busy = true;
            if takeover::is_connection_list(&bytes) {
                self.takeover.on_datagram(&bytes);
                continue;
            }
            self.node.on_datagram(now, link, &bytes);
        }
        busy |= self.pump_stream(nets, now_micros);
        busy |= self.take_disk_completions(disk, now_micros);
        busy |= self.run_actions(nets, disk, nvme, console, now_micros);
        // Start what the actions just submitted (a replicated write, a
        // bitmap persist) now, not in the next round.
        if self.take_disk_completions(disk, now_micros) {
            busy = true;
            self.run_actions(nets, disk, nvme, console, now_micros);
        }
        busy |= self.pump_stream(nets, now_micros);
        busy |= self.poll_takeover(nets, nvme, console, now_micros);
        self.admit_hosts_once_sized(nvme, console);
        if self.node.host_path_lost() != self.host_path_lost {
            self.host_path_lost = self.node.host_path_lost();
            let _ = writeln!(
                console,
                "tandem: host path {}",
                if self.host_path_lost { "lost" } else { "back" }
            );
        }
        busy
    }

    /// Hosts connect only once the namespace has its final size: a blank
    /// disk learns it from its peer (the pair's size, or the smaller of two
    /// blank disks), and a host must never see it change.
    fn admit_hosts_once_sized(&mut self, nvme: &mut NvmeService, console: &mut dyn Write) {
        if self.hosts == HostAdmission::Admitted {
            return;
        }
        let target = nvme.target_mut();
        match self.node.namespace_bytes() {
            None if self.hosts == HostAdmission::Unset => {
                target.set_admitting_hosts(false);
                self.hosts = HostAdmission::Gated;
                let _ = writeln!(
                    console,
                    "tandem: nvme: hosts wait (Controller Busy) until this node's namespace size is agreed with its peer (blank disk)"
                );
            }
            None => {}
            Some(bytes) => {
                let gated = self.hosts == HostAdmission::Gated;
                let namespaces: Vec<(u32, u8)> = target
                    .config()
                    .namespaces
                    .iter()
                    .map(|ns| (ns.nsid, ns.lba_shift))
                    .collect();
                for (nsid, lba_shift) in namespaces {
                    let _ = target.set_namespace_blocks(nsid, bytes >> lba_shift);
                }
                target.set_admitting_hosts(true);
                self.hosts = HostAdmission::Admitted;
                if gated {
                    let _ = writeln!(
                        console,
                        "tandem: nvme: namespace size {bytes} bytes agreed with the peer; hosts admitted"
                    );
                }
            }
        }
    }

    /// Hands finished disk requests to the crate and starts queued ones.
    fn take_disk_completions<D: BlockQueue>(&mut self, disk: &mut D, now_micros: u64) -> bool {
        let now = ha_now(now_micros);
        let mut busy = false;
        for (tag, result) in disk.poll() {
            busy = true;
            let Some(purpose) = self.disk_tags.remove(&tag) else {
                continue;
            };
            let ok = !matches!(result, DiskResult::Failed(_));
            match purpose {
                DiskPurpose::HostRead(id) => {
                    if let (Some(read), DiskResult::ReadData(data)) =
                        (self.reads.get_mut(&id), result)
                    {
                        read.data = Some(data);
                    }
                    self.node.on_local_read_done(now, id, ok);
                }
                DiskPurpose::HostWrite(id) => self.node.on_local_write_done(now, id, ok),
                DiskPurpose::Flush(flush) => self.node.on_disk_flush_done(now, flush, ok),
                DiskPurpose::BitmapBlock { generation } => {
                    if let Some((current, left, all_ok)) = self.bitmap_persist.as_mut()
                        && *current == generation
                    {
                        *left -= 1;
                        *all_ok &= ok;
                        if *left == 0 {
                            let all_ok = *all_ok;
                            self.bitmap_persist = None;
                            if !all_ok {
                                log::error!(
                                    "ha: bitmap write failed; the writes waiting for it fail"
                                );
                            }
                            self.node.on_bitmap_persisted(now, generation, all_ok);
                        }
                    }
                }
                DiskPurpose::Replicated { seq, offset } => {
                    self.node.on_replicated_write_done(now, seq, offset, ok)
                }
                DiskPurpose::ResyncRead { offset } => match result {
                    DiskResult::ReadData(data) => {
                        self.node.on_resync_read_done(now, offset, Some(&data))
                    }
                    _ => self.node.on_resync_read_done(now, offset, None),
                },
                DiskPurpose::ResyncWrite { offset } => {
                    self.node.on_resync_write_done(now, offset, ok)
                }
            }
        }
        busy
    }

    /// The front-end address takeover (`crate::takeover`): its connection
    /// report goes to the peer on every link.
    fn poll_takeover<Q: FrameQueues>(
        &mut self,
        nets: &mut [NetPort<Q>],
        nvme: &NvmeService,
        console: &mut dyn Write,
        now_micros: u64,
    ) -> bool {
        let node = &self.node;
        let (busy, report) = self.takeover.poll(nets, nvme, console, now_micros, || {
            node.status(ha_now(now_micros))
        });
        if let Some(report) = report {
            let peer = self.takeover.peer();
            for link in [LinkId(0), LinkId(1)] {
                self.links.send(nets, peer, link, &report);
            }
        }
        busy
    }

    fn run_actions<Q: FrameQueues, D: BlockQueue>(
        &mut self,
        nets: &mut [NetPort<Q>],
        disk: &mut D,
        nvme: &mut NvmeService,
        console: &mut dyn Write,
        now_micros: u64,
    ) -> bool {
        let now = ha_now(now_micros);
        let mut any = false;
        loop {
            let actions: Vec<Action> = self.node.drain_actions().collect();
            if actions.is_empty() {
                return any;
            }
            any = true;
            for action in actions {
                match action {
                    Action::SendDatagram { to, link, bytes } => {
                        self.links.send(nets, to, link, &bytes)
                    }
                    // Every frame is followed by its trailer (frame number and
                    // MAC); nothing goes out before the handshake ended.
                    // (The crate sends one frame per action; were there more,
                    // each gets its own trailer.)
                    Action::SendStream { bytes } => {
                        // One frame (what the crate sends): kept as it is, not copied.
                        if tandem_ha::wire::stream::frame_len(&bytes) == Ok(bytes.len()) {
                            let started = profile::now_nanos();
                            let trailer = self
                                .stream
                                .session
                                .as_mut()
                                .and_then(|session| session.trailer(&[&bytes]));
                            self.mac_time.sealed.add_since(started, bytes.len());
                            if let Some(trailer) = trailer {
                                self.stream.outbox.push(Chunk::Bytes(bytes));
                                self.stream.outbox.push(Chunk::Bytes(trailer.to_vec()));
                            }
                            continue;
                        }
                        let mut rest = &bytes[..];
                        while let Ok(len) = tandem_ha::wire::stream::frame_len(rest) {
                            let Some((frame, after)) = rest.split_at_checked(len) else {
                                break;
                            };
                            let started = profile::now_nanos();
                            let trailer = self
                                .stream
                                .session
                                .as_mut()
                                .and_then(|session| session.trailer(&[frame]));
                            self.mac_time.sealed.add_since(started, frame.len());
                            let Some(trailer) = trailer else { break };
                            self.stream.outbox.push(Chunk::Bytes(frame.to_vec()));
                            self.stream.outbox.push(Chunk::Bytes(trailer.to_vec()));
                            rest = after;
                        }
                    }
                    Action::ReplicateWrite { id, frame_prefix } => {
                        // The MAC covers the data where it is; the outbox
                        // shares it with the local disk request.
                        let mut parts: Vec<&[u8]> = vec![&frame_prefix];
                        let data = match self.writes.get(&id).map(|write| &write.payload) {
                            Some(Payload::Data(data)) => {
                                parts.push(data);
                                Chunk::Shared(Rc::clone(data))
                            }
                            // (A Deallocate never goes as a Write; were it
                            // asked to, zeroes are content it may have.)
                            Some(Payload::Zeroes { len } | Payload::Deallocate { len }) => {
                                parts.extend(outbox::zeroes(*len as usize));
                                Chunk::Zeroes(*len as usize)
                            }
                            None => Chunk::Bytes(Vec::new()),
                        };
                        let started = profile::now_nanos();
                        let trailer = self
                            .stream
                            .session
                            .as_mut()
                            .and_then(|session| session.trailer(&parts));
                        self.mac_time
                            .sealed
                            .add_since(started, parts.iter().map(|part| part.len()).sum());
                        if let Some(trailer) = trailer {
                            if matches!(data, Chunk::Shared(_)) {
                                self.copies.replicated += 1;
                            }
                            self.stream.outbox.push(Chunk::Bytes(frame_prefix));
                            self.stream.outbox.push(data);
                            self.stream.outbox.push(Chunk::Bytes(trailer.to_vec()));
                        }
                    }
                    Action::CloseStream => self.close_stream(nets, now_micros, "protocol error"),
                    Action::PersistMetadata { offset, bytes } => {
                        if let DiskResult::Failed(error) =
                            disk.run_now(DiskOp::write(offset, Rc::new(bytes), true))
                        {
                            // The crate waits for nothing more than this write;
                            // without it the node must not go on as if persisted.
                            panic!("ha: metadata write at {offset} failed: {error:?}");
                        }
                    }
                    Action::PersistBitmap { generation, blocks } => {
                        self.bitmap_persist = Some((generation, blocks.len(), true));
                        for (offset, bytes) in blocks {
                            let tag = self.tag(DiskPurpose::BitmapBlock { generation });
                            disk.submit(tag, DiskOp::write(offset, Rc::new(bytes), true));
                        }
                    }
                    Action::FlushDisk { flush } => {
                        let tag = self.tag(DiskPurpose::Flush(flush));
                        disk.submit(tag, DiskOp::Flush);
                    }
                    Action::CompleteFlush { id, result } => {
                        if let Some((connection, request)) = self.flushes.remove(&id) {
                            let outcome = self.outcome(result, None);
                            self.completions.push(Completion {
                                connection,
                                request,
                                outcome,
                            });
                        }
                    }
                    Action::SubmitLocalWrite { id } => {
                        if let Some(write) = self.writes.get(&id) {
                            // The data stays here too: the replication stream
                            // may still need it.
                            let offset = write.offset;
                            let op = match &write.payload {
                                Payload::Data(data) => {
                                    DiskOp::write(offset, Rc::clone(data), write.force_unit_access)
                                }
                                Payload::Zeroes { len } => DiskOp::zero(offset, *len, false),
                                Payload::Deallocate { len } => DiskOp::discard([(offset, *len)]),
                            };
                            let tag = self.tag(DiskPurpose::HostWrite(id));
                            disk.submit(tag, op);
                        }
                    }
                    Action::CompleteWrite { id, result } => {
                        let Some(write) = self.writes.remove(&id) else {
                            continue;
                        };
                        let outcome = self.outcome(result, None);
                        match write.origin {
                            Origin::Host {
                                connection,
                                request,
                            } => self.completions.push(Completion {
                                connection,
                                request,
                                outcome,
                            }),
                            Origin::Piece { parent } => {
                                if !matches!(outcome, BlockOutcome::Done) {
                                    if let Some(command) = self.pieces.get_mut(&parent) {
                                        command.failed = true;
                                    }
                                }
                                let target =
                                    self.pieces.get(&parent).map(|c| (c.connection, c.request));
                                if let (Some(done), Some((connection, request))) =
                                    (self.next_piece(parent, now), target)
                                {
                                    self.completions.push(Completion {
                                        connection,
                                        request,
                                        outcome: done,
                                    });
                                }
                            }
                        }
                    }
                    Action::CompleteRead { id, result } => {
                        let Some(read) = self.reads.remove(&id) else {
                            continue;
                        };
                        let outcome = self.outcome(result, read.data);
                        self.completions.push(Completion {
                            connection: read.connection,
                            request: read.request,
                            outcome,
                        });
                    }
                    Action::ApplyReplicatedWrite {
                        seq,
                        offset,
                        data,
                        force_unit_access,
                    } => {
                        let tag = self.tag(DiskPurpose::Replicated { seq, offset });
                        // Like the primary's own write: in the disk's volatile
                        // cache unless the host asked for forced unit access;
                        // the host's Flush reaches this disk as a Flush frame.
                        disk.submit(tag, DiskOp::write(offset, Rc::new(data), force_unit_access));
                    }
                    Action::ApplyReplicatedZeroes { seq, offset, len } => {
                        let tag = self.tag(DiskPurpose::Replicated { seq, offset });
                        disk.submit(tag, DiskOp::zero(offset, len, false));
                    }
                    Action::ApplyReplicatedDeallocate { seq, offset, len } => {
                        let tag = self.tag(DiskPurpose::Replicated { seq, offset });
                        disk.submit(tag, DiskOp::discard([(offset, len)]));
                    }
                    Action::ReadForResync { offset, len } => {
                        let tag = self.tag(DiskPurpose::ResyncRead { offset });
                        disk.submit(tag, DiskOp::read(offset, len as usize));
                    }
                    Action::ApplyResync { offset, data } => {
                        let tag = self.tag(DiskPurpose::ResyncWrite { offset });
                        disk.submit(tag, DiskOp::write(offset, Rc::new(data), true));
                    }
                    Action::AnaChanged(state) => {
                        self.ana = state;
                        let nvme_state = match state {
                            HaAna::Optimized => AnaState::Optimized,
                            HaAna::Inaccessible => AnaState::Inaccessible,
                            HaAna::Change => AnaState::Change,
                        };
                        if let Err(error) =
                            nvme.target_mut().set_ana_state(self.ana_group, nvme_state)
                        {
                            log::error!("ha: cannot set ANA state: {error}");
                        }
                    }
                    Action::RoleChanged(change) => {
                        let _ = writeln!(console, "{change}");
                    }
                    Action::HandshakeDecided(handshake) => {
                        let _ = writeln!(console, "{handshake}");
                    }
                    Action::VerifyFinished(outcome) => {
                        let _ = writeln!(console, "{outcome}");
                    }
                }
            }
        }
    }

    fn outcome(&self, result: IoResult, data: Option<Vec<u8>>) -> BlockOutcome {
        match result {
            IoResult::Ok => match data {
                Some(data) => BlockOutcome::ReadData(data),
                None => BlockOutcome::Done,
            },
            IoResult::PathError => BlockOutcome::Failed(self.path_error()),
            IoResult::MediaError => BlockOutcome::Failed(BlockError::Media),
        }
    }

    fn close_stream<Q: FrameQueues>(
        &mut self,
        nets: &mut [NetPort<Q>],
        now_micros: u64,
        why: &str,
    ) {
        if let Some(handle) = self.stream.socket.take() {
            let sockets = nets[self.stream.nic].nic.sockets_mut();
            sockets.get_mut::<tcp::Socket>(handle).abort();
            sockets.remove(handle);
        }
        self.stream.outbox.clear();
        self.stream.session = None;
        if self.stream.connected {
            self.stream.connected = false;
            log::info!("ha: replication stream closed ({why})");
            self.node.on_stream_closed(ha_now(now_micros));
        }
        self.stream.retry_at_ms = now_micros / 1000 + self.reconnect_millis();
    }

    /// Wait before the next connection attempt: one heartbeat interval, or
    /// longer after a refused handshake.
    fn reconnect_millis(&self) -> u64 {
        if self.node.handshake_refused() {
            REFUSED_RECONNECT_MILLIS
        } else {
            self.stream.timers.reconnect.as_millis()
        }
    }

    /// The stream's socket is authenticated: the node may use it.
    fn stream_established<Q: FrameQueues>(
        &mut self,
        nets: &mut [NetPort<Q>],
        now: Instant,
        frames: Vec<u8>,
    ) {
        let Some(handle) = self.stream.socket else {
            return;
        };
        let socket = nets[self.stream.nic]
            .nic
            .sockets_mut()
            .get_mut::<tcp::Socket>(handle);
        socket.set_nagle_enabled(false);
        // Each Write is answered by a WriteAck (and each WriteAck soon
        // followed by the next Write), which carries the ACK.
        socket.set_ack_delay(Some(tandem_net::ACK_DELAY));
        // Keep-alives keep an idle stream alive; the timeout drops a
        // stream whose peer went away without a FIN (the heartbeats
        // decide about the peer itself).
        let timers = self.stream.timers;
        socket.set_keep_alive(Some(tandem_net::smoltcp::time::Duration::from_micros(
            timers.keep_alive.as_micros(),
        )));
        socket.set_timeout(Some(tandem_net::smoltcp::time::Duration::from_micros(
            timers.abort.as_micros(),
        )));
        // The connecting side's Finish goes before any frame.
        if let Some(session) = self.stream.session.as_mut() {
            self.stream.outbox.push(Chunk::Bytes(session.take_finish()));
        }
        self.stream.connected = true;
        self.stream.counters.established += 1;
        log::info!("ha: replication stream connected (peer authenticated)");
        self.node.on_stream_connected(now);
        if !frames.is_empty() {
            self.node.on_stream_bytes(now, &frames);
        }
    }

    /// Node b: moves accepted connections through their handshake; the first
    /// to prove the pair key becomes the stream, replacing the one before
    /// (a restarted peer's old connection); the others are closed when they
    /// fail, dawdle or are pushed out by newer ones.
    fn pump_pending<Q: FrameQueues>(&mut self, nets: &mut [NetPort<Q>], now_micros: u64) -> bool {
        let now_ms = now_micros / 1000;
        let nic = self.stream.nic;
        let mut busy = false;
        let mut authenticated = None;
        let mut index = 0;
        while index < self.stream.pending.len() {
            let (handle, session, since_ms) = &mut self.stream.pending[index];
            let socket = nets[nic].nic.sockets_mut().get_mut::<tcp::Socket>(*handle);
            let mut verdict = Ok(None);
            while socket.can_recv() && matches!(verdict, Ok(None)) {
                let Ok(bytes) = socket.recv(|bytes| (bytes.len(), bytes.to_vec())) else {
                    break;
                };
                if bytes.is_empty() {
                    break;
                }
                busy = true;
                verdict = session
                    .receive(&bytes)
                    .map(|received| received.authenticated.then_some(received.frames));
            }
            let output = session.take_output();
            if !output.is_empty() {
                let _ = socket.send_slice(&output);
            }
            let failure = match &verdict {
                Err(error) => Some(Some(*error)),
                Ok(None)
                    if now_ms.saturating_sub(*since_ms) > self.stream.handshake_limit_ms
                        || !socket.may_recv() =>
                {
                    Some(None)
                }
                _ => None,
            };
            if let Some(error) = failure {
                match error {
                    Some(error) => {
                        self.stream.counters.count(error);
                        log::debug!("ha: replication connection refused: {error}");
                    }
                    None => self.stream.counters.timeout += 1,
                }
                let (handle, _, _) = self.stream.pending.remove(index);
                let sockets = nets[nic].nic.sockets_mut();
                sockets.get_mut::<tcp::Socket>(handle).abort();
                sockets.remove(handle);
                busy = true;
                continue;
            }
            if let Ok(Some(frames)) = verdict {
                authenticated = Some((index, frames));
                break;
            }
            index += 1;
        }
        if let Some((index, frames)) = authenticated {
            let (handle, session, _) = self.stream.pending.remove(index);
            if self.stream.socket.is_some() {
                self.close_stream(
                    nets,
                    now_micros,
                    "replaced by a new authenticated connection",
                );
            }
            self.stream.socket = Some(handle);
            self.stream.session = Some(session);
            self.stream_established(nets, ha_now(now_micros), frames);
            busy = true;
        }
        busy
    }

    fn pump_stream<Q: FrameQueues>(&mut self, nets: &mut [NetPort<Q>], now_micros: u64) -> bool {
        let now_ms = now_micros / 1000;
        let now = ha_now(now_micros);
        let mut busy = false;
        let nic = self.stream.nic;
        if nic >= nets.len() {
            return false;
        }
        // Accept (b) or connect (a).
        if let Some(listener) = self.stream.listener.as_mut() {
            let live = self.stream.socket.is_some() as usize + self.stream.pending.len();
            for handle in listener.poll(nets[nic].nic.sockets_mut(), live) {
                if self.stream.pending.len() >= STREAM_PENDING {
                    let (oldest, _, _) = self.stream.pending.remove(0);
                    let sockets = nets[nic].nic.sockets_mut();
                    sockets.get_mut::<tcp::Socket>(oldest).abort();
                    sockets.remove(oldest);
                    self.stream.counters.timeout += 1;
                }
                let session = StreamSession::accept(
                    &self.stream.keys,
                    self.stream.me,
                    self.stream.peer_node,
                    self.stream.nonces.next_bytes(),
                );
                self.stream.pending.push((handle, session, now_ms));
                busy = true;
            }
            busy |= self.pump_pending(nets, now_micros);
        } else if self.stream.socket.is_none() && now_ms >= self.stream.retry_at_ms {
            if let (Some(peer), Some(local)) = (self.stream.peer, nets[nic].nic.address()) {
                let socket = tcp::Socket::new(
                    tcp::SocketBuffer::new(vec![0; STREAM_BUFFER_BYTES]),
                    tcp::SocketBuffer::new(vec![0; STREAM_BUFFER_BYTES]),
                );
                let local_port = self.stream.next_local_port;
                self.stream.next_local_port = if local_port >= 65000 {
                    49152
                } else {
                    local_port + 1
                };
                let remote = IpEndpoint::new(
                    IpAddress::Ipv4(Ipv4Address::from_octets(peer)),
                    self.stream.port,
                );
                let local = IpEndpoint::new(IpAddress::Ipv4(local.address()), local_port);
                match nets[nic].nic.connect(socket, remote, local) {
                    Ok(handle) => {
                        self.stream.socket = Some(handle);
                        self.stream.session = None;
                    }
                    Err(error) => log::debug!("ha: cannot connect the replication stream: {error}"),
                }
            }
            self.stream.retry_at_ms = now_ms + self.reconnect_millis();
        }
        let Some(handle) = self.stream.socket else {
            return busy;
        };
        let socket = nets[nic].nic.sockets_mut().get_mut::<tcp::Socket>(handle);
        // The connecting side opens the handshake once TCP is up.
        if self.stream.session.is_none() && socket.may_send() {
            let mut session = StreamSession::connect(
                &self.stream.keys,
                self.stream.me,
                self.stream.peer_node,
                self.stream.nonces.next_bytes(),
            );
            let _ = socket.send_slice(&session.take_output());
            self.stream.session = Some(session);
            self.stream.handshake_since_ms = now_ms;
            busy = true;
        }
        let mut received = Vec::new();
        while socket.can_recv() {
            match socket.recv(|bytes| {
                received.extend_from_slice(bytes);
                (bytes.len(), bytes.len())
            }) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        if !received.is_empty() || (!self.stream.connected && self.stream.session.is_some()) {
            let Some(session) = self.stream.session.as_mut() else {
                return busy;
            };
            let started = profile::now_nanos();
            let outcome = session.receive(&received);
            self.mac_time.opened.add_since(started, received.len());
            match outcome {
                Ok(result) if result.authenticated => {
                    self.stream_established(nets, now, result.frames);
                    busy = true;
                }
                Ok(result) => {
                    if !result.frames.is_empty() {
                        busy = true;
                        self.node.on_stream_bytes(now, &result.frames);
                    } else if !self.stream.connected
                        && now_ms.saturating_sub(self.stream.handshake_since_ms)
                            > self.stream.handshake_limit_ms
                    {
                        self.stream.counters.timeout += 1;
                        self.close_stream(nets, now_micros, "handshake timed out");
                        return true;
                    }
                }
                Err(error) => {
                    self.stream.counters.count(error);
                    log::warn!("ha: replication stream: {error}; closing it");
                    self.close_stream(nets, now_micros, "authentication failed");
                    return true;
                }
            }
        }
        let Some(handle) = self.stream.socket else {
            return true;
        };
        let socket = nets[nic].nic.sockets_mut().get_mut::<tcp::Socket>(handle);
        while !self.stream.outbox.is_empty() && socket.can_send() {
            match socket.send_slice(self.stream.outbox.front()) {
                Ok(0) | Err(_) => break,
                Ok(sent) => {
                    self.stream.outbox.advance(sent);
                    busy = true;
                }
            }
        }
        let closed = !socket.is_open()
            || (!socket.may_recv() && socket.recv_queue() == 0 && self.stream.session.is_some());
        let gave_up = self.stream.session.is_none()
            && !socket.is_active()
            && socket.state() != tcp::State::Listen;
        if closed || gave_up {
            self.close_stream(nets, now_micros, "connection lost");
            busy = true;
        }
        busy
    }

    pub fn status(&self, now_micros: u64) -> String {
        alloc::format!(
            "{}{}{}{}\n{}\n{}",
            self.node.status(ha_now(now_micros)),
            self.copies,
            self.mac_time,
            self.links.channel.counters(),
            self.stream.counters,
            self.takeover.status_text(now_micros)
        )
    }

    pub fn history(&self) -> String {
        let mut text = String::new();
        for change in self.node.history() {
            let at = change.at.as_micros();
            let _ = writeln!(
                text,
                "[{:5}.{:03}] {} epoch {} reason {}",
                at / 1_000_000,
                at / 1000 % 1000,
                change.role,
                change.epoch,
                change.reason
            );
        }
        text
    }

    pub fn promote(&mut self, now_micros: u64) -> Result<(), String> {
        self.node
            .promote(ha_now(now_micros))
            .map_err(|error| alloc::format!("{error}"))
    }

    pub fn demote(&mut self, now_micros: u64) -> Result<(), String> {
        self.node
            .demote(ha_now(now_micros))
            .map_err(|error| alloc::format!("{error}"))
    }

    pub fn verify(&mut self, now_micros: u64) -> Result<(), String> {
        self.node
            .verify(ha_now(now_micros))
            .map_err(|error| alloc::format!("{error}"))
    }

    pub fn invalidate(&mut self, now_micros: u64) -> Result<(), String> {
        self.node
            .invalidate(ha_now(now_micros))
            .map_err(|error| alloc::format!("{error}"))
    }

    pub fn fence(&mut self, now_micros: u64) {
        self.node.fence(ha_now(now_micros))
    }

    pub fn unfence(&mut self, now_micros: u64) {
        self.node.unfence(ha_now(now_micros))
    }
}

/// The pair as the NVMe service's backend: host I/O goes through the pair
/// (to disk0 and the peer), its completions come back when the pair says.
impl<D: BlockQueue> BlockBackend<D> for DataPair {
    fn submit(
        &mut self,
        disks: &mut [D],
        connection: ConnectionId,
        request: BlockRequest,
        now_micros: u64,
    ) {
        let id = request.id;
        let outcome = match disks.first_mut() {
            Some(disk) => DataPair::submit(self, connection, request, disk, now_micros),
            None => Some(BlockOutcome::Failed(BlockError::NotReady)),
        };
        if let Some(outcome) = outcome {
            self.completions.push(Completion {
                connection,
                request: id,
                outcome,
            });
        }
    }

    fn take_completions(&mut self, _disks: &mut [D]) -> Vec<Completion> {
        core::mem::take(&mut self.completions)
    }
}

impl WitnessMember {
    /// `entropy`: bytes that differ from boot to boot, for the nonces.
    pub fn start<Q: FrameQueues>(
        config: &Config,
        nets: &mut [NetPort<Q>],
        now_micros: u64,
        boot_stamp: u64,
        entropy: &[u8],
    ) -> Result<Self, String> {
        let mut witness_config = WitnessConfig::new(boot_stamp ^ now_micros);
        witness_config.timing = timing(&config.ha);
        let witness = Witness::new(witness_config, ha_now(now_micros))
            .map_err(|error| alloc::format!("{error}"))?;
        let mut addresses = [[None; 2]; 3];
        for (index, address) in config.ha.node_addresses.iter().enumerate() {
            addresses[index] = [config.ha.node_replication_addresses[index], *address];
        }
        let (keys, mut nonces) = pair_keys(config, entropy)?;
        let channel = ControlChannel::new(NodeId::Witness, &keys, nonces.next_u64());
        let links = Links::open(nets, config.ha.control_port, addresses, channel);
        Ok(Self { witness, links })
    }

    pub fn poll<Q: FrameQueues>(
        &mut self,
        nets: &mut [NetPort<Q>],
        console: &mut dyn Write,
        now_micros: u64,
    ) -> bool {
        let now = ha_now(now_micros);
        let mut busy = false;
        self.witness.tick(now);
        for (link, bytes) in self.links.receive(nets) {
            busy = true;
            self.witness.on_datagram(now, link, &bytes);
        }
        let actions: Vec<Action> = self.witness.drain_actions().collect();
        for action in actions {
            busy = true;
            match action {
                Action::SendDatagram { to, link, bytes } => self.links.send(nets, to, link, &bytes),
                Action::RoleChanged(change) => {
                    let _ = writeln!(console, "{change}");
                }
                _ => {}
            }
        }
        busy
    }

    pub fn status(&self, now_micros: u64) -> String {
        alloc::format!(
            "{}{}\n",
            self.witness.status(ha_now(now_micros)),
            self.links.channel.counters()
        )
    }
}
