//! The glue on the host: nodes made of the library's NVMe service, block
//! backends and pair executor over fake NICs and fake disks, driven round
//! by round the way the image's event loop (`main.rs`'s `machine`) drives
//! them, on a simulated clock, with a stock NVMe/TCP initiator
//! (`tandem_nvme::host`) over a smoltcp interface as the host.

mod fakes;
mod pair;
mod standalone;

use std::fmt::Write as _;

use tandem_net::smoltcp::iface::SocketHandle;
use tandem_net::smoltcp::socket::tcp;
use tandem_net::smoltcp::time::Instant as NetInstant;
use tandem_net::smoltcp::wire::{IpAddress, IpEndpoint, Ipv4Address};
use tandem_net::{FrameDevice, Listener, Nic, NicAddressing};
use tandem_nvme::host::{HostEvent, Initiator};
use tandem_nvme::wire::{Completion, Status};

use crate::backend::{BlockBackend, LocalDisks};
use crate::config::{AnaSetting, Config, HaRole};
use crate::pair::{DataPair, Pair, WitnessMember};
use crate::port::NetPort;
use crate::storage::NvmeService;
use fakes::{FakeDisk, FakeNic, Network, WireRef};

pub const NQN: &str = "nqn.2026-12.dev.tandem:glue";
const HOST_NQN: &str = "nqn.2014-08.org.nvmexpress:uuid:glue-host";
/// One round of the loop on the simulated clock.
const ROUND_MICROS: u64 = 500;
const HEAP_BYTES: usize = 64 << 20;

fn instant(micros: u64) -> NetInstant {
    NetInstant::from_micros(micros as i64)
}

/// A tandem machine: what `machine.rs` holds, over fakes.
pub struct Node {
    pub nets: Vec<NetPort<FakeNic>>,
    pub wires: Vec<WireRef>,
    pub disks: Vec<FakeDisk>,
    pub nvme: Option<NvmeService>,
    local_disks: LocalDisks,
    pub pair: Option<Pair>,
    /// What it printed on its console.
    pub console: String,
    /// Polled each round (a stopped node is a killed one).
    pub running: bool,
    /// How far this node's clock is behind the world's: a paused machine's
    /// clock does not advance while it is stopped.
    pub clock_lag: u64,
    paused_at: Option<u64>,
}

impl Node {
    /// Boots a node with `cmdline`, its NIC `n` on segment `segments[n]`.
    pub fn boot(
        network: &mut Network,
        id: u8,
        cmdline: &str,
        segments: &[usize],
        disks: Vec<FakeDisk>,
        now: u64,
    ) -> Self {
        let config = Config::parse(cmdline).expect("a valid command line");
        config
            .check_consistency()
            .expect("a consistent command line");
        let mut nets = Vec::new();
        let mut wires = Vec::new();
        for (index, segment) in segments.iter().enumerate() {
            let wire = network.wire(*segment);
            let mac = [2, 0, 0, 0, id, index as u8];
            let name: &'static str = Box::leak(format!("net{index}").into_boxed_str());
            let nic = Nic::new(
                name,
                FrameDevice::new(FakeNic::new(mac, wire.clone())),
                mac,
                config.nic(index),
                instant(now),
            );
            nets.push(NetPort::new(nic, None::<Listener>));
            wires.push(wire);
        }
        let mut node = Node {
            nets,
            wires,
            disks,
            nvme: None,
            local_disks: LocalDisks::new(),
            pair: None,
            console: String::new(),
            running: true,
            clock_lag: 0,
            paused_at: None,
        };
        node.start_services(&config, now);
        node
    }

    /// `machine.rs`'s `start_services`.
    fn start_services(&mut self, config: &Config, now: u64) {
        let mut settings = config.nvme.clone();
        let mut pair_data_bytes = None;
        let boot_stamp = 0x5eed
            ^ u64::from(
                self.nets
                    .first()
                    .map_or(0, |port| port.nic.device().mac_address()[4]),
            );
        let entropy = boot_stamp.to_le_bytes();
        match config.ha.role {
            HaRole::Standalone => {}
            HaRole::Witness => {
                let witness =
                    WitnessMember::start(config, &mut self.nets, now, boot_stamp, &entropy)
                        .expect("the witness starts");
                self.pair = Some(Pair::Witness(witness));
                return;
            }
            HaRole::Data(node) => {
                let pair = DataPair::start(
                    config,
                    node,
                    &mut self.nets,
                    &mut self.disks[0],
                    now,
                    boot_stamp,
                    &entropy,
                )
                .expect("the pair starts");
                pair_data_bytes = Some(pair.data_bytes());
                self.pair = Some(Pair::Data(pair));
                settings.ana_state = AnaSetting::Inaccessible;
            }
        }
        let service = NvmeService::new(
            &settings,
            &self.nets,
            &self.disks,
            HEAP_BYTES,
            pair_data_bytes,
            None,
        )
        .expect("the target starts");
        self.nvme = Some(service);
    }

    /// One round of `machine.rs`'s event loop.
    pub fn poll(&mut self, now: u64) {
        for port in &mut self.nets {
            port.nic.poll(instant(now));
        }
        if let Some(nvme) = self.nvme.as_mut() {
            let backend: &mut dyn BlockBackend<FakeDisk> = match self.pair.as_mut() {
                Some(Pair::Data(pair)) => pair,
                _ => &mut self.local_disks,
            };
            nvme.poll(&mut self.nets, backend, &mut self.disks, now);
            if let (Some(Pair::Data(pair)), Some(disk)) =
                (self.pair.as_mut(), self.disks.first_mut())
            {
                pair.poll(&mut self.nets, disk, nvme, &mut self.console, now);
            }
            for port in &mut self.nets {
                port.nic.poll(instant(now));
            }
        }
        if let Some(Pair::Witness(witness)) = self.pair.as_mut() {
            witness.poll(&mut self.nets, &mut self.console, now);
        }
        for port in &mut self.nets {
            port.nic.device_mut().flush();
        }
    }

    /// The role this node last printed (`tandem: role <role> ...`).
    pub fn role(&self) -> Option<&str> {
        self.console
            .lines()
            .rev()
            .find_map(|line| line.strip_prefix("tandem: role "))
            .and_then(|rest| rest.split_whitespace().next())
    }

    pub fn pair_status(&self, now: u64) -> String {
        match self.pair.as_ref() {
            Some(Pair::Data(pair)) => pair.status(now),
            _ => String::new(),
        }
    }

    /// Stops the machine as QEMU's `stop` does: no polling, its clock
    /// stands still, frames sent to it wait in its NICs' queues.
    pub fn pause(&mut self, now: u64) {
        self.running = false;
        self.paused_at = Some(now);
    }

    /// Lets a paused machine run on from where its clock stood.
    pub fn resume(&mut self, now: u64) {
        if let Some(at) = self.paused_at.take() {
            self.clock_lag += now - at;
        }
        self.running = true;
    }

    /// Unplugs (or plugs back) every NIC, and stops (or starts) polling.
    pub fn set_running(&mut self, running: bool) {
        self.running = running;
        for wire in &self.wires {
            wire.borrow_mut().up = running;
        }
    }
}

/// One NVMe/TCP connection of the host.
pub struct HostConnection {
    handle: SocketHandle,
    pub initiator: Initiator,
    unsent: Vec<u8>,
    pub events: Vec<HostEvent>,
}

/// The NVMe host: a smoltcp interface on the front-end segment.
pub struct Host {
    nic: Nic<FrameDevice<FakeNic>>,
    pub connections: Vec<HostConnection>,
    next_port: u16,
}

impl Host {
    pub fn new(network: &mut Network, segment: usize, address: &str, now: u64) -> Self {
        let wire = network.wire(segment);
        let mac = [2, 0, 0, 0, 0x99, 0];
        let addressing = NicAddressing::Static {
            address: address.parse().expect("an address/prefix"),
            gateway: None,
        };
        let nic = Nic::new(
            "host0",
            FrameDevice::new(FakeNic::new(mac, wire)),
            mac,
            addressing,
            instant(now),
        );
        Host {
            nic,
            connections: Vec::new(),
            next_port: 40000,
        }
    }

    pub fn address(&self) -> Ipv4Address {
        self.nic.address().expect("static").address()
    }

    /// Opens a TCP connection to `to`:4420; returns its index.
    pub fn connect(&mut self, to: [u8; 4]) -> usize {
        let socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 256 * 1024]),
            tcp::SocketBuffer::new(vec![0; 256 * 1024]),
        );
        let local = IpEndpoint::new(IpAddress::Ipv4(self.address()), self.next_port);
        self.next_port += 1;
        let remote = IpEndpoint::new(IpAddress::Ipv4(Ipv4Address::from_octets(to)), 4420);
        let handle = self.nic.connect(socket, remote, local).expect("connect");
        self.connections.push(HostConnection {
            handle,
            initiator: Initiator::new(false, false),
            unsent: Vec::new(),
            events: Vec::new(),
        });
        self.connections.len() - 1
    }

    /// The local port of connection `index`.
    pub fn local_port(&self, index: usize) -> u16 {
        self.nic
            .sockets()
            .get::<tcp::Socket>(self.connections[index].handle)
            .local_endpoint()
            .expect("connected")
            .port
    }

    pub fn poll(&mut self, now: u64) {
        self.nic.poll(instant(now));
        for connection in &mut self.connections {
            let socket = self
                .nic
                .sockets_mut()
                .get_mut::<tcp::Socket>(connection.handle);
            connection.unsent.extend(connection.initiator.take_output());
            if socket.may_send() && !connection.unsent.is_empty() {
                let sent = socket.send_slice(&connection.unsent).unwrap_or(0);
                connection.unsent.drain(..sent);
            }
            while socket.can_recv() {
                let bytes = socket
                    .recv(|bytes| (bytes.len(), bytes.to_vec()))
                    .unwrap_or_default();
                if bytes.is_empty() {
                    break;
                }
                connection.initiator.feed(&bytes);
            }
            while let Ok(Some(event)) = connection.initiator.poll_event() {
                connection.events.push(event);
            }
        }
        self.nic.poll(instant(now));
    }
}

/// Nodes, the host and the segments between them, on one clock.
pub struct World {
    pub now: u64,
    pub network: Network,
    pub nodes: Vec<Node>,
    pub host: Host,
}

impl World {
    pub fn round(&mut self) {
        self.now += ROUND_MICROS;
        for node in self.nodes.iter_mut().filter(|node| node.running) {
            node.poll(self.now - node.clock_lag);
        }
        self.host.poll(self.now);
        self.network.deliver();
    }

    /// Runs rounds until `done` holds, for at most `seconds` of the clock.
    pub fn run_until(
        &mut self,
        seconds: u64,
        what: &str,
        mut done: impl FnMut(&mut World) -> bool,
    ) {
        let end = self.now + seconds * 1_000_000;
        while !done(self) {
            assert!(
                self.now < end,
                "{what}: not within {seconds} s\n{}",
                self.consoles()
            );
            self.round();
        }
    }

    /// Runs `seconds` of the clock.
    pub fn run_for_millis(&mut self, millis: u64) {
        let end = self.now + millis * 1000;
        while self.now < end {
            self.round();
        }
    }

    pub fn consoles(&self) -> String {
        let mut text = String::new();
        for (index, node) in self.nodes.iter().enumerate() {
            let _ = writeln!(
                text,
                "--- node {index} ---\n{}{}",
                node.console,
                node.pair_status(self.now)
            );
        }
        text
    }

    /// Waits for the completion of `cid` on host connection `connection`.
    pub fn completion(&mut self, connection: usize, cid: u16) -> (Completion, Vec<u8>) {
        let mut found = None;
        self.run_until(10, &format!("completion of cid {cid}"), |world| {
            let events = &mut world.host.connections[connection].events;
            let position = events
                .iter()
                .position(|e| matches!(e, HostEvent::Completion { cqe, .. } if cqe.cid == cid));
            found = position.map(|position| events.remove(position));
            found.is_some()
        });
        match found {
            Some(HostEvent::Completion { cqe, data }) => (cqe, data),
            _ => unreachable!(),
        }
    }

    /// Whether `cid` completed on `connection` (without waiting).
    pub fn completed(&self, connection: usize, cid: u16) -> bool {
        self.host.connections[connection]
            .events
            .iter()
            .any(|e| matches!(e, HostEvent::Completion { cqe, .. } if cqe.cid == cid))
    }

    pub fn ok(&mut self, connection: usize, cid: u16) -> (Completion, Vec<u8>) {
        let (cqe, data) = self.completion(connection, cid);
        assert_eq!(
            cqe.status,
            Status::SUCCESS,
            "cid {cid}\n{}",
            self.consoles()
        );
        (cqe, data)
    }

    /// A host connection to `to` set up as an admin queue (connected and
    /// enabled): its index and the controller's id.
    pub fn admin_queue(&mut self, to: [u8; 4]) -> (usize, u16) {
        let connection = self.host.connect(to);
        self.initialized(connection);
        let cid = self.host.connections[connection]
            .initiator
            .connect(0, 31, 0, [7; 16], 0xFFFF, NQN, HOST_NQN, false);
        let (cqe, _) = self.ok(connection, cid);
        let cntlid = cqe.result as u16;
        let cid = self.host.connections[connection].initiator.enable();
        self.ok(connection, cid);
        (connection, cntlid)
    }

    /// A host connection to `to` set up as I/O queue `qid` of `cntlid`.
    pub fn io_queue(&mut self, to: [u8; 4], cntlid: u16, qid: u16) -> usize {
        let connection = self.host.connect(to);
        self.initialized(connection);
        let cid = self.host.connections[connection]
            .initiator
            .connect(qid, 127, 0, [7; 16], cntlid, NQN, HOST_NQN, false);
        self.ok(connection, cid);
        connection
    }

    fn initialized(&mut self, connection: usize) {
        self.run_until(10, "ICResp", |world| {
            let events = &mut world.host.connections[connection].events;
            let position = events
                .iter()
                .position(|e| matches!(e, HostEvent::Initialized { .. }));
            position.map(|position| events.remove(position)).is_some()
        });
    }

    pub fn initiator(&mut self, connection: usize) -> &mut Initiator {
        &mut self.host.connections[connection].initiator
    }
}

/// `len` bytes of a pattern seeded by `seed`.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(31)
                .wrapping_add(u32::from(seed) * 7) as u8
                ^ seed
        })
        .collect()
}
