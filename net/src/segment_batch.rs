//! TCP segmentation offload batching: consecutive segments of one TCP/IPv4
//! flow gathered into one large frame that the device (virtio-net with
//! HOST_TSO4) cuts back into the very same segments. Frames are read and
//! written through smoltcp's `wire` types.

use alloc::vec::Vec;

use smoltcp::wire::{EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, TcpPacket, checksum};

use crate::device::MAX_FRAME_LEN;

/// How a coalesced frame is to be cut back into TCP segments by the device
/// (virtio-net's segmentation offload).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segmentation {
    /// Ethernet, IPv4 and TCP headers: copied in front of every segment.
    pub header_len: usize,
    /// Payload bytes per segment (the last may be shorter).
    pub segment_size: usize,
    /// Where the device starts the TCP checksum (the TCP header) and where in
    /// it the checksum goes; the field holds the pseudo-header sum.
    pub checksum_start: usize,
    pub checksum_offset: usize,
}

const ETHERNET_HEADER: usize = 14;
/// Only IPv4 headers without options are batched.
const IPV4_HEADER: usize = 20;
/// The TCP checksum field's place in the TCP header.
const TCP_CHECKSUM_OFFSET: usize = 16;
/// The largest IPv4 packet: a coalesced frame never exceeds it.
const MAX_IPV4_PACKET: usize = 65535;

/// A TCP/IPv4 segment's fields that decide whether it continues a batch.
#[derive(Clone, Copy)]
struct Segment {
    tcp_header: usize,
    payload: usize,
    seq: u32,
    psh: bool,
    fin: bool,
}

impl Segment {
    /// The most payload a segment with this header carries on the wire.
    fn wire_payload(&self) -> usize {
        MAX_FRAME_LEN - ETHERNET_HEADER - IPV4_HEADER - self.tcp_header
    }

    /// Where the device cuts a batch this segment starts: at what a wire
    /// frame carries, or at the segment's own size if it is smaller (a peer
    /// with a smaller MSS, or data that did not fill a segment).
    fn cut(&self) -> usize {
        self.payload.min(self.wire_payload())
    }

    /// PSH or FIN: nothing of this flow follows it in this batch.
    fn ends_batch(&self) -> bool {
        self.psh || self.fin
    }
}

/// The Ethernet, IPv4 and TCP layers of a plain TCP/IPv4 frame: no IP
/// options, not a fragment.
fn layers(frame: &[u8]) -> Option<(EthernetFrame<&[u8]>, Ipv4Packet<&[u8]>, TcpPacket<&[u8]>)> {
    let ethernet = EthernetFrame::new_checked(frame).ok()?;
    if ethernet.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(&frame[ETHERNET_HEADER..]).ok()?;
    if ip.version() != 4
        || usize::from(ip.header_len()) != IPV4_HEADER
        || ip.next_header() != IpProtocol::Tcp
        || ip.more_frags()
        || ip.frag_offset() != 0
    {
        return None;
    }
    let total = usize::from(ip.total_len());
    let tcp =
        TcpPacket::new_checked(&frame[ETHERNET_HEADER + IPV4_HEADER..ETHERNET_HEADER + total])
            .ok()?;
    Some((ethernet, ip, tcp))
}

/// The segment's fields if `frame` is a plain TCP/IPv4 data segment (no IP
/// options or fragments, ACK and perhaps PSH or FIN set) with payload.
fn parse_segment(frame: &[u8]) -> Option<Segment> {
    let (_, _, tcp) = layers(frame)?;
    let other_flags = tcp.syn() || tcp.rst() || tcp.urg() || tcp.ece() || tcp.cwr();
    if !tcp.ack() || other_flags || tcp.payload().is_empty() {
        return None;
    }
    Some(Segment {
        tcp_header: usize::from(tcp.header_len()),
        payload: tcp.payload().len(),
        seq: tcp.seq_number().0 as u32,
        psh: tcp.psh(),
        fin: tcp.fin(),
    })
}

/// Whether two segments belong to one flow and may share one set of headers:
/// same addresses, TOS and TTL; same ports, acknowledgement, header length,
/// window and options. (Sequence numbers, flags, IP identification and the
/// checksums may differ: the device sets them per segment.)
fn same_flow(a: &[u8], b: &[u8]) -> bool {
    let (Some((ea, ia, ta)), Some((eb, ib, tb))) = (layers(a), layers(b)) else {
        return false;
    };
    ea.src_addr() == eb.src_addr()
        && ea.dst_addr() == eb.dst_addr()
        && (ia.dscp(), ia.ecn(), ia.hop_limit()) == (ib.dscp(), ib.ecn(), ib.hop_limit())
        && (ia.src_addr(), ia.dst_addr()) == (ib.src_addr(), ib.dst_addr())
        && (ta.src_port(), ta.dst_port()) == (tb.src_port(), tb.dst_port())
        && ta.ack_number() == tb.ack_number()
        && (ta.header_len(), ta.ns()) == (tb.header_len(), tb.ns())
        && ta.window_len() == tb.window_len()
        && ta.options() == tb.options()
}

/// What [`SegmentBatch::push`] did with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Taken into the batch (copied); the batch may take more.
    Taken,
    /// Taken, and the batch is complete: send it now.
    TakenAndComplete,
    /// Not taken: send the batch (if any), then the frame as it is.
    NotTaken,
}

/// Consecutive segments of one TCP/IPv4 flow, gathered into one large frame
/// that the device segments again (TCP segmentation offload): the host and
/// the peer then handle one frame where the stack made dozens. The device
/// cuts the payload into segments of the most a wire frame
/// ([`MAX_FRAME_LEN`]) carries with these headers, so the stack's segments
/// may be larger than a wire frame ([`crate::MAX_SEGMENTED_FRAME_LEN`]): each
/// but the last must then end on such a cut. For the stack's wire-sized
/// segments, the device's are exactly the stack's.
pub struct SegmentBatch {
    /// `prefix` bytes for the device's header, then the frame.
    buffer: Vec<u8>,
    prefix: usize,
    first: Option<Segment>,
    payload: usize,
    segments: usize,
}

impl SegmentBatch {
    /// A batch whose buffer starts with `prefix` bytes for the device.
    pub fn new(prefix: usize) -> Self {
        Self {
            buffer: Vec::new(),
            prefix,
            first: None,
            payload: 0,
            segments: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// True if the batch has no buffer to gather into (it allocates one
    /// otherwise): see [`SegmentBatch::provide_buffer`].
    pub fn needs_buffer(&self) -> bool {
        self.first.is_none() && self.buffer.capacity() == 0
    }

    /// A buffer to gather the next batch into (one that [`SegmentBatch::take`]
    /// gave out, back from the device), so that batches need no allocation.
    pub fn provide_buffer(&mut self, buffer: Vec<u8>) {
        if self.first.is_none() {
            self.buffer = buffer;
        }
    }

    /// Offers the next frame to send.
    pub fn push(&mut self, frame: &[u8]) -> Pushed {
        let Some(segment) = parse_segment(frame) else {
            return Pushed::NotTaken;
        };
        let Some(first) = self.first else {
            let oversized = segment.payload > segment.wire_payload();
            if segment.ends_batch() && !oversized {
                // Nothing follows it: no batch to start.
                return Pushed::NotTaken;
            }
            self.buffer.clear();
            self.buffer.resize(self.prefix, 0);
            self.buffer.extend_from_slice(frame);
            let end =
                self.prefix + ETHERNET_HEADER + IPV4_HEADER + segment.tcp_header + segment.payload;
            self.buffer.truncate(end);
            self.first = Some(segment);
            self.payload = segment.payload;
            self.segments = 1;
            return if segment.ends_batch() || segment.payload % segment.cut() != 0 {
                Pushed::TakenAndComplete
            } else {
                Pushed::Taken
            };
        };
        let headers = ETHERNET_HEADER + IPV4_HEADER + first.tcp_header;
        let start = self.prefix;
        let continues = segment.tcp_header == first.tcp_header
            && segment.seq == first.seq.wrapping_add(self.payload as u32)
            // Everything before the last segment ends on a cut, and the
            // segments are no larger than the cut unless it is a wire frame's.
            && self.payload % first.cut() == 0
            && (segment.payload <= first.cut() || first.cut() == first.wire_payload())
            && IPV4_HEADER + first.tcp_header + self.payload + segment.payload <= MAX_IPV4_PACKET
            && same_flow(frame, &self.buffer[start..]);
        if !continues {
            return Pushed::NotTaken;
        }
        self.buffer
            .extend_from_slice(&frame[headers..headers + segment.payload]);
        self.payload += segment.payload;
        self.segments += 1;
        if segment.ends_batch() {
            // The device sets PSH and FIN on the last segment only.
            let mut tcp =
                TcpPacket::new_unchecked(&mut self.buffer[start + ETHERNET_HEADER + IPV4_HEADER..]);
            if segment.psh {
                tcp.set_psh(true);
            }
            if segment.fin {
                tcp.set_fin(true);
            }
        }
        if segment.payload % first.cut() != 0 || segment.ends_batch() {
            Pushed::TakenAndComplete
        } else {
            Pushed::Taken
        }
    }

    /// Ends the batch: the buffer (prefix included) and, for more than one
    /// segment, how the device is to segment it (the IPv4 length and checksum
    /// and the TCP pseudo-header sum are set for that). One segment comes
    /// back unchanged, to be sent as it is.
    pub fn take(&mut self) -> Option<(Vec<u8>, Option<Segmentation>)> {
        let first = self.first.take()?;
        let mut buffer = core::mem::take(&mut self.buffer);
        if self.segments == 1 && self.payload <= first.wire_payload() {
            // One wire frame, sent as it is.
            return Some((buffer, None));
        }
        let tcp_len = first.tcp_header + self.payload;
        let ip_at = self.prefix + ETHERNET_HEADER;
        let mut ip = Ipv4Packet::new_unchecked(&mut buffer[ip_at..]);
        ip.set_total_len((IPV4_HEADER + tcp_len) as u16);
        ip.fill_checksum();
        let (source, destination) = (ip.src_addr(), ip.dst_addr());
        // The pseudo-header sum, not complemented: the device adds the
        // segment's bytes and complements.
        let mut tcp = TcpPacket::new_unchecked(&mut buffer[ip_at + IPV4_HEADER..]);
        tcp.set_checksum(checksum::pseudo_header_v4(
            &source,
            &destination,
            IpProtocol::Tcp,
            tcp_len as u32,
        ));
        Some((
            buffer,
            Some(Segmentation {
                header_len: ETHERNET_HEADER + IPV4_HEADER + first.tcp_header,
                segment_size: first.cut(),
                checksum_start: ETHERNET_HEADER + IPV4_HEADER,
                checksum_offset: TCP_CHECKSUM_OFFSET,
            }),
        ))
    }
}

/// Same addresses and ports: segments of one TCP connection (whatever their
/// acknowledgement, window or flags).
fn same_connection(a: &[u8], b: &[u8]) -> bool {
    let (Some((_, ia, ta)), Some((_, ib, tb))) = (layers(a), layers(b)) else {
        return false;
    };
    (ia.src_addr(), ia.dst_addr(), ta.src_port(), ta.dst_port())
        == (ib.src_addr(), ib.dst_addr(), tb.src_port(), tb.dst_port())
}

/// How many TCP connections gather a batch at once.
pub const FLOWS: usize = 4;

/// What [`FlowBatches::push`] asks of the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowPush {
    /// Taken into a batch; nothing to send yet.
    Taken,
    /// Taken, and batch `n` is complete: send it now ([`FlowBatches::take`]).
    Complete(usize),
    /// Send batch `n` first ([`FlowBatches::take`]), then offer the frame
    /// again: it belongs to that batch's connection but does not continue
    /// it, or every slot is in use.
    SendFirst(usize),
    /// Send the frame as it is: a lone segment of a connection with no batch.
    Alone,
    /// Not a data segment (ARP, UDP, a bare ACK, a FIN without data …): send
    /// every batch ([`FlowBatches::take_any`]), then the frame as it is.
    NotTaken,
}

/// Segmentation batches of up to [`FLOWS`] TCP connections at once. smoltcp
/// sends one segment of each connection in turn, so the segments of two
/// busy connections alternate: a single batch would end at every segment
/// and the device would get one frame per segment. Each connection keeps
/// its order: one of its segments that does not continue its batch sends
/// that batch first.
pub struct FlowBatches {
    batches: [SegmentBatch; FLOWS],
    /// The slot to give up next when every one is in use.
    victim: usize,
}

impl FlowBatches {
    pub fn new(prefix: usize) -> Self {
        Self {
            batches: core::array::from_fn(|_| SegmentBatch::new(prefix)),
            victim: 0,
        }
    }

    /// Offers the next frame to send; `spare` gives a buffer to a batch about
    /// to start (a reused one, so that batches need no allocation).
    pub fn push(&mut self, frame: &[u8], spare: &mut dyn FnMut() -> Vec<u8>) -> FlowPush {
        if parse_segment(frame).is_none() {
            return if self.batches.iter().all(SegmentBatch::is_empty) {
                FlowPush::Alone
            } else {
                FlowPush::NotTaken
            };
        }
        let mut free = None;
        for (index, batch) in self.batches.iter_mut().enumerate() {
            if batch.is_empty() {
                free = free.or(Some(index));
                continue;
            }
            match batch.push(frame) {
                Pushed::Taken => return FlowPush::Taken,
                Pushed::TakenAndComplete => return FlowPush::Complete(index),
                Pushed::NotTaken => {
                    let start = batch.prefix;
                    if same_connection(frame, &batch.buffer[start..]) {
                        return FlowPush::SendFirst(index);
                    }
                }
            }
        }
        let Some(index) = free else {
            let victim = self.victim;
            self.victim = (victim + 1) % FLOWS;
            return FlowPush::SendFirst(victim);
        };
        let batch = &mut self.batches[index];
        if batch.needs_buffer() {
            batch.provide_buffer(spare());
        }
        match batch.push(frame) {
            Pushed::Taken => FlowPush::Taken,
            Pushed::TakenAndComplete => FlowPush::Complete(index),
            Pushed::NotTaken => FlowPush::Alone,
        }
    }

    /// Ends batch `index` (see [`SegmentBatch::take`]).
    pub fn take(&mut self, index: usize) -> Option<(Vec<u8>, Option<Segmentation>)> {
        self.batches.get_mut(index)?.take()
    }

    /// Ends some batch, while any is open.
    pub fn take_any(&mut self) -> Option<(Vec<u8>, Option<Segmentation>)> {
        self.batches.iter_mut().find_map(SegmentBatch::take)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn be16(bytes: &[u8], at: usize) -> usize {
        usize::from(u16::from_be_bytes([bytes[at], bytes[at + 1]]))
    }

    fn sum16(bytes: &[u8]) -> u32 {
        bytes
            .chunks(2)
            .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
            .sum()
    }

    fn fold(mut sum: u32) -> u16 {
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    /// An Ethernet + IPv4 + TCP frame (12 bytes of options) of `payload` bytes.
    fn segment(seq: u32, payload: usize, flags: u8) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 32 + payload];
        f[..12].copy_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&[8, 0]);
        f[14] = 0x45;
        f[16..18].copy_from_slice(&((20 + 32 + payload) as u16).to_be_bytes());
        f[20] = 0x40; // DF
        f[22] = 64;
        f[23] = 6;
        f[26..30].copy_from_slice(&[10, 0, 0, 10]);
        f[30..34].copy_from_slice(&[10, 0, 0, 20]);
        f[34..36].copy_from_slice(&4420u16.to_be_bytes());
        f[36..38].copy_from_slice(&40000u16.to_be_bytes());
        f[38..42].copy_from_slice(&seq.to_be_bytes());
        f[42..46].copy_from_slice(&7u32.to_be_bytes());
        f[46] = 8 << 4;
        f[47] = flags;
        f[48..50].copy_from_slice(&1000u16.to_be_bytes());
        f[54..66].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        for (i, b) in f[66..].iter_mut().enumerate() {
            *b = (seq as usize + i) as u8;
        }
        f
    }

    fn checksum_ok(ip_header: &[u8]) -> bool {
        fold(sum16(ip_header)) == 0xffff
    }

    #[test]
    fn consecutive_full_segments_become_one_frame_for_the_device_to_cut() {
        let mut batch = SegmentBatch::new(12);
        let a = segment(1000, 1448, 0x10);
        let b = segment(2448, 1448, 0x10);
        let c = segment(3896, 500, 0x18);
        assert_eq!(batch.push(&a), Pushed::Taken);
        assert_eq!(batch.push(&b), Pushed::Taken);
        assert_eq!(batch.push(&c), Pushed::TakenAndComplete);
        let (buffer, seg) = batch.take().expect("a batch");
        let seg = seg.expect("three segments are segmented by the device");
        assert_eq!(
            seg,
            Segmentation {
                header_len: 66,
                segment_size: 1448,
                checksum_start: 34,
                checksum_offset: 16
            }
        );
        let frame = &buffer[12..];
        assert_eq!(frame.len(), 66 + 1448 * 2 + 500);
        assert_eq!(
            be16(frame, 16),
            20 + 32 + 1448 * 2 + 500,
            "IPv4 total length"
        );
        assert!(checksum_ok(&frame[14..34]));
        assert_eq!(frame[47], 0x18, "PSH of the last segment");
        assert_eq!(&frame[66..66 + 1448], &a[66..]);
        assert_eq!(&frame[66 + 1448..66 + 2896], &b[66..]);
        assert_eq!(&frame[66 + 2896..], &c[66..]);
        // The pseudo-header sum: addresses, protocol 6, TCP length.
        let pseudo = fold(sum16(&frame[26..34]) + 6 + (32 + 1448 * 2 + 500) as u32);
        assert_eq!(be16(frame, 50) as u16, pseudo);
        assert!(batch.is_empty());
    }

    #[test]
    fn one_segment_comes_back_unchanged() {
        let mut batch = SegmentBatch::new(12);
        let a = segment(1000, 1448, 0x10);
        assert_eq!(batch.push(&a), Pushed::Taken);
        let (buffer, seg) = batch.take().expect("a batch");
        assert_eq!(seg, None);
        assert_eq!(&buffer[12..], &a[..]);
    }

    #[test]
    fn segments_larger_than_a_wire_frame_are_cut_at_wire_size() {
        // smoltcp's segments of four wire frames each (MAX_SEGMENTED_FRAME_LEN).
        let mut batch = SegmentBatch::new(12);
        let a = segment(1000, 4 * 1448, 0x10);
        let b = segment(1000 + 4 * 1448, 4 * 1448, 0x10);
        let c = segment(1000 + 8 * 1448, 3000, 0x18);
        assert_eq!(batch.push(&a), Pushed::Taken);
        assert_eq!(batch.push(&b), Pushed::Taken);
        assert_eq!(batch.push(&c), Pushed::TakenAndComplete);
        let (buffer, seg) = batch.take().expect("a batch");
        assert_eq!(
            seg.map(|s| s.segment_size),
            Some(1448),
            "cut at what a wire frame carries"
        );
        let frame = &buffer[12..];
        assert_eq!(frame.len(), 66 + 8 * 1448 + 3000);
        assert_eq!(&frame[66 + 8 * 1448..], &c[66..]);
        assert_eq!(frame[47], 0x18);

        // Alone, and even with PSH, a large segment still goes to the device
        // to be cut: as it is, it would not fit the wire.
        for flags in [0x10, 0x18, 0x19] {
            let big = segment(5000, 2 * 1448 + 7, flags);
            assert_eq!(
                batch.push(&big),
                Pushed::TakenAndComplete,
                "flags {flags:#x}"
            );
            let (buffer, seg) = batch.take().expect("a batch");
            assert_eq!(seg.map(|s| s.segment_size), Some(1448));
            assert_eq!(&buffer[12 + 66..], &big[66..]);
            assert_eq!(buffer[12 + 47], flags);
        }

        // A large segment that does not end on a cut ends the batch: what
        // follows would not start a wire segment of its own.
        assert_eq!(
            batch.push(&segment(1000, 3000, 0x10)),
            Pushed::TakenAndComplete
        );
        assert_eq!(batch.push(&segment(4000, 1448, 0x10)), Pushed::NotTaken);
        assert!(batch.take().is_some());
    }

    #[test]
    fn segments_smaller_than_a_wire_frame_are_cut_at_their_own_size() {
        // A peer that announced a smaller MSS (1000 bytes here).
        let mut batch = SegmentBatch::new(12);
        assert_eq!(batch.push(&segment(1000, 1000, 0x10)), Pushed::Taken);
        assert_eq!(batch.push(&segment(2000, 1000, 0x10)), Pushed::Taken);
        assert_eq!(
            batch.push(&segment(3000, 1448, 0x10)),
            Pushed::NotTaken,
            "larger than the cut"
        );
        assert_eq!(
            batch.push(&segment(3000, 400, 0x18)),
            Pushed::TakenAndComplete
        );
        let (buffer, seg) = batch.take().expect("a batch");
        assert_eq!(seg.map(|s| s.segment_size), Some(1000));
        assert_eq!(
            be16(&buffer[12..], 16),
            20 + 32 + 2400,
            "IPv4 total length of the whole"
        );
    }

    #[test]
    fn a_fin_ends_the_batch_and_is_left_to_the_last_segment() {
        let mut batch = SegmentBatch::new(12);
        assert_eq!(batch.push(&segment(1000, 1448, 0x10)), Pushed::Taken);
        assert_eq!(
            batch.push(&segment(2448, 100, 0x19)),
            Pushed::TakenAndComplete
        );
        let (buffer, seg) = batch.take().expect("a batch");
        assert_eq!(seg.map(|s| s.segment_size), Some(1448));
        assert_eq!(
            buffer[12 + 47],
            0x19,
            "FIN and PSH on the header the device gives the last segment"
        );
    }

    #[test]
    fn only_what_continues_the_flow_joins_the_batch() {
        let mut batch = SegmentBatch::new(12);
        assert_eq!(
            batch.push(&segment(1000, 1448, 0x18)),
            Pushed::NotTaken,
            "PSH alone: nothing follows"
        );
        assert_eq!(
            batch.push(&segment(1000, 1448, 0x11)),
            Pushed::NotTaken,
            "FIN"
        );
        assert_eq!(
            batch.push(&segment(1000, 0, 0x10)),
            Pushed::NotTaken,
            "a bare ACK"
        );
        assert_eq!(batch.push(&segment(1000, 1448, 0x10)), Pushed::Taken);
        assert_eq!(
            batch.push(&segment(3000, 1448, 0x10)),
            Pushed::NotTaken,
            "a gap"
        );
        let mut other_port = segment(2448, 1448, 0x10);
        other_port[36..38].copy_from_slice(&40001u16.to_be_bytes());
        assert_eq!(batch.push(&other_port), Pushed::NotTaken);
        let mut new_window = segment(2448, 1448, 0x10);
        new_window[48..50].copy_from_slice(&2000u16.to_be_bytes());
        assert_eq!(batch.push(&new_window), Pushed::NotTaken);
        let mut arp = segment(2448, 1448, 0x10);
        arp[12..14].copy_from_slice(&[8, 6]);
        assert_eq!(batch.push(&arp), Pushed::NotTaken);
        assert_eq!(
            batch.push(&segment(2448, 1000, 0x10)),
            Pushed::TakenAndComplete,
            "a short one ends it"
        );
        assert_eq!(
            batch.push(&segment(3448, 1000, 0x10)),
            Pushed::NotTaken,
            "nothing after a short one"
        );
        let (_, seg) = batch.take().expect("a batch");
        assert_eq!(seg.map(|s| s.segment_size), Some(1448));
    }

    #[test]
    fn a_batch_stays_within_one_ipv4_packet() {
        let mut batch = SegmentBatch::new(12);
        let mut seq = 0u32;
        let mut taken = 0;
        while batch.push(&segment(seq, 1448, 0x10)) == Pushed::Taken {
            seq += 1448;
            taken += 1;
        }
        assert_eq!(taken, (65535 - 52) / 1448);
        let (buffer, _) = batch.take().expect("a batch");
        assert!(buffer.len() - 12 - 14 <= 65535);
    }

    #[test]
    fn frames_that_are_not_plain_tcp_over_ipv4_are_left_alone() {
        let mut batch = SegmentBatch::new(12);
        let mut options = segment(1000, 1448, 0x10);
        options[14] = 0x46; // an IPv4 header with options
        assert_eq!(batch.push(&options), Pushed::NotTaken);
        let mut fragment = segment(1000, 1448, 0x10);
        fragment[20] = 0x20; // more fragments
        assert_eq!(batch.push(&fragment), Pushed::NotTaken);
        let mut udp = segment(1000, 1448, 0x10);
        udp[23] = 17;
        assert_eq!(batch.push(&udp), Pushed::NotTaken);
        let mut syn = segment(1000, 1448, 0x12);
        assert_eq!(batch.push(&syn), Pushed::NotTaken);
        syn[47] = 0x14; // RST
        assert_eq!(batch.push(&syn), Pushed::NotTaken);
        let mut short = segment(1000, 1448, 0x10);
        short.truncate(60);
        assert_eq!(batch.push(&short), Pushed::NotTaken, "truncated");
        let mut long_total = segment(1000, 1448, 0x10);
        long_total[16..18].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(
            batch.push(&long_total),
            Pushed::NotTaken,
            "IPv4 length past the frame"
        );
        assert!(batch.is_empty());
    }

    #[test]
    fn alternating_connections_each_get_their_batch() {
        let mut batches = FlowBatches::new(12);
        let mut spare = || Vec::new();
        let other = |seq: u32, payload: usize, flags: u8| {
            let mut f = segment(seq, payload, flags);
            f[36..38].copy_from_slice(&40001u16.to_be_bytes());
            f
        };
        for i in 0..3u32 {
            assert_eq!(
                batches.push(&segment(1000 + i * 1448, 1448, 0x10), &mut spare),
                FlowPush::Taken
            );
            assert_eq!(
                batches.push(&other(5000 + i * 1448, 1448, 0x10), &mut spare),
                FlowPush::Taken
            );
        }
        assert_eq!(
            batches.push(&segment(1000 + 3 * 1448, 100, 0x18), &mut spare),
            FlowPush::Complete(0)
        );
        let (first, seg) = batches.take(0).expect("the first connection's batch");
        assert_eq!(seg.map(|s| s.segment_size), Some(1448));
        assert_eq!(first.len() - 12, 66 + 3 * 1448 + 100);
        assert_eq!(
            batches.push(&other(5000 + 3 * 1448, 100, 0x18), &mut spare),
            FlowPush::Complete(1)
        );
        let (second, _) = batches.take(1).expect("the second connection's batch");
        assert_eq!(be16(&second[12..], 36), 40001);
        assert_eq!(second.len() - 12, 66 + 3 * 1448 + 100);
        assert!(batches.take_any().is_none());
    }

    #[test]
    fn a_connection_keeps_its_order_and_other_frames_flush_the_batches() {
        let mut batches = FlowBatches::new(12);
        let mut spare = || Vec::new();
        assert_eq!(
            batches.push(&segment(1000, 1448, 0x10), &mut spare),
            FlowPush::Taken
        );
        // The same connection, not continuing it (a gap, a new window): that
        // batch goes first.
        assert_eq!(
            batches.push(&segment(9000, 1448, 0x10), &mut spare),
            FlowPush::SendFirst(0)
        );
        let mut new_window = segment(2448, 1448, 0x10);
        new_window[48..50].copy_from_slice(&2000u16.to_be_bytes());
        assert_eq!(
            batches.push(&new_window, &mut spare),
            FlowPush::SendFirst(0)
        );
        assert!(batches.take(0).is_some());
        assert_eq!(batches.push(&new_window, &mut spare), FlowPush::Taken);
        // A bare ACK or a FIN without data: every batch goes first.
        assert_eq!(
            batches.push(&segment(3896, 0, 0x11), &mut spare),
            FlowPush::NotTaken
        );
        assert!(batches.take_any().is_some());
        assert!(batches.take_any().is_none());
        assert_eq!(
            batches.push(&segment(3896, 0, 0x11), &mut spare),
            FlowPush::Alone
        );
        // A lone PSH segment starts nothing.
        assert_eq!(
            batches.push(&segment(3896, 100, 0x18), &mut spare),
            FlowPush::Alone
        );
    }

    #[test]
    fn more_connections_than_slots_give_up_a_batch_in_turn() {
        let mut batches = FlowBatches::new(12);
        let mut spare = || Vec::new();
        let port = |p: u16| {
            let mut f = segment(1000, 1448, 0x10);
            f[36..38].copy_from_slice(&p.to_be_bytes());
            f
        };
        for p in 0..FLOWS as u16 {
            assert_eq!(batches.push(&port(40000 + p), &mut spare), FlowPush::Taken);
        }
        assert_eq!(
            batches.push(&port(50000), &mut spare),
            FlowPush::SendFirst(0)
        );
        assert!(batches.take(0).is_some());
        assert_eq!(batches.push(&port(50000), &mut spare), FlowPush::Taken);
        assert_eq!(
            batches.push(&port(50001), &mut spare),
            FlowPush::SendFirst(1)
        );
    }
}
