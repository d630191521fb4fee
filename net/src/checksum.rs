//! Receive checksums, verified here rather than by smoltcp.
//!
//! smoltcp's checksum setting is per device, all or nothing. A NIC with
//! receive offload (virtio-net's GUEST_CSUM) hands over frames whose
//! checksums the host already vouched for (DATA_VALID) and frames from a
//! sender on the same host whose TCP or UDP checksum was never filled in
//! (NEEDS_CSUM: the field holds only the pseudo-header sum). smoltcp would
//! drop the latter and sum every byte of the former again, so it is told not
//! to verify on receive ([`receive_checksums`]) and the frames nobody vouched
//! for are checked here ([`frame_checksums_valid`]) before it sees them.

use smoltcp::phy::{Checksum, ChecksumCapabilities};
use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, Icmpv4Packet, IpAddress, IpProtocol, Ipv4Packet, TcpPacket,
    UdpPacket,
};

/// What smoltcp is told: compute checksums when sending, never verify.
pub fn receive_checksums() -> ChecksumCapabilities {
    let mut caps = ChecksumCapabilities::default();
    caps.ipv4 = Checksum::Tx;
    caps.udp = Checksum::Tx;
    caps.tcp = Checksum::Tx;
    caps.icmpv4 = Checksum::Tx;
    caps
}

/// False if the frame is IPv4 and its header checksum, or the checksum of
/// the TCP, UDP or ICMP message it carries, is wrong. Frames too short or
/// malformed to verify pass: smoltcp's own parsing refuses them.
pub fn frame_checksums_valid(frame: &[u8]) -> bool {
    let Ok(ethernet) = EthernetFrame::new_checked(frame) else {
        return true;
    };
    if ethernet.ethertype() != EthernetProtocol::Ipv4 {
        return true;
    }
    let Ok(ip) = Ipv4Packet::new_checked(ethernet.payload()) else {
        return true;
    };
    if !ip.verify_checksum() {
        return false;
    }
    // A fragment's transport checksum covers the whole datagram; smoltcp
    // (built without reassembly) drops fragments anyway.
    if ip.more_frags() || ip.frag_offset() != 0 {
        return true;
    }
    let (source, destination) = (
        IpAddress::Ipv4(ip.src_addr()),
        IpAddress::Ipv4(ip.dst_addr()),
    );
    let payload = ip.payload();
    match ip.next_header() {
        IpProtocol::Tcp => TcpPacket::new_checked(payload)
            .ok()
            .is_none_or(|tcp| tcp.verify_checksum(&source, &destination)),
        IpProtocol::Udp => UdpPacket::new_checked(payload)
            .ok()
            .is_none_or(|udp| udp.verify_checksum(&source, &destination)),
        IpProtocol::Icmp => Icmpv4Packet::new_checked(payload)
            .ok()
            .is_none_or(|icmp| icmp.verify_checksum()),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::host_syn as syn;
    use smoltcp::wire::Ipv4Address;

    #[test]
    fn a_well_formed_segment_passes() {
        assert!(frame_checksums_valid(&syn()));
    }

    #[test]
    fn a_corrupt_tcp_segment_or_ip_header_is_refused() {
        let good = syn();
        // Last byte of the TCP header (a byte the checksum covers).
        let mut frame = good.clone();
        *frame.last_mut().unwrap() ^= 0x40;
        assert!(!frame_checksums_valid(&frame));
        // The IPv4 time-to-live.
        let mut frame = good.clone();
        frame[14 + 8] ^= 1;
        assert!(!frame_checksums_valid(&frame));
    }

    #[test]
    fn a_udp_datagram_without_checksum_passes_and_one_with_a_wrong_one_does_not() {
        use smoltcp::phy::ChecksumCapabilities;
        use smoltcp::wire::{
            EthernetAddress, EthernetFrame, EthernetRepr, IpProtocol, Ipv4Repr, UdpRepr,
        };
        let (source, destination) = (Ipv4Address::new(10, 0, 0, 1), Ipv4Address::new(10, 0, 0, 2));
        let payload = [7u8; 32];
        let udp = UdpRepr {
            src_port: 9,
            dst_port: 9,
        };
        let ip = Ipv4Repr {
            src_addr: source,
            dst_addr: destination,
            next_header: IpProtocol::Udp,
            payload_len: 8 + payload.len(),
            hop_limit: 64,
        };
        let ethernet = EthernetRepr {
            src_addr: EthernetAddress([2, 0, 0, 0, 0, 9]),
            dst_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
            ethertype: EthernetProtocol::Ipv4,
        };
        let mut frame = alloc::vec![0u8; 14 + 20 + 8 + payload.len()];
        ethernet.emit(&mut EthernetFrame::new_unchecked(&mut frame[..]));
        ip.emit(
            &mut Ipv4Packet::new_unchecked(&mut frame[14..]),
            &ChecksumCapabilities::default(),
        );
        udp.emit(
            &mut UdpPacket::new_unchecked(&mut frame[34..]),
            &source.into(),
            &destination.into(),
            payload.len(),
            |buffer| buffer.copy_from_slice(&payload),
            &ChecksumCapabilities::default(),
        );
        assert!(frame_checksums_valid(&frame));
        frame[34 + 8] ^= 0xff;
        assert!(!frame_checksums_valid(&frame));
        frame[34 + 6..34 + 8].fill(0);
        assert!(
            frame_checksums_valid(&frame),
            "a zero UDP checksum means none"
        );
    }

    #[test]
    fn what_is_not_ipv4_or_too_short_to_verify_is_left_to_smoltcp() {
        assert!(frame_checksums_valid(&[0u8; 10]));
        let mut arp = syn();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert!(frame_checksums_valid(&arp));
    }
}
