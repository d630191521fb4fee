//! The smoltcp device adapter: a smoltcp [`Device`] over a NIC's frame
//! queues ([`FrameQueues`]).
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
/// device cuts back to [`MAX_FRAME_LEN`] (see [`crate::SegmentBatch`]). smoltcp
/// sends segments of the smaller of the peer's MSS (as scaled on receipt of
/// its SYN) and its own MTU's, and spends most of its time per segment, not
/// per byte: four times fewer segments for a 128 KiB read or a replicated
/// write. Only TCP goes past [`MAX_FRAME_LEN`]: nothing else this stack sends
/// is larger than a wire frame.
pub const MAX_SEGMENTED_FRAME_LEN: usize = MAX_FRAME_LEN
    + (crate::stretch_ack::SCALE as usize - 1) * crate::stretch_ack::LOCAL_MSS as usize;

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
        Self {
            buffer,
            start,
            len,
            pooled: true,
            checksums_trusted: false,
        }
    }

    /// A frame the device spread over several of the queue's buffers,
    /// copied together; [`ReceivedFrame::into_buffer`] gives nothing back.
    pub fn assembled(frame: Vec<u8>) -> Self {
        let len = frame.len();
        Self {
            buffer: frame.into_boxed_slice(),
            start: 0,
            len,
            pooled: false,
            checksums_trusted: false,
        }
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
    /// Times the device held frames to send and sent none for a while, and
    /// was notified again.
    fn transmit_renotified(&self) -> u64 {
        0
    }
    /// True if the device takes TCP frames of up to
    /// [`MAX_SEGMENTED_FRAME_LEN`] and cuts them into wire-sized segments
    /// (through [`crate::SegmentBatch`]).
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
    /// ARP packets from a quiet address, not sent ([`FrameDevice::set_quiet`]).
    pub arp_withheld: Cell<u64>,
    /// ARP packets from another station announcing a guarded address
    /// ([`FrameDevice::guard_address`]).
    pub address_conflicts: Cell<u64>,
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
    /// This NIC's own addresses, watched for other stations announcing them.
    guarded: Vec<smoltcp::wire::Ipv4Address>,
    /// Addresses no ARP goes out from (a guarded address another station
    /// announced, until the node knows it may answer for it again).
    quiet: Vec<smoltcp::wire::Ipv4Address>,
    /// ARP to these addresses goes out even from a quiet address (the pair's
    /// members: the node must still reach them to learn where it stands).
    quiet_exempt: Vec<smoltcp::wire::Ipv4Address>,
    /// The newest conflict not yet taken: (address, the other station's MAC).
    conflict: Option<(smoltcp::wire::Ipv4Address, [u8; 6])>,
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
            guarded: Vec::new(),
            quiet: Vec::new(),
            quiet_exempt: Vec::new(),
            conflict: None,
        }
    }

    /// Watches `address` (one of this NIC's own): an ARP packet from another
    /// station with it as sender address makes the NIC quiet on it at once,
    /// before the stack sees the packet (and could answer it), and is kept
    /// for [`FrameDevice::take_conflict`].
    pub fn guard_address(&mut self, address: smoltcp::wire::Ipv4Address) {
        if !self.guarded.contains(&address) {
            self.guarded.push(address);
        }
    }

    /// No ARP packet with `address` as sender address goes out while quiet
    /// (neither the stack's answers and requests nor frames sent with
    /// [`crate::Nic::send_frame`]); other frames do.
    pub fn set_quiet(&mut self, address: smoltcp::wire::Ipv4Address, quiet: bool) {
        self.quiet.retain(|known| *known != address);
        if quiet {
            self.quiet.push(address);
        }
    }

    /// ARP asking for or answering these addresses goes out even from a
    /// quiet address.
    pub fn set_quiet_exempt(&mut self, targets: Vec<smoltcp::wire::Ipv4Address>) {
        self.quiet_exempt = targets;
    }

    pub fn is_quiet(&self, address: smoltcp::wire::Ipv4Address) -> bool {
        self.quiet.contains(&address)
    }

    /// The newest announcement of a guarded address by another station
    /// since the last call: (address, that station's MAC address).
    pub fn take_conflict(&mut self) -> Option<(smoltcp::wire::Ipv4Address, [u8; 6])> {
        self.conflict.take()
    }

    /// A received frame: ARP from another station for a guarded address?
    fn watch_conflicts(&mut self, frame: &[u8]) {
        if self.guarded.is_empty() {
            return;
        }
        let Some(crate::frames::ArpHeader {
            sender_mac, sender, ..
        }) = crate::frames::arp_header(frame)
        else {
            return;
        };
        if sender_mac != self.mac && self.guarded.contains(&sender) {
            bump(&self.counters.address_conflicts, 1);
            self.conflict = Some((sender, sender_mac));
            if !self.quiet.contains(&sender) {
                self.quiet.push(sender);
            }
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

    /// See [`FrameQueues::transmit_renotified`].
    pub fn transmit_renotified(&self) -> u64 {
        self.queues.borrow().transmit_renotified()
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

impl<Q: FrameQueues> FrameDevice<Q> {
    /// A token to send one frame through this device.
    fn tx_token(&self) -> FrameTxToken<'_, Q> {
        FrameTxToken {
            queues: &self.queues,
            counters: &self.counters,
            large_frames: self.large_frames,
            quiet: &self.quiet,
            quiet_exempt: &self.quiet_exempt,
        }
    }

    /// The tokens smoltcp takes for a received frame (and its answer).
    fn token_pair(&self, frame: RxFrame) -> (FrameRxToken<'_, Q>, FrameTxToken<'_, Q>) {
        let rx = FrameRxToken {
            queues: &self.queues,
            counters: &self.counters,
            frame,
        };
        (rx, self.tx_token())
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
            return Some(self.token_pair(RxFrame::Injected(frame)));
        }
        loop {
            match self.queues.get_mut().take_received()? {
                Ok(mut frame) => {
                    if !frame.checksums_trusted
                        && !crate::checksum::frame_checksums_valid(frame.frame())
                    {
                        bump(&self.counters.rx_checksum_errors, 1);
                        if let Err(error) = self.queues.get_mut().recycle(frame) {
                            log::warn!("could not recycle a receive buffer: {error:?}");
                        }
                        continue;
                    }
                    crate::stretch_ack::scale_announced_mss(frame.frame_mut());
                    self.arp.learn(frame.frame());
                    self.watch_conflicts(frame.frame());
                    return Some(self.token_pair(RxFrame::Device(frame)));
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
            Some(self.tx_token())
        } else {
            None
        }
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.max_transmission_unit = if self.large_frames {
            MAX_SEGMENTED_FRAME_LEN
        } else {
            MAX_FRAME_LEN
        };
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
    quiet: &'a [smoltcp::wire::Ipv4Address],
    quiet_exempt: &'a [smoltcp::wire::Ipv4Address],
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
                if !self.quiet.is_empty()
                    && crate::frames::arp_header(buffer).is_some_and(|arp| {
                        self.quiet.contains(&arp.sender) && !self.quiet_exempt.contains(&arp.target)
                    })
                {
                    // Left unqueued: the next frame reuses the buffer.
                    bump(&self.counters.arp_withheld, 1);
                    return result;
                }
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
            Self {
                incoming: Vec::new(),
                posted: 0,
                sent: Vec::new(),
                capacity,
                filling: Vec::new(),
                trusted: false,
            }
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
            Some(Ok(if self.trusted {
                frame.with_trusted_checksums()
            } else {
                frame
            }))
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
            let handed_over = device
                .receive(Instant::ZERO)
                .map(|(rx, _)| rx.consume(|frame| frame.to_vec()));
            assert_eq!(handed_over.is_some(), trusted);
            assert_eq!(
                device.counters().rx_checksum_errors.get(),
                u64::from(!trusted)
            );
            assert_eq!(
                device.queues.borrow().posted,
                1,
                "the buffer goes back either way"
            );
        }
        let caps = FrameDevice::new(FakeQueues::new(1)).capabilities().checksum;
        assert!(
            caps.tcp.tx() && !caps.tcp.rx(),
            "smoltcp does not verify again"
        );
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
        assert!(
            device.transmit(Instant::ZERO).is_none(),
            "full queue: no token"
        );
        assert_eq!(device.counters().tx_packets.get(), 3);
        assert_eq!(device.counters().tx_bytes.get(), 192);
        assert_eq!(device.queues.borrow().sent[2], vec![2; 64]);
    }

    #[test]
    fn a_frame_that_finds_the_queue_full_is_dropped_and_counted() {
        let mut queues = FakeQueues::new(1);
        queues.incoming.push(vec![1; 60]);
        let mut device = FrameDevice::new(queues);
        device
            .transmit(Instant::ZERO)
            .expect("room")
            .consume(60, |out| out.fill(7));
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
            frames::Endpoint {
                address: host,
                port: 40000,
            },
            frames::Endpoint {
                address: ours,
                port: 4420,
            },
            TcpControl::Syn,
            1000,
            None,
        );
        for replay in [false, true] {
            let addressing = NicAddressing::Static {
                address: Ipv4Cidr::new(ours, 24),
                gateway: None,
            };
            let mut nic = Nic::new(
                "net0",
                FrameDevice::new(FakeQueues::new(64)),
                [2, 0, 0, 0, 0, 1],
                addressing,
                Instant::from_millis(0),
            );
            let mut listener = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; 1024]),
                tcp::SocketBuffer::new(vec![0; 1024]),
            );
            listener.listen(4420).unwrap();
            nic.sockets_mut().add(listener);
            // The host asks for our address: smoltcp and the snoop learn its MAC.
            nic.device_mut()
                .queues
                .get_mut()
                .incoming
                .push(frames::arp_request(HOST_MAC, host, ours));
            nic.poll(Instant::from_millis(10));
            nic.claim_address(Ipv4Address::new(10, 79, 0, 1)).unwrap();
            if replay {
                nic.device_mut().replay_neighbors(ours);
            }
            nic.device_mut().queues.get_mut().sent.clear();
            nic.device_mut().queues.get_mut().incoming.push(syn.clone());
            nic.poll(Instant::from_millis(20));
            let sent = core::mem::take(&mut nic.device_mut().queues.get_mut().sent);
            let kinds: Vec<EthernetProtocol> = sent
                .iter()
                .filter_map(|f| {
                    EthernetFrame::new_checked(&f[..])
                        .ok()
                        .map(|e| e.ethertype())
                })
                .collect();
            let expected = if replay {
                EthernetProtocol::Ipv4
            } else {
                EthernetProtocol::Arp
            };
            assert_eq!(kinds, [expected], "replay {replay}");
        }
    }

    /// A node resumed after its peer took its address over: the peer's
    /// announcement makes the NIC quiet on that address before smoltcp
    /// sees it, so neither its answer to that announcement nor its answers
    /// to the hosts' ARP requests go out; TCP does. Opened again, it
    /// answers.
    #[test]
    fn another_station_announcing_a_guarded_address_quiets_its_arp() {
        use crate::frames;
        use crate::{Nic, NicAddressing};
        use smoltcp::wire::{ArpOperation, Ipv4Address, Ipv4Cidr};
        const HOST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 9];
        const PEER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
        let ours = Ipv4Address::new(10, 79, 0, 1);
        let host = Ipv4Address::new(10, 79, 0, 20);
        let addressing = NicAddressing::Static {
            address: Ipv4Cidr::new(ours, 24),
            gateway: None,
        };
        let mut nic = Nic::new(
            "net2",
            FrameDevice::new(FakeQueues::new(64)),
            [2, 0, 0, 0, 0, 1],
            addressing,
            Instant::from_millis(0),
        );
        nic.device_mut().guard_address(ours);
        let arp_sent =
            |nic: &mut Nic<FrameDevice<FakeQueues>>| -> Vec<(ArpOperation, Ipv4Address)> {
                core::mem::take(&mut nic.device_mut().queues.get_mut().sent)
                    .iter()
                    .filter_map(|f| frames::arp_header(f))
                    .map(|arp| (arp.operation, arp.sender))
                    .collect()
            };
        // Open: a host's request is answered.
        nic.device_mut()
            .queues
            .get_mut()
            .incoming
            .push(frames::arp_request(HOST_MAC, host, ours));
        nic.poll(Instant::from_millis(10));
        assert_eq!(arp_sent(&mut nic), [(ArpOperation::Reply, ours)]);
        // Our own announcement is no conflict.
        nic.device_mut()
            .queues
            .get_mut()
            .incoming
            .push(frames::gratuitous_arp([2, 0, 0, 0, 0, 1], ours));
        nic.poll(Instant::from_millis(15));
        assert!(nic.device_mut().take_conflict().is_none());
        let _ = arp_sent(&mut nic);
        // The peer announces our address (request and reply), then the host asks.
        nic.device_mut()
            .queues
            .get_mut()
            .incoming
            .push(frames::gratuitous_arp(PEER_MAC, ours));
        nic.device_mut()
            .queues
            .get_mut()
            .incoming
            .push(frames::gratuitous_arp_reply(PEER_MAC, ours));
        nic.device_mut()
            .queues
            .get_mut()
            .incoming
            .push(frames::arp_request(HOST_MAC, host, ours));
        nic.poll(Instant::from_millis(20));
        assert_eq!(
            arp_sent(&mut nic),
            [],
            "nothing answered for a quiet address"
        );
        assert_eq!(nic.device_mut().take_conflict(), Some((ours, PEER_MAC)));
        assert!(nic.device().is_quiet(ours));
        assert!(nic.device().counters().arp_withheld.get() >= 1);
        assert_eq!(nic.device().counters().address_conflicts.get(), 2);
        // Frames sent by hand from the quiet address are withheld too.
        nic.send_frame(
            Instant::from_millis(21),
            &frames::gratuitous_arp([2, 0, 0, 0, 0, 1], ours),
        );
        assert_eq!(arp_sent(&mut nic), []);
        // The pair's members are still answered and asked.
        let witness = Ipv4Address::new(10, 79, 0, 3);
        nic.device_mut().set_quiet_exempt(vec![witness]);
        nic.device_mut()
            .queues
            .get_mut()
            .incoming
            .push(frames::arp_request([2, 0, 0, 0, 0, 3], witness, ours));
        nic.device_mut()
            .queues
            .get_mut()
            .incoming
            .push(frames::arp_request(HOST_MAC, host, ours));
        nic.poll(Instant::from_millis(25));
        assert_eq!(
            arp_sent(&mut nic),
            [(ArpOperation::Reply, ours)],
            "the witness only"
        );
        // Opened: answers again.
        nic.device_mut().set_quiet(ours, false);
        nic.device_mut()
            .queues
            .get_mut()
            .incoming
            .push(frames::arp_request(HOST_MAC, host, ours));
        nic.poll(Instant::from_millis(30));
        assert_eq!(arp_sent(&mut nic), [(ArpOperation::Reply, ours)]);
    }

    #[test]
    fn a_gratuitous_reply_names_the_address_and_mac_twice() {
        use smoltcp::wire::{
            ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, Ipv4Address,
        };
        let mac = [2, 0, 0, 0, 0, 7];
        let address = Ipv4Address::new(10, 79, 0, 1);
        let frame = crate::frames::gratuitous_arp_reply(mac, address);
        let ethernet = EthernetFrame::new_checked(&frame[..]).unwrap();
        assert_eq!(ethernet.dst_addr(), EthernetAddress::BROADCAST);
        let repr = ArpRepr::parse(&ArpPacket::new_checked(ethernet.payload()).unwrap()).unwrap();
        let ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr,
            source_protocol_addr,
            target_hardware_addr,
            target_protocol_addr,
        } = repr
        else {
            panic!("not IPv4 ARP")
        };
        assert_eq!(operation, ArpOperation::Reply);
        assert_eq!(
            (source_hardware_addr, target_hardware_addr),
            (EthernetAddress(mac), EthernetAddress(mac))
        );
        assert_eq!(
            (source_protocol_addr, target_protocol_addr),
            (address, address)
        );
    }

    #[test]
    fn a_received_frame_never_reaches_past_its_buffer() {
        let frame = ReceivedFrame::new(vec![0; 16].into_boxed_slice(), 12, 100);
        assert_eq!(frame.frame().len(), 4);
        let frame = ReceivedFrame::new(vec![0; 16].into_boxed_slice(), 40, 100);
        assert!(frame.frame().is_empty());
        assert!(frame.into_buffer().is_some(), "a queue buffer goes back");
        assert!(
            ReceivedFrame::assembled(vec![1; 3000])
                .into_buffer()
                .is_none(),
            "an assembled frame does not"
        );
    }
}
