//! Fewer bare ACKs: the MSS a peer announces in its SYN is scaled before
//! smoltcp reads it.
//!
//! smoltcp acknowledges at once as soon as more than one of the peer's MSS
//! is unacknowledged, whatever the socket's ACK delay (Linux's quick-ACK
//! rule), and has no setting for it. An NVMe/TCP target answers every
//! command within a disk access, and its answer carries the ACK: acking a
//! 4 KiB write capsule on its own doubles the frames the host handles per
//! write, and a host that hears back sooner sends its next capsules one by
//! one instead of together. Scaled by [`SCALE`], the threshold lets an ACK
//! wait for the answer (or the socket's ACK delay) until [`SCALE`] full
//! segments are unacknowledged; RFC 9293 asks for one every second full
//! segment, Linux's receive offload sends such stretch ACKs all the time.
//!
//! The MSS is smoltcp's only other use of the value: it sends segments of at
//! most the smaller of the peer's MSS and its own MTU's. Only an announced
//! MSS at least as large as this interface's own ([`LOCAL_MSS`]) is scaled,
//! so the segments smoltcp sends never exceed what the peer announced.

use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv4Packet, TcpPacket,
};

/// How long a socket that answers every request holds a bare ACK back for
/// the answer to carry it (smoltcp's own default; Linux waits 40 ms).
pub const ACK_DELAY: smoltcp::time::Duration = smoltcp::time::Duration::from_millis(10);

/// Full segments that may wait for one ACK.
pub const SCALE: u16 = 4;
/// The MSS of this interface's MTU (1500 - IPv4 and TCP headers).
pub const LOCAL_MSS: u16 = 1460;

const OPTION_END: u8 = 0;
const OPTION_NOP: u8 = 1;
const OPTION_MSS: u8 = 2;

/// Scales the MSS option of a TCP SYN in `frame` (an Ethernet frame) if it
/// announces at least [`LOCAL_MSS`], and fixes the checksum. True if it did.
pub fn scale_announced_mss(frame: &mut [u8]) -> bool {
    rewrite_announced_mss(frame, |mss| {
        (mss >= LOCAL_MSS).then(|| mss.saturating_mul(SCALE))
    })
}

/// Lowers the MSS option of an outgoing TCP SYN in `frame` to [`LOCAL_MSS`]
/// if it announces more, and fixes the checksum. True if it did. smoltcp
/// announces the MSS of the MTU it is given, and with segmentation offload
/// it is given one of [`SCALE`] segments (see [`crate::SegmentBatch`]): the peer
/// must still send segments that fit the wire.
pub fn clamp_announced_mss(frame: &mut [u8]) -> bool {
    // Every frame sent passes here: a quick look first (IPv4 without
    // options, TCP, SYN set), as smoltcp sends them.
    if frame.len() < 54
        || frame[12..14] != [0x08, 0x00]
        || frame[14] != 0x45
        || frame[23] != 6
        || frame[47] & 0x02 == 0
    {
        return false;
    }
    rewrite_announced_mss(frame, |mss| (mss > LOCAL_MSS).then_some(LOCAL_MSS))
}

/// Replaces the MSS option of a TCP SYN in `frame` with what `new` makes of
/// it (nothing if `None`), and fixes the checksum. True if it changed it.
fn rewrite_announced_mss(frame: &mut [u8], new: impl FnOnce(u16) -> Option<u16>) -> bool {
    let Ok(mut ethernet) = EthernetFrame::new_checked(&mut *frame) else {
        return false;
    };
    if ethernet.ethertype() != EthernetProtocol::Ipv4 {
        return false;
    }
    let Ok(mut ip) = Ipv4Packet::new_checked(ethernet.payload_mut()) else {
        return false;
    };
    if ip.next_header() != IpProtocol::Tcp || ip.more_frags() || ip.frag_offset() != 0 {
        return false;
    }
    let (source, destination) = (
        IpAddress::Ipv4(ip.src_addr()),
        IpAddress::Ipv4(ip.dst_addr()),
    );
    let Ok(mut tcp) = TcpPacket::new_checked(ip.payload_mut()) else {
        return false;
    };
    if !tcp.syn() {
        return false;
    }
    let options = tcp.options_mut();
    let mut at = 0;
    let mut scaled = false;
    while at < options.len() {
        match options[at] {
            OPTION_END => break,
            OPTION_NOP => at += 1,
            kind => {
                let Some(&len) = options.get(at + 1) else {
                    break;
                };
                let len = usize::from(len);
                if len < 2 || at + len > options.len() {
                    break;
                }
                if kind == OPTION_MSS && len == 4 {
                    let mss = u16::from_be_bytes([options[at + 2], options[at + 3]]);
                    if let Some(mss) = new(mss) {
                        options[at + 2..at + 4].copy_from_slice(&mss.to_be_bytes());
                        scaled = true;
                    }
                    break;
                }
                at += len;
            }
        }
    }
    if scaled {
        tcp.fill_checksum(&source, &destination);
    }
    scaled
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        EthernetAddress, EthernetRepr, Ipv4Address, Ipv4Repr, TcpControl, TcpRepr, TcpSeqNumber,
    };

    const HOST: Ipv4Address = Ipv4Address::new(10, 0, 0, 20);
    const OURS: Ipv4Address = Ipv4Address::new(10, 0, 0, 2);

    fn segment(control: TcpControl, mss: Option<u16>) -> Vec<u8> {
        let tcp = TcpRepr {
            src_port: 40000,
            dst_port: 4420,
            control,
            seq_number: TcpSeqNumber(1),
            ack_number: None,
            window_len: 64000,
            window_scale: Some(7),
            max_seg_size: mss,
            sack_permitted: true,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: &[],
        };
        let ip = Ipv4Repr {
            src_addr: HOST,
            dst_addr: OURS,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let mut frame = vec![0u8; 14 + 20 + tcp.buffer_len()];
        let mut ethernet = EthernetFrame::new_unchecked(&mut frame[..]);
        EthernetRepr {
            src_addr: EthernetAddress([2, 0, 0, 0, 0, 9]),
            dst_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
            ethertype: EthernetProtocol::Ipv4,
        }
        .emit(&mut ethernet);
        let mut packet = Ipv4Packet::new_unchecked(ethernet.payload_mut());
        ip.emit(&mut packet, &ChecksumCapabilities::default());
        tcp.emit(
            &mut TcpPacket::new_unchecked(packet.payload_mut()),
            &HOST.into(),
            &OURS.into(),
            &ChecksumCapabilities::default(),
        );
        frame
    }

    fn parsed_mss(frame: &[u8]) -> Option<u16> {
        let ip = Ipv4Packet::new_checked(&frame[14..]).unwrap();
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(
            tcp.verify_checksum(&HOST.into(), &OURS.into()),
            "checksum still right"
        );
        TcpRepr::parse(
            &tcp,
            &HOST.into(),
            &OURS.into(),
            &ChecksumCapabilities::default(),
        )
        .unwrap()
        .max_seg_size
    }

    #[test]
    fn a_syn_announcing_an_ethernet_mss_is_scaled_with_its_checksum_fixed() {
        let mut syn = segment(TcpControl::Syn, Some(1460));
        assert!(scale_announced_mss(&mut syn));
        assert_eq!(parsed_mss(&syn), Some(1460 * SCALE));
    }

    #[test]
    fn an_outgoing_syn_announcing_more_than_the_wire_takes_is_clamped() {
        let mut syn = segment(TcpControl::Syn, Some(5840));
        assert!(clamp_announced_mss(&mut syn));
        assert_eq!(parsed_mss(&syn), Some(LOCAL_MSS));
        let mut fits = segment(TcpControl::Syn, Some(1400));
        assert!(!clamp_announced_mss(&mut fits));
        assert_eq!(parsed_mss(&fits), Some(1400));
        let mut data = segment(TcpControl::Psh, Some(5840));
        assert!(
            !clamp_announced_mss(&mut data),
            "only a SYN announces an MSS"
        );
    }

    #[test]
    fn a_smaller_mss_a_syn_without_one_and_other_segments_are_left_alone() {
        let mut small = segment(TcpControl::Syn, Some(1400));
        assert!(!scale_announced_mss(&mut small));
        assert_eq!(
            parsed_mss(&small),
            Some(1400),
            "smoltcp must not send more than the peer takes"
        );
        let mut none = segment(TcpControl::Syn, None);
        assert!(!scale_announced_mss(&mut none));
        let mut data = segment(TcpControl::Psh, Some(1460));
        let before = data.clone();
        assert!(!scale_announced_mss(&mut data));
        assert_eq!(data, before);
    }

    #[test]
    fn truncated_or_malformed_options_are_left_alone() {
        let mut syn = segment(TcpControl::Syn, Some(1460));
        let options = 14 + 20 + 20;
        // An option claiming to run past the header.
        let mut bad = syn.clone();
        bad[options] = 3;
        bad[options + 1] = 40;
        let before = bad.clone();
        assert!(!scale_announced_mss(&mut bad));
        assert_eq!(bad, before);
        for len in 0..syn.len() {
            let _ = scale_announced_mss(&mut syn[..len]);
        }
    }
}
