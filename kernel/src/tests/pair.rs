//! An HA pair — data nodes a and b and a witness — with the host on the
//! front-end segment: host I/O through the pair, and the address takeover.

use tandem_net::smoltcp::wire::{
    ArpOperation, ArpPacket, EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Address, Ipv4Packet,
    TcpPacket,
};

use super::fakes::{FakeDisk, Network};
use super::{Host, NQN, Node, World, pattern};

const FRONT: usize = 0;
const REPLICATION: usize = 1;
const TIMING: &str = "hb_interval=100 hb_timeout=2000 lease=1500 \
                      pair_key=5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed";
const DISK_BYTES: usize = 32 << 20;

fn front_address(node: usize) -> [u8; 4] {
    [10, 77, 0, node as u8 + 1]
}

/// A pair in sync: the world, and the index of the primary.
fn pair() -> (World, usize) {
    pair_on_disks([DISK_BYTES, DISK_BYTES])
}

/// The pair's members on blank disks of these sizes, and the host, booted
/// (node b only when `boot_b`).
fn booted(disk_bytes: [usize; 2], boot_b: bool) -> World {
    let mut network = Network::default();
    let mut nodes = Vec::new();
    for (index, name) in ["a", "b"].into_iter().enumerate() {
        let (me, peer) = (index + 1, 2 - index);
        let cmdline = format!(
            "net0=10.77.0.{me}/24 net1=10.78.0.{me}/24 node={name} peer=10.77.0.{peer} peer_repl=10.78.0.{peer} \
             witness=10.77.0.3 witness_repl=10.78.0.3 nqn={NQN} cntlid={}-{} status_port=0 {TIMING}",
            me * 1000,
            me * 1000 + 999
        );
        let mut node = Node::boot(
            &mut network,
            me as u8,
            &cmdline,
            &[FRONT, REPLICATION],
            vec![FakeDisk::new(disk_bytes[index])],
            0,
        );
        node.running = index == 0 || boot_b;
        nodes.push(node);
    }
    let witness = format!(
        "net0=10.77.0.3/24 net1=10.78.0.3/24 role=witness node_a=10.77.0.1 node_b=10.77.0.2 \
         node_a_repl=10.78.0.1 node_b_repl=10.78.0.2 status_port=0 {TIMING}"
    );
    nodes.push(Node::boot(
        &mut network,
        3,
        &witness,
        &[FRONT, REPLICATION],
        Vec::new(),
        0,
    ));
    let host = Host::new(&mut network, FRONT, "10.77.0.9/24", 0);
    World {
        now: 0,
        network,
        nodes,
        host,
    }
}

/// A pair on blank disks of these sizes, in sync.
fn pair_on_disks(disk_bytes: [usize; 2]) -> (World, usize) {
    let mut world = booted(disk_bytes, true);
    world.run_until(30, "a primary and a secondary in sync", |world| {
        let roles: Vec<Option<&str>> = world.nodes[..2].iter().map(Node::role).collect();
        let Some(primary) = roles.iter().position(|role| *role == Some("primary")) else {
            return false;
        };
        roles[1 - primary] == Some("secondary")
            && world.nodes[primary]
                .pair_status(world.now)
                .contains("replication:Established")
    });
    let primary = world.nodes[..2]
        .iter()
        .position(|node| node.role() == Some("primary"))
        .expect("a primary");
    (world, primary)
}

/// Whether `disk` holds `data` at `offset`.
fn holds(disk: &FakeDisk, offset: u64, data: &[u8]) -> bool {
    disk.read(offset, data.len()) == data
}

#[test]
fn a_host_write_on_the_primary_completes_only_once_on_both_disks() {
    let (mut world, primary) = pair();
    let secondary = 1 - primary;
    let (primary_disk, secondary_disk) = (
        world.nodes[primary].disks[0].clone(),
        world.nodes[secondary].disks[0].clone(),
    );
    let address = front_address(primary);
    let (_, cntlid) = world.admin_queue(address);
    let io = world.io_queue(address, cntlid, 1);

    // The secondary's disk holds its writes: the primary's own write is done,
    // the data has crossed the replication stream, and still the host waits.
    secondary_disk.hold(true);
    let first = pattern(4096, 1);
    let cid = world.initiator(io).write(1, 8, first.clone(), 512, false);
    world.run_until(
        5,
        "the write on the primary's disk and at the secondary's",
        |_| holds(&primary_disk, 8 * 512, &first) && secondary_disk.queued() > 0,
    );
    world.run_for_millis(50);
    assert!(
        !world.completed(io, cid),
        "completed before the secondary's disk wrote it"
    );
    secondary_disk.hold(false);
    world.ok(io, cid);
    assert!(
        holds(&secondary_disk, 8 * 512, &first),
        "the replicated write is on the secondary's disk"
    );

    // And the other way round: the peer has it, the primary's disk not yet.
    primary_disk.hold(true);
    let second = pattern(8192, 2);
    let cid = world.initiator(io).write(1, 64, second.clone(), 512, false);
    world.run_until(5, "the write on the secondary's disk", |_| {
        holds(&secondary_disk, 64 * 512, &second)
    });
    world.run_for_millis(50);
    assert!(
        !world.completed(io, cid),
        "completed before the primary's own disk wrote it"
    );
    assert!(primary_disk.queued() > 0);
    primary_disk.hold(false);
    world.ok(io, cid);
    assert!(holds(&primary_disk, 64 * 512, &second));

    // A read on the primary comes from its disk.
    let cid = world.initiator(io).read(1, 64, 16, 512);
    let (_, read) = world.ok(io, cid);
    assert_eq!(read, second);

    // Each write's data was copied once, out of the host's socket: the disk
    // request and the replication stream share it.
    let status = world.nodes[primary].pair_status(world.now);
    assert!(
        status.contains("payload-copies writes:2 bytes:12288 replicated:2 copied:12288B"),
        "{status}"
    );
}

#[test]
fn a_failed_local_write_on_the_primary_fails_the_host_write() {
    let (mut world, primary) = pair();
    let address = front_address(primary);
    let (_, cntlid) = world.admin_queue(address);
    let io = world.io_queue(address, cntlid, 1);
    world.nodes[primary].disks[0].0.borrow_mut().fail_writes = true;
    let cid = world
        .initiator(io)
        .write(1, 8, pattern(4096, 3), 512, false);
    let (cqe, _) = world.completion(io, cid);
    assert_eq!(cqe.status, tandem_nvme::wire::Status::WRITE_FAULT);
}

/// The frames a NIC sent, parsed: (ARP packets as (operation, sender MAC,
/// sender address)), (TCP segments as (destination MAC, source address,
/// source port, destination address, destination port, ACK, RST)).
type ArpSeen = (ArpOperation, [u8; 6], Ipv4Address);
type TcpSeen = ([u8; 6], Ipv4Address, u16, Ipv4Address, u16, bool);

fn frames_sent(frames: &[Vec<u8>]) -> (Vec<ArpSeen>, Vec<TcpSeen>) {
    let (mut arps, mut segments) = (Vec::new(), Vec::new());
    for frame in frames {
        let Ok(ethernet) = EthernetFrame::new_checked(&frame[..]) else {
            continue;
        };
        match ethernet.ethertype() {
            EthernetProtocol::Arp => {
                if let Ok(arp) = ArpPacket::new_checked(ethernet.payload()) {
                    let mac: [u8; 6] = arp.source_hardware_addr().try_into().unwrap();
                    let address =
                        Ipv4Address::from_octets(arp.source_protocol_addr().try_into().unwrap());
                    arps.push((arp.operation(), mac, address));
                }
            }
            EthernetProtocol::Ipv4 => {
                let Ok(ip) = Ipv4Packet::new_checked(ethernet.payload()) else {
                    continue;
                };
                if ip.next_header() != IpProtocol::Tcp {
                    continue;
                }
                let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else {
                    continue;
                };
                segments.push((
                    ethernet.dst_addr().0,
                    ip.src_addr(),
                    tcp.src_port(),
                    ip.dst_addr(),
                    tcp.dst_port(),
                    tcp.ack() && !tcp.syn(),
                ));
            }
            _ => {}
        }
    }
    (arps, segments)
}

#[test]
fn a_takeover_claim_sends_gratuitous_arp_and_tickles_the_peer_s_connections() {
    let (mut world, primary) = pair();
    let survivor = 1 - primary;
    let address = front_address(primary);
    let (admin, _) = world.admin_queue(address);
    let host_port = world.host.local_port(admin);
    // The primary reports its host connection to the survivor.
    world.run_until(5, "the connection reported to the peer", |world| {
        world.nodes[survivor]
            .pair_status(world.now)
            .contains("peer reported 1 connections")
    });

    // The primary dies (its NICs go silent); the survivor takes over.
    world.nodes[primary].set_running(false);
    let sent_before = world.nodes[survivor].wires[0].borrow().sent.len();
    world.run_until(10, "the takeover claim", |world| {
        world.nodes[survivor]
            .console
            .contains("tandem: takeover claim 10.77.0.")
    });
    world.run_for_millis(1500);
    let survivor_node = &world.nodes[survivor];
    let line = survivor_node
        .console
        .lines()
        .find(|line| line.starts_with("tandem: takeover claim"))
        .unwrap();
    assert!(
        line.contains(&format!("{}", Ipv4Address::from_octets(address))),
        "{line}"
    );
    let mac = survivor_node.nets[0].nic.device().mac_address();
    let claimed = Ipv4Address::from_octets(address);
    let (arps, segments) = frames_sent(&survivor_node.wires[0].borrow().sent[sent_before..]);
    assert!(
        arps.iter().any(
            |(operation, sender_mac, sender)| *operation == ArpOperation::Request
                && *sender_mac == mac
                && *sender == claimed
        ),
        "a gratuitous ARP for the claimed address, from the survivor's MAC: {arps:?}"
    );
    let host = world.host.address();
    let host_mac = [2, 0, 0, 0, 0x99, 0];
    assert!(
        segments
            .iter()
            .any(|(to_mac, from, from_port, to, to_port, ack)| {
                *to_mac == host_mac
                    && *from == claimed
                    && *from_port == 4420
                    && *to == host
                    && *to_port == host_port
                    && *ack
            }),
        "a tickle (an ACK from the claimed portal) for the host's connection: {segments:?}"
    );
}

/// The namespace size (in 512-byte blocks) node `to` reports to a host.
fn namespace_blocks(world: &mut World, to: [u8; 4]) -> u64 {
    let (admin, _) = world.admin_queue(to);
    let cid = world.initiator(admin).identify(0x00, 1, 0);
    let (_, data) = world.ok(admin, cid);
    u64::from_le_bytes(data[..8].try_into().unwrap())
}

#[test]
fn disks_of_different_sizes_serve_the_smaller_one_and_hosts_wait_until_it_is_agreed() {
    // Node a alone on a blank disk larger than b's: it does not know the
    // pair's size yet, so hosts are told to come back later.
    let mut world = booted([DISK_BYTES + (8 << 20), DISK_BYTES], false);
    world.run_for_millis(500);
    let connection = world.host.connect(front_address(0));
    world.run_until(10, "ICResp", |world| {
        world.host.connections[connection]
            .events
            .iter()
            .any(|e| matches!(e, tandem_nvme::host::HostEvent::Initialized { .. }))
    });
    let cid = world.initiator(connection).connect(
        0,
        31,
        0,
        [7; 16],
        0xFFFF,
        NQN,
        "nqn.2014-08.org.nvmexpress:uuid:glue-host",
        false,
    );
    let (cqe, _) = world.completion(connection, cid);
    assert_eq!(
        cqe.status,
        tandem_nvme::wire::Status::CONNECT_CONTROLLER_BUSY_RETRY,
        "{}",
        world.consoles()
    );
    assert!(world.nodes[0].console.contains(
        "tandem: nvme: hosts wait (Controller Busy) until this node's namespace size is agreed"
    ));
    assert!(
        world.nodes[0]
            .pair_status(world.now)
            .contains("size:not-agreed")
    );
    // Node b boots: the pair serves the smaller disk's data area, on both
    // nodes.
    world.nodes[1].running = true;
    world.run_until(30, "a primary and a secondary in sync", |world| {
        world.nodes[..2].iter().any(|node| {
            node.role() == Some("primary")
                && node
                    .pair_status(world.now)
                    .contains("replication:Established")
        })
    });
    assert!(
        world.nodes[0].console.contains("hosts admitted"),
        "{}",
        world.consoles()
    );
    let small = tandem_ha::metadata::Layout::new(DISK_BYTES as u64, 65536)
        .unwrap()
        .data_bytes;
    for node in 0..2 {
        let status = world.nodes[node].pair_status(world.now);
        assert!(status.contains(&format!("size:{small}B")), "{status}");
        assert_eq!(
            namespace_blocks(&mut world, front_address(node)),
            small / 512,
            "node {node}"
        );
    }
}

/// The ARP packets in `frames` sent from `mac`, parsed.
fn arp_from(frames: &[Vec<u8>], mac: [u8; 6]) -> Vec<tandem_net::frames::ArpHeader> {
    frames
        .iter()
        .filter_map(|frame| tandem_net::frames::arp_header(frame))
        .filter(|arp| arp.sender_mac == mac)
        .collect()
}

/// Gratuitous ARP requests and replies for `address` among `arps`.
fn gratuitous(arps: &[tandem_net::frames::ArpHeader], address: Ipv4Address) -> (usize, usize) {
    let of = |operation| {
        arps.iter()
            .filter(|arp| {
                arp.operation == operation && arp.sender == address && arp.target == address
            })
            .count()
    };
    (of(ArpOperation::Request), of(ArpOperation::Reply))
}

/// A primary with a host connection on its front-end address, reported to
/// its peer: (world, primary, survivor, the host's admin connection).
fn pair_with_a_reported_connection() -> (World, usize, usize, usize) {
    let (mut world, primary) = pair();
    let survivor = 1 - primary;
    let (admin, _) = world.admin_queue(front_address(primary));
    world.run_until(5, "the connection reported to the peer", |world| {
        world.nodes[survivor]
            .pair_status(world.now)
            .contains("peer reported 1 connections")
    });
    (world, primary, survivor, admin)
}

/// The claim announces the address as a gratuitous ARP request and a
/// gratuitous reply (target MAC address its sender's, as Linux wants of a
/// gratuitous reply), with an ordinary ARP request to the reported host,
/// at 0 and 50 ms and then twice more, each more than Linux's locktime
/// (1 s) after the one before.
#[test]
fn a_claim_announces_the_address_as_request_and_reply_repeated_past_locktime() {
    let (mut world, primary, survivor, _) = pair_with_a_reported_connection();
    let claimed = Ipv4Address::from_octets(front_address(primary));
    let host = world.host.address();
    let mac = world.nodes[survivor].nets[FRONT].nic.device().mac_address();
    let wire = world.nodes[survivor].wires[FRONT].clone();
    // Nothing announces the peer's address before the claim.
    let claim_index = wire.borrow().sent.len();
    world.nodes[primary].set_running(false);
    world.run_until(10, "the takeover claim", |world| {
        world.nodes[survivor]
            .console
            .contains("tandem: takeover claim")
    });
    let mut counts = Vec::new();
    let mut elapsed = 0;
    for until in [100, 1100, 1300, 2300, 2600, 6000] {
        world.run_for_millis(until - elapsed);
        elapsed = until;
        let arps = arp_from(&wire.borrow().sent[claim_index..], mac);
        let (requests, replies) = gratuitous(&arps, claimed);
        let to_host = arps
            .iter()
            .filter(|arp| {
                arp.operation == ArpOperation::Request
                    && arp.sender == claimed
                    && arp.target == host
            })
            .count();
        assert!(
            to_host >= replies,
            "an ordinary request to the host with each announcement: {arps:?}"
        );
        counts.push((until, requests, replies));
    }
    let seen: Vec<(u64, usize, usize)> = counts;
    assert_eq!(
        seen,
        [
            (100, 2, 2),
            (1100, 2, 2),
            (1300, 3, 3),
            (2300, 3, 3),
            (2600, 4, 4),
            (6000, 4, 4)
        ],
        "(ms after the claim, gratuitous requests, gratuitous replies)"
    );
}

/// A primary paused until its peer has taken its address over, then
/// resumed: its clock stood still, so its lease looks fresh, and the
/// host's ARP request waiting in its queue would be answered at once. The
/// peer's announcement, waiting in the same queue, quiets the address
/// first: no ARP for it leaves the node (except to the pair's members)
/// until it has learned that it was deposed and heard its peer; then it
/// announces the address and answers the host again.
#[test]
fn a_resumed_primary_answers_no_arp_for_its_address_until_it_knows_it_was_deposed() {
    let (mut world, primary, survivor, _) = pair_with_a_reported_connection();
    let own = Ipv4Address::from_octets(front_address(primary));
    let host = world.host.address();
    let host_mac = [2, 0, 0, 0, 0x99, 0];
    world.nodes[primary].pause(world.now);
    world.run_until(10, "the takeover claim", |world| {
        world.nodes[survivor]
            .console
            .contains("tandem: takeover claim")
    });
    world.run_for_millis(500);
    // The host asks for the paused node's address (its entry expired).
    let wire = world.nodes[primary].wires[FRONT].clone();
    wire.borrow_mut()
        .incoming
        .push_back(tandem_net::frames::arp_request(host_mac, host, own));
    let mac = world.nodes[primary].nets[FRONT].nic.device().mac_address();
    let from = wire.borrow().sent.len();
    world.nodes[primary].resume(world.now);
    let end = world.now + 5_000_000;
    let answered_again = "tandem: own addresses answered again";
    while !world.nodes[primary].console.contains(answered_again) {
        assert!(
            world.now < end,
            "the resumed node never answered for its address again\n{}",
            world.consoles()
        );
        world.round();
        let opened = world.nodes[primary].console.contains(answered_again);
        let arps = arp_from(&wire.borrow().sent[from..], mac);
        if !opened {
            let to_hosts: Vec<_> = arps
                .iter()
                .filter(|arp| arp.sender == own && arp.target != own && arp.target == host)
                .collect();
            assert!(
                to_hosts.is_empty(),
                "ARP for {own} while it may be stale ({:?}): {to_hosts:?}",
                world.nodes[primary].role()
            );
            assert_eq!(
                gratuitous(&arps, own),
                (0, 0),
                "an announcement while it may be stale"
            );
        }
    }
    let console = &world.nodes[primary].console;
    assert!(
        console.contains(&format!("tandem: {own} announced by")),
        "{console}"
    );
    let opened_at = console.find(answered_again).unwrap();
    let deposed_at = console.rfind("tandem: role secondary").expect("secondary");
    assert!(
        deposed_at < opened_at,
        "answered again before it knew its role:\n{console}"
    );
    assert!(
        !world.nodes[survivor]
            .console
            .contains("tandem: role fenced"),
        "{}",
        world.consoles()
    );
    // Then it announces its address and answers the host.
    world.run_for_millis(100);
    let arps = arp_from(&wire.borrow().sent[from..], mac);
    assert_eq!(
        gratuitous(&arps, own),
        (2, 2),
        "announced (0 and 50 ms): {arps:?}"
    );
    let before = wire.borrow().sent.len();
    wire.borrow_mut()
        .incoming
        .push_back(tandem_net::frames::arp_request(host_mac, host, own));
    world.run_for_millis(10);
    let arps = arp_from(&wire.borrow().sent[before..], mac);
    assert!(
        arps.iter().any(|arp| arp.operation == ArpOperation::Reply
            && arp.sender == own
            && arp.target == host),
        "the host answered again: {arps:?}"
    );
}
