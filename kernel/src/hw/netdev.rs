//! virtio-net frame queues without waiting: frames to send are queued on the
//! transmit virtqueue and the device is told once per batch (virtio's event
//! index suppresses the notifications it does not need), sent buffers are
//! reclaimed later; received frames are lent out and posted again.
//!
//! When the device offers TCP segmentation offload (HOST_TSO4 with CSUM, as
//! QEMU does over a tap), consecutive full-sized segments of one TCP flow go
//! to the device as one large frame that it cuts back into the very same
//! segments ([`FlowBatches`], one batch per connection for up to four: the
//! stack sends one segment of each busy connection in turn): under
//! emulation every frame costs the device, the host and the peer far more
//! than its bytes do.
//!
//! When it offers receive offload (GUEST_TSO4 with GUEST_CSUM and
//! MRG_RXBUF), the host hands over a peer's large TCP segments whole, spread
//! over as many receive buffers as they need, instead of cutting them into
//! frames first: one frame to handle instead of up to 45.
//!
//! The virtqueues' buffers must stay put, untouched, while the device owns
//! them: every such buffer is a heap allocation held here by the token the
//! device returns with it, until the device gives it back.

use alloc::vec;
use alloc::vec::Vec;

use tandem_kernel::virtio::{DeviceFeatures, NetConfig, NetFeatures, NetHeader, StallWatch};
use tandem_net::{
    FLOWS, FlowBatches, FlowPush, FrameError, FrameQueues, MAX_FRAME_LEN, MAX_SEGMENTED_FRAME_LEN,
    ReceivedFrame, Segmentation,
};
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::Transport;

use super::dma::KernelHal;
use super::pci::SharedTransport;
use super::virtio::{NotifyGate, negotiate};

/// Descriptors per virtqueue (QEMU's virtio-net offers 256 per queue): a
/// 128 KiB read is ~90 frames, and the host's bursts fill the receive queue.
pub const QUEUE_SIZE: usize = 256;
/// A full Ethernet frame (no VLAN tag) and the virtio-net header.
const BUFFER_LEN: usize = 2048;
const QUEUE_RECEIVE: u16 = 0;
const QUEUE_TRANSMIT: u16 = 1;
/// virtio-net header (VERSION_1: `num_buffers` included).
const HEADER_LEN: usize = NetHeader::LEN;
/// Large transmit buffers kept for reuse.
const SPARE_BATCH_BUFFERS: usize = 8;
/// A segmentation batch's buffer: the device header and the largest IPv4
/// packet with its Ethernet header.
const BATCH_BUFFER_LEN: usize = HEADER_LEN + 14 + 65536;

/// The most buffers one received frame may span (a 64 KiB segment takes 33).
const MAX_MERGED_BUFFERS: usize = 64;

pub struct NetQueues {
    transport: SharedTransport,
    receive: VirtQueue<KernelHal, QUEUE_SIZE>,
    send: VirtQueue<KernelHal, QUEUE_SIZE>,
    mac: [u8; 6],
    /// Receive buffers the device holds, by token.
    receiving: Vec<Option<Vec<u8>>>,
    /// Frames the device is sending: buffer and the length handed over, by token.
    sending: Vec<Option<(Vec<u8>, usize)>>,
    /// How many of `sending` are taken.
    sending_count: usize,
    /// Notices a transmit queue the device stopped taking frames from.
    send_watch: StallWatch,
    /// The same for the receive queue: the device needs a notification
    /// only once it ran out of buffers, and may be waiting for a lost one.
    /// (An idle link looks the same: it costs a notification a second.)
    receive_watch: StallWatch,
    /// Frame-sized transmit buffers ready for reuse (allocated on demand).
    free: Vec<Vec<u8>>,
    /// Large ones, for segmentation batches.
    free_large: Vec<Vec<u8>>,
    /// The buffer lent out by `transmit_buffer`.
    filling: Option<Vec<u8>>,
    /// `None` without segmentation offload.
    batches: Option<FlowBatches>,
    /// Received frames may span several buffers (MRG_RXBUF).
    merged_receive: bool,
    receive_gate: NotifyGate,
    send_gate: NotifyGate,
}

fn buffer() -> Vec<u8> {
    vec![0u8; BUFFER_LEN]
}

impl NetQueues {
    /// Negotiates with the device and fills its receive queue.
    pub fn new(mut transport: SharedTransport) -> Result<Self, virtio_drivers::Error> {
        let features: NetFeatures = negotiate(&mut transport)?;
        let mut mac = [0u8; 6];
        // Byte by byte: the field is not aligned for a wider read.
        let mac_at = core::mem::offset_of!(NetConfig, mac);
        for (offset, byte) in mac.iter_mut().enumerate() {
            *byte = transport.read_config_space::<u8>(mac_at + offset)?;
        }
        let indirect = features.indirect_descriptors();
        let event_idx = features.event_index();
        let receive = VirtQueue::new(&mut transport, QUEUE_RECEIVE, indirect, event_idx)?;
        let send = VirtQueue::new(&mut transport, QUEUE_TRANSMIT, indirect, event_idx)?;
        let receive_gate = NotifyGate::new(&transport, QUEUE_RECEIVE, event_idx);
        let send_gate = NotifyGate::new(&transport, QUEUE_TRANSMIT, event_idx);
        transport.finish_init();
        let offload = features.segmentation_offload();
        log::debug!(
            "virtio-net segmentation offload {offload}, receive offload {}",
            features.receive_offload()
        );
        let mut queues = Self {
            transport,
            receive,
            send,
            mac,
            receiving: (0..QUEUE_SIZE).map(|_| None).collect(),
            sending: (0..QUEUE_SIZE).map(|_| None).collect(),
            sending_count: 0,
            send_watch: StallWatch::default(),
            receive_watch: StallWatch::default(),
            free: Vec::new(),
            free_large: Vec::new(),
            filling: None,
            batches: offload.then(|| FlowBatches::new(HEADER_LEN)),
            merged_receive: features.contains(NetFeatures::MRG_RXBUF),
            receive_gate,
            send_gate,
        };
        for _ in 0..QUEUE_SIZE {
            queues.post_receive(buffer())?;
        }
        Ok(queues)
    }

    fn post_receive(&mut self, mut buffer: Vec<u8>) -> Result<(), virtio_drivers::Error> {
        // SAFETY: the buffer is a heap allocation that moves into
        // `receiving[token]` and is neither touched nor freed until the
        // device returns that token (`take_received`).
        let token = unsafe { self.receive.add(&[], &mut [&mut buffer[..]])? };
        self.receive_gate.added();
        let receive = &self.receive;
        if self.receive_gate.notify_due(|| receive.should_notify()) {
            self.transport.notify(QUEUE_RECEIVE);
        }
        match self.receiving.get_mut(usize::from(token)) {
            Some(slot @ None) => {
                *slot = Some(buffer);
                Ok(())
            }
            // The queue handed out a token it already holds: a driver bug.
            // Leaking the buffer keeps the device from writing freed memory.
            _ => {
                core::mem::forget(buffer);
                Err(virtio_drivers::Error::WrongToken)
            }
        }
    }

    /// The next buffer the device filled, and how many bytes it wrote.
    fn pop_received(&mut self) -> Option<Result<(Vec<u8>, usize), FrameError>> {
        let token = self.receive.peek_used()?;
        let Some(mut buffer) = self
            .receiving
            .get_mut(usize::from(token))
            .and_then(Option::take)
        else {
            return Some(Err(FrameError::Device));
        };
        // SAFETY: the same buffer that started this token.
        match unsafe { self.receive.pop_used(token, &[], &mut [&mut buffer[..]]) } {
            Ok(len) if len as usize <= buffer.len() => Some(Ok((buffer, len as usize))),
            Ok(_) => {
                let _ = self.post_receive(buffer);
                Some(Err(FrameError::Device))
            }
            Err(_) => {
                // The device still owns it; never reuse or free it.
                core::mem::forget(buffer);
                Some(Err(FrameError::Device))
            }
        }
    }

    /// Copies a frame spread over `buffers` receive buffers (the first,
    /// header included, already taken) into one, posting each buffer again.
    fn assemble(
        &mut self,
        first: Vec<u8>,
        len: usize,
        buffers: usize,
    ) -> Result<ReceivedFrame, FrameError> {
        // More than a 64 KiB segment needs is a device fault: the buffers
        // are still taken back, the frame is dropped.
        let too_many = buffers > MAX_MERGED_BUFFERS;
        let mut frame = Vec::with_capacity(if too_many {
            0
        } else {
            len - HEADER_LEN + (buffers - 1) * BUFFER_LEN
        });
        if !too_many {
            frame.extend_from_slice(&first[HEADER_LEN..len]);
        }
        let _ = self.post_receive(first);
        for _ in 1..buffers {
            // The device marks every buffer of a frame used at once: one
            // missing is a device fault, and the frame is lost.
            let (buffer, len) = self.pop_received().unwrap_or(Err(FrameError::Device))?;
            if !too_many {
                frame.extend_from_slice(&buffer[..len]);
            }
            let _ = self.post_receive(buffer);
        }
        if too_many {
            return Err(FrameError::Device);
        }
        Ok(ReceivedFrame::assembled(frame))
    }

    /// Takes back what the device finished sending; notifies the device
    /// again if it holds frames and has sent none for a while
    /// ([`StallWatch`]).
    fn reclaim_sent(&mut self) -> Result<(), FrameError> {
        let before = self.sending_count;
        let reclaimed = self.reclaim_used();
        let returned = self.sending_count < before;
        if self
            .send_watch
            .check(super::clock::now_micros(), self.sending_count > 0, returned)
        {
            log::warn!(
                "virtio-net: the device sent none of {} queued frames for a second; notified it again ({} times so far)",
                self.sending_count,
                self.send_watch.renotified()
            );
            self.transport.notify(QUEUE_TRANSMIT);
        }
        reclaimed
    }

    fn reclaim_used(&mut self) -> Result<(), FrameError> {
        while let Some(token) = self.send.peek_used() {
            let Some((buffer, len)) = self
                .sending
                .get_mut(usize::from(token))
                .and_then(Option::take)
            else {
                return Err(FrameError::Device);
            };
            // SAFETY: the same buffer and length that started this token.
            let done = unsafe { self.send.pop_used(token, &[&buffer[..len]], &mut []) };
            self.sending_count -= 1;
            if done.is_err() {
                // The device still owns it; never reuse or free it.
                core::mem::forget(buffer);
                return Err(FrameError::Device);
            }
            self.recycle_transmit(buffer);
        }
        Ok(())
    }

    /// Hands `buffer[..len]` (virtio-net header first) to the device.
    fn submit(
        &mut self,
        mut buffer: Vec<u8>,
        len: usize,
        segmentation: Option<Segmentation>,
    ) -> Result<(), FrameError> {
        let header = match segmentation {
            Some(s) => NetHeader {
                flags: NetHeader::F_NEEDS_CSUM,
                gso_type: NetHeader::GSO_TCPV4,
                hdr_len: s.header_len as u16,
                gso_size: s.segment_size as u16,
                csum_start: s.checksum_start as u16,
                csum_offset: s.checksum_offset as u16,
                num_buffers: 0,
            },
            None => NetHeader::default(),
        };
        header.emit(&mut buffer[..HEADER_LEN]);
        // SAFETY: the buffer is a heap allocation that moves into
        // `sending[token]` and is neither touched nor freed until the device
        // returns that token (`reclaim_sent`).
        match unsafe { self.send.add(&[&buffer[..len]], &mut []) } {
            Ok(token) => {
                self.send_gate.added();
                let send = &self.send;
                if self.send_gate.notify_due(|| send.should_notify()) {
                    self.transport.notify(QUEUE_TRANSMIT);
                }
                match self.sending.get_mut(usize::from(token)) {
                    Some(slot @ None) => {
                        *slot = Some((buffer, len));
                        self.sending_count += 1;
                        Ok(())
                    }
                    _ => {
                        core::mem::forget(buffer);
                        Err(FrameError::Device)
                    }
                }
            }
            Err(_) => {
                self.recycle_transmit(buffer);
                Err(FrameError::QueueFull)
            }
        }
    }

    fn recycle_transmit(&mut self, buffer: Vec<u8>) {
        // Frame buffers grow to the largest frame they carried (at most
        // MAX_SEGMENTED_FRAME_LEN, so 8 KiB); batch buffers are far larger.
        if buffer.capacity() >= BATCH_BUFFER_LEN {
            if self.free_large.len() < SPARE_BATCH_BUFFERS {
                self.free_large.push(buffer);
            }
        } else {
            self.free.push(buffer);
        }
    }

    /// Offers a frame to the segmentation batches (a batch that starts gets
    /// a reused buffer).
    fn push_to_batches(&mut self, frame: &[u8]) -> FlowPush {
        let Some(batches) = self.batches.as_mut() else {
            return FlowPush::Alone;
        };
        let free_large = &mut self.free_large;
        batches.push(frame, &mut || {
            free_large
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(BATCH_BUFFER_LEN))
        })
    }

    /// Sends batch `index`, if it is open.
    fn send_batch(&mut self, index: usize) -> Result<(), FrameError> {
        let Some((buffer, segmentation)) = self
            .batches
            .as_mut()
            .and_then(|batches| batches.take(index))
        else {
            return Ok(());
        };
        let len = buffer.len();
        self.submit(buffer, len, segmentation)
    }

    /// Sends every open batch.
    fn send_batches(&mut self) -> Result<(), FrameError> {
        let mut result = Ok(());
        while let Some((buffer, segmentation)) =
            self.batches.as_mut().and_then(FlowBatches::take_any)
        {
            let len = buffer.len();
            result = result.and(self.submit(buffer, len, segmentation));
        }
        result
    }
}

impl FrameQueues for NetQueues {
    fn mac_address(&self) -> [u8; 6] {
        self.mac
    }

    fn ack_interrupt(&mut self) -> bool {
        !self.transport.ack_interrupt().is_empty()
    }

    fn has_received(&self) -> bool {
        self.receive.peek_used().is_some()
    }

    fn take_received(&mut self) -> Option<Result<ReceivedFrame, FrameError>> {
        let received = self.pop_received();
        if self
            .receive_watch
            .check(super::clock::now_micros(), true, received.is_some())
        {
            self.transport.notify(QUEUE_RECEIVE);
        }
        let (buffer, len) = match received? {
            Ok(received) => received,
            Err(error) => return Some(Err(error)),
        };
        // `pop_received` checked that the device wrote no more than the buffer.
        let Some(header) = NetHeader::parse(&buffer[..len]) else {
            // The device is done with it; a bad length only loses the frame.
            let _ = self.post_receive(buffer);
            return Some(Err(FrameError::Device));
        };
        let buffers = if self.merged_receive {
            usize::from(header.num_buffers)
        } else {
            1
        };
        let frame = if buffers <= 1 {
            ReceivedFrame::new(buffer.into_boxed_slice(), HEADER_LEN, len - HEADER_LEN)
        } else {
            match self.assemble(buffer, len, buffers) {
                Ok(frame) => frame,
                Err(error) => return Some(Err(error)),
            }
        };
        Some(Ok(if header.checksums_trusted() {
            frame.with_trusted_checksums()
        } else {
            frame
        }))
    }

    fn recycle(&mut self, frame: ReceivedFrame) -> Result<(), FrameError> {
        match frame.into_buffer() {
            Some(buffer) => self
                .post_receive(buffer.into_vec())
                .map_err(|_| FrameError::Device),
            // An assembled frame's buffers were posted again as it was copied.
            None => Ok(()),
        }
    }

    fn can_transmit(&mut self) -> bool {
        // A reclaim error leaves the queue as full as it was.
        let _ = self.reclaim_sent();
        // Room for this frame and for the batches it may end.
        self.send.available_desc() >= 1 + FLOWS
    }

    fn transmit_buffer(&mut self, len: usize) -> Option<&mut [u8]> {
        let largest = if self.batches.is_some() {
            MAX_SEGMENTED_FRAME_LEN
        } else {
            MAX_FRAME_LEN
        };
        if len > largest || !self.can_transmit() {
            return None;
        }
        let mut buffer = match self.filling.take().or_else(|| self.free.pop()) {
            Some(buffer) => buffer,
            None => buffer(),
        };
        buffer.resize(BUFFER_LEN.max(HEADER_LEN + len), 0);
        let filling = self.filling.insert(buffer);
        filling.get_mut(HEADER_LEN..HEADER_LEN + len)
    }

    fn transmit(&mut self, len: usize) -> Result<(), FrameError> {
        let Some(buffer) = self.filling.take() else {
            return Err(FrameError::Device);
        };
        let total = HEADER_LEN + len;
        if total > buffer.len() {
            self.recycle_transmit(buffer);
            return Err(FrameError::Device);
        }
        if self.batches.is_some() {
            // At most two offers: the second comes after the batch in the
            // way was sent, and that slot is then free.
            for _ in 0..2 {
                match self.push_to_batches(&buffer[HEADER_LEN..total]) {
                    FlowPush::Taken => {
                        self.recycle_transmit(buffer);
                        return Ok(());
                    }
                    FlowPush::Complete(index) => {
                        self.recycle_transmit(buffer);
                        return self.send_batch(index);
                    }
                    // Order on the wire is kept within each connection.
                    FlowPush::SendFirst(index) => {
                        if let Err(error) = self.send_batch(index) {
                            self.recycle_transmit(buffer);
                            return Err(error);
                        }
                    }
                    FlowPush::Alone => break,
                    FlowPush::NotTaken => {
                        if let Err(error) = self.send_batches() {
                            self.recycle_transmit(buffer);
                            return Err(error);
                        }
                        break;
                    }
                }
            }
        }
        if len > MAX_FRAME_LEN {
            // Only TCP segments may be larger, and the batch cuts those.
            self.recycle_transmit(buffer);
            return Err(FrameError::Device);
        }
        self.submit(buffer, total, None)
    }

    fn flush(&mut self) {
        let _ = self.send_batches();
    }

    fn notifications(&self) -> (u64, u64) {
        (self.receive_gate.sent(), self.send_gate.sent())
    }

    fn transmit_renotified(&self) -> u64 {
        self.send_watch.renotified()
    }

    fn segments_large_frames(&self) -> bool {
        self.batches.is_some()
    }
}

impl Drop for NetQueues {
    fn drop(&mut self) {
        // The device must not use the buffers once they are freed.
        self.transport.queue_unset(QUEUE_RECEIVE);
        self.transport.queue_unset(QUEUE_TRANSMIT);
    }
}
