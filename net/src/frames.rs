//! Frames the takeover of a peer's address sends on its own, outside any
//! smoltcp socket: gratuitous ARP (to move hosts' ARP caches to this NIC),
//! ARP requests (to learn a host's MAC address), and "tickle" ACKs (an
//! out-of-window ACK in the name of the peer's connection, which a host
//! answers with an ACK carrying the connection's real sequence numbers; that
//! answer reaches this node, matches no socket, and smoltcp resets it).
//! Also [`ArpSnoop`], which learns hosts' MAC addresses from received ARP.
//!
//! Built with smoltcp's `wire` types, checksums included.

use alloc::vec;
use alloc::vec::Vec;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, IpAddress, IpProtocol, Ipv4Address, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket,
    TcpRepr, TcpSeqNumber,
};

const ETHERNET_HEADER_LEN: usize = 14;
const ARP_LEN: usize = 28;
const IPV4_HEADER_LEN: usize = 20;
const TCP_HEADER_LEN: usize = 20;

fn arp_frame(source: [u8; 6], destination: EthernetAddress, repr: ArpRepr) -> Vec<u8> {
    let mut frame = vec![0u8; ETHERNET_HEADER_LEN + ARP_LEN];
    let mut ethernet = EthernetFrame::new_unchecked(&mut frame[..]);
    EthernetRepr {
        src_addr: EthernetAddress(source),
        dst_addr: destination,
        ethertype: EthernetProtocol::Arp,
    }
    .emit(&mut ethernet);
    repr.emit(&mut ArpPacket::new_unchecked(ethernet.payload_mut()));
    frame
}

/// A gratuitous ARP request (RFC 5227 "ARP announcement": sender and target
/// address both `address`), broadcast: every host on the segment that has
/// `address` in its cache points it at `mac`.
pub fn gratuitous_arp(mac: [u8; 6], address: Ipv4Address) -> Vec<u8> {
    arp_frame(
        mac,
        EthernetAddress::BROADCAST,
        ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: EthernetAddress(mac),
            source_protocol_addr: address,
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: address,
        },
    )
}

/// A gratuitous ARP reply (sender and target address both `address`,
/// sender and target MAC address both `mac`), broadcast: hosts that heed
/// replies rather than requests (and Linux, which takes a reply as
/// gratuitous only when its target MAC address is its sender's) point
/// `address` at `mac`.
pub fn gratuitous_arp_reply(mac: [u8; 6], address: Ipv4Address) -> Vec<u8> {
    arp_frame(
        mac,
        EthernetAddress::BROADCAST,
        ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr: EthernetAddress(mac),
            source_protocol_addr: address,
            target_hardware_addr: EthernetAddress(mac),
            target_protocol_addr: address,
        },
    )
}

/// The addresses of an ARP packet (IPv4 over Ethernet).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpHeader {
    pub operation: ArpOperation,
    pub sender_mac: [u8; 6],
    pub sender: Ipv4Address,
    pub target: Ipv4Address,
}

/// The ARP packet in an Ethernet frame, or `None` if the frame is not ARP
/// over IPv4.
pub fn arp_header(frame: &[u8]) -> Option<ArpHeader> {
    let ethernet = EthernetFrame::new_checked(frame).ok()?;
    if ethernet.ethertype() != EthernetProtocol::Arp {
        return None;
    }
    let packet = ArpPacket::new_checked(ethernet.payload()).ok()?;
    match ArpRepr::parse(&packet).ok()? {
        ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr,
            source_protocol_addr,
            target_protocol_addr,
            ..
        } => Some(ArpHeader {
            operation,
            sender_mac: source_hardware_addr.0,
            sender: source_protocol_addr,
            target: target_protocol_addr,
        }),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// A broadcast ARP request for `target`, from `sender` (whose cache entry
/// the target updates or creates on the way).
pub fn arp_request(mac: [u8; 6], sender: Ipv4Address, target: Ipv4Address) -> Vec<u8> {
    arp_frame(
        mac,
        EthernetAddress::BROADCAST,
        ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: EthernetAddress(mac),
            source_protocol_addr: sender,
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: target,
        },
    )
}

/// An ARP reply: `address` is at `mac`, sent to `to_address` at `to_mac`.
pub fn arp_reply(
    mac: [u8; 6],
    address: Ipv4Address,
    to_mac: [u8; 6],
    to_address: Ipv4Address,
) -> Vec<u8> {
    arp_frame(
        mac,
        EthernetAddress(to_mac),
        ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr: EthernetAddress(mac),
            source_protocol_addr: address,
            target_hardware_addr: EthernetAddress(to_mac),
            target_protocol_addr: to_address,
        },
    )
}

/// One end of a TCP connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub address: Ipv4Address,
    pub port: u16,
}

/// A TCP segment without options or data (`seq`, `ack`, `control`) from
/// `from` to `to`, in an Ethernet frame from `source_mac` to
/// `destination_mac`, checksums included.
pub fn tcp_segment(
    source_mac: [u8; 6],
    destination_mac: [u8; 6],
    from: Endpoint,
    to: Endpoint,
    control: TcpControl,
    seq: u32,
    ack: Option<u32>,
) -> Vec<u8> {
    let mut frame = vec![0u8; ETHERNET_HEADER_LEN + IPV4_HEADER_LEN + TCP_HEADER_LEN];
    let checksums = ChecksumCapabilities::default();
    let mut ethernet = EthernetFrame::new_unchecked(&mut frame[..]);
    EthernetRepr {
        src_addr: EthernetAddress(source_mac),
        dst_addr: EthernetAddress(destination_mac),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut ethernet);
    let ip = Ipv4Repr {
        src_addr: from.address,
        dst_addr: to.address,
        next_header: IpProtocol::Tcp,
        payload_len: TCP_HEADER_LEN,
        hop_limit: 64,
    };
    let mut packet = Ipv4Packet::new_unchecked(ethernet.payload_mut());
    ip.emit(&mut packet, &checksums);
    let tcp = TcpRepr {
        src_port: from.port,
        dst_port: to.port,
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: 8192,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    tcp.emit(
        &mut TcpPacket::new_unchecked(packet.payload_mut()),
        &IpAddress::Ipv4(from.address),
        &IpAddress::Ipv4(to.address),
        &checksums,
    );
    frame
}

/// A host's SYN to an NVMe/TCP portal (10.79.0.20:40000 to 10.79.0.2:4420),
/// for tests.
#[cfg(test)]
pub(crate) fn host_syn() -> Vec<u8> {
    tcp_segment(
        [2, 0, 0, 0, 0, 9],
        [2, 0, 0, 0, 0, 1],
        Endpoint {
            address: Ipv4Address::new(10, 79, 0, 20),
            port: 40000,
        },
        Endpoint {
            address: Ipv4Address::new(10, 79, 0, 2),
            port: 4420,
        },
        TcpControl::Syn,
        1000,
        None,
    )
}

/// A bare ACK (sequence and acknowledgment numbers 0, no options, no data)
/// from `from` to `to`, in an Ethernet frame from `source_mac` to
/// `destination_mac`. To the host it is out of the window, and it answers
/// with an ACK that tells the connection's real numbers.
pub fn tickle_ack(
    source_mac: [u8; 6],
    destination_mac: [u8; 6],
    from: Endpoint,
    to: Endpoint,
) -> Vec<u8> {
    tcp_segment(
        source_mac,
        destination_mac,
        from,
        to,
        TcpControl::None,
        0,
        Some(0),
    )
}

/// Entries an [`ArpSnoop`] keeps.
pub const ARP_SNOOP_ENTRIES: usize = 16;

/// MAC addresses of IPv4 neighbours, learned from the ARP packets a NIC
/// receives (smoltcp keeps its neighbour cache to itself). Bounded: the
/// oldest entry gives way.
#[derive(Clone, Debug, Default)]
pub struct ArpSnoop {
    entries: [Option<(Ipv4Address, [u8; 6])>; ARP_SNOOP_ENTRIES],
    next: usize,
}

impl ArpSnoop {
    /// Every neighbour learned, oldest first.
    pub fn entries(&self) -> impl Iterator<Item = (Ipv4Address, [u8; 6])> + '_ {
        (0..ARP_SNOOP_ENTRIES)
            .filter_map(move |i| self.entries[(self.next + i) % ARP_SNOOP_ENTRIES])
    }

    /// Looks at a received Ethernet frame; learns its sender if it is ARP.
    pub fn learn(&mut self, frame: &[u8]) {
        let Ok(ethernet) = EthernetFrame::new_checked(frame) else {
            return;
        };
        if ethernet.ethertype() != EthernetProtocol::Arp {
            return;
        }
        let Ok(packet) = ArpPacket::new_checked(ethernet.payload()) else {
            return;
        };
        let Ok(ArpRepr::EthernetIpv4 {
            source_hardware_addr,
            source_protocol_addr,
            ..
        }) = ArpRepr::parse(&packet)
        else {
            return;
        };
        if source_protocol_addr.is_unspecified() || !source_hardware_addr.is_unicast() {
            return;
        }
        self.insert(source_protocol_addr, source_hardware_addr.0);
    }

    pub fn insert(&mut self, address: Ipv4Address, mac: [u8; 6]) {
        if let Some(entry) = self
            .entries
            .iter_mut()
            .flatten()
            .find(|(known, _)| *known == address)
        {
            entry.1 = mac;
            return;
        }
        self.entries[self.next] = Some((address, mac));
        self.next = (self.next + 1) % ARP_SNOOP_ENTRIES;
    }

    pub fn lookup(&self, address: Ipv4Address) -> Option<[u8; 6]> {
        self.entries
            .iter()
            .flatten()
            .find(|(known, _)| *known == address)
            .map(|(_, mac)| *mac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: [u8; 6] = [0x52, 0x54, 0, 0, 0, 2];
    const HOST: [u8; 6] = [0x52, 0x54, 0, 0, 0, 20];

    fn ip(d: u8) -> Ipv4Address {
        Ipv4Address::new(10, 79, 0, d)
    }

    #[test]
    fn arp_header_rejects_what_is_not_a_whole_arp_packet_over_ipv4() {
        let request = arp_request(HOST, ip(20), ip(2));
        let header = arp_header(&request).expect("a genuine request");
        assert_eq!(
            (header.sender_mac, header.sender, header.target),
            (HOST, ip(20), ip(2))
        );
        // Every truncation of a genuine frame is refused, never a panic.
        for len in 0..14 + 28 {
            assert!(arp_header(&request[..len]).is_none(), "{len} bytes");
        }
        // Another ethertype, another protocol type, another hardware length.
        let mut not_arp = request.clone();
        not_arp[12..14].copy_from_slice(&[0x08, 0x00]);
        assert!(arp_header(&not_arp).is_none());
        let mut not_ipv4 = request.clone();
        not_ipv4[14 + 2..14 + 4].copy_from_slice(&[0x86, 0xdd]);
        assert!(arp_header(&not_ipv4).is_none());
        let mut odd_mac = request.clone();
        odd_mac[14 + 4] = 8;
        assert!(arp_header(&odd_mac).is_none());
        // A segment is not ARP.
        assert!(arp_header(&host_syn()).is_none());
    }

    #[test]
    fn gratuitous_arp_announces_the_address() {
        let frame = gratuitous_arp(OURS, ip(1));
        assert_eq!(frame.len(), 42);
        let ethernet = EthernetFrame::new_checked(&frame[..]).unwrap();
        assert_eq!(ethernet.dst_addr(), EthernetAddress::BROADCAST);
        assert_eq!(ethernet.src_addr(), EthernetAddress(OURS));
        assert_eq!(ethernet.ethertype(), EthernetProtocol::Arp);
        let arp = ArpRepr::parse(&ArpPacket::new_checked(ethernet.payload()).unwrap()).unwrap();
        assert_eq!(
            arp,
            ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Request,
                source_hardware_addr: EthernetAddress(OURS),
                source_protocol_addr: ip(1),
                target_hardware_addr: EthernetAddress([0; 6]),
                target_protocol_addr: ip(1),
            }
        );
        // Byte-exact against the RFC 826 layout.
        assert_eq!(&frame[12..22], &[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    }

    #[test]
    fn arp_request_asks_for_the_target() {
        let frame = arp_request(OURS, ip(1), ip(20));
        let ethernet = EthernetFrame::new_checked(&frame[..]).unwrap();
        let ArpRepr::EthernetIpv4 {
            operation,
            source_protocol_addr,
            target_protocol_addr,
            ..
        } = ArpRepr::parse(&ArpPacket::new_checked(ethernet.payload()).unwrap()).unwrap()
        else {
            panic!("not Ethernet/IPv4 ARP")
        };
        assert_eq!(
            (operation, source_protocol_addr, target_protocol_addr),
            (ArpOperation::Request, ip(1), ip(20))
        );
    }

    #[test]
    fn tickle_is_a_valid_bare_ack_with_good_checksums() {
        let from = Endpoint {
            address: ip(1),
            port: 4420,
        };
        let to = Endpoint {
            address: ip(20),
            port: 51234,
        };
        let frame = tickle_ack(OURS, HOST, from, to);
        assert_eq!(frame.len(), 54);
        let ethernet = EthernetFrame::new_checked(&frame[..]).unwrap();
        assert_eq!((ethernet.src_addr().0, ethernet.dst_addr().0), (OURS, HOST));
        assert_eq!(ethernet.ethertype(), EthernetProtocol::Ipv4);
        let packet = Ipv4Packet::new_checked(ethernet.payload()).unwrap();
        assert!(packet.verify_checksum());
        let ip_repr = Ipv4Repr::parse(&packet, &ChecksumCapabilities::default()).unwrap();
        assert_eq!(
            (ip_repr.src_addr, ip_repr.dst_addr, ip_repr.next_header),
            (ip(1), ip(20), IpProtocol::Tcp)
        );
        let segment = TcpPacket::new_checked(packet.payload()).unwrap();
        assert!(segment.verify_checksum(&IpAddress::Ipv4(ip(1)), &IpAddress::Ipv4(ip(20))));
        let tcp = TcpRepr::parse(
            &segment,
            &IpAddress::Ipv4(ip(1)),
            &IpAddress::Ipv4(ip(20)),
            &ChecksumCapabilities::default(),
        )
        .unwrap();
        assert_eq!((tcp.src_port, tcp.dst_port), (4420, 51234));
        assert_eq!(tcp.control, TcpControl::None);
        assert!(segment.ack() && !segment.syn() && !segment.rst() && !segment.fin());
        assert_eq!(tcp.ack_number, Some(TcpSeqNumber(0)));
        assert!(tcp.payload.is_empty());
    }

    #[test]
    fn snoop_learns_arp_senders_and_ignores_the_rest() {
        let mut snoop = ArpSnoop::default();
        snoop.learn(&arp_request(HOST, ip(20), ip(1)));
        assert_eq!(snoop.lookup(ip(20)), Some(HOST));
        assert_eq!(snoop.lookup(ip(21)), None);
        // IPv4 frames, short frames and garbage teach nothing.
        snoop.learn(&tickle_ack(
            OURS,
            HOST,
            Endpoint {
                address: ip(9),
                port: 1,
            },
            Endpoint {
                address: ip(20),
                port: 2,
            },
        ));
        snoop.learn(&[0u8; 10]);
        let mut broken = arp_request(OURS, ip(7), ip(1));
        broken[14] = 9; // hardware type
        snoop.learn(&broken);
        assert_eq!(snoop.lookup(ip(9)), None);
        assert_eq!(snoop.lookup(ip(7)), None);
        // Updated in place; bounded, the oldest goes first.
        snoop.learn(&gratuitous_arp(OURS, ip(20)));
        assert_eq!(snoop.lookup(ip(20)), Some(OURS));
        for d in 100..100 + ARP_SNOOP_ENTRIES as u8 {
            snoop.insert(ip(d), HOST);
        }
        assert_eq!(snoop.lookup(ip(20)), None);
        assert_eq!(snoop.lookup(ip(100)), Some(HOST));
    }
}
