//! The NVMe/TCP service: accepts TCP connections on every NIC, pumps bytes
//! between smoltcp sockets and `tandem_nvme` connections, and carries their
//! block requests to the disks and the completions back.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use crate::backend::{BlockBackend, Completion};
use crate::block::{BlockQueue, SECTOR};
use crate::config::{AnaSetting, NvmeSettings, derived_id};
use crate::port::NetPort;
use tandem_net::smoltcp::iface::SocketHandle;
use tandem_net::smoltcp::socket::tcp;
use tandem_net::smoltcp::wire::IpEndpoint;
use tandem_net::{FrameQueues, Listener};
use tandem_nvme::{
    AnaState, Connection, ConnectionState, Crc32c, Instant, NamespaceConfig, Portal, PortalAddress,
    Target, TargetConfig,
};

/// Live connections per port and NIC.
const MAX_CONNECTIONS: usize = 32;
/// Live connections per discovery port and NIC.
const MAX_DISCOVERY_CONNECTIONS: usize = MAX_CONNECTIONS / 4;
/// How long a connection the target closed may wait for the host's FIN
/// before it is reset: a host that never closes its side must not hold a
/// connection slot (and its buffers) for ever.
const CLOSE_LINGER_MS: u64 = 2_000;
/// TCP buffer per direction per connection: the receive buffer is the
/// window the host may fill, so a small one throttles writes to one R2T's
/// data per round trip (128 KiB: 128 KiB writes at ~0.4× of nvmet-tcp under
/// TCG; 512 KiB: ~0.95×). Sized from the heap, see [`socket_buffer_bytes`].
const MAX_SOCKET_BUFFER_BYTES: usize = 512 * 1024;
const MIN_SOCKET_BUFFER_BYTES: usize = 64 * 1024;

/// Per direction per connection: all I/O connections of every NIC at their
/// bound use at most an eighth of the heap (command data has a quarter):
/// ~110 KiB with 64 MiB of memory, the most from 256 MiB on (one NIC).
fn socket_buffer_bytes(heap_bytes: usize, nics: usize) -> usize {
    let per_connection = heap_bytes / 8 / (nics.max(1) * MAX_CONNECTIONS * 2);
    per_connection.clamp(MIN_SOCKET_BUFFER_BYTES, MAX_SOCKET_BUFFER_BYTES)
}

struct NvmeConnection {
    id: u64,
    nic: usize,
    /// The listening port it came in on.
    port: u16,
    handle: SocketHandle,
    connection: Connection,
    /// When the NVMe side was first seen closed.
    closed_at_ms: Option<u64>,
    /// Since when its answers wait for more (see [`pump`]).
    gathering_since_ms: Option<u64>,
}

struct PortListeners {
    io: Listener,
    discovery: Option<Listener>,
}

pub struct NvmeService {
    target: Target,
    /// Per NIC; `None` where the target does not listen.
    listeners: Vec<Option<PortListeners>>,
    connections: Vec<NvmeConnection>,
    next_connection: u64,
}

pub fn ana_state(setting: AnaSetting) -> AnaState {
    match setting {
        AnaSetting::Optimized => AnaState::Optimized,
        AnaSetting::NonOptimized => AnaState::NonOptimized,
        AnaSetting::Inaccessible => AnaState::Inaccessible,
    }
}

impl NvmeService {
    /// Mixes entropy from the hardware into the target's random generator
    /// (challenges and DH exponents of in-band authentication).
    pub fn seed_random(&mut self, entropy: &[u8]) {
        self.target.seed_random(entropy);
    }

    /// Builds the target over `disks`, with a portal per addressed NIC.
    /// `pair_data_bytes`: with an HA pair, only disk0 is served, with this
    /// size (the rest holds the pair's metadata). `crc32c`: a faster
    /// CRC32C than the portable one, where the CPU has it.
    pub fn new<Q: FrameQueues, D: BlockQueue>(
        settings: &NvmeSettings,
        nets: &[NetPort<Q>],
        disks: &[D],
        heap_bytes: usize,
        pair_data_bytes: Option<u64>,
        crc32c: Option<Crc32c>,
    ) -> Result<Self, String> {
        let mut config = TargetConfig::new(&settings.subsystem_nqn);
        config.serial = settings.serial.clone();
        config.model = settings.model.clone();
        config.cntlid_min = settings.cntlid_min;
        config.cntlid_max = settings.cntlid_max;
        config.allowed_hosts = settings.allowed_hosts.clone();
        config.dhchap_hosts = settings.dhchap_hosts.clone();
        config.dhchap_preferences = settings.dhchap_preferences.clone();
        config.ana_groups = alloc::vec![(settings.ana_group, ana_state(settings.ana_state))];
        config.limits.max_io_queues = settings.max_io_queues;
        // Keep command data well inside the heap: a quarter of it at most.
        config.limits.total_data_budget =
            (heap_bytes as u64 / 4).min(config.limits.total_data_budget);
        config.limits.data_budget =
            (config.limits.data_budget as u64).min(config.limits.total_data_budget / 2) as u32;
        let lba_shift = if settings.lba_bytes == 4096 { 12 } else { 9 };
        let served = if pair_data_bytes.is_some() {
            &disks[..disks.len().min(1)]
        } else {
            disks
        };
        for (index, disk) in served.iter().enumerate() {
            let nsid = index as u32 + 1;
            let nguid = match settings.nguid {
                Some(mut nguid) => {
                    nguid[15] = nguid[15].wrapping_add(index as u8);
                    nguid
                }
                None => derived_id(&settings.subsystem_nqn, nsid, 0),
            };
            let mut uuid = derived_id(&settings.subsystem_nqn, nsid, 1);
            uuid[6] = (uuid[6] & 0x0f) | 0x80; // RFC 9562 version 8 (custom)
            uuid[8] = (uuid[8] & 0x3f) | 0x80;
            config.namespaces.push(NamespaceConfig {
                nsid,
                blocks: pair_data_bytes.unwrap_or(disk.sectors() * SECTOR) >> lba_shift,
                lba_shift,
                nguid,
                uuid,
                ana_group: settings.ana_group,
            });
        }
        // A pair's replication link (net1) is not a portal: hosts cannot reach it.
        let serves = |nic: usize| pair_data_bytes.is_none() || nic != 1;
        for (index, port) in nets.iter().enumerate() {
            if !serves(index) {
                continue;
            }
            if let Some(address) = port.nic.address() {
                config.portals.push(Portal {
                    port_id: index as u16 + 1,
                    address: PortalAddress::V4(address.address().octets()),
                    port: settings.port,
                });
            }
        }
        config.peer_portals = settings
            .peer_portals
            .iter()
            .enumerate()
            .map(|(index, (address, port))| Portal {
                port_id: 0x100 + index as u16,
                address: PortalAddress::V4(*address),
                port: *port,
            })
            .collect();
        let mut target = Target::new(config).map_err(|error| alloc::format!("{error}"))?;
        if let Some(crc32c) = crc32c {
            target.set_crc32c(crc32c);
        }
        let listeners = (0..nets.len())
            .map(|nic| {
                serves(nic).then(|| PortListeners {
                    io: Listener::new(
                        settings.port,
                        MAX_CONNECTIONS,
                        socket_buffer_bytes(heap_bytes, nets.len()),
                    ),
                    discovery: (settings.discovery_port != 0).then(|| {
                        Listener::new(
                            settings.discovery_port,
                            MAX_DISCOVERY_CONNECTIONS,
                            16 * 1024,
                        )
                    }),
                })
            })
            .collect();
        Ok(Self {
            target,
            listeners,
            connections: Vec::new(),
            next_connection: 1,
        })
    }

    pub fn target_mut(&mut self) -> &mut Target {
        &mut self.target
    }

    /// One round: completions from the backend, new connections, bytes in
    /// and out, block requests to the backend (`backend`, over `disks`).
    /// Returns whether anything happened.
    pub fn poll<Q: FrameQueues, D: BlockQueue, B: BlockBackend<D> + ?Sized>(
        &mut self,
        nets: &mut [NetPort<Q>],
        backend: &mut B,
        disks: &mut [D],
        now_micros: u64,
    ) -> bool {
        let now_ms = now_micros / 1000;
        let now = Instant::from_millis(now_ms);
        let mut busy = false;
        self.target.poll(now);

        busy |= self.complete(backend.take_completions(disks), now);

        for (nic, listeners) in self.listeners.iter_mut().enumerate() {
            let Some(listeners) = listeners.as_mut() else {
                continue;
            };
            let sockets = nets[nic].nic.sockets_mut();
            // Each port has its own bound.
            let live = |port: u16| {
                self.connections
                    .iter()
                    .filter(|c| c.nic == nic && c.port == port)
                    .count()
            };
            let mut accepted: Vec<(u16, SocketHandle)> = Vec::new();
            let port = listeners.io.port();
            accepted.extend(
                listeners
                    .io
                    .poll(sockets, live(port))
                    .into_iter()
                    .map(|handle| (port, handle)),
            );
            if let Some(discovery) = listeners.discovery.as_mut() {
                let port = discovery.port();
                accepted.extend(
                    discovery
                        .poll(sockets, live(port))
                        .into_iter()
                        .map(|handle| (port, handle)),
                );
            }
            for (port, handle) in accepted {
                busy = true;
                let socket = sockets.get_mut::<tcp::Socket>(handle);
                socket.set_nagle_enabled(false);
                socket.set_ack_delay(Some(tandem_net::ACK_DELAY));
                let id = self.next_connection;
                self.next_connection += 1;
                log::debug!(
                    "nvme: connection {id} from {:?} on net{nic}",
                    socket.remote_endpoint()
                );
                self.connections.push(NvmeConnection {
                    id,
                    nic,
                    port,
                    handle,
                    connection: Connection::new(&self.target, now),
                    closed_at_ms: None,
                    gathering_since_ms: None,
                });
            }
        }

        for entry in &mut self.connections {
            let socket = nets[entry.nic]
                .nic
                .sockets_mut()
                .get_mut::<tcp::Socket>(entry.handle);
            busy |= pump(&mut self.target, entry, socket, now);
            while let Some(request) = entry.connection.next_block_request() {
                busy = true;
                backend.submit(disks, entry.id, request, now_micros);
            }
            // Completions produced above may be ready to go out now.
            let socket = nets[entry.nic]
                .nic
                .sockets_mut()
                .get_mut::<tcp::Socket>(entry.handle);
            busy |= pump(&mut self.target, entry, socket, now);
        }
        // Start what was just submitted without waiting for the next round.
        busy |= self.complete(backend.take_completions(disks), now);
        self.evict_idle_connections(nets);
        self.connections.retain_mut(|entry| {
            let sockets = nets[entry.nic].nic.sockets_mut();
            let mut finished = false;
            if entry.connection.state() == ConnectionState::Closed {
                let closed_at_ms = *entry.closed_at_ms.get_or_insert(now_ms);
                let socket = sockets.get_mut::<tcp::Socket>(entry.handle);
                finished = matches!(socket.state(), tcp::State::Closed | tcp::State::TimeWait);
                if !finished && now_ms.saturating_sub(closed_at_ms) > CLOSE_LINGER_MS {
                    log::debug!(
                        "nvme: connection {} reset: the host did not close its side",
                        entry.id
                    );
                    socket.abort();
                    finished = true;
                }
            }
            if finished {
                // Our socket: the listener handed it over.
                sockets.remove(entry.handle);
            }
            !finished
        });
        while let Some(event) = self.target.poll_event() {
            log::info!("nvme: {event:?}");
        }
        busy
    }

    /// Keeps a connection slot free on every port so that a new host can
    /// always connect: when a port is (nearly) full, the oldest connection
    /// that has not completed a Fabrics Connect is closed. Idle connections
    /// time out anyway (handshake timeout); this keeps hundreds of them from
    /// locking hosts out meanwhile.
    fn evict_idle_connections<Q: FrameQueues>(&mut self, nets: &mut [NetPort<Q>]) {
        for (nic, listeners) in self.listeners.iter().enumerate() {
            let Some(listeners) = listeners.as_ref() else {
                continue;
            };
            let ports = core::iter::once((listeners.io.port(), MAX_CONNECTIONS)).chain(
                listeners
                    .discovery
                    .as_ref()
                    .map(|d| (d.port(), MAX_DISCOVERY_CONNECTIONS)),
            );
            for (port, max) in ports {
                let on_port = |c: &&mut NvmeConnection| c.nic == nic && c.port == port;
                let live = self.connections.iter_mut().filter(on_port).count();
                if live + 2 <= max {
                    continue;
                }
                let oldest_idle = self
                    .connections
                    .iter_mut()
                    .filter(on_port)
                    .filter(|c| {
                        c.connection.state() != ConnectionState::Closed
                            && c.connection.info().cntlid.is_none()
                    })
                    .min_by_key(|c| c.id);
                if let Some(entry) = oldest_idle {
                    log::debug!(
                        "nvme: connection {} closed to make room on port {port} of net{nic}",
                        entry.id
                    );
                    entry.connection.close(&mut self.target);
                    nets[nic]
                        .nic
                        .sockets_mut()
                        .get_mut::<tcp::Socket>(entry.handle)
                        .abort();
                }
            }
        }
    }

    /// Changes whenever a connection comes or goes (cheap: for noticing that
    /// [`NvmeService::host_connections`] may have changed).
    pub fn connections_fingerprint(&self) -> (usize, u64) {
        (self.connections.len(), self.next_connection)
    }

    /// The hosts' open TCP connections to the portals: (local end, host end).
    pub fn host_connections<Q: FrameQueues>(
        &self,
        nets: &[NetPort<Q>],
    ) -> Vec<(IpEndpoint, IpEndpoint)> {
        self.connections
            .iter()
            .filter(|entry| entry.connection.state() != ConnectionState::Closed)
            .filter_map(|entry| {
                let socket = nets
                    .get(entry.nic)?
                    .nic
                    .sockets()
                    .get::<tcp::Socket>(entry.handle);
                if !socket.is_active() {
                    return None;
                }
                Some((socket.local_endpoint()?, socket.remote_endpoint()?))
            })
            .collect()
    }

    /// Hands finished requests to their connections (a connection may have
    /// closed while its request was under way). Returns whether there were any.
    fn complete(&mut self, completions: Vec<Completion>, now: Instant) -> bool {
        let busy = !completions.is_empty();
        for Completion {
            connection,
            request,
            outcome,
        } in completions
        {
            let Some(entry) = self.connections.iter_mut().find(|c| c.id == connection) else {
                continue;
            };
            if let Err(error) =
                entry
                    .connection
                    .complete_block(&mut self.target, now, request, outcome)
            {
                log::debug!("completion for a closed command: {error}");
            }
        }
        busy
    }

    /// The `nvme` console command's text. Each connection's line ends with
    /// its TCP state and where its bytes wait: in the socket's send and
    /// receive buffers, and answers not yet handed to the socket.
    pub fn describe<Q: FrameQueues>(&self, nets: &[NetPort<Q>]) -> String {
        let config = self.target.config();
        let mut text = alloc::format!(
            "subsystem {} serial {} model {}\n",
            config.subsystem_nqn,
            config.serial,
            config.model
        );
        for namespace in &config.namespaces {
            let state = self
                .target
                .ana_state(namespace.ana_group)
                .map(|s| s.name())
                .unwrap_or("?");
            let _ = writeln!(
                text,
                "  namespace {} blocks={} lba={} ana_group={} ana={}",
                namespace.nsid,
                namespace.blocks,
                1u32 << namespace.lba_shift,
                namespace.ana_group,
                state
            );
        }
        for controller in self.target.controllers() {
            let _ = writeln!(
                text,
                "  controller {} {:?} host {} kato={} ms io_queues={:?}",
                controller.cntlid,
                controller.subsystem,
                controller.host_nqn,
                controller.kato_ms,
                controller.io_queues
            );
        }
        for entry in &self.connections {
            let info = entry.connection.info();
            let _ = write!(
                text,
                "  connection {} net{} cntlid={:?} qid={:?} depth={} outstanding={} hdgst={} ddgst={} {:?}",
                entry.id,
                entry.nic,
                info.cntlid,
                info.qid,
                info.depth,
                info.outstanding,
                info.header_digest,
                info.data_digest,
                info.stats
            );
            if let Some(port) = nets.get(entry.nic) {
                let socket = port.nic.sockets().get::<tcp::Socket>(entry.handle);
                let _ = write!(
                    text,
                    " tcp={} sendq={} recvq={}",
                    socket.state(),
                    socket.send_queue(),
                    socket.recv_queue()
                );
            }
            let _ = writeln!(text, " unsent={}", entry.connection.output_len());
        }
        let stats = self.target.stats();
        let _ = writeln!(
            text,
            "  reads={} writes={} bytes_read={} bytes_written={}",
            stats.read_commands, stats.write_commands, stats.bytes_read, stats.bytes_written
        );
        text
    }
}

/// Answers to block commands that may wait on a connection for more, and
/// their bytes (see [`tandem_nvme::Connection::output_may_wait`]): a few
/// 4 KiB reads' answers leave as one frame, and each waits at most for the
/// completions of reads and writes already with the disk, and at most
/// [`GATHER_MILLIS`] (checked at the loop's next wake-up: a completion, a
/// frame, or the 20 ms tick at the latest).
const GATHER_ANSWERS: usize = 4;
const GATHER_BYTES: usize = 16 * 1024;
const GATHER_MILLIS: u64 = 2;

/// Moves bytes between a socket and its connection. Returns whether any moved.
fn pump(
    target: &mut Target,
    entry: &mut NvmeConnection,
    socket: &mut tcp::Socket,
    now: Instant,
) -> bool {
    let mut moved = false;
    let connection = &mut entry.connection;
    while socket.can_recv() {
        let taken = socket.recv(|bytes| {
            let used = connection.receive(target, now, bytes);
            (used, used)
        });
        match taken {
            Ok(0) | Err(_) => break,
            Ok(_) => moved = true,
        }
    }
    connection.poll(target, now);
    let gather = if connection.output_may_wait(GATHER_ANSWERS, GATHER_BYTES) {
        let since = *entry.gathering_since_ms.get_or_insert(now.millis());
        now.millis().saturating_sub(since) < GATHER_MILLIS
    } else {
        false
    };
    if !gather {
        entry.gathering_since_ms = None;
    }
    while !gather && connection.has_output() && socket.can_send() {
        let sent = socket.send(|buffer| {
            let written = connection.write_output(buffer);
            (written, written)
        });
        match sent {
            Ok(0) | Err(_) => break,
            Ok(_) => moved = true,
        }
    }
    if connection.wants_close() && !connection.has_output() {
        socket.close();
        connection.close(target);
    } else if !socket.is_open() || (!socket.may_recv() && socket.recv_queue() == 0) {
        // The host closed or reset the connection.
        if connection.state() != ConnectionState::Closed {
            connection.close(target);
        }
        if socket.is_open() {
            socket.close();
        }
    }
    moved
}
