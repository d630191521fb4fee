//! A smoltcp [`Device`] over a NIC's frame queues ([`FrameQueues`]).
//!
//! The queues themselves (virtio-net's, whose buffers the device owns while
//! it works on them) live in the kernel's hardware layer and offer only safe
//! calls: a received frame is lent out as a [`ReceivedFrame`] and given back
//! with [`FrameQueues::recycle`]; a frame to send is written into a buffer
//! from [`FrameQueues::transmit_buffer`] and queued with
//! [`FrameQueues::transmit`], without waiting for the device to send it.

use alloc::boxed::Box;
use alloc::vec;
use core::cell::{Cell, RefCell};

use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::Instant;

/// The largest Ethernet frame a NIC sends or expects (MTU 1500).
pub const MAX_FRAME_LEN: usize = 1514;

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
}

impl ReceivedFrame {
    /// The frame is `buffer[start..start + len]` (clamped to the buffer).
    pub fn new(buffer: Box<[u8]>, start: usize, len: usize) -> Self {
        let start = start.min(buffer.len());
        let len = len.min(buffer.len() - start);
        Self { buffer, start, len }
    }

    pub fn frame(&self) -> &[u8] {
        &self.buffer[self.start..self.start + self.len]
    }

    /// The whole buffer, to be posted again.
    pub fn into_buffer(self) -> Box<[u8]> {
        self.buffer
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
}

/// Packet and byte counters of one NIC.
#[derive(Debug, Default)]
pub struct NicCounters {
    pub rx_packets: Cell<u64>,
    pub rx_bytes: Cell<u64>,
    pub tx_packets: Cell<u64>,
    pub tx_bytes: Cell<u64>,
    pub rx_errors: Cell<u64>,
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
}

impl<Q: FrameQueues> FrameDevice<Q> {
    pub fn new(queues: Q) -> Self {
        let mac = queues.mac_address();
        Self { queues: RefCell::new(queues), counters: NicCounters::default(), mac }
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

    /// True if a received frame is waiting.
    pub fn has_rx(&self) -> bool {
        self.queues.borrow().has_received()
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
        loop {
            match self.queues.get_mut().take_received()? {
                Ok(frame) => {
                    let queues = &self.queues;
                    let counters = &self.counters;
                    return Some((FrameRxToken { queues, counters, frame }, FrameTxToken { queues, counters }));
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
            Some(FrameTxToken { queues: &self.queues, counters: &self.counters })
        } else {
            None
        }
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.max_transmission_unit = MAX_FRAME_LEN;
        caps.max_burst_size = None;
        caps.medium = Medium::Ethernet;
        caps
    }
}

pub struct FrameRxToken<'a, Q: FrameQueues> {
    queues: &'a RefCell<Q>,
    counters: &'a NicCounters,
    frame: ReceivedFrame,
}

impl<Q: FrameQueues> RxToken for FrameRxToken<'_, Q> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        bump(&self.counters.rx_packets, 1);
        bump(&self.counters.rx_bytes, self.frame.frame().len() as u64);
        // The queues are not borrowed while smoltcp handles the frame: its
        // answer goes out through the transmit token meanwhile.
        let result = f(self.frame.frame());
        if let Err(error) = self.queues.borrow_mut().recycle(self.frame) {
            bump(&self.counters.rx_errors, 1);
            log::warn!("could not recycle a receive buffer: {error:?}");
        }
        result
    }
}

pub struct FrameTxToken<'a, Q: FrameQueues> {
    queues: &'a RefCell<Q>,
    counters: &'a NicCounters,
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
    }

    impl FakeQueues {
        fn new(capacity: usize) -> Self {
            Self { incoming: Vec::new(), posted: 0, sent: Vec::new(), capacity, filling: Vec::new() }
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
            Some(Ok(ReceivedFrame::new(buffer.into_boxed_slice(), 12, frame.len())))
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

    #[test]
    fn a_received_frame_never_reaches_past_its_buffer() {
        let frame = ReceivedFrame::new(vec![0; 16].into_boxed_slice(), 12, 100);
        assert_eq!(frame.frame().len(), 4);
        let frame = ReceivedFrame::new(vec![0; 16].into_boxed_slice(), 40, 100);
        assert!(frame.frame().is_empty());
    }
}
