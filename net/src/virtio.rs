//! A smoltcp [`Device`] over a NIC's frame queues ([`FrameQueues`]).
//!
//! The queues themselves (virtio-net's, whose buffers the device owns while
//! it works on them) live in the kernel's hardware layer and offer only safe
//! calls: a received frame is lent out as a [`ReceivedFrame`] and given back
//! with [`FrameQueues::recycle`]; a frame to send is written into a buffer
//! from [`FrameQueues::transmit_buffer`] and queued with
//! [`FrameQueues::transmit`], without waiting for the device to send it.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::Instant;

/// The largest Ethernet frame a NIC sends or expects (MTU 1500).
pub const MAX_FRAME_LEN: usize = 1514;

/// The largest frame smoltcp makes on a NIC with segmentation offload: a TCP
/// segment of up to [`crate::stretch_ack::SCALE`] wire-sized ones, which the
/// device cuts back to [`MAX_FRAME_LEN`] (see [`SegmentBatch`]). smoltcp
/// sends segments of the smaller of the peer's MSS (as scaled on receipt of
/// its SYN) and its own MTU's, and spends most of its time per segment, not
/// per byte: four times fewer segments for a 128 KiB read or a replicated
/// write. Only TCP goes past [`MAX_FRAME_LEN`]: nothing else this stack sends
/// is larger than a wire frame.
pub const MAX_SEGMENTED_FRAME_LEN: usize =
    MAX_FRAME_LEN + (crate::stretch_ack::SCALE as usize - 1) * crate::stretch_ack::LOCAL_MSS as usize;

/// Whether a virtio device that asked to be notified when the driver's
/// available index passes `event` (its avail_event, VIRTIO_F_EVENT_IDX)
/// needs a notification now that the index moved from `old` to `new`: the
/// virtio specification's `vring_need_event`, in wrapping 16-bit arithmetic.
/// Only the move that crosses the event notifies; another buffer made
/// available before the device asks again does not.
pub fn needs_notification(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// What went wrong moving a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Every transmit descriptor is in use: the frame was dropped.
    QueueFull,
    /// The device returned something the driver did not expect.
    Device,
}

/// A received frame, lent out of the receive queue until it is recycled.
pub struct ReceivedFrame {
    buffer: Box<[u8]>,
    start: usize,
    len: usize,
    /// One of the queue's own buffers, to be posted again; false for a frame
    /// assembled from several of them (already posted again).
    pooled: bool,
    /// The device vouched for its checksums (or will not have them checked).
    checksums_trusted: bool,
}

impl ReceivedFrame {
    /// The frame is `buffer[start..start + len]` (clamped to the buffer) of
    /// one of the queue's buffers.
    pub fn new(buffer: Box<[u8]>, start: usize, len: usize) -> Self {
        let start = start.min(buffer.len());
        let len = len.min(buffer.len() - start);
        Self { buffer, start, len, pooled: true, checksums_trusted: false }
    }

    /// A frame the device spread over several of the queue's buffers,
    /// copied together; [`ReceivedFrame::into_buffer`] gives nothing back.
    pub fn assembled(frame: Vec<u8>) -> Self {
        let len = frame.len();
        Self { buffer: frame.into_boxed_slice(), start: 0, len, pooled: false, checksums_trusted: false }
    }

    /// Marks the frame's checksums as vouched for by the device (virtio-net's
    /// DATA_VALID, or NEEDS_CSUM from a sender on the same host): they are
    /// not verified again.
    pub fn with_trusted_checksums(mut self) -> Self {
        self.checksums_trusted = true;
        self
    }

    pub fn frame(&self) -> &[u8] {
        &self.buffer[self.start..self.start + self.len]
    }

    fn frame_mut(&mut self) -> &mut [u8] {
        &mut self.buffer[self.start..self.start + self.len]
    }

    /// The queue's buffer, to be posted again; `None` for an assembled frame.
    pub fn into_buffer(self) -> Option<Box<[u8]>> {
        self.pooled.then_some(self.buffer)
    }
}

/// A NIC's receive and transmit queues.
pub trait FrameQueues {
    fn mac_address(&self) -> [u8; 6];
    /// Acknowledges a pending interrupt; true if the device raised one.
    fn ack_interrupt(&mut self) -> bool;
    /// True if a received frame is waiting.
    fn has_received(&self) -> bool;
    /// The next received frame, if any.
    fn take_received(&mut self) -> Option<Result<ReceivedFrame, FrameError>>;
    /// Gives a received frame's buffer back to the receive queue.
    fn recycle(&mut self, frame: ReceivedFrame) -> Result<(), FrameError>;
    /// True if a frame can be queued for sending now.
    fn can_transmit(&mut self) -> bool;
    /// A buffer for the next frame to send, exactly `len` bytes; `None` if
    /// the queue is full or `len` is too long.
    fn transmit_buffer(&mut self, len: usize) -> Option<&mut [u8]>;
    /// Queues the frame written into the last [`FrameQueues::transmit_buffer`].
    fn transmit(&mut self, len: usize) -> Result<(), FrameError>;
    /// Hands the device whatever queued frames it holds back (a batch being
    /// gathered for segmentation offload): called once the stack has sent
    /// all it had for now.
    fn flush(&mut self) {}
    /// Notifications sent to the device so far: receive queue, transmit
    /// queue (each one a VM exit when the device is emulated).
    fn notifications(&self) -> (u64, u64) {
        (0, 0)
    }
    /// True if the device takes TCP frames of up to
    /// [`MAX_SEGMENTED_FRAME_LEN`] and cuts them into wire-sized segments
    /// (through [`SegmentBatch`]).
    fn segments_large_frames(&self) -> bool {
        false
    }
}

/// Packet and byte counters of one NIC.
#[derive(Debug, Default)]
pub struct NicCounters {
    pub rx_packets: Cell<u64>,
    pub rx_bytes: Cell<u64>,
    pub tx_packets: Cell<u64>,
    pub tx_bytes: Cell<u64>,
    pub rx_errors: Cell<u64>,
    /// Frames dropped for a wrong IPv4, TCP, UDP or ICMP checksum.
    pub rx_checksum_errors: Cell<u64>,
    /// Frames not sent: the transmit queue was full or the device failed.
    pub tx_errors: Cell<u64>,
}

fn bump(counter: &Cell<u64>, by: u64) {
    counter.set(counter.get().wrapping_add(by));
}

/// A NIC's frame queues as a smoltcp [`Device`].
pub struct FrameDevice<Q: FrameQueues> {
    queues: RefCell<Q>,
    counters: NicCounters,
    mac: [u8; 6],
    /// Neighbours' MAC addresses seen in received ARP packets.
    arp: crate::frames::ArpSnoop,
    /// Frames made here that smoltcp receives before the device's next ones.
    injected: VecDeque<Vec<u8>>,
    /// The device segments large TCP frames ([`FrameQueues::segments_large_frames`]).
    large_frames: bool,
}

impl<Q: FrameQueues> FrameDevice<Q> {
    pub fn new(queues: Q) -> Self {
        let mac = queues.mac_address();
        let large_frames = queues.segments_large_frames();
        Self {
            queues: RefCell::new(queues),
            counters: NicCounters::default(),
            mac,
            arp: crate::frames::ArpSnoop::default(),
            injected: VecDeque::new(),
            large_frames,
        }
    }

    pub fn mac_address(&self) -> [u8; 6] {
        self.mac
    }

    pub fn counters(&self) -> &NicCounters {
        &self.counters
    }

    /// Acknowledges a pending interrupt; true if the device raised one.
    pub fn ack_interrupt(&mut self) -> bool {
        self.queues.get_mut().ack_interrupt()
    }

    /// Notifications sent to the device: receive queue, transmit queue.
    pub fn notifications(&self) -> (u64, u64) {
        self.queues.borrow().notifications()
    }

    /// True if a received frame is waiting.
    pub fn has_rx(&self) -> bool {
        !self.injected.is_empty() || self.queues.borrow().has_received()
    }

    /// Tells smoltcp again the neighbours this NIC learned from ARP: one ARP
    /// reply each, addressed to `own`, received before the next real frame.
    /// smoltcp forgets every neighbour when an address is added or removed
    /// (`update_ip_addrs` flushes its cache), and it sends at most one ARP
    /// request a second on the whole interface: with one neighbour that never
    /// answers (a peer or witness cut off), it would not learn a host's
    /// address again for as long, and could not answer that host meanwhile.
    pub fn replay_neighbors(&mut self, own: smoltcp::wire::Ipv4Address) {
        let mac = self.mac;
        let replies: Vec<Vec<u8>> = self
            .arp
            .entries()
            .filter(|(address, _)| *address != own)
            .map(|(address, neighbor)| crate::frames::arp_reply(neighbor, address, mac, own))
            .collect();
        self.injected.extend(replies);
    }

    /// The MAC address of an IPv4 neighbour that sent ARP to this NIC.
    pub fn arp_neighbor(&self, address: smoltcp::wire::Ipv4Address) -> Option<[u8; 6]> {
        self.arp.lookup(address)
    }

    /// See [`FrameQueues::flush`].
    pub fn flush(&mut self) {
        self.queues.get_mut().flush();
    }
}

impl<Q: FrameQueues> Device for FrameDevice<Q> {
    type RxToken<'a>
        = FrameRxToken<'a, Q>
    where
        Self: 'a;
    type TxToken<'a>
        = FrameTxToken<'a, Q>
    where
        Self: 'a;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        if let Some(frame) = self.injected.pop_front() {
            let (queues, counters, large_frames) = (&self.queues, &self.counters, self.large_frames);
            return Some((FrameRxToken { queues, counters, frame: RxFrame::Injected(frame) }, FrameTxToken { queues, counters, large_frames }));
        }
        loop {
            match self.queues.get_mut().take_received()? {
                Ok(mut frame) => {
                    if !frame.checksums_trusted && !crate::checksum::frame_checksums_valid(frame.frame()) {
                        bump(&self.counters.rx_checksum_errors, 1);
                        if let Err(error) = self.queues.get_mut().recycle(frame) {
                            log::warn!("could not recycle a receive buffer: {error:?}");
                        }
                        continue;
                    }
                    crate::stretch_ack::scale_announced_mss(frame.frame_mut());
                    self.arp.learn(frame.frame());
                    let (queues, counters, large_frames) = (&self.queues, &self.counters, self.large_frames);
                    return Some((FrameRxToken { queues, counters, frame: RxFrame::Device(frame) }, FrameTxToken { queues, counters, large_frames }));
                }
                Err(error) => {
                    bump(&self.counters.rx_errors, 1);
                    log::warn!("receive failed: {error:?}");
                }
            }
        }
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        if self.queues.get_mut().can_transmit() {
            Some(FrameTxToken { queues: &self.queues, counters: &self.counters, large_frames: self.large_frames })
        } else {
            None
        }
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.max_transmission_unit = if self.large_frames { MAX_SEGMENTED_FRAME_LEN } else { MAX_FRAME_LEN };
        caps.max_burst_size = None;
        caps.medium = Medium::Ethernet;
        caps.checksum = crate::checksum::receive_checksums();
        caps
    }
}

pub struct FrameRxToken<'a, Q: FrameQueues> {
    queues: &'a RefCell<Q>,
    counters: &'a NicCounters,
    frame: RxFrame,
}

enum RxFrame {
    Device(ReceivedFrame),
    Injected(Vec<u8>),
}

impl<Q: FrameQueues> RxToken for FrameRxToken<'_, Q> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        let frame = match self.frame {
            RxFrame::Injected(bytes) => return f(&bytes),
            RxFrame::Device(frame) => frame,
        };
        bump(&self.counters.rx_packets, 1);
        bump(&self.counters.rx_bytes, frame.frame().len() as u64);
        // The queues are not borrowed while smoltcp handles the frame: its
        // answer goes out through the transmit token meanwhile.
        let result = f(frame.frame());
        if let Err(error) = self.queues.borrow_mut().recycle(frame) {
            bump(&self.counters.rx_errors, 1);
            log::warn!("could not recycle a receive buffer: {error:?}");
        }
        result
    }
}

pub struct FrameTxToken<'a, Q: FrameQueues> {
    queues: &'a RefCell<Q>,
    counters: &'a NicCounters,
    large_frames: bool,
}

impl<Q: FrameQueues> TxToken for FrameTxToken<'_, Q> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut queues = self.queues.borrow_mut();
        let (result, queued) = match queues.transmit_buffer(len) {
            Some(buffer) => {
                let result = f(buffer);
                if self.large_frames {
                    // smoltcp announces the MSS of its (large) MTU.
                    crate::stretch_ack::clamp_announced_mss(buffer);
                }
                (result, queues.transmit(len))
            }
            None => {
                // smoltcp needs the frame built either way; it is dropped,
                // as a full queue on real hardware would, and TCP resends it.
                let mut scratch = vec![0u8; len];
                (f(&mut scratch), Err(FrameError::QueueFull))
            }
        };
        match queued {
            Ok(()) => {
                bump(&self.counters.tx_packets, 1);
                bump(&self.counters.tx_bytes, len as u64);
            }
            Err(error) => {
                bump(&self.counters.tx_errors, 1);
                log::debug!("frame not sent: {error:?}");
            }
        }
        result
    }
}

#[cfg(test)]
mod event_index_tests {
    use super::needs_notification;

    #[test]
    fn only_the_move_across_the_event_notifies() {
        // The device wants to hear of index 10 being passed (event 9).
        assert!(needs_notification(9, 10, 9));
        assert!(needs_notification(9, 12, 8), "a batch that crosses it");
        assert!(!needs_notification(9, 11, 10), "already notified at 10");
        assert!(!needs_notification(9, 9, 8), "not yet at the event");
        assert!(!needs_notification(9, 9, 9), "nothing added");
    }

    #[test]
    fn the_indices_wrap() {
        assert!(needs_notification(65535, 0, 65535));
        assert!(needs_notification(65534, 1, 65533));
        assert!(!needs_notification(65534, 1, 0), "crossed at 65535 → 0 before");
        assert!(needs_notification(3, 4, 65530), "a batch across the wrap and the event");
        assert!(!needs_notification(65000, 2, 1), "an event far behind was passed long ago");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    /// Queues in memory: `capacity` frames may be in flight to the device.
    struct FakeQueues {
        incoming: Vec<Vec<u8>>,
        posted: usize,
        sent: Vec<Vec<u8>>,
        capacity: usize,
        filling: Vec<u8>,
        /// Frames handed over as if the device vouched for their checksums.
        trusted: bool,
    }

    impl FakeQueues {
        fn new(capacity: usize) -> Self {
            Self { incoming: Vec::new(), posted: 0, sent: Vec::new(), capacity, filling: Vec::new(), trusted: false }
        }
    }

    impl FrameQueues for FakeQueues {
        fn mac_address(&self) -> [u8; 6] {
            [2, 0, 0, 0, 0, 1]
        }
        fn ack_interrupt(&mut self) -> bool {
            false
        }
        fn has_received(&self) -> bool {
            !self.incoming.is_empty()
        }
        fn take_received(&mut self) -> Option<Result<ReceivedFrame, FrameError>> {
            if self.incoming.is_empty() {
                return None;
            }
            let frame = self.incoming.remove(0);
            let mut buffer = vec![0xee; 12 + frame.len() + 8];
            buffer[12..12 + frame.len()].copy_from_slice(&frame);
            let frame = ReceivedFrame::new(buffer.into_boxed_slice(), 12, frame.len());
            Some(Ok(if self.trusted { frame.with_trusted_checksums() } else { frame }))
        }
        fn recycle(&mut self, _frame: ReceivedFrame) -> Result<(), FrameError> {
            self.posted += 1;
            Ok(())
        }
        fn can_transmit(&mut self) -> bool {
            self.sent.len() < self.capacity
        }
        fn transmit_buffer(&mut self, len: usize) -> Option<&mut [u8]> {
            if !self.can_transmit() || len > MAX_FRAME_LEN {
                return None;
            }
            self.filling = vec![0; len];
            Some(&mut self.filling)
        }
        fn transmit(&mut self, len: usize) -> Result<(), FrameError> {
            assert_eq!(len, self.filling.len());
            self.sent.push(core::mem::take(&mut self.filling));
            Ok(())
        }
    }

    #[test]
    fn a_received_frame_is_handed_over_without_its_header_and_recycled() {
        let mut queues = FakeQueues::new(4);
        queues.incoming.push(vec![1, 2, 3]);
        let mut device = FrameDevice::new(queues);
        assert!(device.has_rx());
        let (rx, _tx) = device.receive(Instant::ZERO).expect("a frame is waiting");
        let seen = rx.consume(|frame| frame.to_vec());
        assert_eq!(seen, vec![1, 2, 3]);
        assert_eq!(device.queues.borrow().posted, 1);
        assert_eq!(device.counters().rx_packets.get(), 1);
        assert_eq!(device.counters().rx_bytes.get(), 3);
        assert!(device.receive(Instant::ZERO).is_none());
    }

    #[test]
    fn a_frame_with_a_wrong_checksum_is_dropped_unless_the_device_vouched_for_it() {
        let mut syn = crate::frames::host_syn();
        // The TCP checksum as a sender using checksum offload leaves it.
        syn[14 + 20 + 16] ^= 0x5a;
        for trusted in [false, true] {
            let mut queues = FakeQueues::new(4);
            queues.trusted = trusted;
            queues.incoming.push(syn.clone());
            let mut device = FrameDevice::new(queues);
            let handed_over = device.receive(Instant::ZERO).map(|(rx, _)| rx.consume(|frame| frame.to_vec()));
            assert_eq!(handed_over.is_some(), trusted);
            assert_eq!(device.counters().rx_checksum_errors.get(), u64::from(!trusted));
            assert_eq!(device.queues.borrow().posted, 1, "the buffer goes back either way");
        }
        let caps = FrameDevice::new(FakeQueues::new(1)).capabilities().checksum;
        assert!(caps.tcp.tx() && !caps.tcp.rx(), "smoltcp does not verify again");
    }

    #[test]
    fn an_answer_can_be_sent_while_the_received_frame_is_handled() {
        let mut queues = FakeQueues::new(4);
        queues.incoming.push(vec![9; 60]);
        let mut device = FrameDevice::new(queues);
        let (rx, tx) = device.receive(Instant::ZERO).expect("a frame is waiting");
        rx.consume(|frame| tx.consume(frame.len(), |out| out.copy_from_slice(frame)));
        assert_eq!(device.queues.borrow().sent, vec![vec![9; 60]]);
        assert_eq!(device.queues.borrow().posted, 1);
    }

    #[test]
    fn frames_queue_without_waiting_until_the_queue_is_full() {
        let mut device = FrameDevice::new(FakeQueues::new(3));
        for n in 0..3u8 {
            let tx = device.transmit(Instant::ZERO).expect("room in the queue");
            tx.consume(64, |out| out.fill(n));
        }
        assert!(device.transmit(Instant::ZERO).is_none(), "full queue: no token");
        assert_eq!(device.counters().tx_packets.get(), 3);
        assert_eq!(device.counters().tx_bytes.get(), 192);
        assert_eq!(device.queues.borrow().sent[2], vec![2; 64]);
    }

    #[test]
    fn a_frame_that_finds_the_queue_full_is_dropped_and_counted() {
        let mut queues = FakeQueues::new(1);
        queues.incoming.push(vec![1; 60]);
        let mut device = FrameDevice::new(queues);
        device.transmit(Instant::ZERO).expect("room").consume(60, |out| out.fill(7));
        let (rx, tx) = device.receive(Instant::ZERO).expect("a frame is waiting");
        let built = rx.consume(|_| tx.consume(42, |out| out.len()));
        assert_eq!(built, 42, "the frame is still built");
        assert_eq!(device.counters().tx_errors.get(), 1);
        assert_eq!(device.queues.borrow().sent.len(), 1);
    }

    /// smoltcp forgets its neighbours when an address is claimed; replayed,
    /// it answers a host's SYN at once instead of first asking for the
    /// host's address (which, rate-limited behind an unanswered neighbour,
    /// could take long).
    #[test]
    fn neighbours_replayed_after_an_address_change_let_smoltcp_answer_at_once() {
        use crate::frames;
        use crate::{Nic, NicAddressing};
        use smoltcp::socket::tcp;
        use smoltcp::wire::{EthernetFrame, EthernetProtocol, Ipv4Address, Ipv4Cidr, TcpControl};
        const HOST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 9];
        let ours = Ipv4Address::new(10, 79, 0, 2);
        let host = Ipv4Address::new(10, 79, 0, 20);
        let syn = frames::tcp_segment(
            HOST_MAC,
            [2, 0, 0, 0, 0, 1],
            frames::Endpoint { address: host, port: 40000 },
            frames::Endpoint { address: ours, port: 4420 },
            TcpControl::Syn,
            1000,
            None,
        );
        for replay in [false, true] {
            let addressing = NicAddressing::Static { address: Ipv4Cidr::new(ours, 24), gateway: None };
            let mut nic = Nic::new("net0", FrameDevice::new(FakeQueues::new(64)), [2, 0, 0, 0, 0, 1], addressing, Instant::from_millis(0));
            let mut listener = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; 1024]), tcp::SocketBuffer::new(vec![0; 1024]));
            listener.listen(4420).unwrap();
            nic.sockets_mut().add(listener);
            // The host asks for our address: smoltcp and the snoop learn its MAC.
            nic.device_mut().queues.get_mut().incoming.push(frames::arp_request(HOST_MAC, host, ours));
            nic.poll(Instant::from_millis(10));
            nic.claim_address(Ipv4Address::new(10, 79, 0, 1)).unwrap();
            if replay {
                nic.device_mut().replay_neighbors(ours);
            }
            nic.device_mut().queues.get_mut().sent.clear();
            nic.device_mut().queues.get_mut().incoming.push(syn.clone());
            nic.poll(Instant::from_millis(20));
            let sent = core::mem::take(&mut nic.device_mut().queues.get_mut().sent);
            let kinds: Vec<EthernetProtocol> = sent.iter().filter_map(|f| EthernetFrame::new_checked(&f[..]).ok().map(|e| e.ethertype())).collect();
            let expected = if replay { EthernetProtocol::Ipv4 } else { EthernetProtocol::Arp };
            assert_eq!(kinds, [expected], "replay {replay}");
        }
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
        assert_eq!(seg, Segmentation { header_len: 66, segment_size: 1448, checksum_start: 34, checksum_offset: 16 });
        let frame = &buffer[12..];
        assert_eq!(frame.len(), 66 + 1448 * 2 + 500);
        assert_eq!(be16(frame, 16), 20 + 32 + 1448 * 2 + 500, "IPv4 total length");
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
        assert_eq!(seg.map(|s| s.segment_size), Some(1448), "cut at what a wire frame carries");
        let frame = &buffer[12..];
        assert_eq!(frame.len(), 66 + 8 * 1448 + 3000);
        assert_eq!(&frame[66 + 8 * 1448..], &c[66..]);
        assert_eq!(frame[47], 0x18);

        // Alone, and even with PSH, a large segment still goes to the device
        // to be cut: as it is, it would not fit the wire.
        for flags in [0x10, 0x18, 0x19] {
            let big = segment(5000, 2 * 1448 + 7, flags);
            assert_eq!(batch.push(&big), Pushed::TakenAndComplete, "flags {flags:#x}");
            let (buffer, seg) = batch.take().expect("a batch");
            assert_eq!(seg.map(|s| s.segment_size), Some(1448));
            assert_eq!(&buffer[12 + 66..], &big[66..]);
            assert_eq!(buffer[12 + 47], flags);
        }

        // A large segment that does not end on a cut ends the batch: what
        // follows would not start a wire segment of its own.
        assert_eq!(batch.push(&segment(1000, 3000, 0x10)), Pushed::TakenAndComplete);
        assert_eq!(batch.push(&segment(4000, 1448, 0x10)), Pushed::NotTaken);
        assert!(batch.take().is_some());
    }

    #[test]
    fn segments_smaller_than_a_wire_frame_are_cut_at_their_own_size() {
        // A peer that announced a smaller MSS (1000 bytes here).
        let mut batch = SegmentBatch::new(12);
        assert_eq!(batch.push(&segment(1000, 1000, 0x10)), Pushed::Taken);
        assert_eq!(batch.push(&segment(2000, 1000, 0x10)), Pushed::Taken);
        assert_eq!(batch.push(&segment(3000, 1448, 0x10)), Pushed::NotTaken, "larger than the cut");
        assert_eq!(batch.push(&segment(3000, 400, 0x18)), Pushed::TakenAndComplete);
        let (buffer, seg) = batch.take().expect("a batch");
        assert_eq!(seg.map(|s| s.segment_size), Some(1000));
        assert_eq!(be16(&buffer[12..], 16), 20 + 32 + 2400, "IPv4 total length of the whole");
    }

    #[test]
    fn a_fin_ends_the_batch_and_is_left_to_the_last_segment() {
        let mut batch = SegmentBatch::new(12);
        assert_eq!(batch.push(&segment(1000, 1448, 0x10)), Pushed::Taken);
        assert_eq!(batch.push(&segment(2448, 100, 0x19)), Pushed::TakenAndComplete);
        let (buffer, seg) = batch.take().expect("a batch");
        assert_eq!(seg.map(|s| s.segment_size), Some(1448));
        assert_eq!(buffer[12 + 47], 0x19, "FIN and PSH on the header the device gives the last segment");
    }

    #[test]
    fn only_what_continues_the_flow_joins_the_batch() {
        let mut batch = SegmentBatch::new(12);
        assert_eq!(batch.push(&segment(1000, 1448, 0x18)), Pushed::NotTaken, "PSH alone: nothing follows");
        assert_eq!(batch.push(&segment(1000, 1448, 0x11)), Pushed::NotTaken, "FIN");
        assert_eq!(batch.push(&segment(1000, 0, 0x10)), Pushed::NotTaken, "a bare ACK");
        assert_eq!(batch.push(&segment(1000, 1448, 0x10)), Pushed::Taken);
        assert_eq!(batch.push(&segment(3000, 1448, 0x10)), Pushed::NotTaken, "a gap");
        let mut other_port = segment(2448, 1448, 0x10);
        other_port[36..38].copy_from_slice(&40001u16.to_be_bytes());
        assert_eq!(batch.push(&other_port), Pushed::NotTaken);
        let mut new_window = segment(2448, 1448, 0x10);
        new_window[48..50].copy_from_slice(&2000u16.to_be_bytes());
        assert_eq!(batch.push(&new_window), Pushed::NotTaken);
        let mut arp = segment(2448, 1448, 0x10);
        arp[12..14].copy_from_slice(&[8, 6]);
        assert_eq!(batch.push(&arp), Pushed::NotTaken);
        assert_eq!(batch.push(&segment(2448, 1000, 0x10)), Pushed::TakenAndComplete, "a short one ends it");
        assert_eq!(batch.push(&segment(3448, 1000, 0x10)), Pushed::NotTaken, "nothing after a short one");
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
    fn a_received_frame_never_reaches_past_its_buffer() {
        let frame = ReceivedFrame::new(vec![0; 16].into_boxed_slice(), 12, 100);
        assert_eq!(frame.frame().len(), 4);
        let frame = ReceivedFrame::new(vec![0; 16].into_boxed_slice(), 40, 100);
        assert!(frame.frame().is_empty());
        assert!(frame.into_buffer().is_some(), "a queue buffer goes back");
        assert!(ReceivedFrame::assembled(vec![1; 3000]).into_buffer().is_none(), "an assembled frame does not");
    }
}

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
const IPV4_HEADER: usize = 20;
const TCP_FLAG_ACK: u8 = 0x10;
const TCP_FLAG_PSH: u8 = 0x08;
const TCP_FLAG_FIN: u8 = 0x01;
/// The largest IPv4 packet: a coalesced frame never exceeds it.
const MAX_IPV4_PACKET: usize = 65535;

/// A TCP/IPv4 segment's fields that decide whether it continues a batch.
#[derive(Clone, Copy)]
struct Segment {
    tcp_header: usize,
    payload: usize,
    seq: u32,
    flags: u8,
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
        self.flags & (TCP_FLAG_PSH | TCP_FLAG_FIN) != 0
    }
}

fn be16(bytes: &[u8], at: usize) -> usize {
    usize::from(u16::from_be_bytes([bytes[at], bytes[at + 1]]))
}

/// The segment's fields if `frame` is a plain TCP/IPv4 data segment (no IP
/// options or fragments, ACK and perhaps PSH or FIN set) with payload.
fn parse_segment(frame: &[u8]) -> Option<Segment> {
    if frame.len() < ETHERNET_HEADER + IPV4_HEADER + 20 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[ETHERNET_HEADER..];
    let fragment = be16(ip, 6);
    if ip[0] != 0x45 || ip[9] != 6 || fragment & 0x3fff != 0 {
        return None;
    }
    let total = be16(ip, 2);
    if total > ip.len() || total < IPV4_HEADER + 20 {
        return None;
    }
    let tcp = &ip[IPV4_HEADER..total];
    let tcp_header = usize::from(tcp[12] >> 4) * 4;
    let flags = tcp[13];
    if tcp_header < 20
        || tcp_header > tcp.len()
        || flags & !(TCP_FLAG_ACK | TCP_FLAG_PSH | TCP_FLAG_FIN) != 0
        || flags & TCP_FLAG_ACK == 0
    {
        return None;
    }
    let payload = tcp.len() - tcp_header;
    if payload == 0 {
        return None;
    }
    Some(Segment { tcp_header, payload, seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]), flags })
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
/// may be larger than a wire frame ([`MAX_SEGMENTED_FRAME_LEN`]): each but
/// the last must then end on such a cut. For the stack's wire-sized
/// segments, the device's are exactly the stack's.
pub struct SegmentBatch {
    /// `prefix` bytes for the device's header, then the frame.
    buffer: alloc::vec::Vec<u8>,
    prefix: usize,
    first: Option<Segment>,
    payload: usize,
    segments: usize,
}

impl SegmentBatch {
    /// A batch whose buffer starts with `prefix` bytes for the device.
    pub fn new(prefix: usize) -> Self {
        Self { buffer: alloc::vec::Vec::new(), prefix, first: None, payload: 0, segments: 0 }
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
    pub fn provide_buffer(&mut self, buffer: alloc::vec::Vec<u8>) {
        if self.first.is_none() {
            self.buffer = buffer;
        }
    }

    /// Offers the next frame to send.
    pub fn push(&mut self, frame: &[u8]) -> Pushed {
        let Some(segment) = parse_segment(frame) else { return Pushed::NotTaken };
        let Some(first) = self.first else {
            let oversized = segment.payload > segment.wire_payload();
            if segment.ends_batch() && !oversized {
                // Nothing follows it: no batch to start.
                return Pushed::NotTaken;
            }
            self.buffer.clear();
            self.buffer.resize(self.prefix, 0);
            self.buffer.extend_from_slice(frame);
            let end = self.prefix + ETHERNET_HEADER + IPV4_HEADER + segment.tcp_header + segment.payload;
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
        let batch = &self.buffer[start..];
        let continues = segment.tcp_header == first.tcp_header
            && segment.seq == first.seq.wrapping_add(self.payload as u32)
            // Everything before the last segment ends on a cut, and the
            // segments are no larger than the cut unless it is a wire frame's.
            && self.payload % first.cut() == 0
            && (segment.payload <= first.cut() || first.cut() == first.wire_payload())
            && IPV4_HEADER + first.tcp_header + self.payload + segment.payload <= MAX_IPV4_PACKET
            // Same addresses, type, TOS and TTL; same ports, ack, window, options.
            && frame[..12] == batch[..12]
            && frame[15] == batch[15]
            && frame[22] == batch[22]
            && frame[26..34] == batch[26..34]
            && frame[34..38] == batch[34..38]
            && frame[42..47] == batch[42..47]
            && frame[48..50] == batch[48..50]
            && frame[54..headers] == batch[54..headers];
        if !continues {
            return Pushed::NotTaken;
        }
        let payload_at = headers;
        self.buffer.extend_from_slice(&frame[payload_at..payload_at + segment.payload]);
        self.payload += segment.payload;
        self.segments += 1;
        if segment.ends_batch() {
            // The device sets PSH and FIN on the last segment only.
            self.buffer[start + ETHERNET_HEADER + IPV4_HEADER + 13] |= segment.flags & (TCP_FLAG_PSH | TCP_FLAG_FIN);
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
    pub fn take(&mut self) -> Option<(alloc::vec::Vec<u8>, Option<Segmentation>)> {
        let first = self.first.take()?;
        let mut buffer = core::mem::take(&mut self.buffer);
        if self.segments == 1 && self.payload <= first.wire_payload() {
            // One wire frame, sent as it is.
            return Some((buffer, None));
        }
        let ip_at = self.prefix + ETHERNET_HEADER;
        let tcp_at = ip_at + IPV4_HEADER;
        let tcp_len = first.tcp_header + self.payload;
        let total = (IPV4_HEADER + tcp_len) as u16;
        buffer[ip_at + 2..ip_at + 4].copy_from_slice(&total.to_be_bytes());
        buffer[ip_at + 10..ip_at + 12].copy_from_slice(&[0, 0]);
        let ip_checksum = !fold(sum16(&buffer[ip_at..tcp_at]));
        buffer[ip_at + 10..ip_at + 12].copy_from_slice(&ip_checksum.to_be_bytes());
        // Pseudo header: addresses, protocol, TCP length (not complemented:
        // the device adds the segment's bytes and complements).
        let pseudo = sum16(&buffer[ip_at + 12..ip_at + 20]) + 6 + tcp_len as u32;
        buffer[tcp_at + 16..tcp_at + 18].copy_from_slice(&fold(pseudo).to_be_bytes());
        Some((
            buffer,
            Some(Segmentation {
                header_len: ETHERNET_HEADER + IPV4_HEADER + first.tcp_header,
                segment_size: first.cut(),
                checksum_start: ETHERNET_HEADER + IPV4_HEADER,
                checksum_offset: 16,
            }),
        ))
    }
}

fn sum16(bytes: &[u8]) -> u32 {
    bytes.chunks(2).map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]))).sum()
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}
